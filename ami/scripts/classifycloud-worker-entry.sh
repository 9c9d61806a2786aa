#!/usr/bin/env bash
# Entry script of classifycloud-worker.service: sync model weights, run the worker,
# and when it exits 0 on its own (it obeyed a terminate message) ask for a power-off.
# The power-off itself runs as root in ExecStopPost (this script runs unprivileged);
# the launch template's shutdown behaviour = terminate turns it into a termination.
set -uo pipefail

VENV="${VENV:-/opt/classifycloud/venv}"  # overridable for tests and other layouts
STATE_DIR="${STATE_DIRECTORY:-/var/lib/classifycloud-worker}"
MARKER="$STATE_DIR/poweroff-requested"

rm -f "$MARKER"
"$(dirname "$0")/classifycloud-sync-models.sh" || echo "model sync failed; services without weights stay unavailable" >&2

stop_requested=0
child=0
# shellcheck disable=SC2317,SC2329  # called by the trap below
forward() {
  # systemctl stop / a second SIGTERM: pass it on; the worker finishes or releases its batch.
  stop_requested=1
  if [ "$child" -ne 0 ]; then
    kill -TERM "$child" 2>/dev/null || true
  fi
}
trap forward TERM INT

"$VENV/bin/classifycloud" worker &
child=$!

rc=0
while true; do
  wait "$child"
  rc=$?
  # wait returns early (status > 128) when a trapped signal arrives; keep waiting.
  if kill -0 "$child" 2>/dev/null; then
    continue
  fi
  break
done

if [ "$rc" -eq 0 ] && [ "$stop_requested" -eq 0 ]; then
  echo "worker exited 0 after a terminate message: requesting power-off"
  touch "$MARKER"
fi
exit "$rc"
