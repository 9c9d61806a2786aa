"""The autoscaler loop: every tick read queues and fleet, ask the policy, act, log and publish."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from autoscaler.batches import BulkReader
from autoscaler.fleet import Fleet
from autoscaler.health import WorkerHealth, exits_in_window
from autoscaler.housekeeping import Housekeeping
from autoscaler.policy import (
    HOLD,
    LAUNCH,
    TERMINATE,
    Decision,
    FleetState,
    PolicyConfig,
    PolicyState,
    QueueStats,
    get_policy,
)
from autoscaler.queues import HeartbeatReader, QueueReader, ServiceTimes
from autoscaler.versions import VersionController, declared_times
from shared.aws import client
from shared.catalogue import Catalogue, catalogue_for
from shared.config import Settings
from shared.live_catalogue import LiveCatalogue
from shared.liveness import stall_limit_s
from shared.messages import Terminate, now_ms
from shared.metrics import MetricsPublisher
from shared.transport import Transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TickResult:
    """What one tick saw and did (tests and the simulator inspect it)."""

    queues: tuple[QueueStats, ...]
    fleet: FleetState
    decision: Decision
    acted: int                  # instances launched or terminate messages sent


class Autoscaler:
    """One tick = read, decide, act. run(stop_event) ticks until the event is set."""

    def __init__(self, settings: Settings, fleet: Fleet, catalogue: Catalogue | None = None, *,
                 transport: Transport, s3=None, cloudwatch=None, metrics: MetricsPublisher | None = None,
                 clock=time.time):
        self.settings = settings
        self.fleet = fleet
        self.catalogue = catalogue or LiveCatalogue(settings, catalogue_for(settings))  # + S3 entries, short TTL
        self.policy_name = settings.policy
        self.policy = get_policy(settings.policy)
        self.transport = transport
        self.s3 = s3 or client("s3", settings)
        self.clock = clock
        self.queues = QueueReader(settings, self.catalogue, self.transport, create_missing=True)
        self.bulk = BulkReader(settings, self.catalogue, self.transport, self.s3, clock=clock)
        self.heartbeats = HeartbeatReader(settings, self.s3, clock=clock)
        cw = cloudwatch if cloudwatch is not None else (
            client("cloudwatch", settings, connect_timeout=2, read_timeout=5) if settings.metrics_enabled else None)
        self.service_times = ServiceTimes(settings, self.catalogue, cw, clock=clock)
        self.metrics = metrics or MetricsPublisher(settings, "autoscaler")
        self.housekeeping = Housekeeping(settings, self.transport, self.catalogue, self.s3, clock=clock)
        self.janitor = self.housekeeping.janitor
        self.health = WorkerHealth(settings, clock=clock, stall_limit=lambda services: stall_limit_s(
            settings, services, self.catalogue, self.service_times.estimates))
        self._exits: list[tuple[float, int]] = []
        self._seen_exits: set[str] = set()
        self._crash_reported = 0
        self.dead_letters = self.housekeeping.dead_letters
        self.versions = VersionController(settings, self.s3, self.metrics, clock=clock)  # canaries, rollback
        self.state = PolicyState()
        self.ticks = 0
        self.errors = 0
        self.last: TickResult | None = None
        self._status: tuple[int, int, int, int] | None = None   # (running, pending, queued, in flight) last shown

    def observe(self) -> tuple[list[QueueStats], FleetState]:
        """Queue counts and fleet state (heartbeats refine idle/stopping; their failure is tolerated)."""
        queues = self.queues.read() + self.bulk.read()   # bulk queues carry their own budget (policy.bulk_workers)
        self.fleet.maintain()
        self._note_exits()
        count = self.fleet.count()
        idle, stopping = None, 0
        try:
            hb = self.heartbeats.read()
            idle, stopping = hb.idle, hb.stopping
        except Exception as exc:   # without heartbeats the policy falls back to queue counts
            log.warning("autoscaler: heartbeats unreadable (%s); idle workers inferred from queues", exc)
        else:
            count = self._replace_unhealthy(count, hb)
        # terminates sent but not yet taken will stop workers too: counting them as stopping keeps the
        # next tick from asking more workers than intended (a taken one is deleted, and shows in heartbeats)
        stopping = min(stopping + self.outstanding_terminates(), count.running)
        return queues, FleetState(running=count.running, pending=count.pending, idle=idle, stopping=stopping)

    def _replace_unhealthy(self, count, hb):
        """Stop hung and crash-looping workers now; the policy launches their replacements this tick."""
        report = self.health.check(list(count.ids[:count.running]), hb)
        if not report.replace:
            return count
        self.fleet.kill(list(report.replace))   # a hung local process may ignore SIGTERM
        self.metrics.record("WorkersReplaced", len(report.replace))
        gone = set(report.replace)
        running = [i for i in count.ids[:count.running] if i not in gone]
        # an Auto Scaling group launches the replacements itself: capacity already bought, so pending
        replaced = len(report.replace) if self.fleet.replaces_terminated else 0
        return type(count)(running=len(running), pending=count.pending + replaced,
                           ids=tuple(running) + count.ids[count.running:])

    def _note_exits(self) -> None:
        """Report local workers that keep exiting non-zero (a crash loop the fleet cannot keep running)."""
        exited, killed = self.fleet.exited, self.fleet.killed
        if not exited:   # a cloud fleet never sees an exit (Fleet.exited stays empty)
            return
        now = self.clock()
        for wid in [w for w in exited if w not in self._seen_exits and w not in killed]:
            self._seen_exits.add(wid)
            self._exits.append((now, exited[wid]))
        window = self.settings.crash_loop_window_s
        self._exits = [(t, c) for t, c in self._exits if now - t <= window]
        crashes = exits_in_window(self._exits, now, window)
        if crashes >= self.settings.crash_loop_starts and crashes != self._crash_reported:
            log.error("autoscaler: %d workers exited non-zero in %.0f s: crash loop; see the worker logs",
                      crashes, window)
            self.health.crash_loops.append(f"{crashes} exits")
            self.metrics.record("WorkerCrashes", crashes)
        self._crash_reported = crashes

    def outstanding_terminates(self) -> int:
        """Terminate messages still in the queue (not yet taken or dropped by a worker)."""
        depth = self.transport.depth(self.transport.terminate_queue_url())
        return depth.visible + depth.in_flight

    def tick(self) -> TickResult | None:
        """One decision; an AWS (or any) error skips the tick and returns None."""
        self.ticks += 1
        try:
            queues, fleet = self.observe()
            # every version's work at its own service time (autoscaler/versions.py)
            spr = self.versions.seconds_per_request(self.service_times.current(), declared_times(self.catalogue))
            cfg = PolicyConfig.from_settings(self.settings, spr)
            decision = self.policy(queues, fleet, cfg, self.clock(), self.state)
            acted = self.act(decision)
        except Exception as exc:
            self.errors += 1
            log.error("autoscaler: tick %d skipped: %s: %s", self.ticks, type(exc).__name__, exc)
            return None
        self.state = decision.state
        self._log(queues, fleet, decision)
        self._publish(queues, fleet, decision)
        self.housekeeping.maybe_run()   # after acting: a slow sweep never delays a scaling decision
        self._check_versions()
        self.last = TickResult(tuple(queues), fleet, decision, acted)
        return self.last

    def _log(self, queues: list[QueueStats], fleet: FleetState, decision: Decision) -> None:
        """A decision that changes something at INFO (a hold only at DEBUG); a status line when it changes."""
        changes = decision.action != HOLD and decision.count > 0
        log.log(logging.INFO if changes else logging.DEBUG, "autoscaler[%s]: %s %d -> desired %d: %s",
                self.policy_name, decision.action, decision.count, decision.desired, decision.reason)
        status = (fleet.running, fleet.pending, sum(q.visible + q.delayed for q in queues),
                  sum(q.in_flight for q in queues))
        if status != self._status:
            self._status = status
            log.info("status: %d worker(s)%s, %d queued, %d in flight", status[0],
                     f" + {status[1]} starting" if status[1] else "", status[2], status[3])

    def _check_versions(self) -> None:
        """Roll back canaries past their bounds; a failure waits for the next tick (scaling is not held up)."""
        try:
            self.versions.check()
        except Exception as exc:
            log.warning("autoscaler: version check skipped: %s: %s", type(exc).__name__, exc)

    def act(self, decision: Decision) -> int:
        """Launch instances or send terminate messages; returns how many."""
        if decision.action == LAUNCH and decision.count > 0:
            return len(self.fleet.launch(decision.count))
        if decision.action == TERMINATE and decision.count > 0:
            return self.send_terminates(decision.count)
        return 0

    def send_terminates(self, n: int) -> int:
        """n terminate messages stamped now (one message stops one worker; stale ones are ignored)."""
        issued = now_ms()
        result = self.transport.send_batch(self.transport.terminate_queue_url(),
                                           [(i, Terminate(issued_at=issued)) for i in range(n)])
        for failed in result.failed:
            log.warning("autoscaler: terminate message not sent: %s %s", failed.code, failed.message)
        return len(result.succeeded)

    def _publish(self, queues: list[QueueStats], fleet: FleetState, decision: Decision) -> None:
        m = self.metrics
        for q in queues:
            if q.bulk:   # QueueVisible stays the interactive queues' (alarms, dashboards); GET /batches has progress
                continue
            m.record("QueueVisible", q.visible, Service=q.service)
            m.record("QueueInFlight", q.in_flight, Service=q.service)
            m.record("QueueDelayed", q.delayed, Service=q.service)
        m.record("FleetRunning", fleet.running)
        m.record("FleetPending", fleet.pending)
        m.record("FleetDesired", decision.desired)
        m.record("ScalingDecision", 1, Action=decision.action)

    def run(self, stop_event: threading.Event) -> None:
        """Tick every settings.tick_s until stop_event is set (ticks keep their cadence)."""
        self.metrics.start()
        log.info("autoscaler: policy %s, fleet %s, workers %d..%d, tick %.1fs", self.policy_name,
                 type(self.fleet).__name__, self.settings.min_workers, self.settings.max_workers,
                 self.settings.tick_s)
        try:
            while not stop_event.is_set():
                started = time.monotonic()
                self.tick()
                stop_event.wait(max(0.0, self.settings.tick_s - (time.monotonic() - started)))
        finally:
            self.metrics.close()
            log.info("autoscaler: stopped after %d ticks (%d skipped)", self.ticks, self.errors)


__all__ = ["Autoscaler", "TickResult", "HOLD", "LAUNCH", "TERMINATE"]
