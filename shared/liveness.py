"""The liveness rule shared by a worker's watchdog and the autoscaler's health check: progress, not beats.

A worker holding work is wedged when its loop made no step within the stall limit (one full batch
of its slowest service, plus worker_stall_s), or when a message it holds has waited longer than
every batch that may come before it. Both sides judge the same heartbeat fields by this one rule.
"""
from __future__ import annotations

import math

from shared.catalogue import Catalogue
from shared.config import Settings


def stall_limit_s(settings: Settings, services, catalogue: Catalogue | None,
                  seconds_per_request: dict[str, float] | None = None) -> float:
    """How long a worker holding work may go without a loop step: one full batch of its slowest service, plus slack.

    A full batch = the fetch deadline + max_batch_size x the service's expected seconds per request
    (the autoscaler's measured estimate when given, else the catalogue's, else the default).
    """
    times = dict(seconds_per_request or {})
    per = [times.get(svc) or _catalogue_time(catalogue, svc) or settings.seconds_per_request for svc in services]
    slowest = max(per, default=settings.seconds_per_request)
    return settings.worker_stall_s + settings.fetch_deadline_s + settings.max_batch_size * slowest


def _catalogue_time(catalogue: Catalogue | None, service: str) -> float | None:
    spec = catalogue.services.get(service) if catalogue is not None else None
    return getattr(spec, "seconds_per_request", None)


def stalled_s(record: dict, now: float, limit_s: float, settings: Settings) -> float | None:
    """Seconds a heartbeat's worker has held work without progress, when past the limit; else None.

    No progress = no loop step within limit_s, or a message held longer than every batch that may
    come before it (the buffer's worth of batches, each within limit_s).
    """
    if record.get("state", "ready") != "ready" or not record.get("busy"):
        return None
    now_ms_ = now * 1000
    step_at = record.get("step_at") or 0
    if step_at and now_ms_ - step_at > limit_s * 1000:
        return (now_ms_ - step_at) / 1000
    oldest = record.get("oldest_held_at") or 0
    batches = max(1, math.ceil(settings.buffer_size / max(1, settings.max_batch_size)))
    if oldest and now_ms_ - oldest > limit_s * batches * 1000:
        return (now_ms_ - oldest) / 1000
    return None
