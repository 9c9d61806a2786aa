"""HeartbeatThread: heartbeats/<instance_id>.json in the bucket, rewritten on an interval, deleted on exit."""
from __future__ import annotations

import logging
import threading
from typing import Callable

from shared import naming
from shared.config import Settings
from shared.messages import Heartbeat as HeartbeatRecord
from shared.messages import now_ms

log = logging.getLogger(__name__)


class HeartbeatThread(threading.Thread):
    """Writes {instance_id, services, unavailable, state, busy, backends, started_at, at, step_at, oldest_held_at}."""

    def __init__(self, settings: Settings, s3, instance_id: str, services: list[str],
                 unavailable: dict[str, str], busy: Callable[[], int],
                 progress: Callable[[], tuple[int, int]] | None = None, backends: dict | None = None):
        super().__init__(name="heartbeat", daemon=True)
        self.settings = settings
        self.s3 = s3
        self.instance_id = instance_id
        self.services = list(services)
        self.unavailable = dict(unavailable)
        self.busy = busy
        self.progress = progress    # () -> (loop's last step, oldest held message's receive time), epoch ms
        self.backends = dict(backends or {})   # service -> the backend it serves with (auto: what was measured)
        self.state = "ready"
        self.started_at = now_ms()
        self.key = naming.heartbeat_key(instance_id)
        self._stop_event = threading.Event()

    def record(self) -> HeartbeatRecord:
        """The heartbeat document (the typed record of shared.messages)."""
        step_at, oldest = self.progress() if self.progress is not None else (0, 0)
        return HeartbeatRecord(instance_id=self.instance_id, services=list(self.services),
                               unavailable=dict(self.unavailable), state=self.state, busy=self.busy(),
                               backends=dict(self.backends),
                               started_at=self.started_at, at=now_ms(), step_at=step_at,
                               oldest_held_at=oldest or 0)

    def beat(self) -> bool:
        """Write the heartbeat once; False (logged) on failure."""
        try:
            self.s3.put_object(Bucket=self.settings.bucket_name, Key=self.key,
                               Body=self.record().to_json().encode(), ContentType="application/json")
            return True
        except Exception as exc:  # a missed beat only makes the worker look older
            log.warning("heartbeat %s not written: %s", self.key, exc)
            return False

    def run(self) -> None:
        while not self._stop_event.wait(self.settings.heartbeat_interval_s):
            self.beat()

    def stopping(self) -> None:
        """Announce the worker is shutting down (no new work should be expected of it)."""
        self.state = "stopping"
        self.beat()

    def stop(self) -> None:
        """Stop beating and delete the heartbeat record."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
        try:
            self.s3.delete_object(Bucket=self.settings.bucket_name, Key=self.key)
        except Exception as exc:
            log.warning("heartbeat %s not deleted: %s", self.key, exc)
