#!/usr/bin/env bash
# Bake step: the CloudWatch agent ships /var/log/classifycloud/<component>.log to the
# log groups Terraform creates (the user data writes its configuration).
# A pinned version, installed only when its detached signature verifies against Amazon's
# CloudWatch agent key, whose fingerprint is pinned here (AWS docs: "Verifying the signature
# of the CloudWatch agent package").
set -euo pipefail

CW_AGENT_VERSION="${CW_AGENT_VERSION:-1.300072.0b1766}"
CW_AGENT_KEY_FINGERPRINT="937616F3450B7D806CBD9725D58167303B789C72"
BASE_URL="https://amazoncloudwatch-agent.s3.amazonaws.com"

if [ -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl ]; then
  echo "CloudWatch agent already installed"
  exit 0
fi

command -v gpg >/dev/null 2>&1 || apt-get install -y -qq gnupg

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GNUPGHOME="$work/gnupg"
install -d -m 0700 "$GNUPGHOME"

fetch() {
  curl -fsSL --retry 3 -o "$2" "$1"
}
fetch "$BASE_URL/assets/amazon-cloudwatch-agent.gpg" "$work/agent.gpg"
fetch "$BASE_URL/ubuntu/amd64/$CW_AGENT_VERSION/amazon-cloudwatch-agent.deb" "$work/agent.deb"
fetch "$BASE_URL/ubuntu/amd64/$CW_AGENT_VERSION/amazon-cloudwatch-agent.deb.sig" "$work/agent.deb.sig"

gpg --batch --quiet --import "$work/agent.gpg"
key=$(gpg --batch --with-colons --fingerprint | awk -F: '$1 == "fpr" { print $10; exit }')
if [ "$key" != "$CW_AGENT_KEY_FINGERPRINT" ]; then
  echo "CloudWatch agent key has fingerprint $key, expected $CW_AGENT_KEY_FINGERPRINT" >&2
  exit 1
fi
# VALIDSIG's last field is the primary key's fingerprint: the signature must be by that key
if ! gpg --batch --status-fd 1 --verify "$work/agent.deb.sig" "$work/agent.deb" 2>/dev/null \
  | grep -Eq "^\[GNUPG:\] VALIDSIG .* $CW_AGENT_KEY_FINGERPRINT\$"; then
  echo "CloudWatch agent $CW_AGENT_VERSION: signature does not verify" >&2
  exit 1
fi
dpkg -i "$work/agent.deb"
echo "CloudWatch agent $CW_AGENT_VERSION installed (signature verified)"
