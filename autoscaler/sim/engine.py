"""Discrete-event simulation of queues, workers, the terminate protocol and a scaling controller."""
from __future__ import annotations

import heapq
import math
import random
from collections import deque
from dataclasses import dataclass, field

from autoscaler.policy import DEFAULTS, QueueStats
from autoscaler.sim.fleet import Ec2Model
from autoscaler.sim.traces import Trace
from shared.config import Settings
from shared.messages import Terminate

ARRIVAL, SNAPSHOT, TICK, RUNNING, READY, DONE, CHECK, BEAT, REQUEUE, INTERRUPT = range(10)


# SimConfig field <- the Settings field it simulates (its default too: shared/config.py documents each one)
FROM_SETTINGS = {"tick_s": "tick_s", "min_workers": "min_workers", "max_workers": "max_workers",
                 "latency_budget_s": "latency_budget_s", "client_timeout_s": "reply_timeout_s",
                 "heartbeat_s": "heartbeat_interval_s", "terminate_check_interval_s": "terminate_check_interval_s",
                 "terminate_expiry_s": "terminate_expiry_s", "visibility_timeout_s": "visibility_timeout_s",
                 "scale_in_window_s": "scale_in_window_s", "scale_in_fraction": "scale_in_fraction",
                 "scale_in_step_s": "scale_in_step_s", "target_utilization": "target_utilization"}


@dataclass(frozen=True)
class SimConfig:
    """The simulated system: the settings it simulates (defaults: Settings'), and the simulation's own numbers."""

    tick_s: float = DEFAULTS.tick_s
    min_workers: int = DEFAULTS.min_workers
    max_workers: int = 19                          # the paper's MAX_WORKERS (not Settings': the traces are sized to it)
    latency_budget_s: float = DEFAULTS.latency_budget_s
    boot_s: tuple[float, float] = (40.0, 90.0)     # launch -> worker ready, uniform (GPU cold start + model load)
    pending_s: float = 20.0                        # launch -> EC2 state "running" (part of boot_s)
    sqs_staleness_s: float = 5.0                   # queue attributes lag reality by this much
    client_timeout_s: float = DEFAULTS.reply_timeout_s
    heartbeat_s: float = DEFAULTS.heartbeat_interval_s
    terminate_check_interval_s: float = DEFAULTS.terminate_check_interval_s   # capped at half the expiry, as the
                                                                               # worker caps it
    idle_wait_s: float = 0.5                       # the worker loop's empty wait for work: an idle worker looks
                                                   # (and notices a due check) once per wait
    terminate_expiry_s: float = DEFAULTS.terminate_expiry_s
    visibility_timeout_s: float = DEFAULTS.visibility_timeout_s
    scale_in_window_s: float = DEFAULTS.scale_in_window_s
    scale_in_fraction: float = DEFAULTS.scale_in_fraction
    scale_in_step_s: float = DEFAULTS.scale_in_step_s
    target_utilization: float = DEFAULTS.target_utilization
    drain_s: float = 900.0                         # keep simulating after the trace for the queues to empty
    instance_limit: int = 20                       # account quota on instances (the paper's free tier: 20)

    @classmethod
    def from_settings(cls, settings: Settings, **sim) -> "SimConfig":
        """The system these settings describe; sim sets the simulation's own fields (boot_s, drain_s, ...)."""
        return cls(**{**{f: getattr(settings, name) for f, name in FROM_SETTINGS.items()}, **sim})


@dataclass
class SimWorker:
    """One simulated instance + worker process."""

    id: int
    launched_at: float
    ready_at: float
    initial: bool = False
    state: str = "pending"          # pending -> booting (EC2 running) -> idle <-> busy -> gone
    batch: list = field(default_factory=list)
    batch_service: str = ""
    gen: int = 0                    # invalidates scheduled events of a killed/reused worker
    last_check: float = 0.0
    idle_since: float = 0.0         # when it last found no work (its terminate checks start from here)
    hb_idle: bool | None = None     # what its last heartbeat said
    ever_busy: bool = False
    ended_at: float | None = None
    kind: str = "on-demand"         # on-demand | spot | warm (from the warm pool)
    slot: int | None = None         # its warm-pool slot, returned when it leaves
    draining: bool = False          # a spot notice came: finish the batch, take nothing new, exit


class Simulation:
    """Runs one trace under one controller; results in .latency, .samples, .workers."""

    def __init__(self, trace: Trace, controller, cfg: SimConfig = SimConfig(), seed: int = 0):
        self.trace, self.controller, self.cfg = trace, controller, cfg
        self.rng = random.Random(seed)
        self.now = 0.0
        self._heap: list = []
        self._seq = 0
        self.services = list(trace.services)
        self.queue: dict[str, deque] = {s: deque() for s in self.services}
        self.held: dict[str, int] = {s: 0 for s in self.services}
        self.arrival = [t for t, _ in trace.arrivals]
        self.service_of = [s for _, s in trace.arrivals]
        self.finish = [math.nan] * len(trace.arrivals)
        self.workers: list[SimWorker] = []
        self.idle: list[SimWorker] = []
        self.terminates: deque = deque()              # issued_at of terminate messages in the queue
        self.snapshot: list[QueueStats] = [QueueStats(s) for s in self.services]
        self.samples: list[tuple] = []                # (t, visible, in_flight, running, pending)
        self.first_backlog: float | None = None
        self.first_new_busy: float | None = None
        self.terminates_sent = self.terminates_taken = self.terminates_stale = 0
        self.launch_refused = 0
        self.fleet_model = getattr(controller, "fleet_model", None) or Ec2Model()
        self.warm_free_at = [0.0] * self.fleet_model.warm_pool     # when each warm slot is ready again
        self.interruptions = self.busy_killed = self.warm_launches = 0

    # --- event plumbing ----------------------------------------------------------------
    def at(self, t: float, kind: int, payload=None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    def run(self) -> "Simulation":
        """Simulate to the end of the trace plus the drain time (or until all is answered)."""
        for i, t in enumerate(self.arrival):
            self.at(t, ARRIVAL, i)
        for _ in range(self.cfg.min_workers):
            self._new_worker(ready_at=0.0, initial=True)
        period = getattr(self.controller, "period_s", self.cfg.tick_s)
        staleness = getattr(self.controller, "staleness_s", self.cfg.sqs_staleness_s)
        end = self.trace.duration_s + self.cfg.drain_s
        t = period
        while t <= end:
            self.at(max(0.0, t - staleness), SNAPSHOT)
            self.at(t, TICK)
            t += period
        self.controller.start(self)
        self.fleet_model = getattr(self.controller, "fleet_model", None) or Ec2Model()   # sized in start()
        self.warm_free_at = [0.0] * self.fleet_model.warm_pool
        handlers = {ARRIVAL: self._arrival, SNAPSHOT: self._snapshot, TICK: self._tick, RUNNING: self._running,
                    READY: self._ready, DONE: self._done, CHECK: self._check_event, BEAT: self._beat,
                    REQUEUE: self._requeue, INTERRUPT: self._interrupt}
        while self._heap:
            t, _, kind, payload = heapq.heappop(self._heap)
            if t > end:
                break
            self.now = t
            handlers[kind](payload)
        self.now = end
        for w in self.workers:
            if w.ended_at is None:
                w.ended_at = end
        return self

    # --- what the controller sees and does ------------------------------------------------
    def observe(self) -> tuple[list[QueueStats], dict]:
        """Queue stats as of the last (stale) snapshot and the fleet now (idle from heartbeats)."""
        alive = [w for w in self.workers if w.state != "gone"]
        fleet = {"running": sum(w.state in ("booting", "idle", "busy") for w in alive),
                 "pending": sum(w.state == "pending" for w in alive),
                 "idle": sum(bool(w.hb_idle) for w in alive if w.state in ("idle", "busy")),
                 "stopping": 0}
        return list(self.snapshot), fleet

    def launch(self, n: int, cold: bool = False) -> None:
        """Start n instances: warm-pool resumes first (when the fleet has a pool), then cold boots."""
        lo, hi = self.cfg.boot_s
        allowed = max(0, min(n, self.cfg.instance_limit - len(self.alive())))   # the quota refuses the rest
        self.launch_refused += max(0, n) - allowed
        model = self.fleet_model
        for _ in range(allowed):
            slot = None if cold else next((i for i, t in enumerate(self.warm_free_at) if t <= self.now), None)
            if slot is not None:
                self.warm_free_at[slot] = math.inf
                self.warm_launches += 1
                rlo, rhi = model.resume_s
                self._new_worker(ready_at=self.now + self.rng.uniform(rlo, rhi), kind="warm", slot=slot)
            else:
                self._new_worker(ready_at=self.now + self.rng.uniform(lo, hi), kind=model.cold_kind())

    def send_terminates(self, n: int) -> None:
        """n terminate messages stamped now."""
        self.terminates.extend([self.now] * n)
        self.terminates_sent += n

    def kill(self, w: SimWorker) -> None:
        """Terminate an instance now (EC2 scale-in); what it held reappears after the visibility timeout."""
        if w.state == "gone":
            return
        if w.batch:
            self.busy_killed += 1
            self.held[w.batch_service] -= len(w.batch)
            self.at(self.now + self.cfg.visibility_timeout_s, REQUEUE, list(w.batch))
            w.batch = []
        self._end(w)

    def queue_has_work(self) -> bool:
        """True while any request waits in a queue."""
        return any(self.queue.values())

    def alive(self) -> list[SimWorker]:
        """Workers not gone."""
        return [w for w in self.workers if w.state != "gone"]

    # --- handlers --------------------------------------------------------------------------
    def _new_worker(self, ready_at: float, initial: bool = False, kind: str = "on-demand",
                    slot: int | None = None) -> SimWorker:
        w = SimWorker(id=len(self.workers), launched_at=self.now, ready_at=ready_at, initial=initial, kind=kind,
                   slot=slot)
        self.workers.append(w)
        rate = self.fleet_model.spot_interrupt_per_h
        if kind == "spot" and rate > 0:
            self.at(self.now + self.rng.expovariate(rate / 3600.0), INTERRUPT, (w, w.gen))
        if ready_at <= self.now:
            w.state = "booting"
            self._ready(w)
        else:
            self.at(min(ready_at, self.now + self.cfg.pending_s), RUNNING, (w, w.gen))
            self.at(ready_at, READY, w)
        return w

    def _running(self, payload) -> None:
        w, gen = payload
        if w.gen == gen and w.state == "pending":
            w.state = "booting"

    def _ready(self, w: SimWorker) -> None:
        if w.state == "gone":
            return
        w.state, w.last_check, w.idle_since = "idle", self.now, self.now
        self.idle.append(w)
        self.at(self.now + self.rng.uniform(0, self.cfg.heartbeat_s), BEAT, (w, w.gen))
        self._dispatch()
        if w.state == "idle":
            self._schedule_check(w)

    def _arrival(self, i: int) -> None:
        self.queue[self.service_of[i]].append(i)
        self._dispatch()

    def _requeue(self, ids: list) -> None:
        for i in ids:
            self.queue[self.service_of[i]].appendleft(i)
        self._dispatch()

    def _heads(self) -> list[tuple[int, str]]:
        """(first waiting request, service) of each queue a free worker may take from now."""
        return [(q[0], s) for s, q in self.queue.items() if q]

    def _dispatch(self) -> None:
        while self.idle:
            heads = self._heads()
            if not heads:
                return
            _, service = min((self.arrival[i], s) for i, s in heads)
            w = self.idle.pop()
            model = self.trace.services[service]
            q = self.queue[service]
            batch = [q.popleft() for _ in range(min(model.batch_max, len(q)))]
            w.state, w.batch, w.batch_service = "busy", batch, service
            self.held[service] += len(batch)
            took = model.batch_overhead_s + sum(
                model.seconds_per_request * self.rng.lognormvariate(0, model.jitter) for _ in batch)
            if not w.ever_busy and self.first_new_busy is None and self.first_backlog is not None:
                self.first_new_busy = self.now
            w.ever_busy = True
            self.at(self.now + took, DONE, (w, w.gen))

    def _done(self, payload) -> None:
        w, gen = payload
        if w.gen != gen or w.state != "busy":
            return
        for i in w.batch:
            self.finish[i] = self.now
        self.held[w.batch_service] -= len(w.batch)
        w.batch = []
        if w.draining:                        # spot notice: the batch is answered, now it exits
            self._end(w)
            self._dispatch()
            return
        # the real worker (worker/loop.py): after a batch it looks for work; with work waiting it is not
        # idle and never checks for a terminate, however long since its last check
        w.state, w.idle_since = "idle", self.now
        self.idle.append(w)
        self._dispatch()
        if w.state == "idle":
            self._schedule_check(w)

    def _expiry_s(self) -> float:
        return getattr(self.controller, "terminate_expiry_s", self.cfg.terminate_expiry_s)

    def _check_interval_s(self) -> float:
        return Terminate.check_interval_s(self.cfg.terminate_check_interval_s, self._expiry_s())

    def _schedule_check(self, w: SimWorker) -> None:
        """The idle worker's next look: once its interval is over and it has waited for work once, at the
        first of its loop's waits after that (uniform within one wait)."""
        due = max(w.last_check + self._check_interval_s(), w.idle_since + self.cfg.idle_wait_s)
        self.at(due + self.rng.uniform(0, self.cfg.idle_wait_s), CHECK, (w, w.gen, w.last_check, w.idle_since))

    def _check_event(self, payload) -> None:
        w, gen, stamp, idle_since = payload
        if w.gen != gen or w.state != "idle" or w.last_check != stamp or w.idle_since != idle_since:
            return                            # busy since (its next idle spell schedules anew), or gone
        if Terminate.check_due(True, self.now - w.last_check, self._check_interval_s()):
            self._check_terminate(w)          # taken: _end() removed it from the idle list

    def _check_terminate(self, w: SimWorker) -> bool:
        """The worker's terminate check: drop stale messages, take one fresh one (then exit)."""
        w.last_check = self.now
        expiry = self._expiry_s()
        while self.terminates and self.now - self.terminates[0] > expiry:
            self.terminates.popleft()
            self.terminates_stale += 1
        if self.terminates:
            self.terminates.popleft()
            self.terminates_taken += 1
            self._end(w)
            return True
        self._schedule_check(w)
        return False

    def _interrupt(self, payload) -> None:
        """A spot notice (two minutes' warning): the worker drains and exits; the group launches a replacement."""
        w, gen = payload
        if w.gen != gen or w.state == "gone":
            return
        self.interruptions += 1
        if w.state == "busy":
            w.draining = True
        else:
            self._end(w)
        self.launch(1, cold=True)             # desired capacity is unchanged: the spot group replaces it

    def _end(self, w: SimWorker) -> None:
        if w.slot is not None:                # back to the warm pool once stopped (reuse on scale-in)
            self.warm_free_at[w.slot] = self.now + self.fleet_model.refill_s
            w.slot = None
        if w in self.idle:
            self.idle.remove(w)
        w.state, w.ended_at, w.hb_idle = "gone", self.now, None
        w.gen += 1

    def _beat(self, payload) -> None:
        w, gen = payload
        if w.gen != gen or w.state == "gone":
            return
        w.hb_idle = w.state == "idle"
        self.at(self.now + self.cfg.heartbeat_s, BEAT, (w, w.gen))

    def _snapshot(self, _=None) -> None:
        if self.first_backlog is None:
            waiting = sum(len(q) * self.trace.services[s].seconds_per_request for s, q in self.queue.items())
            ready = sum(w.state in ("idle", "busy") for w in self.workers)
            if waiting > self.cfg.latency_budget_s * max(1, ready):
                self.first_backlog = self.now       # more work waits than the ready fleet drains in budget
        self.snapshot = [QueueStats(s, visible=len(self.queue[s]), in_flight=self.held[s]) for s in self.services]

    def _tick(self, _=None) -> None:
        alive = self.alive()
        self.samples.append((self.now, sum(len(q) for q in self.queue.values()), sum(self.held.values()),
                             sum(w.state != "pending" for w in alive), sum(w.state == "pending" for w in alive)))
        self.controller.tick(self, self.now)
