"""API errors: one error table, one exception type, and the two bodies derived from them.

ERRORS maps every error code to its HTTP status and its XCloud envelope code; the native
{"error": ...} body and XCloud's {code, msg, results, elapse} envelope are both rendered from an
ApiError here, so no route module is imported by the error layer.
"""
from __future__ import annotations

import logging
import re
from typing import NamedTuple

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from webserver.failures import WebFailure
from webserver.usage_tags import tag_usage

log = logging.getLogger(__name__)

# XCloud's envelope codes: 0 success; it used 1-3 for bad images, URLs and requests. We keep
# those meanings and add codes for what XCloud could not fail with (queues, timeouts).
XCLOUD_OK = 0
XCLOUD_INVALID_IMAGE = 1
XCLOUD_INVALID_URL = 2
XCLOUD_BAD_REQUEST = 3
XCLOUD_SERVICE = 4
XCLOUD_TIMEOUT = 5
XCLOUD_INTERNAL = 6


class ErrorKind(NamedTuple):
    """How one error code is answered: HTTP status and XCloud envelope code."""

    status: int
    xcloud: int


_I, _U, _B, _S, _T, _X = (XCLOUD_INVALID_IMAGE, XCLOUD_INVALID_URL, XCLOUD_BAD_REQUEST, XCLOUD_SERVICE,
                          XCLOUD_TIMEOUT, XCLOUD_INTERNAL)

# The one error table: worker reply codes and the web's own codes.
ERRORS: dict[str, ErrorKind] = {
    # the image
    "invalid_image": ErrorKind(422, _I), "invalid_base64": ErrorKind(400, _I), "empty_image": ErrorKind(400, _I),
    "image_too_large": ErrorKind(413, _I), "image_not_found": ErrorKind(422, _I), "too_large": ErrorKind(413, _I),
    "unsupported_format": ErrorKind(415, _X), "no_face": ErrorKind(422, _I),
    # the image URL
    "invalid_url": ErrorKind(400, _U), "unsupported_scheme": ErrorKind(400, _U),
    "forbidden_address": ErrorKind(400, _U), "too_many_redirects": ErrorKind(400, _U),
    "redirect_loop": ErrorKind(400, _X),
    # the request
    "missing_image": ErrorKind(400, _B), "ambiguous_image": ErrorKind(400, _B),
    "missing_gallery": ErrorKind(400, _B), "invalid_gallery": ErrorKind(400, _B),
    "invalid_params": ErrorKind(400, _B),      # a kind's parameters (gallery, name, meta) were wrong
    "invalid_top_k": ErrorKind(400, _B), "method_not_allowed": ErrorKind(405, _B),
    "bad_request": ErrorKind(400, _B), "not_found": ErrorKind(404, _B),
    "malformed_json": ErrorKind(400, _B),
    "malformed_message": ErrorKind(400, _X), "unsupported_version": ErrorKind(400, _X),
    # the service and its queues
    "unknown_service": ErrorKind(404, _S), "service_unavailable": ErrorKind(503, _S),
    "queue_unavailable": ErrorKind(503, _S),
    # service versions (docs/VERSIONS.md)
    "invalid_version": ErrorKind(400, _B), "unknown_version": ErrorKind(404, _S),
    "pinning_not_allowed": ErrorKind(403, _B), "version_unavailable": ErrorKind(503, _S),
    "version_not_serving": ErrorKind(403, _B),  # a pin to a version without traffic (policy: pin_idle off)
    "gallery_unavailable": ErrorKind(503, _S),  # facesearch: the gallery in S3 cannot be read or written
    "gallery_full": ErrorKind(409, _B),         # facesearch: the gallery holds gallery_max_entries faces
    "unknown_face": ErrorKind(404, _B),         # DELETE /faces/<gallery>[/<name>]: nothing enrolled there
    "storage_unavailable": ErrorKind(503, _X), "corrupt_record": ErrorKind(502, _X),
    "timeout": ErrorKind(504, _T),
    "shutting_down": ErrorKind(503, _S),      # this web process stops before the reply came (job continues)
    # the server
    "internal_error": ErrorKind(500, _X), "inference_failed": ErrorKind(500, _X),
    "dead_lettered": ErrorKind(500, _X),       # every delivery failed: the server's problem, not the client's
}

# Werkzeug's own HTTP errors get stable snake_case codes.
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
               413: "too_large", 415: "unsupported_media_type", 500: "internal_error"}
_URL_PREFIXES = ("fetch_", "http_", "download_")   # a worker's failure to fetch the client's URL


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

    @classmethod
    def of(cls, code: str, message: str, request_id: str | None = None, **extra) -> "ApiError":
        """An ApiError whose HTTP status comes from the error table."""
        return cls(status_for_code(code), code, message, request_id, **extra)

    @classmethod
    def from_failure(cls, failure: WebFailure) -> "ApiError":
        """The HTTP form of a domain failure (storage, submission)."""
        return cls.of(failure.code, failure.message, failure.request_id, **failure.extra)

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

    def oip(self) -> dict:
        """The Open Inference Protocol's error body {"error": message}, with our code beside it."""
        out = {"error": self.message, "code": self.code}
        if self.request_id:
            out["id"] = self.request_id
        out.update((k, v) for k, v in self.extra.items() if k in ("status_url", "versions"))
        return out

    def envelope(self, elapse: float = 0.0) -> dict:
        """XCloud's envelope for this failure (results null, as XCloud answered)."""
        out = {"code": xcloud_code(self.code), "msg": self.message, "results": None,
               "elapse": round(elapse, 2), "error": self.code}
        if self.request_id:
            out["id"] = self.request_id
        if self.extra.get("status_url"):
            out["status_url"] = self.extra["status_url"]
        if self.extra.get("services"):
            out["services"] = self.extra["services"]
        return out


def status_for_code(code: str) -> int:
    """HTTP status for an error code (a worker's fetch problems are the client's URL: 422)."""
    kind = ERRORS.get(code)
    if kind is not None:
        return kind.status
    if code.startswith(_URL_PREFIXES):
        return 422
    if code.startswith("internal"):
        return 500
    return 422


status_for_reply_code = status_for_code   # a worker's error reply code is looked up in the same table


def xcloud_code(code: str) -> int:
    """The XCloud envelope's non-zero code for one of our error codes."""
    kind = ERRORS.get(code)
    if kind is not None:
        return kind.xcloud
    if code.startswith(_URL_PREFIXES):
        return XCLOUD_INVALID_URL
    return XCLOUD_INTERNAL


def public_reason(reason: str | None) -> str | None:
    """An unavailable reason fit for any client: no bucket, key or file path (those stay in the log)."""
    if reason is None:
        return None
    return _LOCATION.sub("<location>", reason)


# s3://bucket/key, file://..., and absolute paths: where things live is operators' business
_LOCATION = re.compile(r"(?:s3|file)://[^\s'\")]+|(?<![\w.])/[^\s'\")]+")


def http_error_as_api(exc: HTTPException) -> ApiError:
    """Translate a werkzeug HTTPException (404, 405, 413, ...) into an ApiError."""
    status = exc.code or 500
    code = _HTTP_CODES.get(status) or re.sub(r"[^a-z0-9]+", "_", (exc.name or "error").lower()).strip("_")
    message = exc.description or exc.name or "error"
    if status == 413:
        message = "request body is larger than the upload limit"
    return ApiError(status, code, message)


def is_oip_path(path: str) -> bool:
    """Whether a path is the Open Inference Protocol's (/v2, /v2/...: webserver/oip.py)."""
    return path == "/v2" or path.startswith("/v2/")


def install_error_handlers(app: Flask, xcloud_prefix: str = "/cv/") -> None:
    """Every error is JSON: the native {"error": ...} body, XCloud's envelope under /cv/, the OIP's under /v2."""

    def shaped(err: ApiError) -> dict:
        if request.path.startswith(xcloud_prefix):
            return err.envelope()
        return err.oip() if is_oip_path(request.path) else err.body()

    def render(err: ApiError):
        tag_usage(err.request_id)
        resp = jsonify(shaped(err))
        resp.status_code = err.status
        if err.allow:
            resp.headers["Allow"] = ", ".join(err.allow)
        if err.retry_after:
            resp.headers["Retry-After"] = str(err.retry_after)
        return resp

    @app.errorhandler(ApiError)
    def _api_error(err: ApiError):
        return render(err)

    @app.errorhandler(WebFailure)
    def _failure(failure: WebFailure):
        return render(ApiError.from_failure(failure))

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
