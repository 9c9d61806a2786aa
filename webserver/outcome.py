"""What a synchronous request came to, apart from how it was submitted (the routes need only this)."""
from __future__ import annotations

from dataclasses import dataclass

from shared.messages import Reply


@dataclass(frozen=True)
class Outcome:
    """What a synchronous request came to: a reply, or None when it timed out."""

    request_id: str
    service: str
    reply: Reply | None
    latency_ms: float
    shutdown: bool = False      # no reply because this web process is stopping (not a timeout)
    version: str | None = None  # the version the request was routed to (None: the service has one)
