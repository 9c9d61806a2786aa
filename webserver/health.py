"""Worker liveness from S3 heartbeats (heartbeats/<instance>.json), cached for a couple of seconds."""
from __future__ import annotations

import logging
import threading
import time

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.config import Settings
from shared.messages import Heartbeat, MessageError, now_ms

log = logging.getLogger(__name__)


class HeartbeatMonitor:
    """Lists fresh, ready workers; one S3 listing per cache period however many /healthz calls come."""

    def __init__(self, settings: Settings, s3, cache_s: float = 2.0):
        self.settings = settings
        self.cache_s = cache_s
        self._s3 = s3
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: tuple[list[dict], str | None] = ([], None)

    def ready_workers(self) -> tuple[list[dict], str | None]:
        """(fresh ready heartbeats, error reason when S3 could not be read)."""
        with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return self._cached
            self._cached = self._read()
            self._at = time.monotonic()
            return self._cached

    def _read(self) -> tuple[list[dict], str | None]:
        max_age_ms = self.settings.heartbeat_max_age_s * 1000
        now = now_ms()
        out = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket_name, Prefix=naming.heartbeat_prefix())
            for page in pages:
                for obj in page.get("Contents", []):
                    # skip objects not rewritten lately without fetching them
                    if now - obj["LastModified"].timestamp() * 1000 > max_age_ms + 5000:
                        continue
                    beat = self._get(obj["Key"])
                    if beat is not None and beat.state == "ready" and beat.is_fresh(self.settings.heartbeat_max_age_s, now):
                        out.append(beat.to_dict())
        except (ClientError, BotoCoreError) as exc:
            log.warning("heartbeats unreadable: %s", exc)
            return [], f"cannot read worker heartbeats: {exc}"
        return out, None

    def _get(self, key: str) -> Heartbeat | None:
        try:
            body = self._s3.get_object(Bucket=self.settings.bucket_name, Key=key)["Body"].read()
            return Heartbeat.from_json(body)
        except ClientError:
            return None  # deleted between listing and reading: a worker that just left
        except MessageError as exc:
            log.warning("heartbeat %s is malformed (%s); ignored", key, exc)
            return None
