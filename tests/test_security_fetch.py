"""Hostile URLs and bytes on real sockets: drip-feeding servers, the stack's own endpoint, foreign S3 keys,
decoders outside the allow-list, and credentials in messages."""
from __future__ import annotations

import http.server
import io
import os
import threading
import time

import pytest
from PIL import Image
from test_fetch import ImageServer, _png_header

from shared.config import Settings
from shared.images import ALLOWED_FORMATS, ImageRefused, open_checked
from worker.fetch import Fetcher, FetchError, check_image_header
from worker.redact import safe_url

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


DEADLINE_S = 2.0
SLACK_S = 0.6


@pytest.fixture
def server():
    """The loopback image server (with /drip/* routes); stopped afterwards."""
    with ImageServer() as srv:
        yield srv


class _CountingHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        self.server.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


@pytest.fixture
def own_web():
    """A loopback server standing in for this stack's own web endpoint; counts the requests it gets."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHandler)
    httpd.hits = []
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _fetcher(**kw) -> Fetcher:
    base = dict(fetch_allow_loopback=True, fetch_connect_timeout_s=1.0, fetch_read_timeout_s=0.5,
                fetch_deadline_s=DEADLINE_S, metrics_enabled=False)
    base.update(kw)
    return Fetcher(Settings.from_env({}, **base))


def _refusal(fetcher: Fetcher, image: dict, request_id: str | None = None) -> FetchError:
    with pytest.raises(FetchError) as info:
        fetcher.fetch(image, request_id)
    return info.value


@pytest.mark.parametrize("part", ["headers", "body"])
@pytest.mark.timing
def test_a_drip_feeding_server_is_cut_off_at_the_fetch_deadline(server, part):
    # one byte every 0.3 s never trips the 0.5 s read timeout: only the whole-fetch deadline stops it
    t0 = time.monotonic()
    err = _refusal(_fetcher(), {"url": server.base + f"/drip/{part}?sig=SECRET"})
    elapsed = time.monotonic() - t0
    assert err.code == "fetch_timeout"
    assert DEADLINE_S - 0.1 <= elapsed <= DEADLINE_S + SLACK_S, elapsed
    assert "SECRET" not in err.message and "?" not in err.message
    deadline = time.monotonic() + 2
    while not server.dripped_until and time.monotonic() < deadline:
        time.sleep(0.05)  # the server notices the closed socket at its next byte
    assert server.dripped_until, "the fetcher did not close the socket"


@pytest.mark.timing
def test_the_deadline_spans_every_redirect_hop(server):
    # each hop answers at once; the deadline still counts from the first byte of the first hop
    url = server.base + "/redirect?to=" + server.base + "/drip/body"
    t0 = time.monotonic()
    assert _refusal(_fetcher(), {"url": url}).code == "fetch_timeout"
    assert time.monotonic() - t0 <= DEADLINE_S + SLACK_S


def test_a_redirect_to_the_stacks_own_endpoint_is_refused(server, own_web):
    port = own_web.server_address[1]
    own = f"http://127.0.0.1:{port}/classify?url={server.base}/redirect"
    f = _fetcher(web_host="127.0.0.1", web_port=port)
    err = _refusal(f, {"url": server.base + "/redirect?to=" + own})
    assert err.code == "forbidden_address" and "own endpoint" in err.message
    assert _refusal(f, {"url": own}).code == "forbidden_address"
    assert own_web.hits == []  # never reached: no request chain through our own API
    # the same server on another port of loopback is an ordinary (allowed) image host
    assert _fetcher(web_port=1).fetch({"url": server.base + "/chelsea.jpg"})


def test_the_stacks_public_host_names_are_refused_before_any_lookup(server):
    f = _fetcher(own_hosts=("classify.example.com", "my-alb-123.us-east-1.elb.amazonaws.com"))
    for url in ("https://classify.example.com/classify?url=x", "http://MY-ALB-123.us-east-1.elb.amazonaws.com./",
                server.base + "/redirect?to=http://classify.example.com:8080/cv/imagenet"):
        err = _refusal(f, {"url": url})
        assert err.code == "forbidden_address", (url, err.code, err.message)


def test_a_redirect_loop_is_refused_on_the_first_repeat(server):
    assert _refusal(_fetcher(), {"url": server.base + "/loop"}).code == "redirect_loop"
    assert server.hits == ["/loop"]


def test_a_request_may_read_only_its_own_upload_from_s3(settings, provisioned, sample_bytes):
    from shared.aws import client
    s3 = client("s3", settings)
    bucket = settings.bucket_name
    for key in ("uploads/r1", "uploads/r2", "results/r2.json", "models/imagenet/weights.pt"):
        s3.put_object(Bucket=bucket, Key=key, Body=sample_bytes["coffee"])
    f = Fetcher(settings, s3)
    assert f.fetch({"s3": f"s3://{bucket}/uploads/r1"}, "r1") == sample_bytes["coffee"]
    for key in ("results/r2.json", "models/imagenet/weights.pt", "uploads/r2", "uploads/r1/../r2"):
        err = _refusal(f, {"s3": f"s3://{bucket}/{key}"}, "r1")
        assert err.code == "forbidden_address", key
        assert bucket not in err.message and "results" not in err.message


def _eps() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(out, "EPS")
    return out.getvalue()


def _psd() -> bytes:
    """A minimal valid 8-bit RGB PSD (Pillow reads PSD but cannot write it)."""
    w = h = 4
    header = b"8BPS" + (1).to_bytes(2, "big") + b"\0" * 6 + (3).to_bytes(2, "big") + h.to_bytes(4, "big") \
        + w.to_bytes(4, "big") + (8).to_bytes(2, "big") + (3).to_bytes(2, "big")
    sections = (0).to_bytes(4, "big") * 3  # colour mode data, image resources, layer info: empty
    pixels = (0).to_bytes(2, "big") + bytes([120]) * (w * h * 3)  # raw, planar
    return header + sections + pixels


@pytest.mark.parametrize("make,fmt", [(_eps, "EPS"), (_psd, "PSD")])
def test_eps_and_psd_are_refused_as_unsupported_formats(make, fmt):
    data = make()
    with Image.open(io.BytesIO(data)) as img:  # the bytes are real: Pillow without the allow-list opens them
        assert img.format == fmt
    with pytest.raises(FetchError) as info:
        check_image_header(data)
    assert info.value.code == "unsupported_format" and fmt in info.value.message
    from worker.models.engine import ImageDecodeError, decode_image
    with pytest.raises(ImageDecodeError) as dec:
        decode_image(data)
    assert dec.value.code == "unsupported_format"


def test_a_41_megapixel_image_is_refused_and_a_39_megapixel_one_passes_the_header_check():
    assert Settings().max_image_pixels == 40_000_000
    with pytest.raises(FetchError) as info:
        check_image_header(_png_header(8000, 5125))  # 41.0 MP
    assert info.value.code == "image_too_large"
    check_image_header(_png_header(8000, 4875))      # 39.0 MP
    with pytest.raises(ImageRefused):
        open_checked(_png_header(2000, 2000), max_pixels=3_999_999)


def test_every_allowed_format_opens(sample_bytes):
    with Image.open(io.BytesIO(sample_bytes["chelsea"])) as src:
        small = src.convert("RGB").resize((64, 48))
    for fmt in ALLOWED_FORMATS:
        out = io.BytesIO()
        small.save(out, fmt)
        with open_checked(out.getvalue(), 40_000_000) as img:
            assert img.format == fmt and img.size == (64, 48)


def test_safe_url_drops_credentials_queries_and_fragments():
    shown = safe_url("https://alice:s3cret@bucket.s3.amazonaws.com:8443/a/b.jpg?X-Amz-Signature=abc#frag")
    assert shown == "https://bucket.s3.amazonaws.com:8443/a/b.jpg"
    assert safe_url("http://[::1]:80/x?y") == "http://[::1]:80/x"
    assert "pw" not in safe_url("http://u:pw@host:notaport/x?q=1") and "?" not in safe_url("http://u:pw@h:bad/x?q")
    assert len(safe_url("http://h/" + "a" * 500)) == 200


def test_fetch_errors_carry_no_credentials_or_query(server):
    err = _refusal(_fetcher(), {"url": server.base.replace("http://", "http://bob:hunter2@") + "/status/404?token=T"})
    assert err.code == "fetch_failed"
    err = _refusal(_fetcher(fetch_max_redirects=1), {"url": server.base.replace(
        "http://", "http://bob:hunter2@") + "/chain/1?token=T"})
    assert err.code == "too_many_redirects"
    assert "hunter2" not in err.message and "token" not in err.message and "?" not in err.message


def _self_signed(tmp_path, name: str) -> tuple[str, str]:
    """A self-signed certificate for `name` (cert path, key path)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """The image server behind TLS with a certificate for 'localhost', trusted by the fetcher."""
    import ssl

    import worker.fetch as fetch_mod
    cert, key = _self_signed(tmp_path, "localhost")
    monkeypatch.setattr(fetch_mod, "_CA_CERTS", cert)
    with ImageServer() as srv:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.httpd.socket = ctx.wrap_socket(srv.httpd.socket, server_side=True)
        yield srv, srv.httpd.server_address[1]


@pytest.mark.timing
def test_https_keeps_sni_and_certificate_checks_and_the_deadline(tls_server, sample_bytes):
    srv, port = tls_server
    f = _fetcher()
    assert f.fetch({"url": f"https://localhost:{port}/chelsea.jpg"}) == sample_bytes["chelsea"]
    # the pinned IP is checked against the certificate's name, not the IP: 127.0.0.1 is not 'localhost'
    assert _refusal(f, {"url": f"https://127.0.0.1:{port}/chelsea.jpg"}).code == "fetch_failed"
    t0 = time.monotonic()
    assert _refusal(f, {"url": f"https://localhost:{port}/drip/body"}).code == "fetch_timeout"
    assert time.monotonic() - t0 <= DEADLINE_S + SLACK_S


def test_refusals_name_the_reason_without_library_or_system_error_text():
    err = _refusal(_fetcher(), {"url": "http://no-such-host.invalid/cat.jpg"})
    assert err.code == "fetch_failed" and err.message == "cannot resolve host 'no-such-host.invalid'"


# A resolver that takes the query and never answers (UDP and TCP on 127.0.0.77:53), made the system's
# nameserver in a mount namespace of the child alone: a real lookup that hangs as a slow DNS server would.
_SLOW_DNS_CHILD = r"""
import socket, sys, threading, time
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); udp.bind(("127.0.0.77", 53))
tcp = socket.socket(); tcp.bind(("127.0.0.77", 53)); tcp.listen(16)
held = []
threading.Thread(target=lambda: [udp.recvfrom(4096) for _ in iter(int, 1)], daemon=True).start()
threading.Thread(target=lambda: [held.append(tcp.accept()) for _ in iter(int, 1)], daemon=True).start()
from shared.config import Settings
from worker.fetch import FetchError, Fetcher
fetcher = Fetcher(Settings(fetch_deadline_s=1.5, fetch_connect_timeout_s=1.0, fetch_read_timeout_s=1.0))
started = time.monotonic()
try:
    fetcher.fetch_url("http://images.slow-dns-test.example/cat.jpg")
    print("fetched?!")
except FetchError as exc:
    print(exc.code, round(time.monotonic() - started, 2))
"""


@pytest.mark.timing
def test_the_fetch_deadline_bounds_a_dns_lookup_that_never_answers(tmp_path):
    import subprocess
    import sys
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.77\noptions timeout:5 attempts:3\n")   # glibc alone: 15 s and more
    script = tmp_path / "child.py"
    script.write_text(_SLOW_DNS_CHILD)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                          f"mount --bind {resolv} /etc/resolv.conf && exec {sys.executable} {script}"],
                         cwd=root, env={**os.environ, "PYTHONPATH": root}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, ("this test needs root and unshare (a mount namespace)", out.stderr[-2000:])
    code, took = out.stdout.split()
    assert code == "fetch_timeout" and float(took) < 1.5 + 1.0, out.stdout
