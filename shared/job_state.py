"""A job's state from its marker and result record: the one rule GET /jobs and the notifier share.

The marker (jobs/<id>.json, written by the web) is read first: a cancelled job stays cancelled whatever
result a worker wrote after the cancel, and a job's invocation timeout turns a late or slow answer into
`invocation_timeout`. So a job is never answered as done after it was cancelled or timed out.
"""
from __future__ import annotations

from shared.messages import Reply

PENDING, SUCCEEDED, FAILED, EXPIRED, CANCELLED = "pending", "succeeded", "failed", "expired", "cancelled"
STATUSES = (PENDING, SUCCEEDED, FAILED, EXPIRED, CANCELLED)
FINAL = (SUCCEEDED, FAILED, EXPIRED, CANCELLED)


def invocation_deadline(marker: dict | None) -> int | None:
    """Epoch ms by which a job started before its expiry must have its answer: expires_at + invocation timeout."""
    if not marker:
        return None
    expires, limit = marker.get("expires_at"), marker.get("invocation_timeout_s")
    if not isinstance(expires, int) or not isinstance(limit, int):
        return None
    return expires + limit * 1000


def _invocation_ms(record: dict) -> float:
    """What the worker spent on the job itself (fetch + inference), not its time in the queue."""
    timings = record.get("timings_ms") if isinstance(record.get("timings_ms"), dict) else {}
    return sum(float(timings.get(k) or 0) for k in ("fetch", "inference"))


def timed_out(job_id: str, marker: dict, why: str) -> dict:
    """The answer of a job whose invocation timeout passed (a failed job, like any worker error)."""
    return Reply.failure(job_id, str(marker.get("service") or ""), "invocation_timeout",
                         f"{why} (invocation_timeout_s {marker.get('invocation_timeout_s')})").to_dict()


def job_state(job_id: str, marker: dict | None, record: dict | None, now: int) -> tuple[str, dict | None]:
    """(status, the record that answers it: the result, a timeout answer, or None while pending / cancelled)."""
    if marker and marker.get("cancelled_at"):
        return CANCELLED, None
    limit = (marker or {}).get("invocation_timeout_s")
    if record is not None:
        if isinstance(limit, int) and _invocation_ms(record) > limit * 1000:
            return FAILED, timed_out(job_id, marker, "the worker took longer than the job's invocation timeout")
        if record.get("status") == "ok":
            return SUCCEEDED, record
        error = record.get("error") if isinstance(record.get("error"), dict) else {}
        return (EXPIRED if error.get("code") == "expired" else FAILED), record
    deadline = invocation_deadline(marker)
    if deadline is not None and now > deadline:
        return FAILED, timed_out(job_id, marker, "no answer by the job's expiry plus its invocation timeout")
    return PENDING, None
