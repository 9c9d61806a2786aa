"""The message buffer's reservations follow the work: idle queues never keep room from busy ones (stub queues)."""
from __future__ import annotations

import json
import threading
import time
from collections import Counter

import pytest
from stub_transport import StubTransport

from shared.transport import Transport
from worker.consumer import Consumer, MessageBuffer

SERVICES = ("hot", "warm", "idle-a", "idle-b", "idle-c")


@pytest.fixture
def queues(settings):
    """Five request queues of a fast-polling worker (2 s long polls, like the fault benchmark), in memory."""
    s = settings.replace(wait_time_s=2, visibility_timeout_s=60)
    transport = StubTransport(s)
    urls = {svc: transport.create_queue(f"{s.prefix}-buf-{svc}") for svc in SERVICES}
    yield s, transport, urls
    for url in urls.values():
        transport.delete_queue(url)


@pytest.fixture
def consuming(queues):
    """Starts one consumer per queue on a buffer of the given capacity; stops them afterwards."""
    s, transport, urls = queues
    started: list[tuple[MessageBuffer, list[Consumer]]] = []

    def start(capacity: int) -> MessageBuffer:
        buffer = MessageBuffer(capacity)
        consumers = [Consumer(s, svc, url, buffer, transport) for svc, url in urls.items()]
        for c in consumers:
            c.start()
        started.append((buffer, consumers))
        return buffer

    yield start
    for buffer, consumers in started:
        for c in consumers:
            c.stop()
        buffer.close()
        for c in consumers:
            c.join(5)


def fill(transport: Transport, url: str, n: int) -> None:
    transport.send_batch(url, [(i, json.dumps({"n": i})) for i in range(n)])


def drain(buffer: MessageBuffer, transport: Transport, want: Counter, timeout: float,
          max_size: int = 16, work_s: float = 0.0) -> tuple[Counter, list[int]]:
    """The inference loop's part: take batches, 'answer' (delete) them, free their slots; until `want` or timeout."""
    got, sizes = Counter(), []
    end = time.monotonic() + timeout
    while time.monotonic() < end and any(got[k] < v for k, v in want.items()):
        batch = buffer.take_batch(max_size, 0.05, timeout=0.5)
        if not batch:
            continue
        time.sleep(work_s)
        transport.ack_received(batch)
        buffer.done(batch)
        got.update(h.service for h in batch)
        sizes.append(len(batch))
    return got, sizes


def test_a_two_slot_buffer_answers_all_20_requests_of_one_service_while_four_queues_poll_empty(queues, consuming):
    s, transport, urls = queues
    fill(transport, urls["hot"], 20)
    buffer = consuming(2)
    got, _ = drain(buffer, transport, Counter(hot=20), timeout=60, max_size=2)
    assert got["hot"] == 20


def test_one_hot_service_fills_a_64_slot_buffer_so_batches_reach_max_batch_size(queues, consuming):
    s, transport, urls = queues
    fill(transport, urls["hot"], 120)
    buffer = consuming(64)
    end = time.monotonic() + 30
    while buffer.held() < 64 and time.monotonic() < end:   # the idle polls must leave room for it
        time.sleep(0.1)
    assert buffer.held() >= 48
    got, sizes = drain(buffer, transport, Counter(hot=120), timeout=60, max_size=32, work_s=0.3)
    assert got["hot"] == 120
    assert max(sizes) == 32 and sizes.count(32) >= 2


def test_two_hot_services_share_the_buffer_and_both_progress(queues, consuming):
    s, transport, urls = queues
    fill(transport, urls["hot"], 60)
    fill(transport, urls["warm"], 60)
    buffer = consuming(8)
    got, _ = drain(buffer, transport, Counter(hot=25, warm=25), timeout=60, max_size=4, work_s=0.05)
    assert got["hot"] >= 25 and got["warm"] >= 25      # neither waits for the other to drain


def test_a_queue_that_came_back_empty_polls_without_keeping_room_from_a_busy_one():
    buf = MessageBuffer(4)
    for name in ("busy", "idle-1", "idle-2", "idle-3", "idle-4"):
        buf.register(name)
        buf.put(name, 0, [])                          # every queue came back empty once
    assert [buf.reserve(1, 0.1, name=f"idle-{i}") for i in range(1, 5)] == [1, 1, 1, 1]   # four idle polls
    buf.put("busy", 0, [_held("busy")])               # the busy one got work: it may fill the rest
    assert buf.reserve(10, 0.5, name="busy") == 3
    assert buf.reserve(10, 0.1, name="busy") == 0     # the buffer is full of real work now


def test_two_busy_consumers_take_turns_for_freed_slots():
    buf = MessageBuffer(2)
    for name in ("a", "b"):
        buf.register(name)
        buf.put(name, 0, [_held(name)])               # both busy, both holding one message: full
    got = {}
    t = threading.Thread(target=lambda: got.setdefault("b", buf.reserve(10, 5, name="b")))
    t.start()
    time.sleep(0.2)                                   # b asked first
    batch = buf.take_batch(1, 0, 1)
    buf.done(batch)
    assert buf.reserve(10, 0.2, name="a") == 0        # a's turn comes after b's
    t.join(5)
    assert got["b"] == 1


def _held(service: str):
    from worker.consumer import Held
    return Held(service=service, queue_url="q", message_id=service, receipt_handle="r", body="{}",
                received_at=int(time.time() * 1000), receive_count=1)


def test_burst_is_not_over_while_a_released_message_may_wait_in_a_queue_seen_empty():
    # the race the loaded host showed: a queue polls empty while the loop still holds its message,
    # then the loop releases the message (unreadable: toward the DLQ); burst mode must poll again
    buf = MessageBuffer(4)
    buf.register("c")
    buf.put("c", 0, [_held("svc")])
    batch = buf.take_batch(1, 0, 1)
    buf.put("c", 0, [])                                 # the poll during the batch came back empty
    buf.done(batch, requeued=True)
    assert not buf.quiescent()
    buf.put("c", 0, [])                                 # polled again after the release: now it is over
    assert buf.quiescent()
