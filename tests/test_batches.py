"""Batches end to end in this process: the web's record, the real driver, the real worker and model, moto."""
from __future__ import annotations

import json
import os
import threading
import time
from contextlib import contextmanager

import pytest
from test_fetch import ImageServer
from test_worker_loop import CATS, ESPRESSO, in_thread, model  # noqa: F401  (model: the module's fixture)

from autoscaler.batches import BatchDriver
from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.batches import BatchStore, io_prefix, new_batch_id
from shared.config import Settings
from shared.messages import Reply, Request, now_ms
from worker.loop import Worker


@pytest.fixture
def bulk(settings, catalogue):
    """Provisioned queues for fast polling; yields (settings, s3, sqs)."""
    s = settings.replace(wait_time_s=1, bulk_wait_time_s=1, fetch_allow_loopback=True, visibility_timeout_s=30,
                         bulk_visibility_timeout_s=30, instance_id="w-bulk", heartbeat_interval_s=0.5,
                         max_batch_wait_ms=20, batch_tick_s=0.2, batch_checkpoint_items=10, janitor_interval_s=0,
                         bulk_yield_s=0.3)
    ensure_all(s, catalogue)
    yield s, client("s3", s), client("sqs", s)


@pytest.fixture
def images():
    with ImageServer() as srv:
        yield srv


def make_batch(settings: Settings, s3, input_spec: dict, items: list[str] | None = None, **extra) -> dict:
    """A batch as POST /batches records it."""
    rec = {"id": new_batch_id(), "owner": None, "service": "imagenet", "top_k": 3, "input": input_spec,
           "output": f"s3://{settings.bucket_name}/{io_prefix(None)}out/", "notify": None, "deadline": None,
           "state": "accepted", "created_at": now_ms(), "total": len(items) if items else None, "enqueued": 0,
           "done": 0, "failed": 0, **extra}
    BatchStore(settings, s3).create(rec, items)
    return rec


@contextmanager
def driving(driver: BatchDriver):
    """The driver's loop in a thread; stopped afterwards."""
    stop = threading.Event()
    t = driver.start_thread(stop)
    try:
        yield driver
    finally:
        stop.set()
        t.join(10)


def wait_final(store: BatchStore, bid: str, timeout: float = 180) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rec = store.record(bid)
        if rec and rec.get("state") in ("succeeded", "failed", "cancelled"):
            return rec
        time.sleep(0.2)
    raise AssertionError(f"batch {bid} not final: {store.record(bid)}")


def output_lines(s3, rec: dict) -> list[dict]:
    out = []
    for uri in rec["shards"]:
        bucket, key = uri[5:].split("/", 1)
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        out.extend(json.loads(line) for line in body.splitlines() if line.strip())
    return out


def worker_for(settings, catalogue, model) -> Worker:  # noqa: F811
    registry, engine = model
    return Worker(settings, catalogue, registry=registry, engine=engine)


def test_a_prefix_batch_writes_one_line_per_image_with_its_label_and_model(bulk, catalogue, model, sample_bytes):
    s, s3, _ = bulk
    photos = {}
    for i in range(6):
        name = ("chelsea", "coffee")[i % 2]
        key = f"{io_prefix(None)}in/{i:02d}-{name}.jpg"
        s3.put_object(Bucket=s.bucket_name, Key=key, Body=sample_bytes[name])
        photos[f"s3://{s.bucket_name}/{key}"] = name
    s3.put_object(Bucket=s.bucket_name, Key=f"{io_prefix(None)}in/notes.txt", Body=b"not an image")
    rec = make_batch(s, s3, {"s3_prefix": f"s3://{s.bucket_name}/{io_prefix(None)}in/"})
    store = BatchStore(s, s3)
    with driving(BatchDriver(s.replace(batch_shard_lines=4), catalogue)), in_thread(worker_for(s, catalogue, model)):
        final = wait_final(store, rec["id"])
    assert final["state"] == "succeeded" and final["total"] == 6 and final["done"] == 6 and final["failed"] == 0
    assert len(final["shards"]) == 2   # 4 lines per shard
    lines = output_lines(s3, final)
    assert sorted(line["input"] for line in lines) == sorted(photos)
    for line in lines:
        assert line["id"] == naming.batch_item_id(rec["id"], line["index"]) and line["status"] == "ok"
        assert line["model"]["name"] and line["model"]["version"]
        top = line["results"][0]["index"]
        assert (top in CATS) if photos[line["input"]] == "chelsea" else top == ESPRESSO
        assert line["label"] == line["results"][0]["label"]


def test_redelivered_items_and_a_restarted_driver_leave_exactly_one_line_per_input(bulk, catalogue, model, images):
    s, s3, sqs = bulk
    items = [f"{images.base}/{('chelsea', 'coffee', 'rocket')[i % 3]}.jpg" for i in range(30)]
    rec = make_batch(s, s3, {"items": 30}, items)
    store = BatchStore(s, s3)
    first = BatchDriver(s, catalogue)
    first.advance(rec["id"])                      # expands and queues every item
    assert store.record(rec["id"])["enqueued"] == 30
    # a driver that died before its checkpoint queues them all again; SQS redelivers some twice more
    again = store.record(rec["id"])
    again["enqueued"] = 0
    store.save(again)
    url = sqs.get_queue_url(QueueName=naming.bulk_queue(s.prefix, "imagenet"))["QueueUrl"]
    for i in (0, 1, 2, 29):
        sqs.send_message(QueueUrl=url, MessageBody=Request(id=naming.batch_item_id(rec["id"], i), service="imagenet",
                                                           image={"url": items[i]}, reply_to=None).to_json())
    with driving(BatchDriver(s, catalogue)), in_thread(worker_for(s, catalogue, model)):
        final = wait_final(store, rec["id"])
    lines = output_lines(s3, final)
    assert final["state"] == "succeeded" and final["total"] == 30 and final["done"] == 30
    assert len(lines) == 30 and sorted(line["index"] for line in lines) == list(range(30))
    assert [line["input"] for line in sorted(lines, key=lambda x: x["index"])] == items
    cats = [line for line in lines if line["input"].endswith("chelsea.jpg")]
    assert cats and all(line["results"][0]["index"] in CATS for line in cats)


def test_manifest_lines_that_cannot_run_become_error_lines_and_the_batch_still_finishes(bulk, catalogue, model,
                                                                                       images, sample_bytes):
    s, s3, _ = bulk
    own = f"{io_prefix(None)}in/cat.jpg"
    s3.put_object(Bucket=s.bucket_name, Key=own, Body=sample_bytes["chelsea"])
    manifest = [json.dumps(f"{images.base}/coffee.jpg"), json.dumps({"s3": f"s3://{s.bucket_name}/{own}"}),
                "this is not json", json.dumps({"source-ref": f"s3://{s.bucket_name}/models/secret.jpg"}),
                json.dumps("ftp://example.com/x.jpg"), json.dumps({"url": f"{images.base}/missing.jpg"})]
    key = f"{io_prefix(None)}manifest.jsonl"
    s3.put_object(Bucket=s.bucket_name, Key=key, Body="\n".join(manifest).encode())
    rec = make_batch(s, s3, {"manifest": f"s3://{s.bucket_name}/{key}"})
    store = BatchStore(s, s3)
    with driving(BatchDriver(s, catalogue)), in_thread(worker_for(s, catalogue, model)):
        final = wait_final(store, rec["id"])
    lines = sorted(output_lines(s3, final), key=lambda x: x["index"])
    assert final["state"] == "succeeded" and final["total"] == 6 and len(lines) == 6
    assert [x["status"] for x in lines] == ["ok", "ok", "error", "error", "error", "error"]
    assert lines[0]["results"][0]["index"] == ESPRESSO and lines[1]["results"][0]["index"] in CATS
    assert lines[2]["error"]["code"] == "invalid_json" and lines[2]["input"] == "manifest-line:3:invalid_json"
    assert lines[3]["error"]["code"] == "forbidden_location"     # another folder of the data bucket
    assert lines[4]["error"]["code"] == "invalid_input"
    assert lines[5]["error"]["code"].startswith("fetch")          # the worker's 404 from the photo server
    assert final["failed"] == 4


def test_a_missing_manifest_fails_the_batch_with_the_reason(bulk, catalogue):
    s, s3, _ = bulk
    rec = make_batch(s, s3, {"manifest": f"s3://{s.bucket_name}/{io_prefix(None)}nope.jsonl"})
    final = BatchDriver(s, catalogue).advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == "manifest_not_found"
    assert rec["id"] not in BatchStore(s, s3).active_ids()


def test_a_cancelled_batch_ends_with_a_line_per_input_and_the_undone_ones_say_cancelled(bulk, catalogue, images):
    s, s3, _ = bulk
    items = [f"{images.base}/chelsea.jpg"] * 5
    rec = make_batch(s, s3, {"items": 5}, items)
    store = BatchStore(s, s3)
    driver = BatchDriver(s, catalogue)
    driver.advance(rec["id"])               # queued; no worker runs
    store.cancel(rec["id"])
    final = driver.advance(rec["id"])
    assert final["state"] == "cancelled"
    lines = output_lines(s3, final)
    assert len(lines) == 5 and {x["error"]["code"] for x in lines} == {"cancelled"}
    assert rec["id"] not in store.active_ids()


def test_a_service_without_a_bulk_queue_gets_one_when_its_first_batch_is_queued(bulk, catalogue, images):
    s, s3, sqs = bulk
    name = naming.bulk_queue(s.prefix, "imagenet")
    sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=name)["QueueUrl"])
    rec = make_batch(s, s3, {"items": 2}, [f"{images.base}/chelsea.jpg"] * 2)
    deadline = time.monotonic() + 90          # SQS may refuse a queue name for a while after its deletion
    while True:
        try:
            BatchDriver(s, catalogue).advance(rec["id"])
            break
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(2)
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "RedrivePolicy"])
    assert int(attrs["Attributes"]["ApproximateNumberOfMessages"]) == 2 and "RedrivePolicy" in attrs["Attributes"]


def _bulk_depth(sqs, settings) -> int:
    url = sqs.get_queue_url(QueueName=naming.bulk_queue(settings.prefix, "imagenet"))["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_items_whose_messages_vanished_are_sent_again_once_the_queue_stays_empty_and_the_batch_ends(
        bulk, catalogue, model, images):
    s, s3, sqs = bulk
    items = [f"{images.base}/chelsea.jpg", f"{images.base}/coffee.jpg"]
    rec = make_batch(s, s3, {"items": 2}, items)
    store = BatchStore(s, s3)
    now = [time.time()]
    driver = BatchDriver(s.replace(batch_lost_grace_s=60), catalogue, clock=lambda: now[0])
    driver.advance(rec["id"])
    now[0] += 3600                      # long past the grace, but both messages are still queued: nothing resent
    assert "resent" not in driver.advance(rec["id"]) and _bulk_depth(sqs, s) == 2
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=naming.bulk_queue(s.prefix, "imagenet"))["QueueUrl"])
    assert _bulk_depth(sqs, s) == 0     # as when SQS drops messages older than the queue's retention
    assert "resent" not in driver.advance(rec["id"])      # the queue is empty: the grace starts now
    now[0] += 59
    assert "resent" not in driver.advance(rec["id"]) and _bulk_depth(sqs, s) == 0
    now[0] += 2
    assert driver.advance(rec["id"])["resent"] == 2 and _bulk_depth(sqs, s) == 2
    with driving(driver), in_thread(worker_for(s, catalogue, model)):
        final = wait_final(store, rec["id"])
    lines = sorted(output_lines(s3, final), key=lambda x: x["index"])
    assert final["state"] == "succeeded" and final["done"] == 2 and final["failed"] == 0 and len(lines) == 2
    assert lines[0]["results"][0]["index"] in CATS and lines[1]["results"][0]["index"] == ESPRESSO


def test_a_batch_past_its_time_limit_ends_and_only_its_open_items_say_expired(bulk, catalogue, images):
    s, s3, _ = bulk
    items = [f"{images.base}/chelsea.jpg"] * 3
    now = [time.time()]
    rec = make_batch(s, s3, {"items": 3}, items, expires_at=int(now[0]) + 600)
    store = BatchStore(s, s3)
    driver = BatchDriver(s, catalogue, clock=lambda: now[0])
    assert driver.advance(rec["id"])["state"] == "running"        # queued; no worker runs
    first = naming.batch_item_id(rec["id"], 0)
    store.put_result(first, Reply.failure(first, "imagenet", "fetch_failed", "answered before the limit").to_json())
    now[0] += 599
    assert driver.advance(rec["id"])["state"] == "running"
    now[0] += 2
    final = driver.advance(rec["id"])
    assert final["state"] == "succeeded" and final["done"] == 3 and final["failed"] == 3
    lines = sorted(output_lines(s3, final), key=lambda x: x["index"])
    assert [x["error"]["code"] for x in lines] == ["fetch_failed", "expired", "expired"]
    assert rec["id"] not in store.active_ids()


def test_an_expanded_input_past_the_keys_open_item_cap_fails_its_batch(bulk, catalogue, images, sample_bytes):
    s, s3, _ = bulk
    for i in range(6):
        s3.put_object(Bucket=s.bucket_name, Key=f"{io_prefix(None)}many/{i}.jpg", Body=sample_bytes["coffee"])
    running = make_batch(s, s3, {"items": 2}, [f"{images.base}/chelsea.jpg"] * 2)
    driver = BatchDriver(s.replace(batch_max_open_items_per_key=7), catalogue)
    driver.advance(running["id"])                  # 2 items to go, no worker runs
    rec = make_batch(s, s3, {"s3_prefix": f"s3://{s.bucket_name}/{io_prefix(None)}many/"})
    final = driver.advance(rec["id"])              # 6 more would make 8
    assert final["state"] == "failed" and final["error"]["code"] == "too_many_items", final
    assert rec["id"] not in BatchStore(s, s3).active_ids()


def test_an_item_taken_after_its_link_died_is_signed_again_and_answered(bulk, catalogue, model, sample_bytes):
    s, s3, _ = bulk
    key = f"{io_prefix(None)}in/cat.jpg"
    s3.put_object(Bucket=s.bucket_name, Key=key, Body=sample_bytes["chelsea"])
    rec = make_batch(s, s3, {"items": 1}, [f"s3://{s.bucket_name}/{key}"])
    store, item = BatchStore(s, s3), naming.batch_item_id(rec["id"], 0)
    BatchDriver(s.replace(batch_link_expiry_s=1), catalogue).advance(rec["id"])   # its link dies in 1 s
    time.sleep(1.2)
    with in_thread(worker_for(s, catalogue, model)):
        end = time.monotonic() + 60
        while store.result(item) is None:
            assert time.monotonic() < end
            time.sleep(0.1)
    assert store.result(item)["error"]["code"] == "link_expired"     # no fetch of a dead link
    with driving(BatchDriver(s, catalogue)), in_thread(worker_for(s, catalogue, model)):
        final = wait_final(store, rec["id"])
    (line,) = output_lines(s3, final)
    assert final["state"] == "succeeded" and final["failed"] == 0 and final["resigned"] == 1
    assert line["status"] == "ok" and line["results"][0]["index"] in CATS


def test_a_links_life_ends_with_the_credentials_that_signed_it(bulk):
    s, _, _ = bulk
    from botocore.credentials import RefreshableCredentials
    from botocore.session import get_session
    soon = time.time() + 600
    meta = {"access_key": "AKIDEXAMPLE", "secret_key": "secret", "token": "session-token",
            "expiry_time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(soon))}
    bs = get_session()
    bs._credentials = RefreshableCredentials.create_from_metadata(meta, refresh_using=lambda: meta, method="test")
    role_s3 = bs.create_client("s3", region_name="us-east-1", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    url, dies = BatchStore(s.replace(batch_link_expiry_s=86400), role_s3).presign(f"s3://{s.bucket_name}/x.jpg")
    assert "x-amz-security-token" in url.lower() and abs(dies / 1000 - soon) < 2      # the session's end, not a day
    _, long_lived = BatchStore(s.replace(batch_link_expiry_s=86400), client("s3", s)).presign(
        f"s3://{s.bucket_name}/x.jpg")
    assert abs(long_lived / 1000 - (time.time() + 86400)) < 5                 # long-term keys: the stated life

