"""Worker health from heartbeats: hung workers (silent, or beating without progress) and crash loops.

A worker that the fleet lists as running but whose heartbeat is missing or stale past the start grace
is hung (or never came up): it is replaced. A worker that beats while holding work but whose loop has
made no progress (shared.liveness: last step, oldest held message, against the expected batch time) is
wedged: replaced too, its messages visible again once its instance is gone. A worker whose heartbeat shows a new started_at again and
again (systemd restarting a crashing worker on EC2), or a local worker process that keeps exiting
non-zero, is crash-looping: it is reported and, on a fleet that keeps it, replaced and not counted.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from autoscaler.queues import Heartbeats
from shared.config import Settings
from shared.liveness import stall_limit_s, stalled_s

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthReport:
    """Ids to replace this tick, and why."""

    stale: tuple[str, ...] = ()
    crash_looping: tuple[str, ...] = ()
    wedged: tuple[str, ...] = ()

    @property
    def replace(self) -> tuple[str, ...]:
        """Every id to replace (each once)."""
        return tuple(dict.fromkeys(self.stale + self.crash_looping + self.wedged))


class WorkerHealth:
    """check(running ids, heartbeats) once per tick; remembers first sightings and process starts."""

    def __init__(self, settings: Settings, clock=time.time,
                 stall_limit: Callable[[list[str]], float] | None = None):
        self.settings = settings
        self.clock = clock
        # services -> seconds a worker holding work may go without progress (the autoscaler passes its estimates)
        self.stall_limit = stall_limit or (lambda services: stall_limit_s(settings, services, None))
        self._first_seen: dict[str, float] = {}
        self._stopping_at: dict[str, float] = {}
        self._starts: dict[str, dict[float, float]] = {}   # id -> {started_at: when seen}
        self.replaced: list[str] = []
        self.crash_loops: list[str] = []

    def check(self, running: list[str], beats: Heartbeats) -> HealthReport:
        """Which running workers are hung or crash-looping."""
        now = self.clock()
        s = self.settings
        fresh = {str(r.get("instance_id")): r for r in beats.records}
        alive = set(running)
        for table in (self._first_seen, self._stopping_at, self._starts):
            for wid in [w for w in table if w not in alive]:
                del table[wid]
        for wid in running:
            self._first_seen.setdefault(wid, now)
        for wid, rec in fresh.items():
            if wid not in alive:
                continue
            if rec.get("state") == "stopping":
                self._stopping_at[wid] = now          # leaving on a terminate: its silence is expected
            started = rec.get("started_at")
            if isinstance(started, (int, float)):
                starts = self._starts.setdefault(wid, {})
                starts.setdefault(float(started), now)
                for t in [t for t, seen in starts.items() if now - seen > s.crash_loop_window_s]:
                    del starts[t]
        stale = tuple(w for w in running if w not in fresh
                      and now - self._first_seen[w] > s.worker_start_grace_s
                      and now - self._stopping_at.get(w, -float("inf")) > s.worker_start_grace_s)
        looping = tuple(w for w in running if len(self._starts.get(w, {})) >= s.crash_loop_starts)
        wedged = []
        for wid, rec in fresh.items():
            if wid in alive:
                limit = self.stall_limit(list(rec.get("services") or []))
                stalled = stalled_s(rec, now, limit, s)
                if stalled is not None:
                    log.error("worker %s: holds %s messages and made no progress for %.0f s (limit %.0f s): "
                              "wedged; replacing it", wid, rec.get("busy"), stalled, limit)
                    wedged.append(wid)
        for wid in stale:
            log.error("worker %s: no fresh heartbeat for %.0f s while the fleet says running; replacing it",
                      wid, s.heartbeat_max_age_s)
        for wid in looping:
            log.error("worker %s: crash loop (%d starts in %.0f s); replacing it, not counted as capacity",
                      wid, len(self._starts[wid]), s.crash_loop_window_s)
            self.crash_loops.append(wid)
        report = HealthReport(stale, looping, tuple(wedged))
        self.replaced.extend(report.replace)
        for wid in report.replace:   # a replaced id is gone: forget it
            self._first_seen.pop(wid, None)
            self._starts.pop(wid, None)
        return report


def exits_in_window(exits: list[tuple[float, int]], now: float, window_s: float) -> int:
    """Non-zero exits within the window (a local worker process that keeps crashing)."""
    return sum(1 for t, code in exits if code != 0 and now - t <= window_s)
