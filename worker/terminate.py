"""The terminate check: one fresh terminate message stops one idle worker; stale ones are dropped.

Only an idle worker (nothing held, nothing in flight) looks at the terminate queue: the policy sends a
terminate because some worker is idle, so a busy worker must leave it for that one.
"""
from __future__ import annotations

import logging
import time

from shared.config import Settings
from shared.messages import MessageError, Terminate, now_ms
from shared.transport import Received, Transport, TransportError

log = logging.getLogger(__name__)


class TerminateWatch:
    """Checks the terminate queue while idle, within half the expiry, so a fresh terminate never goes stale."""

    def __init__(self, settings: Settings, sqs_or_transport, queue_url: str | None):
        self.settings = settings
        self.transport = Transport.of(settings, sqs_or_transport)
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
        self._taken: Terminate | None = None

    def due(self, idle: bool) -> bool:
        """True when an idle worker should look; a busy worker never does (it is not the one to stop)."""
        if self.queue_url is None:
            return False
        return Terminate.check_due(idle, time.monotonic() - self._last, self.interval_s)

    def give_back(self) -> None:
        """Work arrived while taking a terminate: put it back, same issue time, for another idle worker."""
        msg, self._taken = self._taken, None
        if msg is None:
            return
        try:
            self.transport.send(self.queue_url, msg)
            self.passed_on += 1
            log.info("terminate passed on: work arrived while taking it")
        except Exception as exc:  # the autoscaler sends another on its next tick if still idle somewhere
            log.warning("could not pass a terminate on: %s", exc)

    def check(self) -> bool:
        """Look at the terminate queue once; True when this worker took a fresh terminate message."""
        self._last = time.monotonic()
        self._taken = None
        if self.queue_url is None:
            return False
        try:
            messages = self.queue.receive(10)
        except TransportError as exc:  # a failed check is retried at the next one
            log.warning("terminate check failed: %s", exc)
            return False
        taken = False
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
            elif not taken and self._delete(m):
                log.info("terminate message %s taken: this worker stops", m.message_id)
                taken = True
                self._taken = msg
            else:  # one message = one worker: leave the others for other workers, visible now
                self._release(m)
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

    def _release(self, m: Received) -> None:
        try:
            result = self.queue.release([m])
        except TransportError as exc:
            log.warning("could not release terminate message %s: %s", m.message_id, exc)
            return
        if not result.ok:
            log.warning("could not release terminate message %s: %s", m.message_id, result.failed[0].message)
