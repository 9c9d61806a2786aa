"""Safe fetch on real sockets: a local HTTP server on loopback, real addresses, moto's S3."""
from __future__ import annotations

import http.server
import os
import struct
import threading
import time
import zlib
from urllib.parse import parse_qs, urlsplit

import pytest

from shared.config import Settings
from worker.fetch import Fetcher, FetchError, address_refusal, check_image_header

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "classifycloud", "samples")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /<name>.jpg, /nolength/<name>.jpg, /slow, /drip/{headers,body}, /redirect?to=URL, /loop,
    /text, /status/<n>."""

    protocol_version = "HTTP/1.0"

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802 (http.server's naming)
        server: ImageServer = self.server.owner
        parts = urlsplit(self.path)
        path = parts.path
        server.hits.append(path)
        if path == "/slow":
            time.sleep(server.slow_s)
            return self._send(200, b"late", "text/plain")
        if path.startswith("/drip/"):  # one byte every drip_s: of the status line, or of the body
            return self._drip(server, path)
        if path.startswith("/hold/"):  # answers the first request only once released
            first = not server.held_once.is_set()
            server.held_once.set()
            if first:
                server.release.wait(120)
            path = path[len("/hold"):]
        if path == "/redirect":
            return self._send(302, b"", "text/plain", Location=parse_qs(parts.query)["to"][0])
        if path == "/loop":
            return self._send(302, b"", "text/plain", Location="/loop")
        if path.startswith("/chain/"):  # /chain/1 -> /chain/2 -> ...: distinct URLs, no loop
            return self._send(302, b"", "text/plain", Location=f"/chain/{int(path.rsplit('/', 1)[1]) + 1}")
        if path == "/text":
            return self._send(200, b"<html>not an image</html>", "text/html")
        if path.startswith("/status/"):
            return self._send(int(path.rsplit("/", 1)[1]), b"nope", "text/plain")
        nolength = path.startswith("/nolength/")
        name = path.rsplit("/", 1)[1]
        data = server.files.get(name)
        if data is None:
            return self._send(404, b"missing", "text/plain")
        self._send(200, data, "image/jpeg", with_length=not nolength)

    def _drip(self, server, path):
        head = b"HTTP/1.0 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        if path == "/drip/body":
            self.wfile.write(head)
            head = b""
        end = time.monotonic() + 60  # the fetcher must give up long before this
        payload = head + b"\xff" * 100000
        for i in range(len(payload)):
            if time.monotonic() > end or server.release.is_set():
                return
            try:
                self.wfile.write(payload[i:i + 1])
                self.wfile.flush()
            except OSError:  # the fetcher closed the socket: the point of the test
                server.dripped_until.append(time.monotonic())
                return
            time.sleep(server.drip_s)

    def _send(self, status, body, ctype, with_length=True, **headers):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if with_length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # clients that stop reading early (byte cap, timeouts) are expected here


class ImageServer:
    """A real HTTP server on 127.0.0.1 serving the sample photos and misbehaving on request."""

    def __init__(self, extra: dict[str, bytes] | None = None, slow_s: float = 3.0):
        self.files = {}
        for fn in os.listdir(SAMPLES):
            with open(os.path.join(SAMPLES, fn), "rb") as fh:
                self.files[fn] = fh.read()
        self.files.update(extra or {})
        self.slow_s = slow_s
        self.drip_s = 0.3
        self.dripped_until: list[float] = []
        self.hits: list[str] = []
        self.held_once = threading.Event()
        self.release = threading.Event()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "ImageServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    """A started image server; stopped afterwards."""
    with ImageServer(slow_s=2.0) as srv:
        yield srv


def _fetcher(**kw) -> Fetcher:
    base = dict(fetch_allow_loopback=True, fetch_connect_timeout_s=1.0, fetch_read_timeout_s=0.5,
                metrics_enabled=False)
    base.update(kw)
    return Fetcher(Settings.from_env({}, **base))


def _code(fetcher: Fetcher, image: dict) -> str:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(image)
    assert info.value.message  # every refusal carries a human reason
    return info.value.code


def test_fetch_returns_the_photo_from_loopback_when_loopback_is_allowed(server, sample_bytes):
    assert _fetcher().fetch({"url": server.base + "/chelsea.jpg"}) == sample_bytes["chelsea"]


def test_fetch_refuses_loopback_unless_configured(server):
    f = _fetcher(fetch_allow_loopback=False)
    assert _code(f, {"url": server.base + "/chelsea.jpg"}) == "forbidden_address"
    assert _code(f, {"url": "http://localhost/chelsea.jpg"}) == "forbidden_address"
    assert server.hits == []  # refused before connecting


@pytest.mark.parametrize("url", [
    "http://10.1.2.3/cat.jpg",
    "http://192.168.0.10/cat.jpg",
    "http://172.16.5.4/cat.jpg",
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://[::1]/cat.jpg",
    "http://[fd00::1]/cat.jpg",
    "http://[fe80::1]/cat.jpg",
    "http://[::ffff:127.0.0.1]/cat.jpg",
    "http://[::ffff:169.254.169.254]/cat.jpg",
    "http://0.0.0.0/cat.jpg",
    "http://224.0.0.1/cat.jpg",
    "http://240.0.0.1/cat.jpg",
    "http://100.64.0.1/cat.jpg",
])
def test_fetch_refuses_internal_addresses(url):
    assert _code(_fetcher(fetch_allow_loopback=False), {"url": url}) == "forbidden_address"


def test_allowing_loopback_does_not_open_private_or_metadata_addresses():
    f = _fetcher(fetch_allow_loopback=True)
    for url in ("http://10.0.0.1/x", "http://169.254.169.254/latest/", "http://[fd00::1]/x"):
        assert _code(f, {"url": url}) == "forbidden_address"


def test_address_refusal_passes_public_addresses_and_names_the_reason():
    assert address_refusal("93.184.216.34") is None
    assert address_refusal("2606:4700:4700::1111") is None
    assert "link-local" in address_refusal("169.254.169.254")
    assert "loopback" in address_refusal("::ffff:127.0.0.1")
    assert address_refusal("127.0.0.1", allow_loopback=True) is None


@pytest.mark.parametrize("url", ["ftp://example.com/cat.jpg", "file:///etc/passwd", "gopher://x/",
                                 "s3://bucket/key"])
def test_fetch_refuses_other_schemes(url):
    assert _code(_fetcher(), {"url": url}) == "unsupported_scheme"


@pytest.mark.parametrize("url", ["http://", "http://[::1/x", "http://host:notaport/x", ""])
def test_fetch_refuses_invalid_urls(url):
    assert _code(_fetcher(), {"url": url}) == "invalid_url"


def test_fetch_refuses_a_redirect_to_a_private_address(server):
    f = _fetcher()
    assert _code(f, {"url": server.base + "/redirect?to=http://10.9.8.7/cat.jpg"}) == "forbidden_address"
    assert _code(f, {"url": server.base + "/redirect?to=http://169.254.169.254/latest/meta-data/"}) \
        == "forbidden_address"


def test_fetch_refuses_a_redirect_to_loopback_when_only_the_first_hop_is_public(server):
    # the first hop is checked with loopback allowed (our test server); the second hop with it refused
    f = _fetcher(fetch_allow_loopback=False)
    assert _code(f, {"url": server.base + "/redirect?to=http://127.0.0.1/"}) == "forbidden_address"


def test_fetch_follows_redirects_and_rechecks_each_hop(server, sample_bytes):
    url = server.base + "/redirect?to=" + server.base + "/coffee.jpg"
    assert _fetcher().fetch({"url": url}) == sample_bytes["coffee"]
    assert server.hits == ["/redirect", "/coffee.jpg"]


def test_fetch_stops_after_the_redirect_limit(server):
    assert _code(_fetcher(fetch_max_redirects=3), {"url": server.base + "/chain/1"}) == "too_many_redirects"
    assert server.hits == ["/chain/1", "/chain/2", "/chain/3", "/chain/4"]


def test_fetch_refuses_a_redirect_loop_at_the_first_repeat(server):
    assert _code(_fetcher(fetch_max_redirects=5), {"url": server.base + "/loop"}) == "redirect_loop"
    assert server.hits == ["/loop"]


def test_fetch_caps_bytes_by_content_length_and_while_streaming(server):
    f = _fetcher(fetch_max_bytes=10_000)
    assert _code(f, {"url": server.base + "/chelsea.jpg"}) == "image_too_large"
    assert _code(f, {"url": server.base + "/nolength/chelsea.jpg"}) == "image_too_large"


def test_fetch_reads_a_body_without_content_length(server, sample_bytes):
    assert _fetcher().fetch({"url": server.base + "/nolength/rocket.jpg"}) == sample_bytes["rocket"]


def test_fetch_times_out_on_a_slow_server(server):
    assert _code(_fetcher(fetch_read_timeout_s=0.3), {"url": server.base + "/slow"}) == "fetch_timeout"


def test_fetch_waits_for_a_slow_first_byte_up_to_the_read_timeout_not_the_connect_timeout(server):
    # the server answers after 2 s: inside the 5 s read timeout, past the 0.5 s connect timeout
    assert _code(_fetcher(fetch_connect_timeout_s=0.5, fetch_read_timeout_s=5.0),
                 {"url": server.base + "/slow"}) == "invalid_image"      # its body is text: fetched, then refused


def test_fetch_reports_http_errors_with_the_status(server):
    with pytest.raises(FetchError) as info:
        _fetcher().fetch({"url": server.base + "/status/404"})
    assert info.value.code == "fetch_failed" and "404" in info.value.message
    with pytest.raises(FetchError) as info:
        _fetcher().fetch({"url": server.base + "/status/500"})
    assert info.value.code == "fetch_failed" and "500" in info.value.message


def test_fetch_refuses_a_body_that_is_not_an_image(server):
    assert _code(_fetcher(), {"url": server.base + "/text"}) == "invalid_image"


def test_fetch_reports_unresolvable_hosts():
    assert _code(_fetcher(), {"url": "http://no-such-host.invalid/cat.jpg"}) == "fetch_failed"


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (Pillow reads only the header on open)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def test_decompression_bombs_are_refused_by_the_header_check():
    for size in ((100_000, 100_000), (10_000, 10_000)):  # past 2x the limit (error) and past 1x (warning)
        with pytest.raises(FetchError) as info:
            check_image_header(_png_header(*size))
        assert info.value.code == "image_too_large"
    check_image_header(_png_header(64, 64))


def test_fetch_reads_s3_objects_under_the_cap(settings, provisioned, sample_bytes):
    from shared.aws import client
    s3 = client("s3", settings)
    s3.put_object(Bucket=settings.bucket_name, Key="uploads/a", Body=sample_bytes["coffee"])
    f = Fetcher(settings.replace(fetch_max_bytes=len(sample_bytes["coffee"])), s3)
    assert f.fetch({"s3": f"s3://{settings.bucket_name}/uploads/a"}, "a") == sample_bytes["coffee"]
    small = Fetcher(settings.replace(fetch_max_bytes=1000), s3)
    assert _code(small, {"s3": f"s3://{settings.bucket_name}/uploads/a"}) == "image_too_large"
    assert _code(f, {"s3": f"s3://{settings.bucket_name}/uploads/missing"}) == "image_not_found"
    assert _code(f, {"s3": "s3://someone-elses-bucket/secret"}) == "forbidden_address"
