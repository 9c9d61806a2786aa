"""The terminate check: one fresh terminate message stops one worker; stale ones are dropped."""
from __future__ import annotations

import logging
import time

from shared.config import Settings
from shared.messages import MessageError, Terminate, now_ms

log = logging.getLogger(__name__)


class TerminateWatch:
    """Checks the terminate queue every N handled requests or every T seconds, whichever comes first."""

    def __init__(self, settings: Settings, sqs, queue_url: str | None):
        self.settings = settings
        self.sqs = sqs
        self.queue_url = queue_url
        self.every = max(1, settings.terminate_check_every)
        self.interval_s = settings.terminate_check_interval_s
        self._handled = 0
        self._last = time.monotonic()
        self.stale_dropped = 0

    def note_handled(self, n: int) -> None:
        """Count requests handled since the last check."""
        self._handled += n

    def due(self, idle: bool = False) -> bool:
        """True when a check is due; an idle worker checks within half the expiry, before a terminate goes stale."""
        if self.queue_url is None:
            return False
        interval = min(self.interval_s, self.settings.terminate_expiry_s / 2) if idle else self.interval_s
        return self._handled >= self.every or time.monotonic() - self._last >= interval

    def check(self) -> bool:
        """Look at the terminate queue once; True when this worker took a fresh terminate message."""
        self._handled = 0
        self._last = time.monotonic()
        if self.queue_url is None:
            return False
        try:
            resp = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10,
                                            WaitTimeSeconds=0, VisibilityTimeout=30)
        except Exception as exc:  # a failed check is retried at the next one
            log.warning("terminate check failed: %s", exc)
            return False
        taken = False
        now = now_ms()
        for m in resp.get("Messages", []):
            try:
                msg = Terminate.from_json(m.get("Body", ""))
            except MessageError as exc:
                log.warning("dropping malformed terminate message %s: %s", m["MessageId"], exc)
                self._delete(m)
                continue
            if not msg.is_fresh(self.settings.terminate_expiry_s, now):
                log.info("ignoring stale terminate message %s (issued %.1fs ago)", m["MessageId"],
                         (now - msg.issued_at) / 1000)
                self._delete(m)
                self.stale_dropped += 1         # after the delete: counted means gone
            elif not taken and self._delete(m):
                log.info("terminate message %s taken: this worker stops", m["MessageId"])
                taken = True
            else:  # one message = one worker: leave the others for other workers, visible now
                self._release(m)
        return taken

    def _delete(self, m: dict) -> bool:
        try:
            self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
            return True
        except Exception as exc:
            log.warning("could not delete terminate message %s: %s", m["MessageId"], exc)
            return False

    def _release(self, m: dict) -> None:
        try:
            self.sqs.change_message_visibility(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"],
                                               VisibilityTimeout=0)
        except Exception as exc:
            log.warning("could not release terminate message %s: %s", m["MessageId"], exc)
