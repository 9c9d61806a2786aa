"""Workers take interactive work first: bulk items only while the interactive queues are quiet."""
from __future__ import annotations

import time
from types import SimpleNamespace

from test_worker_loop import CATS, images, in_thread, model, stack  # noqa: F401  (fixtures)

from shared import naming
from shared.messages import Request
from worker.bulk import InteractiveQuiet


def test_the_gate_opens_only_after_the_interactive_consumers_were_quiet_for_the_yield_time():
    now = [100.0]
    a, b = SimpleNamespace(received=0), SimpleNamespace(received=0)
    gate = InteractiveQuiet([a, b], yield_s=0.5, clock=lambda: now[0])
    assert gate()                       # nothing ever arrived: open
    b.received += 1                     # an interactive message
    assert not gate()
    now[0] += 0.4
    assert not gate()
    now[0] += 0.2
    assert gate()
    a.received += 3
    assert not gate()


def test_interactive_requests_are_answered_before_a_queued_batch_is_worked_through(stack, model, images):
    s = stack.settings.replace(bulk_receive=4, bulk_yield_s=0.5, bulk_wait_time_s=1)
    bulk_url = stack.sqs.get_queue_url(QueueName=naming.bulk_queue(s.prefix, "imagenet"))["QueueUrl"]
    for lo in range(0, 40, 10):
        stack.sqs.send_message_batch(QueueUrl=bulk_url, Entries=[
            {"Id": str(i), "MessageBody": Request(id=f"bulk-{i}", service="imagenet", image={"url": images.base + "/coffee.jpg"},
                                                  reply_to=None).to_json()} for i in range(lo, lo + 10)])
    for i in range(3):
        stack.request({"url": images.base + "/chelsea.jpg"}, f"live-{i}")
    worker = stack.worker(model, **{k: getattr(s, k) for k in ("bulk_receive", "bulk_yield_s", "bulk_wait_time_s")})
    with in_thread(worker):
        got = stack.replies(3, timeout=120)
        bulk_done = sum(stack.record(f"bulk-{i}") is not None for i in range(40))
        assert set(got) == {f"live-{i}" for i in range(3)}
        assert all(r.results[0]["index"] in CATS for r in got.values())
        # at most the one small bulk batch taken before the first interactive poll came back
        assert bulk_done <= 4, bulk_done
        deadline = time.monotonic() + 180
        while sum(stack.record(f"bulk-{i}") is not None for i in range(40)) < 40:
            assert time.monotonic() < deadline, "the batch items were not worked through once interactive was quiet"
            time.sleep(0.5)
    assert stack.counts(bulk_url) == (0, 0)
