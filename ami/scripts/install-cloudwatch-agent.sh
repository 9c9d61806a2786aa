#!/usr/bin/env bash
# Bake step: the CloudWatch agent ships /var/log/classifycloud/<component>.log to the
# log groups Terraform creates (the user data writes its configuration).
set -euo pipefail

if [ -x /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl ]; then
  echo "CloudWatch agent already installed"
  exit 0
fi

deb=$(mktemp --suffix=.deb)
trap 'rm -f "$deb"' EXIT
curl -fsSL --retry 3 -o "$deb" https://amazoncloudwatch-agent.s3.amazonaws.com/ubuntu/amd64/latest/amazon-cloudwatch-agent.deb
dpkg -i "$deb"
