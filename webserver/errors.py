"""API errors: one exception type, JSON error bodies, and reply-code to HTTP-status mapping."""
from __future__ import annotations

import logging
import re

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

# A worker's error reply code -> the HTTP status the web answers with.
REPLY_STATUS: dict[str, int] = {
    "invalid_image": 422,
    "image_too_large": 413,
    "invalid_url": 400,
    "forbidden_address": 400,
    "unsupported_scheme": 400,
    "too_many_redirects": 400,
    "redirect_loop": 400,
    "unsupported_format": 415,
    "malformed_message": 400,
    "unsupported_version": 400,
    "unknown_service": 404,
    "service_unavailable": 503,
    "internal_error": 500,
    "inference_failed": 500,
    "invalid_params": 400,      # a kind's parameters (gallery, name, meta) were wrong
    "no_face": 422,             # facesearch enrol: no face in the image
    "gallery_unavailable": 503,  # facesearch: the gallery in S3 cannot be read or written (retry)
    "dead_lettered": 500,      # every delivery failed: the server's problem, not the client's
}

# Werkzeug's own HTTP errors get stable snake_case codes.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type", 500: "internal_error"}


class ApiError(Exception):
    """A client-visible failure: HTTP status, machine code, human message, optional request id."""

    def __init__(self, status: int, code: str, message: str, request_id: str | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.request_id = request_id
        self.extra = extra
        self.allow: list[str] | None = None   # 405: the methods the route accepts
        self.retry_after: int | None = None   # 503: seconds after which a retry may succeed

    def body(self) -> dict:
        """The native JSON error body."""
        err = {"code": self.code, "message": self.message}
        if self.request_id:
            err["id"] = self.request_id
        out = {"error": err}
        if self.request_id:
            out["id"] = self.request_id
        out.update(self.extra)
        return out


def status_for_reply_code(code: str) -> int:
    """HTTP status for a worker error code (fetch problems are the client's URL: 422)."""
    if code in REPLY_STATUS:
        return REPLY_STATUS[code]
    if re.match(r"^(fetch|http|download)_", code):
        return 422
    if code.startswith("internal"):
        return 500
    return 422


def http_error_as_api(exc: HTTPException) -> ApiError:
    """Translate a werkzeug HTTPException (404, 405, 413, ...) into an ApiError."""
    status = exc.code or 500
    code = _HTTP_CODES.get(status) or re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
    message = exc.description or exc.name or "error"
    if status == 413:
        message = "request body is larger than the upload limit"
    return ApiError(status, code, message)


def install_error_handlers(app: Flask, xcloud_prefix: str = "/cv/") -> None:
    """Every error is JSON: the native {"error": ...} body, or XCloud's envelope under /cv/."""

    def render(err: ApiError):
        if request.path.startswith(xcloud_prefix):
            from webserver.xcloud import envelope_for_error
            resp = jsonify(envelope_for_error(err))
        else:
            resp = jsonify(err.body())
        resp.status_code = err.status
        if err.allow:
            resp.headers["Allow"] = ", ".join(err.allow)
        if err.retry_after:
            resp.headers["Retry-After"] = str(err.retry_after)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return render(err)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        err = http_error_as_api(exc)
        if exc.code == 405 and getattr(exc, "valid_methods", None):
            err.message = f"method {request.method} not allowed; use {', '.join(exc.valid_methods)}"
            err.allow = list(exc.valid_methods)
        return render(err)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return render(ApiError(500, "internal_error", "internal error; see the server log"))
