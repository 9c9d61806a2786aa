"""Notifications: a signed webhook retried to success, SNS topics through moto, and jobs and batches that notify."""
from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pytest
from test_batches import driving, make_batch, wait_final, worker_for
from test_fetch import ImageServer
from test_worker_loop import CATS, in_thread, model  # noqa: F401  (model: the module's fixture)

from autoscaler.batches import BatchDriver
from autoscaler.notify import Notifier
from classifycloud.keyadmin import create_key, register_topic
from classifycloud.provision import ensure_all
from shared.aws import client
from shared.batches import BatchStore
from shared.notify import SIGNATURE_HEADER, Outbox, WebhookSecrets, sign, verify
from webserver.app import create_app


class Receiver:
    """A webhook receiver on 127.0.0.1: answers the scripted statuses in turn (then 200), checks signatures."""

    def __init__(self, secret_of, statuses=()):
        self.secret_of = secret_of          # called per delivery: the current secret
        self.statuses = list(statuses)
        self.calls: list[dict] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                status = owner.statuses.pop(0) if owner.statuses else 200
                owner.calls.append({"at": time.monotonic(), "body": body, "headers": dict(self.headers),
                                    "valid": verify(owner.secret_of(), self.headers.get(SIGNATURE_HEADER, ""), body),
                                    "status": status})
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def s(settings, catalogue):
    st = settings.replace(fetch_allow_loopback=True, notify_backoff_s=0.3, notify_max_attempts=5, wait_time_s=1,
                          bulk_wait_time_s=1, batch_tick_s=0.2, janitor_interval_s=0, max_batch_wait_ms=20,
                          instance_id="w-notify", bulk_yield_s=0.2)
    ensure_all(st, catalogue)
    return st


@pytest.fixture
def receiver(s):
    secrets = WebhookSecrets(s, client("s3", s))
    r = Receiver(lambda: secrets.get(None))
    yield r
    r.close()


def topic_with_queue(s, name: str) -> tuple[str, str]:
    """An SNS topic with an SQS queue subscribed (raw delivery); (topic ARN, queue URL)."""
    sns, sqs = client("sns", s), client("sqs", s)
    arn = sns.create_topic(Name=f"{s.prefix}-{name}")["TopicArn"]
    url = sqs.create_queue(QueueName=f"{s.prefix}-{name}-sub")["QueueUrl"]
    qarn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=qarn, Attributes={"RawMessageDelivery": "true"})
    return arn, url


def read_queue(s, url: str, timeout: float = 20) -> list[dict]:
    sqs, out = client("sqs", s), []
    end = time.monotonic() + timeout
    while time.monotonic() < end and not out:
        for m in sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", []):
            out.append(json.loads(m["Body"]))
    return out


def deliver_until(notifier: Notifier, nid: str, timeout: float = 30) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        notifier.deliver_due()
        doc = notifier.record(nid)
        if doc and doc.get("state"):
            return doc
        time.sleep(0.05)
    raise AssertionError(f"notice {nid} not finished: {notifier.record(nid)}")


def test_a_receiver_answering_500_twice_gets_the_signed_notice_retried_with_backoff_until_200(s, receiver):
    receiver.statuses = [500, 500]
    s3 = client("s3", s)
    Outbox(s, s3).enqueue("batch-b1", None, {"webhook": receiver.url},
                          {"kind": "batch", "id": "b1", "state": "succeeded", "done": 3})
    doc = deliver_until(Notifier(s, s3), "batch-b1")
    assert doc["state"] == "delivered"
    assert [a["detail"] for a in doc["attempts"]] == ["HTTP 500", "HTTP 500", "HTTP 200"]
    assert [c["status"] for c in receiver.calls] == [500, 500, 200] and all(c["valid"] for c in receiver.calls)
    gaps = [b["at"] - a["at"] for a, b in zip(receiver.calls, receiver.calls[1:])]
    assert gaps[0] >= 0.3 * 0.9 and gaps[1] >= 0.6 * 0.9          # backoff doubles
    body = json.loads(receiver.calls[-1]["body"])
    assert body["event"] == "batch.succeeded" and body["id"] == "b1"
    assert receiver.calls[-1]["headers"]["X-ClassifyCloud-Delivery"] == "batch-b1"
    # the same body with a wrong secret, or changed, does not verify
    assert not verify("whsec_other", receiver.calls[-1]["headers"][SIGNATURE_HEADER], receiver.calls[-1]["body"])
    assert not verify(WebhookSecrets(s, s3).get(None), receiver.calls[-1]["headers"][SIGNATURE_HEADER], b"{}")


def test_a_signature_too_old_is_refused():
    body = b'{"a":1}'
    assert verify("whsec_x", sign("whsec_x", body), body)
    assert not verify("whsec_x", sign("whsec_x", body, timestamp=int(time.time()) - 3600), body)


def test_success_and_error_go_to_their_own_sns_topics(s):
    ok_arn, ok_q = topic_with_queue(s, "ok")
    err_arn, err_q = topic_with_queue(s, "err")
    s3 = client("s3", s)
    notify = {"success_topic": ok_arn, "error_topic": err_arn}
    outbox = Outbox(s, s3)
    outbox.enqueue("job-good", None, notify, {"kind": "job", "id": "good", "state": "succeeded"}, ok=True)
    outbox.enqueue("job-bad", None, notify, {"kind": "job", "id": "bad", "state": "failed"}, ok=False)
    notifier = Notifier(s, s3)
    assert deliver_until(notifier, "job-good")["state"] == "delivered"
    assert deliver_until(notifier, "job-bad")["state"] == "delivered"
    assert [m["id"] for m in read_queue(s, ok_q)] == ["good"]
    bad = read_queue(s, err_q)
    assert [m["id"] for m in bad] == ["bad"] and bad[0]["event"] == "job.failed"


def test_a_webhook_to_an_internal_address_is_never_called_and_every_refusal_is_recorded(s):
    s3 = client("s3", s)
    st = s.replace(fetch_allow_loopback=False, notify_max_attempts=2, notify_backoff_s=0.05)
    Outbox(st, s3).enqueue("batch-b2", None, {"webhook": "http://169.254.169.254/latest/meta-data/"},
                           {"kind": "batch", "id": "b2", "state": "succeeded"})
    doc = deliver_until(Notifier(st, s3), "batch-b2")
    assert doc["state"] == "failed" and len(doc["attempts"]) == 2
    assert all(a["detail"].startswith("refused: forbidden_address") for a in doc["attempts"])


def test_a_job_and_a_batch_notify_when_done_through_the_web_worker_and_driver(s, catalogue, model, receiver):
    ok_arn, ok_q = topic_with_queue(s, "done")
    notify = {"webhook": receiver.url, "success_topic": ok_arn}
    app = create_app(s, catalogue)
    try:
        with ImageServer() as images:
            r = app.test_client().post("/jobs", json={"url": images.base + "/chelsea.jpg", "notify": notify})
            assert r.status_code == 202
            job_id = r.json["id"]
            s3 = client("s3", s)
            rec = make_batch(s, s3, {"items": 2}, [images.base + "/coffee.jpg", images.base + "/chelsea.jpg"],
                             notify=notify)
            with driving(BatchDriver(s, catalogue)), in_thread(worker_for(s, catalogue, model)):
                wait_final(BatchStore(s, s3), rec["id"])
                end = time.monotonic() + 60
                while len(receiver.calls) < 2:
                    assert time.monotonic() < end, receiver.calls
                    time.sleep(0.1)
    finally:
        app.extensions["classifycloud"].close()
    bodies = {json.loads(c["body"])["event"]: json.loads(c["body"]) for c in receiver.calls}
    assert all(c["valid"] for c in receiver.calls)
    assert bodies["job.succeeded"]["id"] == job_id
    assert bodies["job.succeeded"]["result"]["results"][0]["index"] in CATS
    assert bodies["batch.succeeded"]["id"] == rec["id"] and bodies["batch.succeeded"]["done"] == 2
    assert bodies["batch.succeeded"]["shards"]
    topic = []
    end = time.monotonic() + 20
    while len(topic) < 2 and time.monotonic() < end:
        topic += read_queue(s, ok_q, timeout=2)
    assert sorted(m["event"] for m in topic) == ["batch.succeeded", "job.succeeded"]


class TrickleReceiver:
    """A receiver that reads the request, then sends its answer one byte every `gap_s` (a full, valid 200)."""

    def __init__(self, gap_s: float):
        self.gap_s = gap_s
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.accepted = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self.accepted.set()
        with conn:
            conn.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n":
                if self.stop.wait(self.gap_s):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    return

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_whole_delivery_deadline(s):
    st = s.replace(notify_timeout_s=1.0)
    slow = TrickleReceiver(gap_s=0.25)        # 38 bytes: about 10 s, each read well inside a per-read timeout
    try:
        notifier = Notifier(st, client("s3", st))
        started = time.monotonic()
        ok, detail = notifier.post_webhook(slow.url, {"id": "job-x", "owner": None}, "job.succeeded", b"{}")
        took = time.monotonic() - started
    finally:
        slow.close()
    assert not ok and detail.startswith("timeout"), detail
    assert took < 3.0, f"the delivery held the driver for {took:.1f} s against a 1 s deadline"


def test_the_notifier_publishes_a_keys_notice_only_to_topics_registered_to_that_key(s):
    ok_arn, ok_q = topic_with_queue(s, "registered")
    other_arn, other_q = topic_with_queue(s, "someone-elses")
    _, alice = create_key(s, "alice")
    register_topic(s, alice.key_id, ok_arn)
    s3 = client("s3", s)
    st = s.replace(notify_max_attempts=1, api_key_cache_s=0.0)
    outbox = Outbox(st, s3)
    outbox.enqueue("job-mine", alice.key_id, {"success_topic": ok_arn}, {"kind": "job", "id": "mine"}, ok=True)
    outbox.enqueue("job-theirs", alice.key_id, {"success_topic": other_arn}, {"kind": "job", "id": "x"}, ok=True)
    notifier = Notifier(st, s3)
    assert deliver_until(notifier, "job-mine")["state"] == "delivered"
    refused = deliver_until(notifier, "job-theirs")
    assert refused["state"] == "failed" and refused["attempts"][0]["detail"].startswith("refused: topic_not_registered")
    assert [m["id"] for m in read_queue(s, ok_q)] == ["mine"] and read_queue(s, other_q, timeout=2) == []


def test_a_keys_stalling_receivers_hold_only_that_keys_slots_never_the_driver_or_another_key(s):
    st = s.replace(notify_timeout_s=3.0, notify_workers=4, notify_per_key=2, notify_backoff_s=0.1)
    s3 = client("s3", st)
    secrets = WebhookSecrets(st, s3)
    stalling = [TrickleReceiver(gap_s=0.5) for _ in range(3)]      # about 19 s each, cut at 3 s
    fast = Receiver(lambda: secrets.get("kb0000000000b"))
    try:
        outbox = Outbox(st, s3)
        for i, r in enumerate(stalling):
            outbox.enqueue(f"batch-a{i}", "ka0000000000a", {"webhook": r.url}, {"kind": "batch", "id": f"a{i}"})
        outbox.enqueue("batch-b", "kb0000000000b", {"webhook": fast.url}, {"kind": "batch", "id": "b"})
        notifier = Notifier(st, s3)
        assert notifier.deliver_due(wait=False) == 0      # started on the pool; the driver's tick goes on
        end = time.monotonic() + 30
        while not (fast.calls and sum(r.accepted.is_set() for r in stalling) == 2):
            assert time.monotonic() < end, (len(fast.calls), [r.accepted.is_set() for r in stalling])
            time.sleep(0.02)
        # key b was delivered while key a's two deliveries still hang; a's third waits for a slot of a's own
        assert all(r.stop.is_set() is False for r in stalling) and sum(r.accepted.is_set() for r in stalling) == 2
        body = json.loads(fast.calls[0]["body"])
        assert fast.calls[0]["valid"] and body["delivery"] == "batch-b"     # the delivery id is signed
        third = next(r for r in stalling if not r.accepted.is_set())
        while not third.accepted.is_set():               # later ticks give a's third notice its turn
            assert time.monotonic() < end + 30
            notifier.deliver_due(wait=False)
            time.sleep(0.1)
    finally:
        for r in stalling:
            r.close()
        fast.close()
        notifier.close()
