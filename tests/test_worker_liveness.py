"""Liveness by progress: a worker whose handler blocks forever gives its messages back and is replaced."""
from __future__ import annotations

import threading
import time

from test_worker_loop import model, run_burst, stack  # noqa: F401  (fixtures)

from autoscaler.health import WorkerHealth
from autoscaler.queues import Heartbeats
from shared.messages import now_ms


class BlockingEngine:
    """The real engine, except that its forward pass never returns (a stuck GPU call) until the test ends."""

    def __init__(self, engine):
        self.engine = engine
        self.entered = threading.Event()
        self.unblock = threading.Event()

    def forward(self, *args, **kwargs):
        self.entered.set()
        self.unblock.wait()
        raise RuntimeError("unblocked by the test")

    def __getattr__(self, name):
        return getattr(self.engine, name)


def test_a_worker_whose_handler_blocks_forever_releases_its_message_for_another_worker(stack, model, sample_bytes):
    registry, engine = model
    blocking = BlockingEngine(engine)
    s = stack.settings.replace(instance_id="w-wedged", worker_stall_s=1.0, fetch_deadline_s=2.0, max_batch_size=1,
                               heartbeat_interval_s=0.5)
    from worker.loop import Worker
    wedged = Worker(s, stack.catalogue, registry=registry, engine=blocking)
    exits = []
    wedged.wedged_exit = exits.append              # in production: os._exit, so the instance is replaced
    t = threading.Thread(target=wedged.work, kwargs={"install_signals": False})
    t.start()
    try:
        assert wedged.ready.wait(60)
        stack.request(stack.upload("uploads/stuck", sample_bytes["coffee"]), "stuck")
        assert blocking.entered.wait(30), "the worker never reached its forward pass"
        assert wedged.watchdog.fired.wait(60), "the watchdog never judged the stuck loop"
        assert exits == [3]
        end = time.monotonic() + 20                 # released: visible again at once, not after the timeout
        while stack.counts() != (1, 0) and time.monotonic() < end:
            time.sleep(0.1)
        assert stack.counts() == (1, 0)
        assert run_burst(stack.worker(model, instance_id="w-ok")) == 0
        reply = stack.replies(1)["stuck"]
        assert reply.status == "ok" and reply.worker == "w-ok"
    finally:
        blocking.unblock.set()
        wedged.stop("test over")
        t.join(30)
    assert not t.is_alive()


def test_an_idle_worker_with_an_old_step_is_not_wedged(stack, model):
    w = stack.worker(model, worker_stall_s=0.5, fetch_deadline_s=0.5, max_batch_size=1)
    w.wedged_exit = lambda code: None
    t = threading.Thread(target=w.work, kwargs={"install_signals": False})
    t.start()
    try:
        assert w.ready.wait(60)
        time.sleep(2.0)                             # many limits pass while it holds nothing
        assert not w.watchdog.fired.is_set()
        assert w.heartbeat.record().step_at >= now_ms() - 2000   # the loop steps while idle
    finally:
        w.stop("test over")
        t.join(30)


def _beat(busy: int, step_age_s: float, held_age_s: float = 0.0, state: str = "ready", now: float = 1000.0):
    return {"instance_id": "w", "services": ["imagenet"], "state": state, "busy": busy, "started_at": 1,
            "at": int(now * 1000), "step_at": int((now - step_age_s) * 1000),
            "oldest_held_at": int((now - held_age_s) * 1000) if busy else 0}


def _check(settings, record, now=1000.0):
    health = WorkerHealth(settings.replace(worker_stall_s=10, fetch_deadline_s=5, max_batch_size=10,
                                           buffer_size=20), clock=lambda: now, stall_limit=lambda services: 20.0)
    return health.check(["w"], Heartbeats(idle=0, busy=1, stopping=0, ids=("w",), records=(record,)))


def test_health_replaces_a_worker_that_beats_busy_while_its_loop_makes_no_progress(settings):
    assert _check(settings, _beat(busy=2, step_age_s=25, held_age_s=25)).wedged == ("w",)
    assert _check(settings, _beat(busy=2, step_age_s=25)).replace == ("w",)


def test_health_replaces_a_worker_holding_one_message_past_every_batch_before_it(settings):
    # the loop steps (other services' batches) but one message never gets its turn: 2 batches x 20 s
    assert _check(settings, _beat(busy=1, step_age_s=0.1, held_age_s=41)).wedged == ("w",)
    assert _check(settings, _beat(busy=1, step_age_s=0.1, held_age_s=39)).wedged == ()


def test_health_keeps_a_busy_worker_that_progresses_an_idle_one_and_a_leaving_one(settings):
    assert _check(settings, _beat(busy=3, step_age_s=5, held_age_s=15)).wedged == ()
    assert _check(settings, _beat(busy=0, step_age_s=500)).wedged == ()
    assert _check(settings, _beat(busy=3, step_age_s=500, state="stopping")).wedged == ()
