"""A counting reverse proxy for an AWS endpoint (moto): every call named by service and API action.

bench/cost.py puts it in front of the moto server. The service comes from the signature's
credential scope (or a presigned link's X-Amz-Credential); the action from X-Amz-Target, a Smithy
RPC path, the query protocol's Action, or the S3 method and path; DynamoDB calls also count the
items they write or read (BatchWriteItem: every put in it), the unit DynamoDB bills.
"""
from __future__ import annotations

import http.client
import http.server
import json
import re
import threading
from collections import Counter
from urllib.parse import parse_qs, urlsplit

_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
DDB_READS = {"GetItem", "Query", "Scan", "BatchGetItem"}
_DDB_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}


def s3_action(method: str, path: str, query: dict, headers) -> str:
    """The S3 API action of a REST call (path-style addressing, as moto is called)."""
    keyed = len([p for p in path.split("/") if p]) > 1
    if method == "PUT":
        return ("CopyObject" if headers.get("x-amz-copy-source") else "PutObject") if keyed else "CreateBucket"
    if method == "GET":
        return "GetObject" if keyed else ("ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects")
    if method == "HEAD":
        return "HeadObject" if keyed else "HeadBucket"
    if method == "DELETE":
        return "DeleteObject" if keyed else "DeleteBucket"
    return "DeleteObjects" if "delete" in query else f"POST{'Object' if keyed else 'Bucket'}"


class Counts:
    """Calls per (service, action) and DynamoDB items written, thread-safe."""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls: Counter = Counter()
        self.units: Counter = Counter()   # billed units per (service, action): DynamoDB items, else calls

    def add(self, service: str, action: str, units: int) -> None:
        with self.lock:
            self.calls[(service, action)] += 1
            self.units[(service, action)] += units

    def snapshot(self) -> tuple[Counter, Counter]:
        with self.lock:
            return Counter(self.calls), Counter(self.units)


def _ddb_units(action: str, body: bytes) -> int:
    """Items a DynamoDB call writes or reads (BatchWriteItem: every put and delete in it)."""
    if action in _DDB_WRITES or action in ("GetItem",):
        return 1
    if action in ("BatchWriteItem", "BatchGetItem"):
        try:
            items = json.loads(body).get("RequestItems", {})
        except ValueError:
            return 1
        return sum(len(v) if isinstance(v, list) else len(v.get("Keys", [])) for v in items.values())
    return 1


class CountingProxy:
    """A reverse proxy in front of the moto server that counts every AWS call by API action."""

    def __init__(self, upstream: str):
        self.upstream = urlsplit(upstream)
        self.counts = Counts()
        local = threading.local()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", ""):
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        chunk = self.rfile.read(size + 2)[:size]
                        if not size:
                            break
                        out += chunk
                    return out
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _any(self):
                body = self._body()
                proxy.count(self.command, self.path, self.headers, body)
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                                   timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("transfer-encoding",
                                                                                      "content-length")}
                headers["Content-Length"] = str(len(body))
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    local.conn = None
                    raise
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "CountingProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, method: str, path: str, headers, body: bytes) -> None:
        """Name the call and add it to the counts."""
        parts = urlsplit(path)
        query = parse_qs(parts.query)
        scope = _SCOPE.search(headers.get("Authorization", "") or "".join(query.get("X-Amz-Credential", [])))
        service = scope.group(1) if scope else ""
        if not service and "X-Amz-Credential" in query:   # a presigned link: .../<service>/aws4_request
            service = query["X-Amz-Credential"][0].split("/")[-2]
        target = headers.get("X-Amz-Target", "")
        if service == "s3":
            action = s3_action(method, parts.path, query, headers)
        elif target:
            action = target.split(".")[-1]
        elif "/operation/" in parts.path:   # Smithy RPC v2 (CloudWatch in recent botocore)
            action = parts.path.rsplit("/", 1)[-1]
        else:
            form = parse_qs(body.decode("utf-8", "replace")) if body else {}
            action = (form.get("Action") or query.get("Action") or ["?"])[0]
        units = _ddb_units(action, body) if service == "dynamodb" else 1
        self.counts.add(service or "unsigned", action, units)


def diff(after: Counter, before: Counter) -> Counter:
    out = Counter(after)
    out.subtract(before)
    return out
