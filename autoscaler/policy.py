"""Scaling policies: pure functions of (queues, fleet, config, clock, state) -> Decision.

No I/O, no hidden globals: whatever must be remembered between ticks (how long the
fleet has been larger than needed, when the last scale-in step was) lives in
PolicyState, passed in and returned in the Decision. The loop and the simulator
call the same functions.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable, Mapping, Sequence

from shared.config import Settings

LAUNCH, TERMINATE, HOLD = "launch", "terminate", "hold"
DEFAULTS = Settings()   # the policy's defaults are the settings' (shared/config.py documents each one)


@dataclass(frozen=True)
class QueueStats:
    """One request queue's approximate counts (SQS attributes)."""

    service: str
    visible: int = 0          # ApproximateNumberOfMessages
    in_flight: int = 0        # ApproximateNumberOfMessagesNotVisible
    delayed: int = 0          # ApproximateNumberOfMessagesDelayed
    bulk: bool = False        # a low-priority bulk queue (batch items): sized by bulk_workers, not the latency budget
    deadline_s: float | None = None   # bulk: seconds left to its batches' earliest deadline (None: no deadline)


@dataclass(frozen=True)
class FleetState:
    """What the fleet looks like: instances running and starting, and what heartbeats say."""

    running: int = 0
    pending: int = 0
    idle: int | None = None   # running workers holding no message (fresh heartbeats); None = unknown
    stopping: int = 0         # workers that accepted a terminate and are finishing their batch


@dataclass(frozen=True)
class PolicyConfig:
    """The numbers a policy needs, taken from Settings (+ per-service time estimates); defaults are Settings'."""

    min_workers: int = DEFAULTS.min_workers
    max_workers: int = DEFAULTS.max_workers
    latency_budget_s: float = DEFAULTS.latency_budget_s
    seconds_per_request: Mapping[str, float] = field(default_factory=dict)
    default_seconds_per_request: float = DEFAULTS.seconds_per_request
    scale_in_window_s: float = DEFAULTS.scale_in_window_s
    scale_in_fraction: float = DEFAULTS.scale_in_fraction
    scale_in_step_s: float = DEFAULTS.scale_in_step_s
    target_utilization: float = DEFAULTS.target_utilization
    qos: float = DEFAULTS.qos
    scaling_factor: float = DEFAULTS.scaling_factor
    bulk_margin_s: float = 60.0               # bulk: plan to finish this long before the client's deadline

    @classmethod
    def from_settings(cls, settings: Settings, seconds_per_request: Mapping[str, float] | None = None,
                      **overrides) -> "PolicyConfig":
        """Config from settings; seconds_per_request maps service -> current estimate."""
        # every field Settings also has, by name; seconds_per_request is a per-service map here
        kw = {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}
        kw.update(seconds_per_request=dict(seconds_per_request or {}),
                  default_seconds_per_request=settings.seconds_per_request, **overrides)
        return cls(**kw)

    def spr(self, service: str) -> float:
        """Seconds of worker time one request of this service needs."""
        return self.seconds_per_request.get(service, self.default_seconds_per_request)


@dataclass(frozen=True)
class PolicyState:
    """What a policy remembers between ticks."""

    below_since: float | None = None      # since when the fleet has been larger than required
    last_scale_in_at: float | None = None


@dataclass(frozen=True)
class Decision:
    """launch n / terminate n / hold, the fleet size wanted, why, and the state for the next tick."""

    action: str
    count: int
    desired: int
    reason: str
    state: PolicyState = field(default_factory=PolicyState)


Policy = Callable[[Sequence[QueueStats], FleetState, PolicyConfig, float, PolicyState], Decision]


def xcloud_baseline(queues: Sequence[QueueStats], fleet: FleetState, cfg: PolicyConfig,
                    now: float, state: PolicyState) -> Decision:
    """The original ClassifyCloud criterion, faithfully (visible messages, running workers).

    desired = ceil(messages / QOS); feasible = min(MAX, desired);
    spawn = ceil((feasible - workers) * SCALING_FACTOR); spawn > 0 -> launch spawn;
    spawn < 0 -> send (-spawn - MIN) terminate messages (no messages: all but MIN).
    """
    messages = sum(q.visible for q in queues if not q.bulk)   # getMessagesInTheQueue(): the request queues
    workers = fleet.running                          # getNumberOfWorkers(): running instances only
    desired = math.ceil(messages / cfg.qos)
    feasible = min(cfg.max_workers, desired)
    spawn = math.ceil((feasible - workers) * cfg.scaling_factor)
    head = f"messages={messages} workers={workers} desired={desired} feasible={feasible} spawn={spawn}"
    if spawn > 0:
        return Decision(LAUNCH, spawn, feasible, head, state)
    if spawn < 0:
        n = -spawn - cfg.min_workers
        if n > 0:
            return Decision(TERMINATE, n, workers - n, f"{head}: terminate -spawn-MIN={n}", state)
        return Decision(HOLD, 0, workers, f"{head}: -spawn-MIN={n} <= 0", state)
    return Decision(HOLD, 0, workers, head, state)


def backlog(queues: Sequence[QueueStats], fleet: FleetState, cfg: PolicyConfig,
            now: float, state: PolicyState) -> Decision:
    """Size the fleet by the work waiting (plus a utilisation floor); scale in slowly and only idle workers.

    Bulk queues have their own budget (bulk_workers), added on top of what interactive work needs.
    """
    bulk = [q for q in queues if q.bulk]
    queues = [q for q in queues if not q.bulk]
    work = sum((q.visible + q.in_flight) * cfg.spr(q.service) for q in queues)
    messages = sum(q.visible + q.in_flight for q in queues)
    backlog_need = math.ceil(work / cfg.latency_budget_s - 1e-9) if work > 0 else 0
    if messages > 0:
        backlog_need = max(backlog_need, 1)          # from zero on the first message
    bulk_items = sum(q.visible + q.in_flight for q in bulk)
    bulk_need = bulk_workers(bulk, cfg)
    backlog_need += bulk_need
    if bulk_items:                                   # someone must run it: one worker at least
        backlog_need = max(backlog_need, 1)
        messages += bulk_items
    active = max(0, fleet.running - fleet.stopping)
    idle = _idle(fleet, messages, active)
    busy = active - idle
    required = min(cfg.max_workers, max(cfg.min_workers, backlog_need))
    # A drained queue under a steady stream looks like no load; so scale in only while the busy
    # workers stay within target_utilization of what is left (a floor, never a launch trigger:
    # during a burst every worker is busy and the backlog term alone sizes the fleet).
    util_floor = math.ceil(busy / cfg.target_utilization - 1e-9) if busy > 0 else 0
    floor = min(cfg.max_workers, max(required, util_floor))
    capacity = active + fleet.pending                # pending instances are capacity already bought
    head = (f"work={work:.1f}s bulk_workers={bulk_need} messages={messages} required={required} util_floor={util_floor} "
            f"capacity={capacity} (running={fleet.running} pending={fleet.pending} "
            f"idle={idle} stopping={fleet.stopping})")
    if required > capacity:
        # stopping workers still run (and bill) until they exit: max_workers caps every instance
        room = cfg.max_workers - fleet.running - fleet.pending
        if room <= 0:
            return Decision(HOLD, 0, capacity, f"{head}: at max_workers until stopping workers exit",
                            PolicyState(None, state.last_scale_in_at))
        n = min(required - capacity, room)
        return Decision(LAUNCH, n, capacity + n, head, PolicyState(None, state.last_scale_in_at))
    if floor >= capacity:
        return Decision(HOLD, 0, capacity, head, PolicyState(None, state.last_scale_in_at))
    below_since = state.below_since if state.below_since is not None else now
    kept = PolicyState(below_since, state.last_scale_in_at)
    waited = now - below_since
    if waited < cfg.scale_in_window_s:
        return Decision(HOLD, 0, capacity, f"{head}: over-provisioned for {waited:.0f}s "
                        f"< window {cfg.scale_in_window_s:.0f}s", kept)
    if state.last_scale_in_at is not None and now - state.last_scale_in_at < cfg.scale_in_step_s:
        return Decision(HOLD, 0, capacity, f"{head}: last scale-in step {now - state.last_scale_in_at:.0f}s ago", kept)
    step = max(1, math.floor(capacity * cfg.scale_in_fraction))
    n = min(capacity - floor, step, idle, active - cfg.min_workers)
    if n <= 0:
        return Decision(HOLD, 0, capacity, f"{head}: no idle worker to stop", kept)
    return Decision(TERMINATE, n, capacity - n, f"{head}: scale in {n} (step<= {step}, idle {idle})",
                    PolicyState(below_since, now))


def bulk_workers(bulk: Sequence[QueueStats], cfg: PolicyConfig) -> int:
    """Workers the bulk budget adds to what interactive work needs: enough to finish each bulk queue by its
    deadline (one already missed: as many as allowed). Without a deadline, none: the lowest cost is the
    capacity interactive work leaves idle (bulk work costs the same worker-seconds on any fleet size),
    on one worker at least (the caller's floor)."""
    need = 0.0
    for q in bulk:
        items = q.visible + q.in_flight
        if items > 0 and q.deadline_s is not None:
            # finish a little early: the last tick's items still need a worker when the deadline comes
            left = q.deadline_s - cfg.bulk_margin_s
            need += cfg.max_workers if left <= 0 else items * cfg.spr(q.service) / left
    return min(cfg.max_workers, math.ceil(need - 1e-9)) if need > 0 else 0


def _idle(fleet: FleetState, messages: int, active: int) -> int:
    """Idle workers: from heartbeats; without them, all when nothing is queued or held, else none."""
    if fleet.idle is not None:
        return max(0, min(fleet.idle, active))
    return active if messages == 0 else 0


def burst_workers(burst_work_s: float, cfg: PolicyConfig) -> int:
    """Workers the backlog policy adds for a burst of this much work (its warm-pool size): required - min."""
    required = min(cfg.max_workers, max(cfg.min_workers, math.ceil(burst_work_s / cfg.latency_budget_s - 1e-9)))
    return max(0, required - cfg.min_workers)


POLICIES: dict[str, Policy] = {"xcloud-baseline": xcloud_baseline, "backlog": backlog}
ALIASES = {"classifycloud": "xcloud-baseline"}   # the baseline's old name: settings and scripts keep working


def get_policy(name: str) -> Policy:
    """A policy by name; ValueError names the choices."""
    try:
        return POLICIES[ALIASES.get(name, name)]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None


def ewma(previous: float | None, observed: float, alpha: float) -> float:
    """Exponentially weighted moving average step (the first observation is taken as is)."""
    return observed if previous is None else alpha * observed + (1 - alpha) * previous
