"""`python -m worker` as a real process: terminate messages, SIGTERM, SIGKILL (moto server, real model)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from test_fetch import ImageServer

from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.messages import Reply, Request, Terminate, now_ms
from worker.loop import Worker

ROOT = os.path.join(os.path.dirname(__file__), "..")
CATS = range(281, 286)


class Proc:
    """A worker process with its log file; killed at the end if still running."""

    def __init__(self, settings, log_path, instance_id: str):
        self.settings = settings.replace(instance_id=instance_id)
        env = {**os.environ, **self.settings.to_env(), "CLASSIFYCLOUD_DEVICE": "cpu"}
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen([sys.executable, "-m", "worker", "--log-level", "DEBUG"], cwd=ROOT,
                                      env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")[-4000:]

    def wait_ready(self, s3, timeout: float = 120) -> None:
        key = naming.heartbeat_key(self.settings.instance_id)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.popen.poll() is None, f"worker exited early:\n{self.log()}"
            listed = s3.list_objects_v2(Bucket=self.settings.bucket_name, Prefix=key)
            if listed.get("KeyCount", 0):
                return
            time.sleep(0.2)
        raise AssertionError(f"worker not ready:\n{self.log()}")

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)
        self._log.close()


@pytest.fixture
def procs():
    """Started worker processes, killed after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.close()


@pytest.fixture
def env(settings, catalogue):
    """Provisioned queues for process tests, an AWS client pair and a reply queue."""
    s = settings.replace(wait_time_s=1, fetch_allow_loopback=True, visibility_timeout_s=60,
                         heartbeat_interval_s=0.5, terminate_check_interval_s=0.3, max_batch_wait_ms=20,
                         services=("imagenet",))
    urls = ensure_all(s, catalogue)
    sqs, s3 = client("sqs", s), client("s3", s)
    reply = sqs.create_queue(QueueName=naming.reply_queue(s.prefix))["QueueUrl"]
    return {"settings": s, "queue": urls["imagenet"], "terminate": urls["__terminate__"], "sqs": sqs, "s3": s3,
            "reply": reply, "catalogue": catalogue}


def _counts(sqs, url) -> tuple[int, int]:
    a = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])


def _wait(cond, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, what
        time.sleep(0.1)


def _replies(sqs, url, n: int, timeout: float) -> dict[str, Reply]:
    out: dict[str, Reply] = {}
    end = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < end:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            r = Reply.from_json(m["Body"])
            out[r.id] = r
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return out


def test_worker_process_ignores_a_stale_terminate_and_exits_zero_on_a_fresh_one(env, procs, tmp_path):
    sqs, s3 = env["sqs"], env["s3"]
    p = Proc(env["settings"], tmp_path / "w.log", "w-term")
    procs.append(p)
    p.wait_ready(s3)
    sqs.send_message(QueueUrl=env["terminate"], MessageBody=Terminate(issued_at=now_ms() - 60_000).to_json())
    _wait(lambda: _counts(sqs, env["terminate"]) == (0, 0), 30, "stale terminate message not deleted")
    time.sleep(1.0)  # several more checks happen in this time
    assert p.popen.poll() is None, f"worker stopped on a stale terminate:\n{p.log()}"
    sqs.send_message(QueueUrl=env["terminate"], MessageBody=Terminate().to_json())
    assert p.popen.wait(60) == 0, p.log()
    assert "terminate message" in p.log()
    listed = s3.list_objects_v2(Bucket=env["settings"].bucket_name, Prefix="heartbeats/")
    assert listed.get("KeyCount", 0) == 0           # heartbeat removed on exit


def test_worker_releases_messages_on_sigterm(env, procs, tmp_path):
    sqs = env["sqs"]
    s = env["settings"].replace(buffer_size=6, max_batch_size=1)
    with ImageServer() as images:
        for i in range(6):  # the first fetch hangs until released: the worker is then holding all six
            sqs.send_message(QueueUrl=env["queue"], MessageBody=Request(
                id=f"r{i}", service="imagenet", image={"url": images.base + "/hold/chelsea.jpg"},
                reply_to=env["reply"]).to_json())
        p = Proc(s, tmp_path / "w.log", "w-sigterm")
        procs.append(p)
        _wait(lambda: images.held_once.is_set() and _counts(sqs, env["queue"]) == (0, 6), 120,
              f"worker did not take all six:\n{p.log() if p.popen.poll() is not None else ''}")
        p.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.popen.poll() is None   # still finishing its batch
        images.release.set()
        assert p.popen.wait(60) == 0, p.log()
    answered = _replies(sqs, env["reply"], 1, 30)
    assert len(answered) == 1 and next(iter(answered.values())).results[0]["index"] in CATS
    # the other five are visible again at once (the visibility timeout is 60 s)
    assert _counts(sqs, env["queue"]) == (5, 0)
    got = []
    for _ in range(10):
        got += sqs.receive_message(QueueUrl=env["queue"], MaxNumberOfMessages=10).get("Messages", [])
        if len(got) == 5:
            break
    ids = {Request.from_json(m["Body"]).id for m in got}
    assert len(ids) == 5 and ids.isdisjoint(answered)


def test_sigkilled_worker_request_is_answered_by_another_worker(env, procs, tmp_path, catalogue):
    sqs = env["sqs"]
    s = env["settings"].replace(visibility_timeout_s=3)
    ensure_all(s, catalogue)    # a short visibility timeout on the request queue
    with ImageServer() as images:
        sqs.send_message(QueueUrl=env["queue"], MessageBody=Request(
            id="survivor", service="imagenet", image={"url": images.base + "/hold/chelsea.jpg"},
            reply_to=env["reply"]).to_json())
        doomed = Proc(s, tmp_path / "doomed.log", "doomed")
        procs.append(doomed)
        _wait(images.held_once.is_set, 120, "the doomed worker never fetched the image")
        assert _counts(sqs, env["queue"]) == (0, 1)
        doomed.popen.send_signal(signal.SIGKILL)
        assert doomed.popen.wait(30) == -signal.SIGKILL
        rescuer = Worker(s.replace(instance_id="rescuer"), catalogue)
        t = threading.Thread(target=rescuer.work, kwargs={"install_signals": False})
        t.start()
        try:
            got = _replies(sqs, env["reply"], 1, 90)
        finally:
            rescuer.stop("test over")
            t.join(60)
    assert got["survivor"].status == "ok" and got["survivor"].worker == "rescuer"
    assert got["survivor"].results[0]["index"] in CATS
    assert _counts(sqs, env["queue"]) == (0, 0)


def test_a_second_sigterm_exits_at_once_without_finishing_the_batch(env, procs, tmp_path):
    sqs = env["sqs"]
    with ImageServer() as images:
        sqs.send_message(QueueUrl=env["queue"], MessageBody=Request(
            id="stuck", service="imagenet", image={"url": images.base + "/hold/chelsea.jpg"},
            reply_to=env["reply"]).to_json())
        p = Proc(env["settings"], tmp_path / "w.log", "w-twice")
        procs.append(p)
        _wait(images.held_once.is_set, 120, "the worker never fetched the image")
        p.popen.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert p.popen.poll() is None          # first: still finishing the held batch
        p.popen.send_signal(signal.SIGTERM)
        assert p.popen.wait(30) == 1, p.log()  # second: gone while the fetch still hangs
        assert not images.release.is_set()
    assert _replies(sqs, env["reply"], 1, 2) == {}
    assert _counts(sqs, env["queue"]) == (0, 1)  # not lost: it returns after the visibility timeout
