"""API keys in DynamoDB: stored only as a SHA-256 hash, found by their key id, with limits and a monthly counter.

A key looks like ``cc_<key id>_<secret>``: the key id (12 hex digits after "k") is the
table's partition key and is safe to show; the whole key is hashed (256 bits of random
secret, so a plain SHA-256 is enough: no dictionary to guess from) and compared in
constant time. The web role only reads keys and reserves quota (get_item, update_item), in blocks
(QuotaBlocks: one conditional update per block, not per call);
creating, listing and revoking run on an operator's machine (classifycloud/keyadmin.py).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.config import Settings
from shared.quota import QuotaExceeded, add_calls, month_attr  # noqa: F401  (QuotaExceeded: webserver.auth)

log = logging.getLogger(__name__)

_KEY = re.compile(r"^cc_(k[0-9a-f]{12})_[A-Za-z0-9_-]{40,64}$")


def table_name(settings: Settings) -> str:
    """The API-key table (Terraform: infra/terraform/dynamodb.tf)."""
    return naming.api_key_table(settings.prefix)


def hash_key(secret: str) -> str:
    """The stored form of a key: hex SHA-256 of the whole key string."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """(key id, full key): a fresh random key, shown once to its owner and never stored."""
    key_id = "k" + secrets.token_hex(6)
    return key_id, f"cc_{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(secret: str) -> str | None:
    """The key id inside a well-formed key, else None."""
    m = _KEY.match(secret or "")
    return m.group(1) if m else None


@dataclass(frozen=True)
class ApiKey:
    """One key's record (never the key itself)."""

    key_id: str
    key_hash: str
    owner: str
    created_at: int            # epoch ms
    revoked_at: int | None     # epoch ms, None while active
    rate_limit: float          # sustained requests per second
    burst: int                 # token-bucket size
    monthly_quota: int         # calls per calendar month
    calls_this_month: int = 0
    batch_grants: tuple[str, ...] = ()   # s3:// prefixes the operator granted this key for batches (shared/grants.py)
    sns_topics: tuple[str, ...] = ()     # SNS topic ARNs the operator registered to this key for notices

    @property
    def active(self) -> bool:
        """Not revoked."""
        return self.revoked_at is None

    @classmethod
    def from_item(cls, item: dict) -> "ApiKey":
        """From a DynamoDB item (low-level client format)."""
        def num(name, default=None):
            v = item.get(name, {}).get("N")
            return default if v is None else float(v)
        revoked = num("revoked_at")
        return cls(key_id=item["key_id"]["S"], key_hash=item["key_hash"]["S"], owner=item.get("owner", {}).get("S", ""),
                   created_at=int(num("created_at", 0)), revoked_at=None if revoked is None else int(revoked),
                   rate_limit=num("rate_limit", 0.0), burst=int(num("burst", 1)),
                   monthly_quota=int(num("monthly_quota", 0)), calls_this_month=int(num(month_attr(), 0)),
                   batch_grants=tuple(sorted(item.get("batch_grants", {}).get("SS", []))),  # shared/grants.py
                   sns_topics=tuple(sorted(item.get("sns_topics", {}).get("SS", []))))

    def public(self) -> dict:
        """What `classifycloud keys list` shows: everything but the hash."""
        return {"key_id": self.key_id, "owner": self.owner, "created_at": self.created_at,
                "revoked_at": self.revoked_at, "rate_limit": self.rate_limit, "burst": self.burst,
                "monthly_quota": self.monthly_quota, "calls_this_month": self.calls_this_month,
                "batch_grants": list(self.batch_grants), "sns_topics": list(self.sns_topics)}


class KeyStoreError(Exception):
    """DynamoDB could not be read or written (the caller answers 503)."""


class KeyStore:
    """The web's view of the key table: look a key up (cached briefly) and count a call against its quota."""

    def __init__(self, settings: Settings, dynamodb, max_cached: int = 10000):
        self.table = table_name(settings)
        self.cache_s = settings.api_key_cache_s
        self.max_cached = max_cached
        self._db = dynamodb
        self._lock = threading.Lock()
        # least recently used first: a flood of random key ids evicts other unknown ids, not the keys in use
        self._cache: OrderedDict[str, tuple[float, ApiKey | None]] = OrderedDict()
        # one lookup per key id at a time (striped: bounded however many ids clients make up), so the
        # threads that find an expired entry together make one GetItem, not one each
        self._lookups = [threading.Lock() for _ in range(64)]

    def verify(self, secret: str) -> ApiKey | None:
        """The key record matching this key string (revoked ones too: check .active), or None."""
        key_id = key_id_of(secret)
        if key_id is None:
            return None
        record = self.get(key_id)
        if record is None or not hmac.compare_digest(record.key_hash, hash_key(secret)):
            return None
        return record

    def get(self, key_id: str) -> ApiKey | None:
        """The record of a key id (None when unknown), from a cache no older than api_key_cache_s."""
        hit = self._fresh(key_id)
        if hit is not None:
            return hit[1]
        with self._lookups[hash(key_id) % len(self._lookups)]:
            hit = self._fresh(key_id)   # another thread may have looked it up while this one waited
            if hit is not None:
                return hit[1]
            return self._lookup(key_id)

    def _fresh(self, key_id: str) -> tuple[float, ApiKey | None] | None:
        """The cache entry when younger than api_key_cache_s, else None."""
        with self._lock:
            hit = self._cache.get(key_id)
            if hit is not None:
                self._cache.move_to_end(key_id)
        return hit if hit is not None and time.monotonic() - hit[0] < self.cache_s else None

    def _lookup(self, key_id: str) -> ApiKey | None:
        """Read the key's record (a consistent read) and cache it."""
        now = time.monotonic()
        try:
            item = self._db.get_item(TableName=self.table, Key={"key_id": {"S": key_id}},
                                     ConsistentRead=True).get("Item")
        except (ClientError, BotoCoreError) as exc:
            log.error("api key %s: lookup failed: %s", key_id, exc)
            raise KeyStoreError(str(exc)) from None
        record = ApiKey.from_item(item) if item else None
        with self._lock:
            self._cache[key_id] = (now, record)
            self._cache.move_to_end(key_id)
            while len(self._cache) > self.max_cached:   # bounded; the least recently used go first
                self._cache.popitem(last=False)
        return record

    def count_call(self, key: ApiKey, calls: int = 1, attr: str | None = None) -> int:
        """Add `calls` to this month's counter only if they fit under the quota (atomic); returns the new count."""
        try:
            return add_calls(self._db, self.table, key.key_id, calls, key.monthly_quota, attr)
        except (ClientError, BotoCoreError) as exc:   # QuotaExceeded passes through
            log.error("api key %s: counting calls failed: %s", key.key_id, exc)
            raise KeyStoreError(str(exc)) from None

    def used(self, key_id: str, attr: str) -> int:
        """This month's counter as stored now (a consistent read)."""
        try:
            item = self._db.get_item(TableName=self.table, Key={"key_id": {"S": key_id}}, ConsistentRead=True,
                                     ProjectionExpression="#m", ExpressionAttributeNames={"#m": attr}).get("Item")
        except (ClientError, BotoCoreError) as exc:
            log.error("api key %s: reading its counter failed: %s", key_id, exc)
            raise KeyStoreError(str(exc)) from None
        return int((item or {}).get(attr, {}).get("N", 0))


class QuotaBlocks:
    """A web process reserves a key's quota in blocks: one conditional UpdateItem per block, not per call.

    A block is as many calls as this process made for the key in the last `block_s` seconds (at least
    1, at most `block_max`), so it lasts about `block_s` at the current rate and a quiet key reserves
    one call at a time. Near the quota the block shrinks to what is left. The counter therefore counts
    calls *reserved*: at a month's edge at most one block per process and key goes unused (and the
    new month starts with fresh blocks), so a key is never granted more than its quota.
    """

    def __init__(self, store: KeyStore, block_s: float, block_max: int, clock=time.monotonic):
        self.store = store
        self.block_s = block_s
        self.block_max = max(1, block_max)
        self.clock = clock
        self.reserved = 0        # conditional updates made (one per block)
        self._lock = threading.Lock()
        self._left: dict[str, tuple[str, int]] = {}     # key id -> (month attr, calls left in its block)
        self._recent: dict[str, deque] = {}             # key id -> times of its recent calls (this process)
        self._key_locks: dict[str, threading.Lock] = {}

    def take(self, key: ApiKey) -> None:
        """Count one call against the key's quota; QuotaExceeded or KeyStoreError when it cannot be."""
        attr = month_attr()
        with self._lock:
            lock = self._key_locks.setdefault(key.key_id, threading.Lock())
        with lock:   # one reservation at a time per key: concurrent calls share its block
            now = self.clock()
            recent = self._recent.setdefault(key.key_id, deque())
            recent.append(now)
            while recent and recent[0] < now - self.block_s:
                recent.popleft()
            month, left = self._left.get(key.key_id, (attr, 0))
            if month == attr and left > 0:
                self._left[key.key_id] = (attr, left - 1)
                return
            size = max(1, min(self.block_max, len(recent) - 1, key.monthly_quota))   # the calls before this one
            granted = self._reserve(key, size, attr)
            self._left[key.key_id] = (attr, granted - 1)

    def _reserve(self, key: ApiKey, size: int, attr: str) -> int:
        """Reserve up to `size` calls; fewer when only fewer are left; QuotaExceeded when none are."""
        self.reserved += 1
        try:
            self.store.count_call(key, size, attr)
            return size
        except QuotaExceeded:
            if size == 1:
                raise
        left = key.monthly_quota - self.store.used(key.key_id, attr)   # near the quota: what is left
        if left <= 0:
            raise QuotaExceeded(key.key_id)
        self.reserved += 1
        self.store.count_call(key, min(size, left), attr)   # QuotaExceeded if another process took it meanwhile
        return min(size, left)


class RateLimiter:
    """Token buckets per key id in this web process.

    The limit is per process, by design (no DynamoDB write per call): a stack of W web instances with
    P processes each admits up to W x P x rate_limit requests/s per key (and W x P x burst at once).
    docs/API.md says so; operators size a key's rate_limit for that."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}   # key id -> (tokens, at)

    def acquire(self, key_id: str, rate: float, burst: int) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there."""
        now = self._clock()
        burst = max(1, burst)
        with self._lock:
            tokens, at = self._buckets.get(key_id, (float(burst), now))
            tokens = min(float(burst), tokens + (now - at) * rate)
            if tokens >= 1.0:
                self._buckets[key_id] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key_id] = (tokens, now)
            return (1.0 - tokens) / rate if rate > 0 else 3600.0
