"""The worker's pipeline: the next batch is prepared while the model runs; delivery order and shutdown lose nothing."""
from __future__ import annotations

import threading
import time

from test_worker_loop import ESPRESSO, model, run_burst, stack  # noqa: F401  (fixtures)

from worker.loop import Worker
from worker.results import ResultSink


class GatedEngine:
    """The real engine, noting each decode and forward pass: the second decode starts once the first forward
    pass began, which waits (up to a deadline) until that decode is done, then runs `then` (a test's action)."""

    def __init__(self, engine, then=None):
        self.engine = engine
        self.then = then
        self.events: list[str] = []
        self.overlapped = False
        self._cond = threading.Condition()

    def prepare(self, service, images):
        with self._cond:   # the second batch's decode waits for the first forward pass to begin
            if self.events.count("prepared") == 1:
                self._cond.wait_for(lambda: "forward" in self.events, timeout=30)
        out = self.engine.prepare(service, images)
        with self._cond:
            self.events.append("prepared")
            self._cond.notify_all()
        return out

    def forward(self, prepared, *args, **kwargs):
        with self._cond:
            first = "forward" not in self.events
            self.events.append("forward")
            self._cond.notify_all()
            if first:   # on the old, serial loop nothing is decoded while this waits: the deadline passes
                self.overlapped = self._cond.wait_for(lambda: self.events.count("prepared") >= 2, timeout=30)
        if first and self.then is not None:
            self.then()
        return self.engine.forward(prepared, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_the_next_batch_is_fetched_and_decoded_while_a_forward_pass_runs(stack, model, sample_bytes):
    for i in range(3):
        stack.request(stack.upload(f"uploads/overlap-{i}", sample_bytes["coffee"]), f"overlap-{i}")
    registry, engine = model
    gated = GatedEngine(engine)
    w = Worker(stack.settings.replace(max_batch_size=1), stack.catalogue, registry=registry, engine=gated)
    assert run_burst(w) == 0
    assert gated.overlapped, f"no batch was decoded during the first forward pass: {gated.events}"
    assert gated.events[:3] == ["prepared", "forward", "prepared"]
    got = stack.replies(3)
    assert sorted(got) == ["overlap-0", "overlap-1", "overlap-2"]
    assert all(r.status == "ok" and r.results[0]["index"] == ESPRESSO for r in got.values())
    assert stack.settled((0, 0)) == (0, 0)


class RecordingSink(ResultSink):
    """The real sink, noting when each request's reply, record and delete went out."""

    log: list[tuple[str, str]] = []

    def _send_replies(self, outcomes):
        sent = super()._send_replies(outcomes)
        RecordingSink.log.extend(("reply", o.reply.id) for o in outcomes if o.reply_to is not None)
        return sent

    def _record(self, outcome):
        ok = super()._record(outcome)
        RecordingSink.log.append(("record", outcome.reply.id))
        return ok

    def delete(self, messages):
        from shared.messages import Request
        RecordingSink.log.extend(("delete", Request.from_json(h.body).id) for h in messages)
        return super().delete(messages)


def test_a_request_is_deleted_only_after_its_reply_and_its_record_went_out(stack, model, sample_bytes, monkeypatch):
    monkeypatch.setattr("worker.loop.ResultSink", RecordingSink)
    RecordingSink.log = []
    for i in range(4):   # a waiting client's requests (record=false), one asking for a record, an async job
        stack.request(stack.upload(f"uploads/order-{i}", sample_bytes["coffee"]), f"order-{i}", record=False)
    stack.request(stack.upload("uploads/order-rec", sample_bytes["coffee"]), "order-rec")
    stack.request(stack.upload("uploads/order-job", sample_bytes["coffee"]), "order-job", reply=False)  # async
    assert run_burst(stack.worker(model, max_batch_size=2)) == 0
    log = RecordingSink.log
    for i in range(4):
        rid = f"order-{i}"
        assert log.index(("reply", rid)) < log.index(("delete", rid))
        assert ("record", rid) not in log            # a waiting client's answer is its reply alone
    assert log.index(("reply", "order-rec")) < log.index(("record", "order-rec")) < log.index(("delete", "order-rec"))
    assert log.index(("record", "order-job")) < log.index(("delete", "order-job"))
    assert stack.record("order-job")["status"] == "ok"
    assert len(stack.replies(5)) == 5
    assert stack.settled((0, 0)) == (0, 0)


def test_stopping_with_a_prefetched_batch_answers_or_releases_every_message(stack, model, sample_bytes):
    total = 5
    for i in range(total):
        stack.request(stack.upload(f"uploads/stop-{i}", sample_bytes["coffee"]), f"stop-{i}")
    registry, engine = model
    box: dict[str, Worker] = {}
    gated = GatedEngine(engine, then=lambda: box["w"].stop("test: stop with a batch prefetched"))
    w = box["w"] = Worker(stack.settings.replace(max_batch_size=1), stack.catalogue, registry=registry,
                          engine=gated)
    t = threading.Thread(target=w.work, kwargs={"install_signals": False})
    t.start()
    t.join(120)
    assert not t.is_alive()
    assert gated.overlapped                    # a batch was prepared, waiting for the model, at the stop
    got = stack.replies(total, timeout=5)      # every reply went out before work() returned
    assert len(got) >= 2 and all(r.status == "ok" for r in got.values())   # the running and the prefetched one
    end = time.monotonic() + 30                # the rest: visible again at once (released), none in flight
    while stack.counts() != (total - len(got), 0) and time.monotonic() < end:
        time.sleep(0.1)
    assert stack.counts() == (total - len(got), 0)
    visible = total - len(got)
    assert run_burst(stack.worker(model, instance_id="w-next")) == 0    # nothing lost: another worker answers
    got.update(stack.replies(visible, timeout=60))
    assert sorted(got) == [f"stop-{i}" for i in range(total)]
