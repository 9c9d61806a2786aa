"""The worker loop in this process (one model load for the module): moto queues, real photos, real model."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager

import pytest
from test_fetch import ImageServer

from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.config import Settings
from shared.messages import Reply, Request, Terminate, now_ms
from shared.transport import Transport
from worker.consumer import Consumer, MessageBuffer, release
from worker.loop import Worker
from worker.terminate import TerminateWatch

CATS = range(281, 286)   # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def model(catalogue):
    """The imagenet service loaded once, shared by this module's workers."""
    from worker.models.engine import InferenceEngine
    from worker.models.registry import ModelRegistry
    registry = ModelRegistry(catalogue, Settings(device="cpu", metrics_enabled=False, services=("imagenet",))).load()
    engine = InferenceEngine(registry, 2)
    yield registry, engine
    engine.close()


@pytest.fixture
def stack(settings, catalogue):
    """Provisioned queues and bucket for a fast-polling worker; yields a helper."""
    s = settings.replace(wait_time_s=1, fetch_allow_loopback=True, max_receive_count=2,
                         visibility_timeout_s=30, instance_id="w-test", heartbeat_interval_s=0.5,
                         terminate_check_interval_s=0.3, max_batch_wait_ms=50,
                         terminate_expiry_s=20.0)   # the tests send then check: 5 s is too short on a loaded box
    urls = ensure_all(s, catalogue)
    yield Stack(s, urls, catalogue)


class Stack:
    """Queues of one test, a reply queue, and helpers to talk to them."""

    def __init__(self, settings: Settings, urls: dict, catalogue):
        self.settings = settings
        self.catalogue = catalogue
        self.sqs = client("sqs", settings)
        self.transport = Transport(settings)
        self.s3 = client("s3", settings)
        self.queue = urls["imagenet"]
        self.terminate_queue = urls["__terminate__"]
        self.reply_queue = self.sqs.create_queue(QueueName=naming.reply_queue(settings.prefix))["QueueUrl"]

    def send(self, body: str) -> None:
        self.sqs.send_message(QueueUrl=self.queue, MessageBody=body)

    def request(self, image: dict, rid: str, reply: bool = True, **kw) -> Request:
        req = Request(id=rid, service=kw.pop("service", "imagenet"), image=image,
                      reply_to=self.reply_queue if reply else None, **kw)
        self.send(req.to_json())
        return req

    def upload(self, key: str, data: bytes) -> dict:
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=key, Body=data)
        return {"s3": f"s3://{self.settings.bucket_name}/{key}"}

    def replies(self, n: int, timeout: float = 60) -> dict[str, Reply]:
        out: dict[str, Reply] = {}
        end = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < end:
            resp = self.sqs.receive_message(QueueUrl=self.reply_queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            for m in resp.get("Messages", []):
                r = Reply.from_json(m["Body"])
                out[r.id] = r
                self.sqs.delete_message(QueueUrl=self.reply_queue, ReceiptHandle=m["ReceiptHandle"])
        return out

    def counts(self, url: str | None = None) -> tuple[int, int]:
        a = self.sqs.get_queue_attributes(QueueUrl=url or self.queue, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        return int(a["ApproximateNumberOfMessages"]), int(a["ApproximateNumberOfMessagesNotVisible"])

    def settled(self, want: tuple[int, int], url: str | None = None, timeout: float = 30) -> tuple[int, int]:
        """The queue's counts once they equal `want`, or the last seen at the deadline (deletes follow replies)."""
        end = time.monotonic() + timeout
        while (got := self.counts(url)) != want and time.monotonic() < end:
            time.sleep(0.1)
        return got

    def record(self, rid: str) -> dict | None:
        try:
            obj = self.s3.get_object(Bucket=self.settings.bucket_name, Key=naming.result_key(rid))
        except self.s3.exceptions.NoSuchKey:
            return None
        return json.loads(obj["Body"].read())

    def worker(self, model, **changes) -> Worker:
        registry, engine = model
        return Worker(self.settings.replace(**changes), self.catalogue, registry=registry, engine=engine)


def run_burst(worker: Worker, timeout: float = 120) -> int:
    """Run a worker in burst mode in a thread; its exit code."""
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("rc", worker.work(burst=True, install_signals=False)))
    t.start()
    t.join(timeout)
    assert not t.is_alive(), "burst worker did not finish"
    return box["rc"]


@contextmanager
def in_thread(worker: Worker):
    """A worker's loop in a thread (yielded); stopped and joined afterwards."""
    t = threading.Thread(target=worker.work, kwargs={"install_signals": False})
    t.start()
    try:
        yield t
    finally:
        worker.stop("test over")
        t.join(30)


@pytest.fixture
def images():
    """The sample photos served on loopback."""
    with ImageServer() as srv:
        yield srv


def test_worker_answers_chelsea_and_coffee_from_urls_and_s3(stack, model, images, sample_bytes):
    stack.request({"url": images.base + "/chelsea.jpg"}, "cat-url")
    stack.request({"url": images.base + "/coffee.jpg"}, "coffee-url", top_k=3)
    stack.request(stack.upload("uploads/cat-s3", sample_bytes["chelsea"]), "cat-s3")
    stack.request(stack.upload("uploads/coffee-s3", sample_bytes["coffee"]), "coffee-s3")
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(4)
    assert set(got) == {"cat-url", "coffee-url", "cat-s3", "coffee-s3"}
    for rid in ("cat-url", "cat-s3"):
        assert got[rid].status == "ok" and got[rid].results[0]["index"] in CATS
    for rid in ("coffee-url", "coffee-s3"):
        assert got[rid].status == "ok" and got[rid].results[0]["index"] == ESPRESSO
        assert got[rid].results[0]["label"] == "espresso"
    assert len(got["coffee-url"].results) == 3 and len(got["cat-url"].results) == 5
    r = got["cat-url"]
    assert r.worker == "w-test" and r.model["name"].startswith("imagenet/") and r.model["version"]
    assert set(r.timings_ms) == {"queue", "fetch", "inference", "total"}
    assert stack.record("cat-url") == r.to_dict()       # the result record is the reply
    assert stack.counts() == (0, 0)                     # every request deleted


def test_worker_answers_bad_images_with_invalid_image_and_loses_nothing_else(stack, model, sample_bytes):
    stack.request(stack.upload("uploads/not-image", b"this is not an image"), "not-image")
    stack.request(stack.upload("uploads/truncated", sample_bytes["chelsea"][:len(sample_bytes["chelsea"]) // 2]),
                  "truncated")
    stack.request(stack.upload("uploads/good", sample_bytes["coffee"]), "good")
    stack.request({"s3": f"s3://{stack.settings.bucket_name}/uploads/missing"}, "missing")
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(4)
    assert got["not-image"].error["code"] == "invalid_image"
    assert got["truncated"].error["code"] == "invalid_image" and got["truncated"].error["message"]
    assert got["missing"].error["code"] == "image_not_found"
    assert got["good"].status == "ok" and got["good"].results[0]["index"] == ESPRESSO
    assert stack.record("truncated")["status"] == "error"
    assert stack.counts() == (0, 0)


def test_worker_refuses_internal_urls_with_an_error_reply(stack, model):
    stack.request({"url": "http://169.254.169.254/latest/meta-data/"}, "metadata")
    stack.request({"url": "ftp://example.com/cat.jpg"}, "ftp")
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(2)
    assert got["metadata"].error["code"] == "forbidden_address"
    assert "169.254.169.254" in got["metadata"].error["message"]
    assert got["ftp"].error["code"] == "unsupported_scheme"


def test_worker_replies_to_a_malformed_message_with_a_readable_reply_to(stack, model):
    stack.send(json.dumps({"v": 1, "id": "bad-1", "reply_to": stack.reply_queue, "image": "nope"}))
    stack.send(json.dumps({"v": 7, "id": "bad-2", "reply_to": stack.reply_queue}))
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(2)
    assert got["bad-1"].status == "error" and got["bad-1"].error["code"] == "malformed_message"
    assert got["bad-2"].error["code"] == "unsupported_version"
    assert stack.counts() == (0, 0)


def test_worker_leaves_an_unreadable_message_to_reach_the_dlq(stack, model, sample_bytes):
    stack.send("{this is not json")
    stack.request(stack.upload("uploads/fine", sample_bytes["coffee"]), "fine")
    assert run_burst(stack.worker(model)) == 0     # burst ends only once the queue is empty
    assert stack.replies(1)["fine"].status == "ok"
    dlq = stack.sqs.get_queue_url(QueueName=naming.dead_letter_queue(stack.settings.prefix, "imagenet"))["QueueUrl"]
    msgs = stack.sqs.receive_message(QueueUrl=dlq, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in msgs] == ["{this is not json"]
    assert stack.counts() == (0, 0)


def test_worker_answers_a_service_it_does_not_host_with_service_unavailable(stack, model, sample_bytes):
    stack.request(stack.upload("uploads/other", sample_bytes["coffee"]), "other", service="plants")
    assert run_burst(stack.worker(model)) == 0
    r = stack.replies(1)["other"]
    assert r.error["code"] == "service_unavailable" and "plants" in r.error["message"]


def test_worker_writes_only_the_result_record_for_an_async_job(stack, model, sample_bytes):
    stack.request(stack.upload("uploads/job-1", sample_bytes["chelsea"]), "job-1", reply=False)
    assert run_burst(stack.worker(model)) == 0
    rec = stack.record("job-1")
    assert rec["status"] == "ok" and rec["results"][0]["index"] in CATS
    assert stack.replies(1, timeout=2) == {}
    assert stack.counts() == (0, 0)


def test_a_synchronous_request_through_the_web_is_answered_with_no_s3_write_of_a_result_record(stack, model, images):
    from webserver.app import create_app
    app = create_app(stack.settings, catalogue=stack.catalogue)
    try:
        with in_thread(stack.worker(model)):
            r = app.test_client().get("/classify", query_string={"url": images.base + "/chelsea.jpg"})
            assert r.status_code == 200 and r.get_json()["results"][0]["index"] in CATS
            assert stack.settled((0, 0)) == (0, 0)          # answered and deleted
        listed = stack.s3.list_objects_v2(Bucket=stack.settings.bucket_name, Prefix="results/")
        assert listed.get("KeyCount", 0) == 0, [o["Key"] for o in listed.get("Contents", [])]
    finally:
        app.extensions["classifycloud"].close()


def test_worker_resends_the_stored_result_when_a_request_is_redelivered(stack, model, sample_bytes):
    stored = Reply.ok("again", "imagenet", [{"label": "espresso", "index": 967, "score": 0.9}], worker="earlier")
    stack.s3.put_object(Bucket=stack.settings.bucket_name, Key=naming.result_key("again"), Body=stored.to_json())
    stack.request(stack.upload("uploads/again", sample_bytes["coffee"]), "again")
    # a first delivery that died after writing the record: received, never deleted, visible again
    first = stack.sqs.receive_message(QueueUrl=stack.queue, WaitTimeSeconds=1)["Messages"][0]
    stack.sqs.change_message_visibility(QueueUrl=stack.queue, ReceiptHandle=first["ReceiptHandle"],
                                        VisibilityTimeout=0)
    assert run_burst(stack.worker(model)) == 0
    assert stack.replies(1)["again"].worker == "earlier"
    assert stack.counts() == (0, 0)


def test_worker_heartbeat_is_written_while_running_and_deleted_on_exit(stack, model):
    w = stack.worker(model)
    with in_thread(w) as t:
        assert w.ready.wait(60)
        key = naming.heartbeat_key("w-test")
        beat = json.loads(stack.s3.get_object(Bucket=stack.settings.bucket_name, Key=key)["Body"].read())
        assert beat["instance_id"] == "w-test" and beat["services"] == ["imagenet"]
        assert beat["state"] == "ready" and beat["busy"] == 0 and beat["at"] >= beat["started_at"]
    assert not t.is_alive()
    listed = stack.s3.list_objects_v2(Bucket=stack.settings.bucket_name, Prefix="heartbeats/")
    assert listed.get("KeyCount", 0) == 0


def test_worker_ignores_a_stale_terminate_and_stops_on_a_fresh_one(stack, model):
    w = stack.worker(model)
    with in_thread(w) as t:
        assert w.ready.wait(60)
        stale = Terminate(issued_at=now_ms() - 60_000)
        stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=stale.to_json())
        end = time.monotonic() + 30
        while w.terminate.stale_dropped == 0 and time.monotonic() < end:
            time.sleep(0.1)
        assert w.terminate.stale_dropped == 1 and t.is_alive()
        assert stack.counts(stack.terminate_queue) == (0, 0)    # stale: deleted
        stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate().to_json())
        t.join(30)
        assert not t.is_alive() and w.stop_reason == "terminate message"


def test_terminate_watch_takes_one_fresh_message_and_leaves_the_others(stack):
    for _ in range(3):
        stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate().to_json())
    stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody="garbage")
    watch = TerminateWatch(stack.settings, stack.transport, stack.terminate_queue)
    assert watch.check() is True
    watch.confirm()   # the taken one is deleted once the worker stops for it (until then give_back() can return it)
    assert stack.counts(stack.terminate_queue) == (2, 0)      # two left for two other workers, visible now


def test_a_busy_worker_never_checks_for_terminate(stack):
    watch = TerminateWatch(stack.settings.replace(terminate_check_interval_s=0.05), stack.transport,
                           stack.terminate_queue)
    time.sleep(0.1)
    assert watch.due(idle=True) and not watch.due(idle=False)
    assert watch.check() is False and not watch.due(idle=True)


def test_a_terminate_taken_as_work_arrives_is_passed_on_with_its_issue_time(stack):
    issued = now_ms() - 1000
    stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate(issued_at=issued).to_json())
    watch = TerminateWatch(stack.settings, stack.transport, stack.terminate_queue)
    assert watch.check() is True
    watch.give_back()
    msgs = stack.sqs.receive_message(QueueUrl=stack.terminate_queue, MaxNumberOfMessages=10)["Messages"]
    assert [Terminate.from_json(m["Body"]).issued_at for m in msgs] == [issued] and watch.passed_on == 1


def test_only_the_idle_worker_of_three_takes_a_terminate_and_the_busy_keep_every_message(stack, model):
    # 2 busy workers each hold 2 slow requests (6 s fetch each, one at a time); the third is idle and looks
    # every 4 s; a busy worker would look every 0.2 s: were it allowed to take a terminate while it holds
    # work, it would get this one first. 6 s, not 3: on a loaded box the idle worker's start-up ate the 3 s
    # window, the busy ones went idle first and took the terminate as they should.
    s = dict(buffer_size=2, max_batch_size=1, terminate_expiry_s=30.0)
    workers = {name: stack.worker(model, instance_id=name, terminate_check_interval_s=4.0 if name == "idle-c"
                                  else 0.2, **s) for name in ("busy-a", "busy-b", "idle-c")}
    threads = {n: threading.Thread(target=w.work, kwargs={"install_signals": False}) for n, w in workers.items()}
    with ImageServer(slow_s=6.0) as srv:
        try:
            for n in ("busy-a", "busy-b"):
                threads[n].start()
                assert workers[n].ready.wait(60)
            for i in range(4):
                stack.request({"url": f"{srv.base}/slow"}, f"slow-{i}")
            end = time.monotonic() + 20
            while not (workers["busy-a"].buffer.held() == 2 and workers["busy-b"].buffer.held() == 2) \
                    and time.monotonic() < end:
                time.sleep(0.05)
            assert workers["busy-a"].buffer.held() == 2 and workers["busy-b"].buffer.held() == 2
            threads["idle-c"].start()
            assert workers["idle-c"].ready.wait(60)
            stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate().to_json())
            threads["idle-c"].join(15)
            assert not threads["idle-c"].is_alive() and workers["idle-c"].stop_reason == "terminate message"
            assert threads["busy-a"].is_alive() and threads["busy-b"].is_alive()
            replies = stack.replies(4, timeout=60)
            assert sorted(replies) == [f"slow-{i}" for i in range(4)]
            by = [r.worker for r in replies.values()]
            assert sorted(by) == ["busy-a", "busy-a", "busy-b", "busy-b"]   # none released, none redelivered
            assert workers["busy-a"].stop_reason is None and workers["busy-b"].stop_reason is None
            assert stack.settled((0, 0)) == (0, 0)     # each worker deletes after its reply: wait for the last
        finally:
            for w in workers.values():
                w.stop("test over")
            for t in threads.values():
                if t.ident:
                    t.join(30)


def test_an_idle_worker_checks_for_terminate_before_a_message_can_go_stale(stack):
    settings = stack.settings.replace(terminate_check_interval_s=3600, terminate_expiry_s=0.4)
    watch = TerminateWatch(settings, stack.transport, stack.terminate_queue)
    time.sleep(0.25)
    assert watch.due(idle=True)
    # a busy host can take longer than the 0.4 s expiry between send and receive: send until one is fresh
    end = time.monotonic() + 30
    taken = False
    while not taken and time.monotonic() < end:
        stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate().to_json())
        taken = watch.check()
    assert taken is True


def test_consumer_receives_only_what_the_buffer_has_room_for(stack):
    for i in range(10):
        stack.send(json.dumps({"n": i}))
    buffer = MessageBuffer(3)
    consumer = Consumer(stack.settings, "imagenet", stack.queue, buffer, stack.transport)
    consumer.start()
    try:
        end = time.monotonic() + 20
        while buffer.held() < 3 and time.monotonic() < end:
            time.sleep(0.05)
        time.sleep(1.5)  # more polls would have happened by now, had there been room
        assert buffer.held() == 3 and stack.counts() == (7, 3)
        batch = buffer.take_batch(2, 0.0, timeout=1)
        assert len(batch) == 2 and buffer.held() == 3   # taken but not done: still held
    finally:
        consumer.stop()
        left = buffer.close()
        consumer.join(5)
    assert release(stack.transport, batch + left) == 3
    assert stack.counts() == (10, 0)


def test_worker_publishes_its_metrics_per_service(stack, model, sample_bytes):
    stack.request(stack.upload("uploads/m-ok", sample_bytes["coffee"]), "m-ok")
    stack.request(stack.upload("uploads/m-bad", b"not an image"), "m-bad")
    namespace = f"cc-test-{stack.settings.prefix}"
    assert run_burst(stack.worker(model, metrics_enabled=True, metrics_namespace=namespace)) == 0
    cw = client("cloudwatch", stack.settings)
    found = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
             for m in cw.list_metrics(Namespace=namespace)["Metrics"]}
    for name in ("QueueWait", "FetchTime", "InferenceTime", "TotalTime", "BatchSize", "Images"):
        assert (name, (("Service", "imagenet"),)) in found
    assert ("Errors", (("Code", "invalid_image"), ("Service", "imagenet"))) in found


def test_consumer_survives_a_dead_endpoint_and_gives_its_slots_back(stack):
    import boto3
    from botocore.config import Config
    from test_worker_identity import free_port
    dead = boto3.session.Session().client(
        "sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    buffer = MessageBuffer(3)
    consumer = Consumer(stack.settings, "imagenet", stack.queue, buffer, Transport(stack.settings, sqs=dead))
    consumer.start()
    try:
        time.sleep(1.5)
        assert consumer.is_alive() and consumer.received == 0
        assert not buffer.quiescent()          # a failing receive is not an empty queue
        assert buffer.reserve(3, timeout=5) == 3
    finally:
        consumer.stop()
        buffer.close()
        consumer.join(5)
    assert not consumer.is_alive()


def test_a_consumer_added_later_gets_slots_while_the_others_keep_polling():
    """A live-added queue polls at once, whatever the others hold (reservations follow the work: issue 19)."""
    from worker.consumer import MessageBuffer
    buf = MessageBuffer(32)
    for i in range(5):
        buf.register(f"c{i}")
    held = [buf.reserve(10, timeout=0.1, name=f"c{i}") for i in range(5)]
    buf.register("late")
    assert sum(held) <= 32
    assert buf.reserve(10, timeout=0.1, name="late") >= 1


class CountingEngine:
    """The real engine, noting the size of every forward pass."""

    def __init__(self, engine):
        self.engine = engine
        self.passes: list[int] = []

    def forward(self, prepared, *args, **kwargs):
        self.passes.append(len(prepared.items))
        return self.engine.forward(prepared, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_one_forward_pass_covers_messages_from_more_than_one_receive(stack, model, sample_bytes):
    for i in range(12):                       # one receive returns 10 at most: 12 need two or more
        stack.request(stack.upload(f"uploads/many-{i}", sample_bytes["coffee"]), f"many-{i}")
    registry, engine = model
    counting = CountingEngine(engine)
    w = Worker(stack.settings.replace(buffer_size=16, max_batch_size=12, max_batch_wait_ms=5000), stack.catalogue,
               registry=registry, engine=counting)
    assert run_burst(w) == 0
    got = stack.replies(12)
    assert len(got) == 12 and all(r.status == "ok" and r.results[0]["index"] == ESPRESSO for r in got.values())
    assert counting.passes == [12]            # every one of them in a single forward pass
    assert sum(c.received for c in w.consumers) == 12 and w.handled == 12


def test_the_service_time_the_autoscaler_reads_is_the_workers_whole_time_per_request(stack, model):
    from autoscaler.queues import ServiceTimes
    namespace = f"cc-wt-{stack.settings.prefix}"
    with ImageServer(slow_s=1.5) as srv:        # a slow origin (of a text body): fetching is the big part
        for i in range(2):
            stack.request({"url": f"{srv.base}/slow"}, f"slowfetch-{i}")
        assert run_burst(stack.worker(model, metrics_enabled=True, metrics_namespace=namespace,
                                      max_batch_size=1)) == 0
    assert sorted(stack.replies(2)) == ["slowfetch-0", "slowfetch-1"]
    s = stack.settings.replace(metrics_namespace=namespace, service_time_alpha=1.0, service_time_refresh_s=0)
    times = ServiceTimes(s, stack.catalogue, client("cloudwatch", s))
    assert times.current()["imagenet"] >= 1.5       # fetch + decode + inference + reply + delete, per request
