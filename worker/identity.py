"""This worker's instance id: configured, else EC2 metadata (IMDSv2), else hostname-pid."""
from __future__ import annotations

import logging
import os
import socket

import urllib3

from shared.config import Settings

log = logging.getLogger(__name__)

IMDS = "http://169.254.169.254"
IMDS_TIMEOUT_S = 0.3   # off EC2 nothing answers: fail fast


def imds_base() -> str | None:
    """The metadata endpoint, by the SDK's variables (AWS_EC2_METADATA_SERVICE_ENDPOINT / _DISABLED)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS).rstrip("/")


def from_imds(timeout: float = IMDS_TIMEOUT_S, base: str | None = None) -> str | None:
    """The EC2 instance id via IMDSv2 (token PUT, then GET), or None when not on EC2."""
    base = base or imds_base()
    if base is None:
        return None
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)
    try:
        token = http.request("PUT", f"{base}/latest/api/token",
                             headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        if token.status != 200:
            return None
        resp = http.request("GET", f"{base}/latest/meta-data/instance-id",
                            headers={"X-aws-ec2-metadata-token": token.data.decode()})
        if resp.status != 200:
            return None
        value = resp.data.decode().strip()
        return value or None
    except (urllib3.exceptions.HTTPError, OSError, UnicodeDecodeError):
        return None
    finally:
        http.clear()


def instance_id(settings: Settings) -> str:
    """settings.instance_id, else the EC2 instance id, else '<hostname>-<pid>'."""
    if settings.instance_id:
        return settings.instance_id
    found = from_imds()
    if found:
        return found
    fallback = f"{socket.gethostname()}-{os.getpid()}"
    log.info("not on EC2 (no instance metadata): instance id %s", fallback)
    return fallback
