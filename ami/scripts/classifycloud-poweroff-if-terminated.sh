#!/usr/bin/env bash
# ExecStopPost (as root) of classifycloud-worker.service: power off when the entry
# script recorded that the worker obeyed a terminate message; otherwise do nothing
# (a manual `systemctl stop` or a crash leaves the instance running).
set -euo pipefail

STATE_DIR="${STATE_DIRECTORY:-/var/lib/classifycloud-worker}"
MARKER="$STATE_DIR/poweroff-requested"

if [ -f "$MARKER" ]; then
  rm -f "$MARKER"
  echo "terminate message obeyed: powering off"
  systemctl poweroff --no-block
fi
