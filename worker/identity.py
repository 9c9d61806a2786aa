"""This worker's instance id: configured, else EC2 metadata (IMDSv2), else hostname-pid."""
from __future__ import annotations

import logging
import os
import socket

from shared.config import Settings
from worker.imds import Imds, imds_base

log = logging.getLogger(__name__)

IMDS_TIMEOUT_S = 0.3   # off EC2 nothing answers: fail fast


def from_imds(timeout: float = IMDS_TIMEOUT_S, base: str | None = None) -> str | None:
    """The EC2 instance id via IMDSv2 (token PUT, then GET), or None when not on EC2."""
    base = base or imds_base()
    if base is None:
        return None
    imds = Imds(base, timeout)
    try:
        return (imds.get("instance-id") or "").strip() or None
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        imds.close()


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
