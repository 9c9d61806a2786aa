"""Scaling controllers for the simulator: our policies (the same functions the loop calls), an
emulation of AWS target tracking on backlog per instance, and an oracle that knows the arrivals."""
from __future__ import annotations

import math
from collections import deque
from dataclasses import replace

from autoscaler.policy import LAUNCH, TERMINATE, FleetState, PolicyConfig, PolicyState, burst_workers, get_policy
from autoscaler.sim.fleet import AsgModel


def _config(sim, **kw) -> PolicyConfig:
    c = sim.cfg
    spr = {name: m.seconds_per_request for name, m in sim.trace.services.items()}
    base = dict(min_workers=c.min_workers, max_workers=c.max_workers, latency_budget_s=c.latency_budget_s,
                seconds_per_request=spr, scale_in_window_s=c.scale_in_window_s,
                scale_in_fraction=c.scale_in_fraction, scale_in_step_s=c.scale_in_step_s,
                target_utilization=c.target_utilization)
    base.update(kw)
    return PolicyConfig(**base)


class PolicyController:
    """Calls autoscaler.policy.<name> every tick and acts like the loop does (launch / terminate messages)."""

    def __init__(self, name: str, terminate_expiry_s: float | None = None, **config):
        self.name = name
        self.policy = get_policy(name)
        self.config_overrides = config
        if terminate_expiry_s is not None:
            self.terminate_expiry_s = terminate_expiry_s
        self.state = PolicyState()
        self.decisions: list = []

    def start(self, sim) -> None:
        self.cfg = _config(sim, **self.config_overrides)

    def tick(self, sim, now: float) -> None:
        queues, fleet = sim.observe()
        d = self.policy(queues, FleetState(**fleet), self.cfg, now, self.state)
        self.state = d.state
        if d.action == LAUNCH:
            sim.launch(d.count)
        elif d.action == TERMINATE:
            sim.send_terminates(d.count)
        if d.action != "hold":
            self.decisions.append((now, d.action, d.count))


def xcloud_baseline_controller() -> PolicyController:
    """The original policy with its published constants (QOS 0.9, SF 1.0, MIN 1, MAX 19, expiry 4 s)."""
    return PolicyController("xcloud-baseline", terminate_expiry_s=4.0, qos=0.9, scaling_factor=1.0,
                            min_workers=1, max_workers=19)


class AsgController(PolicyController):
    """The backlog policy on the Auto Scaling groups (AsgFleet): a warm pool sized to the expected burst,
    spot above the on-demand base, interruptions. Same policy function, same terminate protocol.

    Two settings differ from the `backlog` row: a 2 s tick (tick_s; detection is now a large part of
    the reaction, and a tick costs three SQS reads) and target_utilization 0.35 (headroom is cheap
    when most of it is spot or a stopped warm instance).
    """

    period_s = 2.0

    def __init__(self, warm_pool: int | None = None, model: AsgModel | None = None, target_utilization: float = 0.35,
                 **config):
        super().__init__("backlog", target_utilization=target_utilization, **config)
        self.warm_pool = warm_pool
        self.model = model if model is not None else AsgModel()

    def start(self, sim) -> None:
        super().start(sim)
        size = self.warm_pool
        if size is None:     # the burst that arrives before a resumed worker is ready, plus the budget
            window = self.cfg.latency_budget_s + self.model.resume_s[1]
            size = burst_workers(expected_burst_work(sim.trace, window), self.cfg)
        self.fleet_model = replace(self.model, warm_pool=size)


def expected_burst_work(trace, window_s: float) -> float:
    """The most work (seconds) arriving within window_s anywhere in the trace: the burst to prepare for.

    In AWS this is an operator's number from history; Terraform's worker_warm_pool_size takes
    burst_workers() of it (`classifycloud simulate` prints the size per trace).
    """
    spr = {n: m.seconds_per_request for n, m in trace.services.items()}
    best, acc, lo = 0.0, 0.0, 0
    arrivals = trace.arrivals
    for t, svc in arrivals:
        acc += spr[svc]
        while arrivals[lo][0] < t - window_s:
            acc -= spr[arrivals[lo][1]]
            lo += 1
        best = max(best, acc)
    return best


class TargetTracking:
    """AWS target tracking on backlog per instance, as AWS documents it for SQS-driven fleets.

    Metric: (visible messages x seconds per request) / in-service instances, one datapoint a
    minute (CloudWatch standard resolution, one period late); target: the latency budget.
    Scale out after 3 datapoints above target, scale in after 15 below 90% of it; new capacity
    = ceil(capacity x metric / target). Scale-in terminates instances directly (busy or not: what
    they held comes back after the visibility timeout).
    """

    name = "target-tracking"
    period_s = 60.0
    staleness_s = 60.0

    def __init__(self, out_points: int = 3, in_points: int = 15):
        self.out_points, self.in_points = out_points, in_points
        self.points: deque = deque(maxlen=max(out_points, in_points))
        self.decisions: list = []

    def start(self, sim) -> None:
        self.spr = {n: m.seconds_per_request for n, m in sim.trace.services.items()}

    def tick(self, sim, now: float) -> None:
        queues, fleet = sim.observe()
        in_service = max(1, fleet["running"])
        metric = sum(q.visible * self.spr[q.service] for q in queues) / in_service
        target = sim.cfg.latency_budget_s
        self.points.append(metric)
        capacity = fleet["running"] + fleet["pending"]
        pts = list(self.points)
        desired = capacity
        if len(pts) >= self.out_points and all(p > target for p in pts[-self.out_points:]):
            desired = math.ceil(capacity * metric / target)
        elif len(pts) >= self.in_points and all(p < 0.9 * target for p in pts[-self.in_points:]):
            desired = math.ceil(capacity * metric / target)
            self.points.clear()                       # the alarm re-arms after acting
        desired = min(sim.cfg.max_workers, max(sim.cfg.min_workers, desired))
        if desired > capacity:
            sim.launch(desired - capacity)
            self.decisions.append((now, LAUNCH, desired - capacity))
        elif desired < capacity:
            alive = sim.alive()
            victims = sim.rng.sample(alive, capacity - desired)   # the ASG does not know who is busy
            for w in victims:
                sim.kill(w)
            self.decisions.append((now, TERMINATE, len(victims)))


class Oracle:
    """Knows every arrival in advance: starts workers one maximum boot delay before the work they
    will serve, sized for it, and stops idle ones at once. Same boot delay as everyone else."""

    name = "oracle"

    def __init__(self, bucket_s: float = 10.0):
        self.bucket_s = bucket_s
        self.decisions: list = []

    def start(self, sim) -> None:
        c = sim.cfg
        n = int((sim.trace.duration_s + c.drain_s) // self.bucket_s) + 2
        work = [0.0] * n
        for t, s in sim.trace.arrivals:
            work[int(t // self.bucket_s)] += sim.trace.services[s].seconds_per_request
        per_worker = self.bucket_s * c.target_utilization
        self.need = [min(c.max_workers, max(c.min_workers, math.ceil(w / per_worker - 1e-9))) for w in work]
        self.lead = c.boot_s[1] + c.tick_s

    def desired(self, now: float) -> int:
        lo = int(now // self.bucket_s)
        hi = int((now + self.lead) // self.bucket_s) + 1
        window = self.need[lo:hi + 1]
        return max(window) if window else self.need[-1]

    def tick(self, sim, now: float) -> None:
        alive = sim.alive()
        capacity = len(alive)
        want = self.desired(now)
        if want > capacity:
            sim.launch(want - capacity)
            self.decisions.append((now, LAUNCH, want - capacity))
        elif want < capacity:
            idle = [w for w in alive if w.state == "idle" and not sim.queue_has_work()]
            for w in idle[:capacity - want]:
                sim.kill(w)
            if idle:
                self.decisions.append((now, TERMINATE, min(len(idle), capacity - want)))


CONTROLLERS = {
    "xcloud-baseline": xcloud_baseline_controller,
    "classifycloud": xcloud_baseline_controller,   # its old name
    "target-tracking": TargetTracking,
    "backlog": lambda: PolicyController("backlog"),
    "oracle": Oracle,
    "asg": AsgController,
}
