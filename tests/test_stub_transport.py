"""The in-memory StubTransport keeps SQS's contract: the same checks pass against moto's SQS and the stub."""
from __future__ import annotations

import json

import pytest
from stub_transport import StubTransport

from shared.transport import QueueGone, Transport


@pytest.fixture(params=["moto", "stub"])
def transport(request, settings):
    """A Transport on the session's moto server, or the in-memory stub."""
    if request.param == "moto":
        return Transport(settings)
    return StubTransport(settings)


def test_a_received_message_is_invisible_until_released_and_gone_once_acked(transport, settings):
    url = transport.create_queue(f"{settings.prefix}-contract", {"VisibilityTimeout": "60"})
    transport.send_batch(url, [(i, json.dumps({"n": i})) for i in range(3)])
    consumer = transport.consumer(url, wait_s=1)
    held = []
    for _ in range(5):
        held.extend(consumer.receive(10))
        if len(held) == 3:
            break
    assert sorted(json.loads(m.body)["n"] for m in held) == [0, 1, 2]
    assert consumer.receive(10) == []                         # all three held: nothing visible
    assert transport.depth(url).in_flight == 3
    assert consumer.release(held[:1]).ok
    again = consumer.receive(10)
    assert [m.message_id for m in again] == [held[0].message_id] and again[0].receive_count == 2
    assert transport.ack_received(held[1:] + again).ok
    assert transport.depth(url) .visible == 0 and transport.depth(url).in_flight == 0
    transport.delete_queue(url)


def test_a_deleted_queue_raises_queue_gone_and_fails_only_its_own_grouped_entries(transport, settings):
    live = transport.create_queue(f"{settings.prefix}-live")
    dead = transport.create_queue(f"{settings.prefix}-dead")
    transport.delete_queue(dead)
    with pytest.raises(QueueGone):
        transport.send(dead, "{}")
    result = transport.send_grouped([("a", live, "{}"), ("b", dead, "{}")])
    assert result.succeeded == ["a"] and [f.key for f in result.failed if f.queue_gone] == ["b"]
    transport.delete_queue(live)


def test_creating_a_queue_again_with_the_same_attributes_finds_it(transport, settings):
    name = f"{settings.prefix}-same"
    first = transport.create_queue(name, {"VisibilityTimeout": "45"})
    assert transport.create_queue(name, {"VisibilityTimeout": "45"}) == first
    assert transport.url(name) == first
    assert transport.attributes(first, ["VisibilityTimeout"]) == {"VisibilityTimeout": "45"}
    transport.delete_queue(first)
