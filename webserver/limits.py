"""Request bodies: a size limit per route, and a per-process budget of body bytes in flight.

An upload costs the web process about three times its size while it is parsed (raw body, parsed
JSON text, decoded bytes); a synchronous request then waits up to reply_timeout_s. So the body is
dropped as soon as it is in S3, and admission is bounded by a byte budget: past it, 503 with
Retry-After, before the process runs out of memory.
"""
from __future__ import annotations

import logging
import threading

from flask import Flask, g, has_request_context, request

from shared.config import Settings
from webserver.errors import ApiError
from webserver.routing import BATCH, UPLOAD, rules_for

log = logging.getLogger(__name__)

SMALL_BODY_BYTES = 64 * 1024    # every route that takes no image: job ids, keys, small JSON
BATCH_BODY_BYTES = 4 * 1024 * 1024  # POST /batches: batch_max_items URLs of up to 2048 characters
_MULTIPART_OVERHEAD = 64 * 1024  # boundaries and the other form fields
RETRY_AFTER_S = 2



def body_limit(settings: Settings, body: str) -> int:
    """Largest body of a kind (webserver.routing): base64 JSON of a max-size image for uploads, small elsewhere."""
    if body == UPLOAD:
        return settings.max_upload_bytes * 4 // 3 + _MULTIPART_OVERHEAD
    if body == BATCH:   # an inline list of up to batch_max_items URLs
        return BATCH_BODY_BYTES
    return SMALL_BODY_BYTES


class BodyBudget:
    """Bytes of request bodies this process holds right now, bounded."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self.refused = 0
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bool:
        """Reserve n bytes; False (and nothing reserved) when that would pass the limit."""
        with self._lock:
            if self.used > 0 and self.used + n > self.limit:  # one upload alone is always admitted
                self.refused += 1
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        """Return n reserved bytes."""
        with self._lock:
            self.used = max(0, self.used - n)


def install_body_limits(app: Flask, settings: Settings) -> BodyBudget:
    """Per-route limits and the in-flight budget as before/teardown hooks; returns the budget."""
    budget = BodyBudget(settings.max_inflight_body_bytes)
    app.extensions["classifycloud_body_budget"] = budget

    @app.before_request
    def _admit():
        limit = body_limit(settings, rules_for(app, request.endpoint).body)
        request.max_content_length = limit
        request.max_form_memory_size = limit  # base64 in a form field (XCloud) is a form value
        size = request.content_length
        if size is None:
            if request.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return
            size = limit  # unknown length: reserve the worst case
        if size == 0:
            return
        if size > limit:
            g.close_connection = True
            raise ApiError(413, "too_large", "request body is larger than the upload limit")
        if not budget.try_take(size):
            log.warning("%s %s: %d body bytes refused, %d of %d in flight", request.method, request.path,
                        size, budget.used, budget.limit)
            g.close_connection = True
            err = ApiError(503, "busy", "the server is handling too many uploads; retry shortly")
            err.retry_after = RETRY_AFTER_S
            raise err
        g.body_reserved = size

    @app.after_request
    def _close_refused(resp):
        # A refused body is never read: draining it at the client's pace would hold this thread. The
        # connection closes after the answer instead (a client still sending may see a reset).
        if g.get("close_connection"):
            resp.headers["Connection"] = "close"
        return resp

    @app.teardown_request
    def _release(exc=None):
        release_body_reservation()

    return budget


def release_body_reservation() -> None:
    """Give this request's reserved bytes back to the budget (once)."""
    size = g.pop("body_reserved", 0)
    if size:
        from flask import current_app
        current_app.extensions["classifycloud_body_budget"].give(size)


def release_request_body() -> None:
    """Drop what the request holds of its body (raw, parsed JSON, form fields, files) once it is in S3."""
    if not has_request_context():
        return
    req = request._get_current_object()
    req._cached_data = b""
    req._cached_json = (None, None)
    files = req.__dict__.get("files")
    if files is not None:
        for storage in files.values():
            storage.close()
    from werkzeug.datastructures import ImmutableMultiDict
    for name in ("form", "files"):
        if name in req.__dict__:
            req.__dict__[name] = ImmutableMultiDict()
    release_body_reservation()

