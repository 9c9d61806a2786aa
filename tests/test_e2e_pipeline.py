"""End to end on real parts: moto server, gunicorn web processes, worker processes, the real model."""
from __future__ import annotations

import base64
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from classifycloud.local import LocalStack
from shared import naming
from shared.aws import client
from shared.config import Settings

pytestmark = pytest.mark.slow
CATS = range(281, 286)          # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _settings(**kw) -> Settings:
    kw.setdefault("services", ("imagenet",))  # the pipeline tests use imagenet; test_e2e_services covers the rest
    return Settings.from_env({}, prefix="e" + uuid.uuid4().hex[:8], metrics_enabled=False, **kw)


@pytest.fixture(scope="module")
def stack(moto_endpoint):
    """Two gunicorn processes and one worker against the session's moto server."""
    s = LocalStack(_settings(), endpoint=moto_endpoint, web_processes=2, workers=1).start()
    try:
        s.wait_ready(timeout=240, workers=True)
        yield s
    finally:
        s.stop()


def _top1(resp) -> int:
    assert resp.status_code == 200, resp.text
    return resp.json()["results"][0]["index"]


def test_chelsea_and_coffee_are_classified_by_url_and_by_upload(stack, sample_bytes):
    r = requests.get(stack.base_url + "/classify", params={"url": stack.sample_url("chelsea")}, timeout=120)
    assert _top1(r) in CATS
    r = requests.post(stack.base_url + "/classify", files={"image": ("coffee.jpg", sample_bytes["coffee"])},
                      timeout=120)
    assert _top1(r) == ESPRESSO
    r = requests.post(stack.base_url + "/classify", timeout=120,
                      json={"image_base64": base64.b64encode(sample_bytes["chelsea"]).decode(), "top_k": 3})
    assert _top1(r) in CATS and len(r.json()["results"]) == 3
    r = requests.post(stack.base_url + "/classify", json={"url": stack.sample_url("coffee")}, timeout=120)
    assert _top1(r) == ESPRESSO


def test_two_web_processes_answer_20_concurrent_requests_each_to_its_own_client(stack):
    names = ["chelsea", "coffee"] * 10
    expected = {"chelsea": CATS, "coffee": (ESPRESSO,)}

    def ask(name):
        r = requests.get(stack.base_url + "/classify", params={"url": stack.sample_url(name)}, timeout=180)
        return name, r

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, names))
    ids = set()
    for name, r in answers:
        assert _top1(r) in expected[name], (name, r.json())
        ids.add(r.json()["id"])
    assert len(ids) == 20
    sqs = client("sqs", stack.settings)
    reply_queues = sqs.list_queues(QueueNamePrefix=naming.reply_queue_prefix(stack.settings.prefix))
    assert len(reply_queues.get("QueueUrls", [])) == 2, "each gunicorn process owns one reply queue"


class _StallingImageServer:
    """Serves a photo, but holds the first request until released (a worker is then 'holding' it)."""

    def __init__(self, body: bytes):
        self.first_seen = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not outer.first_seen.is_set():
                    outer.first_seen.set()
                    outer.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/cat.jpg"

    def stop(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _queue_counts(settings, service="imagenet"):
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, service))["QueueUrl"]
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def test_request_held_by_a_killed_worker_is_answered_by_another(moto_endpoint, sample_bytes):
    settings = _settings(visibility_timeout_s=6, fetch_read_timeout_s=60)
    s = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, workers=0).start()
    server = _StallingImageServer(sample_bytes["chelsea"])
    try:
        first = s.start_worker("doomed")
        s.wait_ready(timeout=240, workers=True)
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(requests.get, s.base_url + "/classify", params={"url": server.url}, timeout=180)
            assert server.first_seen.wait(60), "the worker never fetched the image"
            assert _queue_counts(s.settings) == (0, 1)      # held, invisible, by the doomed worker
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            s.start_worker("rescuer")
            server.release.set()
            r = answer.result(timeout=180)
        assert _top1(r) in CATS
        assert r.json()["worker"] == "rescuer"
        deadline = time.monotonic() + 30
        while _queue_counts(s.settings) != (0, 0) and time.monotonic() < deadline:
            time.sleep(1)
        assert _queue_counts(s.settings) == (0, 0), "nothing left behind, nothing lost"
    finally:
        server.stop()
        s.stop()


def test_classifycloud_up_once_prints_the_samples_and_a_curl_line(moto_endpoint, tmp_path):
    env = dict(os.environ, CLASSIFYCLOUD_PREFIX="u" + uuid.uuid4().hex[:8], CLASSIFYCLOUD_METRICS_ENABLED="false",
               PYTHONUNBUFFERED="1")
    env.pop("AWS_ENDPOINT_URL", None)   # `up` starts its own moto server
    proc = subprocess.run([sys.executable, "-m", "classifycloud", "up", "--port", "0", "--once"],
                          env=env, capture_output=True, text=True, timeout=420)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "curl '" in out and "/classify?url=" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.split() and
            line.split()[0] in ("chelsea", "coffee")}
    assert " 967 " in rows["coffee"]
    assert any(f" {c} " in rows["chelsea"] for c in CATS)
    services = {line.split()[0]: line for line in out.splitlines() if line.split() and
                line.split()[0] in ("nsfw", "skin", "pdr", "facesearch")}
    assert set(services) == {"nsfw", "skin", "pdr", "facesearch"}, out
    assert " score " in services["nsfw"] and "(sfw)" in services["nsfw"]
    assert " class_" in services["pdr"]
    assert "nearest astronaut at 0.000" in services["facesearch"]
