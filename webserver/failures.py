"""Domain failures of the web side's storage and submission: what went wrong, not how HTTP says it.

JobStore and Submitter raise these; webserver.errors maps each `code` to an HTTP status (and the
XCloud envelope code) through its one error table.
"""
from __future__ import annotations


class WebFailure(Exception):
    """A failure with a stable machine code, a human message, the request id and extra body fields."""

    code = "internal_error"

    def __init__(self, message: str, request_id: str | None = None, **extra):
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.extra = extra


class StorageUnavailable(WebFailure):
    """The data bucket could not be read or written (retry)."""

    code = "storage_unavailable"


class CorruptRecord(WebFailure):
    """A stored job marker or result record is not valid JSON."""

    code = "corrupt_record"


class UnknownService(WebFailure):
    """No service has this name (extra: services, the names there are)."""

    code = "unknown_service"


class ServiceUnavailable(WebFailure):
    """The service exists but cannot answer now (model missing, queue not provisioned)."""

    code = "service_unavailable"


class QueueUnavailable(WebFailure):
    """The queue endpoint could not be reached (retry)."""

    code = "queue_unavailable"


class ImageTooLarge(WebFailure):
    """The image is larger than the upload limit."""

    code = "image_too_large"
