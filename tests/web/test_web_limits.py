"""Request bodies: a limit per route, and a byte budget that answers 503 before the process runs out of memory."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
import time

import pytest
import requests

from classifycloud.local import free_port

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

SERVER = ("import sys; from werkzeug.serving import make_server; from webserver.app import create_app; "
          "srv = make_server('127.0.0.1', int(sys.argv[1]), create_app(), threaded=True); srv.serve_forever()")


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


@pytest.fixture
def web_process(web_settings, provisioned, tmp_path):
    """Factory: the app in a process of its own (threaded WSGI server) for given settings changes."""
    procs = []

    def start(**changes):
        port = free_port()
        settings = web_settings.replace(**changes)
        log = open(tmp_path / f"web-{port}.log", "w+")
        proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **settings.to_env()})
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / f"web-{port}.log").read_text()
            try:
                if requests.get(base + "/services", timeout=2).status_code == 200:
                    return base, proc
            except requests.ConnectionError:
                time.sleep(0.2)
        raise AssertionError("web process did not start")

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_routes_without_images_take_only_small_bodies(web):
    big = b"x" * (100 * 1024)
    r = web.open("/jobs/abc", method="GET", data=big, content_type="application/octet-stream")
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "too_large"
    r = web.open("/services", method="GET", data=big, content_type="application/octet-stream")
    assert r.status_code == 413
    assert web.get("/services").status_code == 200


def _burst(base: str, n: int, body: bytes) -> list[tuple[int, dict, str | None]]:
    out = []
    lock = threading.Lock()

    def one():
        try:
            r = requests.post(base + "/classify", data=body, headers={"Content-Type": "application/json"},
                              timeout=60)
            item = (r.status_code, r.json(), r.headers.get("Retry-After"))
        except requests.RequestException as exc:
            item = (0, {"error": {"code": type(exc).__name__}}, None)
        with lock:
            out.append(item)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return out


@pytest.mark.slow
def test_concurrent_large_uploads_get_503_before_the_web_process_passes_a_memory_bound(web_process):
    image = b"\xff\xd8\xff\xe0" + os.urandom(6 * 1024 * 1024)        # 6 MiB: looks like a JPEG to the web
    body = b'{"image_base64": "' + base64.b64encode(image) + b'"}'  # 8 MiB of JSON
    n = 16
    base, proc = web_process(max_upload_bytes=8 * 1024 * 1024, max_inflight_body_bytes=24 * 1024 * 1024,
                             reply_timeout_s=4.0)
    before_kib = _status_kib(proc.pid, "VmRSS")
    answers = _burst(base, n, body)
    peak_mib = (_status_kib(proc.pid, "VmHWM") - before_kib) / 1024
    codes = sorted(status for status, _, _ in answers)
    busy = [(body, retry) for status, body, retry in answers if status == 503]
    # no worker runs: admitted ones time out (504); refused bodies are not drained, so a client still
    # sending when its 503 and the connection close arrive sees a reset (0) instead of the 503
    assert len(answers) == n and set(codes) <= {0, 503, 504}, codes
    assert len([c for c in codes if c in (0, 503)]) >= n // 2, codes
    assert all(b["error"]["code"] == "busy" and retry and int(retry) > 0 for b, retry in busy)
    # 16 held bodies cost about 16 x 22 MiB (raw, parsed text, decoded) = 350 MiB; the budget admits ~3
    assert peak_mib < 160, f"peak grew by {peak_mib:.0f} MiB ({codes})"
    # the budget is given back: a later upload is admitted again
    status, _, _ = _burst(base, 1, body)[0]
    assert status == 504


@pytest.mark.timing
def test_a_refused_body_is_answered_at_once_with_connection_close_and_never_read(web_process):
    import socket
    base, _ = web_process(max_upload_bytes=1024 * 1024)
    host, port = base[len("http://"):].split(":")
    declared = 4 * 1024 * 1024                     # over the /classify limit; none of it is ever sent
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST /classify HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {declared}\r\n\r\n").encode())
        started = time.monotonic()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)               # old code read the body first: this timed out
            assert chunk, head
            head += chunk
        took = time.monotonic() - started
    status_line, *headers = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert " 413 " in status_line and took < 5, (status_line, took)
    assert "connection: close" in [h.lower() for h in headers]
