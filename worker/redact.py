"""Safe-to-show URLs: credentials, query strings and fragments never reach logs, replies or records."""
from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MAX_SHOWN = 200


def safe_url(url: object, limit: int = MAX_SHOWN) -> str:
    """The URL without user:password@, ?query and #fragment (presigned signatures live there), shortened."""
    if not isinstance(url, str):
        return "<not a string>"
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # unparseable: keep only what precedes any query and drop anything that looks like credentials
        head = text.split("?", 1)[0].split("#", 1)[0]
        if "@" in head:
            head = head.rsplit("@", 1)[1]
        return _shorten(head, limit)
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return _shorten(urlunsplit((parts.scheme, netloc, parts.path, "", "")), limit)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
