"""The usage log: calls counted in memory per (key, service, minute), written per flush, never per call.

A call only updates an in-memory aggregate (calls, statuses, routes, bytes, a latency histogram:
webserver/usage_hist.py). Every ``usage_flush_interval_s`` a background thread writes one item per
(key, service, minute) this process saw since the last flush, 25 to a ``batch_write_item`` call, and
close() writes what is left. So a clean stop loses nothing; a crash loses the calls of at most one
flush interval of one process.
Items: partition key ``day`` (UTC date of the minute), sort key
``sk`` = ``<minute epoch ms, 13 digits>#<key id>#<service>#<process id>#<flush number>``: a flush writes a
new item, never adds to an old one, so a retried write rewrites the same item instead of counting twice.
Attributes: key_id, service, minute, process, calls, statuses {code: n}, routes {"METHOD rule": n},
bytes_in, bytes_out, lat_min, lat_max, lat_hist {bucket: n}, expires_at (TTL). Unprocessed items are
retried with backoff; a batch DynamoDB refuses as a whole is split until the bad item is alone.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from botocore.exceptions import BotoCoreError, ClientError

from shared.config import Settings
from webserver import usage_hist

log = logging.getLogger(__name__)

BATCH = 25                       # DynamoDB's batch_write_item limit
ANONYMOUS = "anonymous"          # the key id of calls made without a (valid) key
REJECTED = frozenset({"ValidationException"})   # DynamoDB refuses the call for one of its items: no retry helps
MINUTE_MS = 60_000


def table_name(settings: Settings) -> str:
    """The usage table (Terraform: infra/terraform/dynamodb.tf)."""
    return f"{settings.prefix}-usage"


def day_of(at_ms: int) -> str:
    """The partition an item lives in: its UTC date."""
    return datetime.fromtimestamp(at_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Call:
    """One API call, as the edge saw it (only ever added to an aggregate)."""

    key_id: str
    route: str
    method: str
    service: str
    status: int
    latency_ms: float
    bytes_in: int
    bytes_out: int
    at: int                  # epoch ms


@dataclass
class Aggregate:
    """The calls of one key to one service in one minute, from one process (one flush, or merged)."""

    key_id: str
    service: str
    minute: int                                   # epoch ms of the minute's start
    process: str = ""
    calls: int = 0
    statuses: Counter = field(default_factory=Counter)
    routes: Counter = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    lat_min: float = float("inf")
    lat_max: float = 0.0
    hist: Counter = field(default_factory=Counter)

    def add(self, call: Call) -> None:
        """Count one call."""
        self.calls += 1
        self.statuses[call.status] += 1
        self.routes[f"{call.method} {call.route}"] += 1
        self.bytes_in += call.bytes_in
        self.bytes_out += call.bytes_out
        self.lat_min = min(self.lat_min, call.latency_ms)
        self.lat_max = max(self.lat_max, call.latency_ms)
        self.hist[usage_hist.bucket_of(call.latency_ms)] += 1

    def merge(self, other: "Aggregate") -> None:
        """Add another aggregate's counts (the report merges items of several flushes and processes)."""
        self.calls += other.calls
        self.statuses.update(other.statuses)
        self.routes.update(other.routes)
        self.bytes_in += other.bytes_in
        self.bytes_out += other.bytes_out
        self.lat_min = min(self.lat_min, other.lat_min)
        self.lat_max = max(self.lat_max, other.lat_max)
        self.hist.update(other.hist)

    def errors(self, low: int) -> int:
        """Calls answered with a status in [low, low + 100) (low=500: every status from 500 up)."""
        return sum(n for s, n in self.statuses.items() if s >= low and (low >= 500 or s < low + 100))

    def percentile(self, q: float) -> float:
        """The latency percentile from the histogram (webserver/usage_hist.py: within 5.9 %)."""
        return usage_hist.percentile(self.hist, q, self.lat_min, self.lat_max)

    def to_item(self, flush: int, ttl_days: int) -> dict:
        """The DynamoDB item (low-level format) of this aggregate as written by flush number `flush`."""
        return {"day": {"S": day_of(self.minute)},
                "sk": {"S": f"{self.minute:013d}#{self.key_id}#{self.service}#{self.process}#{flush}"},
                "key_id": {"S": self.key_id}, "service": {"S": self.service}, "minute": {"N": str(self.minute)},
                "process": {"S": self.process}, "calls": {"N": str(self.calls)},
                "statuses": {"M": {str(s): {"N": str(n)} for s, n in sorted(self.statuses.items())}},
                "routes": {"M": {r: {"N": str(n)} for r, n in sorted(self.routes.items())}},
                "bytes_in": {"N": str(self.bytes_in)}, "bytes_out": {"N": str(self.bytes_out)},
                "lat_min": {"N": f"{self.lat_min:.3f}"}, "lat_max": {"N": f"{self.lat_max:.3f}"},
                "lat_hist": usage_hist.to_attr(self.hist),
                "expires_at": {"N": str(self.minute // 1000 + ttl_days * 86400)}}

    @classmethod
    def from_item(cls, item: dict) -> "Aggregate":
        """From a DynamoDB item; a per-call record of the old log (before aggregation) reads as one call."""
        if "calls" not in item:
            agg = cls(item["key_id"]["S"], item["service"]["S"], int(item["at"]["N"]) // MINUTE_MS * MINUTE_MS)
            agg.add(Call(agg.key_id, item["route"]["S"], item.get("method", {}).get("S", ""), agg.service,
                         int(item["status"]["N"]), float(item["latency_ms"]["N"]), int(item["bytes_in"]["N"]),
                         int(item["bytes_out"]["N"]), int(item["at"]["N"])))
            return agg
        nums = lambda name: {k: int(v["N"]) for k, v in item.get(name, {}).get("M", {}).items()}  # noqa: E731
        return cls(key_id=item["key_id"]["S"], service=item["service"]["S"], minute=int(item["minute"]["N"]),
                   process=item.get("process", {}).get("S", ""), calls=int(item["calls"]["N"]),
                   statuses=Counter({int(s): n for s, n in nums("statuses").items()}),
                   routes=Counter(nums("routes")), bytes_in=int(item["bytes_in"]["N"]),
                   bytes_out=int(item["bytes_out"]["N"]), lat_min=float(item["lat_min"]["N"]),
                   lat_max=float(item["lat_max"]["N"]), hist=usage_hist.from_attr(item.get("lat_hist", {})))


class UsageLog:
    """Per-process aggregator: record() never touches DynamoDB; flush() writes; close() flushes what is left."""

    def __init__(self, settings: Settings, dynamodb, max_attempts: int = 8):
        self.table = table_name(settings)
        self.interval_s = settings.usage_flush_interval_s
        self.ttl_days = settings.usage_ttl_days
        self.max_attempts = max_attempts
        self.written = 0        # calls in items written
        self.dropped = 0        # calls lost (memory bound reached, or their item could not be written)
        self.items = 0          # items written
        self._db = dynamodb
        self._groups: dict[tuple[str, str, int], Aggregate] = {}
        self._max = settings.usage_buffer_max
        self._cond = threading.Condition()
        self._stop = False
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = -1
        self._process = ""
        self._flushes = 0

    def start(self) -> None:
        """Start the writer thread (after fork; idempotent)."""
        with self._cond:
            if self._thread is not None or self._stop:
                return
            self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)
            self._thread.start()

    @property
    def process(self) -> str:
        """This process's id in item keys: made after fork, so two gunicorn workers never share one."""
        if self._pid != os.getpid():
            self._pid, self._process, self._flushes = os.getpid(), f"{os.getpid()}-{secrets.token_hex(4)}", 0
        return self._process

    def record(self, call: Call) -> None:
        """Count one call; past usage_buffer_max aggregates held, a call of a new one is dropped and counted."""
        group = (call.key_id, call.service, call.at // MINUTE_MS * MINUTE_MS)
        with self._cond:
            agg = self._groups.get(group)
            if agg is None:
                if len(self._groups) >= self._max:
                    self.dropped += 1
                    if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                        log.error("usage log: %d aggregates held; %d calls dropped so far", self._max, self.dropped)
                    return
                agg = self._groups[group] = Aggregate(*group)
            agg.add(call)

    @property
    def pending(self) -> int:
        """Calls counted and not yet written."""
        with self._cond:
            return sum(a.calls for a in self._groups.values())

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._stop:
                    self._cond.wait(self.interval_s)
                stopping = self._stop
            self.flush()
            if stopping:
                return

    def flush(self) -> None:
        """Write one item per aggregate held now (batches of 25, unprocessed items retried)."""
        with self._flush_lock:
            with self._cond:
                aggs, self._groups = list(self._groups.values()), {}
            if not aggs:
                return
            process = self.process
            self._flushes += 1
            for agg in aggs:
                agg.process = process
            for i in range(0, len(aggs), BATCH):
                items = {}
                for agg in aggs[i:i + BATCH]:
                    item = agg.to_item(self._flushes, self.ttl_days)
                    items[item["sk"]["S"]] = (agg, item)
                lost = self._put([{"PutRequest": {"Item": item}} for _, item in items.values()])
                calls_lost = sum(items[sk][0].calls for sk in lost)
                self.written += sum(agg.calls for agg, _ in items.values()) - calls_lost
                self.dropped += calls_lost
                self.items += len(items) - len(lost)

    def _put(self, requests: list[dict]) -> set[str]:
        """Write these items (unprocessed ones retried with backoff); returns the sort keys of those lost."""
        delay = 0.05
        for attempt in range(1, self.max_attempts + 1):
            try:
                out = self._db.batch_write_item(RequestItems={self.table: requests})
                requests = out.get("UnprocessedItems", {}).get(self.table, [])
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in REJECTED:
                    if len(requests) > 1:   # one bad item fails the whole call: halve until it is alone
                        mid = len(requests) // 2
                        return self._put(requests[:mid]) | self._put(requests[mid:])
                    log.error("usage log: item %s refused, dropped: %s",
                              requests[0]["PutRequest"]["Item"]["sk"]["S"][:100], exc)
                    return _sks(requests)
                log.warning("usage log: batch of %d not written (attempt %d): %s", len(requests), attempt, exc)
            except BotoCoreError as exc:
                log.warning("usage log: batch of %d not written (attempt %d): %s", len(requests), attempt, exc)
            if not requests:
                return set()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        log.error("usage log: %d items lost after %d attempts (table %s)", len(requests),
                  self.max_attempts, self.table)
        return _sks(requests)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the writer and flush every call counted."""
        with self._cond:
            self._stop = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
        self.flush()
        log.info("usage log closed: %d calls in %d items written, %d calls dropped", self.written, self.items,
                 self.dropped)


def _sks(requests: list[dict]) -> set[str]:
    return {r["PutRequest"]["Item"]["sk"]["S"] for r in requests}
