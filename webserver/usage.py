"""The usage log: one DynamoDB record per API call, buffered in memory and written by a background thread.

Items: partition key ``day`` (UTC date, so a time range is a few queries), sort key
``sk`` = ``<epoch ms, 13 digits>#<request id>#<nonce>`` (the nonce keeps two records of one id in
one millisecond apart; the web bounds request ids to 64 safe characters); attributes key_id, route, method,
service, status, latency_ms, bytes_in, bytes_out, request_id, at, expires_at (TTL).
The request thread only appends to a deque; the writer sends batch_write_item (25 a
call), retries unprocessed items with backoff, splits a batch DynamoDB rejects as a whole until the
one bad record is alone (dropped and counted, never its 24 neighbours), and close() drains everything.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone

from botocore.exceptions import BotoCoreError, ClientError

from shared.config import Settings

log = logging.getLogger(__name__)

BATCH = 25                       # DynamoDB's batch_write_item limit
ANONYMOUS = "anonymous"          # the key id of calls made without a (valid) key
REJECTED = frozenset({"ValidationException"})   # DynamoDB refuses the call for one of its items: no retry helps


def table_name(settings: Settings) -> str:
    """The usage table (Terraform: infra/terraform/dynamodb.tf)."""
    return f"{settings.prefix}-usage"


def day_of(at_ms: int) -> str:
    """The partition a record lives in: its UTC date."""
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class UsageRecord:
    """One API call."""

    key_id: str
    route: str
    method: str
    service: str
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    request_id: str
    at: int                  # epoch ms
    nonce: str = field(default_factory=lambda: secrets.token_hex(4), compare=False)

    def to_item(self, ttl_days: int) -> dict:
        """The DynamoDB item (low-level format)."""
        return {"day": {"S": day_of(self.at)}, "sk": {"S": f"{self.at:013d}#{self.request_id[:64]}#{self.nonce}"},
                "key_id": {"S": self.key_id}, "route": {"S": self.route}, "method": {"S": self.method},
                "service": {"S": (self.service or "-")[:64]}, "status": {"N": str(self.status)},
                "latency_ms": {"N": f"{self.latency_ms:.3f}"}, "bytes_in": {"N": str(self.bytes_in)},
                "bytes_out": {"N": str(self.bytes_out)}, "request_id": {"S": self.request_id},
                "at": {"N": str(self.at)}, "expires_at": {"N": str(self.at // 1000 + ttl_days * 86400)}}

    @classmethod
    def from_item(cls, item: dict) -> "UsageRecord":
        """From a DynamoDB item."""
        return cls(key_id=item["key_id"]["S"], route=item["route"]["S"], method=item.get("method", {}).get("S", ""),
                   service=item["service"]["S"], status=int(item["status"]["N"]),
                   latency_ms=float(item["latency_ms"]["N"]), bytes_in=int(item["bytes_in"]["N"]),
                   bytes_out=int(item["bytes_out"]["N"]), request_id=item["request_id"]["S"],
                   at=int(item["at"]["N"]))


class UsageLog:
    """Buffered writer: record() never blocks on DynamoDB; close() flushes what is left."""

    def __init__(self, settings: Settings, dynamodb, max_attempts: int = 8):
        self.table = table_name(settings)
        self.interval_s = settings.usage_flush_interval_s
        self.ttl_days = settings.usage_ttl_days
        self.max_attempts = max_attempts
        self.written = 0
        self.dropped = 0
        self._db = dynamodb
        self._buf: deque[UsageRecord] = deque()
        self._max = settings.usage_buffer_max
        self._cond = threading.Condition()
        self._stop = False
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the writer thread (after fork; idempotent)."""
        with self._cond:
            if self._thread is not None or self._stop:
                return
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    def record(self, rec: UsageRecord) -> None:
        """Queue one record; when the buffer is full the oldest is dropped and counted (memory stays bounded)."""
        with self._cond:
            if len(self._buf) >= self._max:
                self._buf.popleft()
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    log.error("usage log: buffer full (%d); %d records dropped so far", self._max, self.dropped)
            self._buf.append(rec)
            if len(self._buf) >= BATCH:
                self._cond.notify()

    @property
    def pending(self) -> int:
        """Records not yet written."""
        return len(self._buf)

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stop and len(self._buf) < BATCH:
                    self._cond.wait(self.interval_s)
                stopping = self._stop
            self.flush()
            if stopping:
                return

    def flush(self) -> None:
        """Write everything buffered now (batches of 25, unprocessed items retried)."""
        with self._flush_lock:
            while True:
                with self._cond:
                    batch = [self._buf.popleft() for _ in range(min(BATCH, len(self._buf)))]
                if not batch:
                    return
                self._write(batch)

    def _write(self, batch: list[UsageRecord]) -> None:
        lost = self._put([{"PutRequest": {"Item": r.to_item(self.ttl_days)}} for r in batch])
        self.written += len(batch) - lost
        self.dropped += lost

    def _put(self, requests: list[dict]) -> int:
        """Write these items (unprocessed ones retried with backoff); returns how many were lost."""
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                out = self._db.batch_write_item(RequestItems={self.table: requests})
                requests = out.get("UnprocessedItems", {}).get(self.table, [])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in REJECTED:
                    if len(requests) > 1:   # one bad item fails the whole call: halve until it is alone
                        mid = len(requests) // 2
                        return self._put(requests[:mid]) + self._put(requests[mid:])
                    log.error("usage log: record %s refused, dropped: %s",
                              requests[0]["PutRequest"]["Item"]["sk"]["S"][:100], exc)
                    return 1
                log.warning("usage log: batch of %d not written (attempt %d): %s", len(requests), attempt, exc)
            except BotoCoreError as exc:
                log.warning("usage log: batch of %d not written (attempt %d): %s", len(requests), attempt, exc)
            if not requests:
                return 0
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        log.error("usage log: %d records lost after %d attempts (table %s)", len(requests),
                  self.max_attempts, self.table)
        return len(requests)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer and flush every buffered record."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.flush()
        log.info("usage log closed: %d written, %d dropped", self.written, self.dropped)
