"""The SQS transport against the moto server: batching, per-entry failures, gone queues, URL cache, typed bodies."""
from __future__ import annotations

import json
import time

import pytest

from shared.messages import Heartbeat, MessageError, Reply, Request, Terminate
from shared.transport import QueueGone, Transport


@pytest.fixture
def transport(settings):
    """A Transport on the session's moto server, with its own queue-name prefix."""
    yield Transport(settings)


@pytest.fixture
def calls(transport):
    """Records (operation, entries) of every SQS call the transport's clients make (botocore's event hooks)."""
    seen: list[tuple[str, int]] = []

    def record(model, params, **_):
        seen.append((model.name, len(params.get("Entries", []))))

    clients = {id(transport.sqs): transport.sqs, id(transport.poll_sqs): transport.poll_sqs}.values()
    for sqs in clients:
        sqs.meta.events.register("before-parameter-build.sqs", record, unique_id="calls")
    yield seen
    for sqs in clients:   # the clients are the process's shared ones (shared.aws): leave them as found
        sqs.meta.events.unregister("before-parameter-build.sqs", unique_id="calls")


@pytest.fixture
def queue(transport, settings):
    """A fresh queue; yields its URL and deletes it afterwards."""
    url = transport.create_queue(f"{settings.prefix}-q", {"VisibilityTimeout": "300"})
    yield url
    transport.delete_queue(url)


def receive_all(transport, url, n, timeout=10.0):
    """Receive until n messages are held (several calls: at most 10 per receive)."""
    consumer = transport.consumer(url, wait_s=1)
    got, end = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < end:
        got.extend(consumer.receive(10))
    assert len(got) == n
    return got


def test_send_batch_chunks_above_ten_and_reports_every_key(transport, queue, calls):
    result = transport.send_batch(queue, [(f"k{i}", json.dumps({"n": i})) for i in range(25)])
    assert result.ok and sorted(result.succeeded) == sorted(f"k{i}" for i in range(25))
    assert [n for op, n in calls if op == "SendMessageBatch"] == [10, 10, 5]
    bodies = sorted(json.loads(m.body)["n"] for m in receive_all(transport, queue, 25))
    assert bodies == list(range(25))


def test_one_invalid_receipt_handle_among_twelve_deletes_is_reported_and_the_rest_deleted(transport, queue, calls):
    transport.send_batch(queue, [(i, f"m{i}") for i in range(11)])
    held = receive_all(transport, queue, 11)
    entries = [(m.message_id, m.receipt_handle) for m in held] + [("bogus", "not-a-receipt-handle")]
    result = transport.delete_batch(queue, entries)
    assert sorted(result.succeeded) == sorted(m.message_id for m in held)
    assert result.failed_keys == ["bogus"]
    assert result.codes() == {"bogus": "ReceiptHandleIsInvalid"} and result.failed[0].sender_fault
    assert [n for op, n in calls if op == "DeleteMessageBatch"] == [10, 2]
    depth = transport.depth(queue)
    assert (depth.visible, depth.in_flight) == (0, 0)


def test_release_makes_held_messages_visible_again_and_reports_a_bad_handle(transport, queue):
    transport.send_batch(queue, [(i, f"m{i}") for i in range(12)])
    held = receive_all(transport, queue, 12)
    assert transport.depth(queue).visible == 0
    consumer = transport.consumer(queue, wait_s=1)
    result = consumer.release(held)
    assert result.ok and len(result.succeeded) == 12
    bad = transport.change_visibility_batch(queue, [("x", "not-a-receipt-handle")], 0)
    assert bad.failed_keys == ["x"] and bad.failed[0].code == "ReceiptHandleIsInvalid"
    again = receive_all(transport, queue, 12)
    assert all(m.receive_count == 2 for m in again)
    assert consumer.ack(again).ok


def test_a_deleted_queue_raises_queue_gone_everywhere_and_leaves_the_cache(transport, settings):
    name = f"{settings.prefix}-gone"
    url = transport.create_queue(name)
    assert transport.url(name) == url
    transport.sqs.delete_queue(QueueUrl=url)   # deleted behind the transport's back (a web process exited)
    with pytest.raises(QueueGone) as info:
        transport.send(url, "x")
    assert info.value.code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")
    with pytest.raises(QueueGone):
        transport.send_batch(url, [(i, "x") for i in range(12)])
    with pytest.raises(QueueGone):
        transport.delete_batch(url, [("a", "handle")])
    with pytest.raises(QueueGone):
        transport.consumer(url, wait_s=0).receive()
    with pytest.raises(QueueGone):
        transport.url(name)                      # forgotten after the failure: looked up, and not found
    transport.delete_queue(url)                  # deleting a gone queue is not an error


def test_queue_urls_are_looked_up_once_and_missing_ones_are_not_cached(transport, queue, settings, calls):
    name = f"{settings.prefix}-q"
    transport.forget(name)
    hits, misses = transport.url_hits, transport.url_misses
    assert transport.url(name) == queue
    assert transport.url(name) == queue
    assert (transport.url_hits - hits, transport.url_misses - misses) == (1, 1)
    assert [op for op, _ in calls].count("GetQueueUrl") == 1
    with pytest.raises(QueueGone):
        transport.request_queue_url("no-such-service")
    with pytest.raises(QueueGone):
        transport.request_queue_url("no-such-service")
    assert [op for op, _ in calls].count("GetQueueUrl") == 3   # a miss is asked again, never cached


def test_typed_messages_round_trip_through_a_queue(transport, queue):
    req = Request(id="r1", service="imagenet", image={"url": "http://example.com/a.jpg"}, reply_to=queue, top_k=3)
    reply = Reply.ok("r1", "imagenet", [{"label": "espresso", "index": 967, "score": 0.9}], worker="w1")
    term = Terminate(issued_at=1234)
    for msg in (req, reply, term):
        transport.send(queue, msg)
    got = {m.body: m for m in receive_all(transport, queue, 3)}
    assert got[req.to_json()].parse(Request) == req
    assert got[reply.to_json()].parse(Reply) == reply
    assert got[term.to_json()].parse(Terminate) == term
    assert all(m.sent_at and m.receive_count == 1 for m in got.values())


def test_a_malformed_body_raises_a_message_error_naming_the_message(transport, queue):
    transport.send(queue, "{not json")
    transport.send(queue, json.dumps({"v": 1, "id": "r2", "service": "imagenet"}))
    for m in receive_all(transport, queue, 2):
        with pytest.raises(MessageError) as info:
            m.parse(Request)
        assert info.value.code == "malformed_message"
        assert m.message_id in info.value.message


def test_duplicate_keys_in_one_batch_are_refused(transport, queue):
    with pytest.raises(ValueError):
        transport.send_batch(queue, [("a", "x"), ("a", "y")])


def test_heartbeat_round_trips_accepts_records_without_a_version_and_rejects_bad_ones():
    hb = Heartbeat(instance_id="i-1", services=["imagenet"], unavailable={"plant": "weights not configured"},
                   state="ready", busy=2, started_at=1000, at=5000)
    assert Heartbeat.from_json(hb.to_json()) == hb
    legacy = {"instance_id": "i-2", "services": ["imagenet"], "unavailable": {}, "state": "stopping", "busy": 0,
              "started_at": 1, "at": 2.5}      # today's worker writes this (no "v")
    old = Heartbeat.from_json(json.dumps(legacy))
    assert (old.state, old.at, old.idle) == ("stopping", 2, False)
    assert hb.is_fresh(10, now=14_000) and not hb.is_fresh(10, now=15_001)
    assert not hb.idle and Heartbeat(instance_id="i-3", busy=0).idle
    for bad in ("[]", "nope", json.dumps({"at": 1}), json.dumps({"instance_id": "i", "at": "now"}),
                json.dumps({"instance_id": "i", "at": 1, "state": "sleeping"}),
                json.dumps({"instance_id": "i", "at": 1, "busy": -1}),
                json.dumps({"instance_id": "i", "at": 1, "v": 2})):
        with pytest.raises(MessageError):
            Heartbeat.from_json(bad)


def test_a_transport_over_a_given_client_polls_with_it_too(transport, settings, queue):
    wrapped = Transport(settings, sqs=transport.sqs)
    assert wrapped is not transport and wrapped.sqs is transport.sqs and wrapped.poll_sqs is transport.sqs
    assert wrapped.url(f"{settings.prefix}-q") == queue


# components take the transport their composition root built: no hook that swaps clients under them
HOOKS = ("sqs_or_" + "transport", "Transport" + ".of", "Sqs" + "Attribute", "own_" + "transport")
PRODUCT = ("shared", "webserver", "worker", "autoscaler", "classifycloud", "bench")


def test_no_test_hooks_are_left_in_the_product_code():
    import pathlib
    root = pathlib.Path(__file__).resolve().parent.parent
    found = [f"{path.relative_to(root)}: {hook}" for top in PRODUCT for path in sorted((root / top).rglob("*.py"))
             for hook in HOOKS if hook in path.read_text(encoding="utf-8")]
    assert found == []


def test_grouped_operations_span_queues_and_report_a_gone_queue_per_entry(transport, queue, settings):
    gone = transport.create_queue(f"{settings.prefix}-reply-gone")
    transport.delete_queue(gone)
    other = transport.create_queue(f"{settings.prefix}-other")
    items = [(f"a{i}", queue, f"a{i}") for i in range(11)] + [("b0", other, "b0")] + [("g0", gone, "g0"), ("g1", gone, "g1")]
    result = transport.send_grouped(items)
    assert sorted(result.succeeded) == sorted([f"a{i}" for i in range(11)] + ["b0"])
    assert sorted(result.failed_keys) == ["g0", "g1"] and all(f.queue_gone for f in result.failed)
    held = receive_all(transport, queue, 11) + receive_all(transport, other, 1)
    released = transport.release_received(held[:3])
    assert released.ok and len(released.succeeded) == 3
    assert transport.depth(queue).visible == 3
    acked = transport.ack_received(held[3:])     # keys are positions in the list given
    assert acked.ok and sorted(acked.succeeded) == list(range(len(held) - 3))
    assert transport.depth(other) == transport.depth(other).__class__(0, 0, 0)
    transport.delete_queue(other)


def test_queue_admin_calls_list_tag_and_read_attributes_and_recognise_a_gone_queue(transport, settings):
    url = transport.create_queue(f"{settings.prefix}-adm-a", tags={"owner": "me"})
    other = transport.create_queue(f"{settings.prefix}-adm-b")
    assert sorted(transport.list_queues(f"{settings.prefix}-adm-")) == sorted([url, other])
    assert transport.tags(url) == {"owner": "me"}
    transport.tag(url, {"beat": "42"})
    assert transport.tags(url) == {"owner": "me", "beat": "42"}
    assert transport.attributes(url, ["QueueArn"])["QueueArn"].endswith(f"{settings.prefix}-adm-a")
    transport.delete_queue(other)
    transport.delete_queue(url)
    transport.delete_queue(url)                     # already gone: counts as deleted
    for call in (lambda: transport.tags(url), lambda: transport.tag(url, {"beat": "43"}),
                 lambda: transport.attributes(url, ["QueueArn"])):
        with pytest.raises(QueueGone):
            call()
    assert transport.list_queues(f"{settings.prefix}-adm-") == []
