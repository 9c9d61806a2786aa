"""The terminate check: one fresh terminate message stops one idle worker; stale ones are dropped.

Only an idle worker (nothing held, nothing in flight) looks at the terminate queue: the policy sends a
terminate because some worker is idle, so a busy worker must leave it for that one.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from shared.config import Settings
from shared.messages import MessageError, Terminate, now_ms
from shared.transport import Received, Transport, TransportError

log = logging.getLogger(__name__)


class TerminateWatch:
    """Checks the terminate queue while idle, within half the expiry, so a fresh terminate never goes stale."""

    def __init__(self, settings: Settings, transport: Transport, queue_url: str | None,
                 may_leave: Callable[[], bool] = lambda: True):
        self.settings = settings
        self.may_leave = may_leave   # False: this worker's group is at its floor (worker/asg.py)
        self.transport = transport
        self.queue_url = queue_url
        self.queue = (self.transport.consumer(queue_url, wait_s=0, visibility_timeout=30)
                      if queue_url is not None else None)
        self.interval_s = Terminate.check_interval_s(settings.terminate_check_interval_s, settings.terminate_expiry_s)
        if self.interval_s < settings.terminate_check_interval_s:
            log.info("terminate checks every %.1f s while idle: terminate_check_interval_s %.1f s is capped at half"
                     " the expiry (%.1f s)", self.interval_s, settings.terminate_check_interval_s,
                     settings.terminate_expiry_s)
        self._last = time.monotonic()
        self.stale_dropped = 0
        self.passed_on = 0
        self._taken: Received | None = None   # taken, not yet deleted: confirm() or give_back()

    def due(self, idle: bool) -> bool:
        """True when an idle worker should look; a busy worker never does (it is not the one to stop)."""
        if self.queue_url is None:
            return False
        return Terminate.check_due(idle, time.monotonic() - self._last, self.interval_s)

    def give_back(self) -> None:
        """Work arrived while taking a terminate: make it visible again, as it was, for another idle worker.

        No send: the terminate queue's policy lets only the autoscaler send, so a worker hands a taken
        message back by its visibility, and it keeps its issue time and its place in the queue.
        """
        m, self._taken = self._taken, None
        if m is not None and self._release(m):
            self.passed_on += 1
            log.info("terminate %s passed on: work arrived while taking it", m.message_id)

    def confirm(self) -> None:
        """This worker stops for the taken terminate: delete it (one message = one worker)."""
        m, self._taken = self._taken, None
        if m is not None:
            self._delete(m)   # not deleted: it reappears after the visibility timeout, stale by then

    def check(self) -> bool:
        """Look at the terminate queue once; True when this worker took a fresh terminate message."""
        self._last = time.monotonic()
        self.give_back()   # one still held from a check nobody answered: back to the queue
        if self.queue_url is None:
            return False
        try:
            messages = self.queue.receive(10)
        except TransportError as exc:  # a failed check is retried at the next one
            log.warning("terminate check failed: %s", exc)
            return False
        taken = False
        leave: bool | None = None     # asked once per check, only when a fresh one is there
        now = now_ms()
        for m in messages:
            try:
                msg = m.parse(Terminate)
            except MessageError as exc:
                log.warning("dropping malformed terminate message %s: %s", m.message_id, exc)
                self._delete(m)
                continue
            if not msg.is_fresh(self.settings.terminate_expiry_s, now):
                log.info("ignoring stale terminate message %s (issued %.1fs ago)", m.message_id,
                         (now - msg.issued_at) / 1000)
                self._delete(m)
                self.stale_dropped += 1         # after the delete: counted means gone
                continue
            if not taken and leave is None:
                leave = self.may_leave()
            if not taken and leave:
                log.info("terminate message %s taken: this worker stops", m.message_id)
                taken = True
                self._taken = m
                continue
            if not taken:
                log.info("terminate message %s left for another worker: this one's group is at its minimum size",
                         m.message_id)
            self._release(m)   # one message = one worker: leave the others for other workers, visible now
        return taken

    def _delete(self, m: Received) -> bool:
        try:
            result = self.queue.ack([m])
        except TransportError as exc:
            result = None
            log.warning("could not delete terminate message %s: %s", m.message_id, exc)
        if result is not None and not result.ok:
            log.warning("could not delete terminate message %s: %s", m.message_id, result.failed[0].message)
        return result is not None and result.ok

    def _release(self, m: Received) -> bool:
        try:
            result = self.queue.release([m])
        except TransportError as exc:
            log.warning("could not release terminate message %s: %s", m.message_id, exc)
            return False
        if not result.ok:
            log.warning("could not release terminate message %s: %s", m.message_id, result.failed[0].message)
        return result.ok
