"""Interruption watch: the metadata's spot instance-action and rebalance recommendation stop the worker."""
from __future__ import annotations

import json
import logging
import threading
from typing import Callable

from worker.imds import Imds

log = logging.getLogger(__name__)

SPOT_ACTION = "spot/instance-action"                   # 404 until EC2 reclaims the instance (2 minutes' warning)
REBALANCE = "events/recommendations/rebalance"         # 404 until EC2 says the instance is at elevated risk


class InterruptionWatch(threading.Thread):
    """Polls IMDS every interval; on the first notice calls on_notice(reason) once and stops polling.

    AWS suggests polling every 5 s: the worker then has at least 115 s of the two-minute warning
    to finish its batch and release what it holds, which the loop does in one batch time.
    """

    def __init__(self, imds: Imds, on_notice: Callable[[str], None], interval_s: float = 5.0):
        super().__init__(name="interruption-watch", daemon=True)
        self.imds = imds
        self.on_notice = on_notice
        self.interval_s = interval_s
        self.notice: str | None = None
        self._stop_event = threading.Event()

    def check(self) -> str | None:
        """The reason to stop, or None: a spot interruption first, then a rebalance recommendation."""
        action = self.imds.get(SPOT_ACTION)
        if action:
            doc = _json(action)
            return f"spot interruption notice: {doc.get('action', '?')} at {doc.get('time', '?')}"
        rebalance = self.imds.get(REBALANCE)
        if rebalance:
            return f"rebalance recommendation at {_json(rebalance).get('noticeTime', '?')}"
        return None

    def run(self) -> None:
        failures = 0
        while not self._stop_event.is_set():
            try:
                reason = self.check()
                failures = 0
            except OSError as exc:       # a missed poll is retried; warn once, not every 5 s
                failures += 1
                if failures == 1:
                    log.warning("interruption watch: metadata not readable (%s); retrying", exc)
                reason = None
            if reason:
                self.notice = reason
                log.warning("interruption watch: %s", reason)
                self.on_notice(reason)
                return
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        """Stop polling."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=5)
        self.imds.close()


def _json(text: str) -> dict:
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        return {}
