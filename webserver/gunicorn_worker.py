"""The gunicorn worker class: gthread, plus JSON for gunicorn's own errors and a draining SIGTERM."""
from __future__ import annotations

import json

from gunicorn import util
from gunicorn.http.errors import LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.gthread import ThreadWorker

# gunicorn answers these before the app sees the request; the API's contract is JSON, so we answer them.
_MAPPED = ((LimitRequestLine, 414, "URI Too Long", "uri_too_long",
            "the request line (URL with its query string) is longer than the server accepts; "
            "send long parameters in a POST body"),
           (LimitRequestHeaders, 431, "Request Header Fields Too Large", "headers_too_large",
            "the request headers are larger than the server accepts"))


def json_error(exc: Exception) -> tuple[int, str, bytes] | None:
    """(status, reason, JSON body) for a gunicorn parse error we map; None to let gunicorn answer."""
    for kind, status, reason, code, message in _MAPPED:
        if isinstance(exc, kind):
            return status, reason, json.dumps({"error": {"code": code, "message": message}}).encode()
    return None


class JsonErrorWorker(ThreadWorker):
    """gthread worker whose request-line/header limit errors are JSON and whose SIGTERM drains waiters."""

    def handle_error(self, req, client, addr, exc):
        """Answer a mapped parse error with JSON; everything else as gunicorn does."""
        mapped = json_error(exc)
        if mapped is None:
            return super().handle_error(req, client, addr, exc)
        status, reason, body = mapped
        self.log.warning("invalid request from %s: %s", (addr or ("",))[0], exc)
        head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode("latin1")
        try:
            util.write_nonblock(client, head + body)
        except Exception:
            self.log.debug("failed to send the error response")

    def handle_exit(self, sig, frame):
        """SIGTERM: stop accepting, and give waiting requests the drain window before they get 503s."""
        ctx = getattr(getattr(self, "wsgi", None), "extensions", {}).get("classifycloud")
        if ctx is not None and self.alive:
            ctx.listener.drain(ctx.settings.shutdown_drain_s)
        super().handle_exit(sig, frame)
