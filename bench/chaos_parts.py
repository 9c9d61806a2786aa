"""Pieces of the chaos soak that stand outside the stack: an S3-failing proxy and a webhook receiver.

Both are loopback HTTP servers in the bench process. The proxy sits between every process of the stack
and the AWS endpoint (moto), so one flag fails S3 alone while SQS keeps working; when moto itself is down
the proxy drops the connection, as a dead endpoint would. The receiver records every notice it gets and
can trickle its answers (a byte at a time) to hold the notifier's delivery threads.
"""
from __future__ import annotations

import http.client
import http.server
import json
import sys
import threading
import time
import urllib.parse

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


def is_s3(method: str, headers, body: bytes) -> bool:
    """SQS (and SNS, STS) are POSTs with an X-Amz-Target or an Action form; S3 here is path-style to the bucket."""
    if method != "POST":
        return True
    if headers.get("X-Amz-Target"):
        return False
    ctype = headers.get("Content-Type", "")
    return not (ctype.startswith("application/x-www-form-urlencoded") and b"Action=" in body[:4096])


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as boto3's pooled connections expect

    def log_message(self, fmt, *args):
        pass

    def _forward(self):
        try:
            self._relay()
        except OSError:   # the client hung up (its own deadline): nothing to answer
            self.close_connection = True

    def _relay(self):
        proxy: S3Proxy = self.server.proxy   # type: ignore[attr-defined]
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if proxy.s3_failing and is_s3(self.command, self.headers, body):
            proxy.refused += 1
            out = (b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>ServiceUnavailable</Code>"
                   b"<Message>chaos: S3 is failing</Message></Error>")
            self.send_response(503)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
            return
        try:
            conn = http.client.HTTPConnection("127.0.0.1", proxy.backend_port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
        except OSError:
            proxy.dropped += 1
            self.close_connection = True   # the endpoint is down: the client sees its connection dropped
            return
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in _HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        """A client that hung up mid-request (its own deadline, a killed process) is no news in a chaos run."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class S3Proxy:
    """Forwards every AWS call to the backend port; while s3_failing, S3 calls get a 503 instead."""

    def __init__(self, backend_port: int, port: int = 0):
        self.backend_port = backend_port
        self.s3_failing = False
        self.refused = 0
        self.dropped = 0
        self.httpd = _QuietServer(("127.0.0.1", port), _ProxyHandler)
        self.httpd.proxy = self   # type: ignore[attr-defined]
        threading.Thread(target=self.httpd.serve_forever, name="s3proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()


class _HookHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_POST(self):  # noqa: N802
        recv: Receiver = self.server.receiver   # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            doc = json.loads(body)
        except ValueError:
            doc = {}
        key = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
        trickle = recv.trickling
        with recv.lock:
            recv.got.append({"key": key, "id": doc.get("id"), "event": doc.get("event"), "t": time.time(),
                             "trickled": trickle})
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        try:
            if trickle:   # a byte every half second: ~25 s for the answer, well past the notifier's deadline
                for i in range(len(head)):
                    self.wfile.write(head[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.5)
            else:
                self.wfile.write(head)
        except OSError:   # the notifier gave up on us (its deadline)
            pass
        self.close_connection = True


class Receiver:
    """A local webhook receiver: /hook/<client key>; `got` lists every POST (the key, the body's id, event)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.got: list[dict] = []
        self.trickling = False
        self.httpd = _QuietServer(("127.0.0.1", 0), _HookHandler)
        self.httpd.receiver = self   # type: ignore[attr-defined]
        threading.Thread(target=self.httpd.serve_forever, name="hooks", daemon=True).start()

    def url(self, key: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook/{key}"

    def stop(self) -> None:
        self.httpd.shutdown()
