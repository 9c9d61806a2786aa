"""Housekeeping: the reply-queue janitor and the dead-letter sweep, whichever way the stack is started.

The autoscaler's tick runs it after acting; a stack with a fixed number of workers (no autoscaler)
runs it in a thread of its own, so orphan reply queues go and dead-lettered jobs are answered there too.
"""
from __future__ import annotations

import logging
import threading
import time

from autoscaler.deadletters import DeadLetterSettler
from autoscaler.janitor import ReplyQueueJanitor
from shared.aws import client
from shared.catalogue import Catalogue, catalogue_for
from shared.config import Settings
from shared.live_catalogue import LiveCatalogue
from shared.transport import Transport

log = logging.getLogger(__name__)


class Housekeeping:
    """maybe_run(): the janitor's sweep and the dead-letter sweep, each at most every janitor_interval_s."""

    def __init__(self, settings: Settings, transport: Transport, catalogue: Catalogue | None = None, s3=None,
                 clock=time.time):
        self.settings = settings
        catalogue = catalogue or LiveCatalogue(settings, catalogue_for(settings))  # + S3 entries, short TTL
        self.janitor = ReplyQueueJanitor(settings, transport, clock=clock)
        self.dead_letters = DeadLetterSettler(settings, catalogue, transport, s3 or client("s3", settings),
                                              clock=clock)

    def maybe_run(self) -> None:
        """Both sweeps when due; never raises (each logs and retries its own failures)."""
        self.janitor.maybe_sweep()
        self.dead_letters.maybe_settle()

    def run(self, stop_event: threading.Event) -> None:
        """Sweep until stop_event is set (the thread of a stack without an autoscaler)."""
        every = max(0.5, min(self.settings.tick_s, self.settings.janitor_interval_s or self.settings.tick_s))
        log.info("housekeeping: reply-queue janitor and dead-letter sweep every %.0f s",
                 self.settings.janitor_interval_s)
        while not stop_event.is_set():
            try:
                self.maybe_run()
            except Exception:   # a sweep must never end the thread: the next one retries
                log.exception("housekeeping: sweep failed")
            stop_event.wait(every)


def start_housekeeping(settings: Settings, transport: Transport, stop_event: threading.Event) -> threading.Thread:
    """Housekeeping in a daemon thread until stop_event is set."""
    thread = threading.Thread(target=Housekeeping(settings, transport).run, args=(stop_event,), name="housekeeping",
                              daemon=True)
    thread.start()
    return thread
