"""Grants on one API key: the customer buckets and prefixes its batches may use, the SNS topics it may notify.

A grant is an ``s3://bucket/`` or ``s3://bucket/prefix/`` string kept on the key's record in the
API-key table (attribute ``batch_grants``, a string set), set with ``classifycloud keys grant``.
The web reads it with the key it authenticates; the batch driver reads it again before it reads a
manifest, lists a prefix, presigns an item or writes a shard, so a grant withdrawn after a batch was
accepted stops that batch's access too. The data bucket is never grantable: a key reaches it only
through its own ``batch-io/<key id>/`` folder (shared/batches.py).

SNS topics work the same way (attribute ``sns_topics``, ``classifycloud keys topic``): with keys on, a
notice goes only to a topic the operator registered to the notice's key, checked by the web when the
notice is asked for and by the notifier before it publishes (the stack's role may publish to any topic
of its account, so the key's registration is what keeps one tenant out of another's topics).
"""
from __future__ import annotations

import threading
import time

from shared import naming
from shared.config import Settings
from shared.quota import QuotaExceeded, add_calls

GRANTS_ATTR = "batch_grants"
TOPICS_ATTR = "sns_topics"


class GrantError(ValueError):
    """A grant the operator may not give (the data bucket, a path with '..', not an s3:// URI)."""


def normalize_grant(uri: str, settings: Settings) -> str:
    """The stored form of a grant: s3://bucket/ or s3://bucket/prefix/ (always ending in '/')."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise GrantError("a grant is an s3://bucket/ or s3://bucket/prefix/ URI")
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise GrantError("a grant names a bucket")
    if bucket == settings.bucket_name:
        raise GrantError(f"the data bucket {bucket!r} is never grantable: each key already has its "
                         "batch-io/<key id>/ folder there")
    if ".." in key or "\\" in key:
        raise GrantError("a grant's prefix may not contain '..' or '\\'")
    key = key.strip("/")
    return f"s3://{bucket}/{key}/" if key else f"s3://{bucket}/"


def covers(grants, bucket: str, key: str, settings: Settings) -> bool:
    """Whether one of the (normalized) grants covers s3://bucket/key; a data-bucket grant counts for nothing."""
    if bucket == settings.bucket_name or ".." in key:
        return False
    for grant in grants:
        g_bucket, sep, g_prefix = grant[len("s3://"):].partition("/")
        if grant.startswith("s3://") and sep and g_bucket == bucket and key.startswith(g_prefix):
            return True
    return False


def grants_of_item(item: dict | None, attr: str = GRANTS_ATTR) -> tuple[str, ...]:
    """The grants (or, with attr=TOPICS_ATTR, the topics) on a key record (DynamoDB item), sorted; () without."""
    if not item:
        return ()
    return tuple(sorted(item.get(attr, {}).get("SS", [])))


class KeyGrants:
    """The driver's view of the key table: a key's grants, read again after api_key_cache_s."""

    def __init__(self, settings: Settings, dynamodb, clock=time.monotonic):
        self.settings = settings
        self.table = naming.api_key_table(settings.prefix)
        self._db = dynamodb
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[tuple[str, ...], tuple[str, ...]]]] = {}

    def of(self, owner: str | None) -> tuple[str, ...]:
        """The location grants of a key id (() without keys, for a key that is gone or revoked)."""
        return self._read(owner)[0]

    def topics_of(self, owner: str | None) -> tuple[str, ...]:
        """The SNS topics registered to a key id (() for a key that is gone or revoked)."""
        return self._read(owner)[1]

    def charge(self, owner: str | None, items: int) -> None:
        """Count a batch's items against its key's monthly quota, all or none: QuotaExceeded when they do not
        fit (or the key is revoked or gone). Nothing with keys off or without an owner."""
        if owner is None or not self.settings.api_keys_enabled:
            return
        item = self._db.get_item(TableName=self.table, Key={"key_id": {"S": owner}}, ConsistentRead=True,
                                 ProjectionExpression="monthly_quota, revoked_at").get("Item")
        if item is None or "revoked_at" in item:
            raise QuotaExceeded(owner)
        add_calls(self._db, self.table, owner, items, int(item.get("monthly_quota", {}).get("N", "0")))

    def _read(self, owner: str | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(grants, topics) of a key, cached for api_key_cache_s; DynamoDB errors propagate."""
        if owner is None:
            return (), ()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(owner)
        if hit is not None and now - hit[0] < self.settings.api_key_cache_s:
            return hit[1]
        item = self._db.get_item(TableName=self.table, Key={"key_id": {"S": owner}}, ConsistentRead=True,
                                 ProjectionExpression="key_id, revoked_at, #g, #t",
                                 ExpressionAttributeNames={"#g": GRANTS_ATTR, "#t": TOPICS_ATTR}).get("Item")
        if item is None or "revoked_at" in item:     # revoked: its own folder only, no topic
            found: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        else:
            found = (grants_of_item(item), grants_of_item(item, TOPICS_ATTR))
        with self._lock:
            if len(self._cache) > 10000:    # bounded: the keys with active batches are few
                self._cache.clear()
            self._cache[owner] = (now, found)
        return found
