"""Liveness by progress, the worker's side: the loop marks its steps; a watchdog acts on the shared rule.

A heartbeat thread beats even when the loop is hung (a stuck GPU call, a deadlock), so beats alone say
nothing. The loop marks each step; a worker that holds work and has made no step within the stall
limit is wedged. The worker's own watchdog then releases what it holds (visible again at once, for
another worker) and exits non-zero; the autoscaler's health check judges the heartbeat by the same
rule and replaces the instance (a worker too stuck for its watchdog still beats its stale step).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable

from shared.config import Settings
from shared.liveness import stalled_s
from shared.messages import now_ms

log = logging.getLogger(__name__)

EXIT_WEDGED = 3


class Progress:
    """The loop's last step (epoch ms); the loop calls step() every time round."""

    def __init__(self):
        self.step_at = now_ms()

    def step(self) -> None:
        """The loop came round: it is not stuck."""
        self.step_at = now_ms()


class Watchdog(threading.Thread):
    """Checks the worker's own progress; a wedged worker releases what it holds and exits."""

    def __init__(self, settings: Settings, limit_s: float, record: Callable[[], dict],
                 release_held: Callable[[], int], exit: Callable[[int], None] = os._exit):
        super().__init__(name="watchdog", daemon=True)
        self.settings = settings
        self.limit_s = limit_s
        self.record = record
        self.release_held = release_held
        self.exit = exit
        self.fired = threading.Event()
        self._stop_event = threading.Event()

    def run(self) -> None:
        every = max(0.2, min(self.settings.heartbeat_interval_s, self.limit_s / 4))
        while not self._stop_event.wait(every):
            stalled = stalled_s(self.record(), time.time(), self.limit_s, self.settings)
            if stalled is None:
                continue
            log.error("worker loop made no progress for %.0f s holding work (limit %.0f s): releasing what it"
                      " holds and exiting", stalled, self.limit_s)
            released = self.release_held()
            log.error("released %d held messages; exiting %d so the instance is replaced", released, EXIT_WEDGED)
            self.fired.set()
            self.exit(EXIT_WEDGED)
            return

    def stop(self) -> None:
        """Stop watching (the worker is shutting down normally)."""
        self._stop_event.set()
