"""The id and service of the reply being built, noted on flask.g for the call's usage record.

Its own module: routes, the error renderer and the usage recorder (webserver/auth.py) all use it, and
auth imports the error types, so it cannot live in either without an import circle.
"""
from __future__ import annotations

from flask import g


def tag_usage(request_id: str | None, service: str | None = None) -> None:
    """Name the id and service of the reply being built, for its usage record (so the body is not re-parsed)."""
    if isinstance(request_id, str) and request_id:
        g.usage_id = request_id
    if isinstance(service, str) and service:
        g.usage_service = service


def tagged() -> tuple[str | None, str | None]:
    """(request id, service) noted for this call, or None where nothing was noted."""
    return g.get("usage_id"), g.get("usage_service")
