"""Batch-location grants: the customer buckets and prefixes the operator granted to one API key.

A grant is an ``s3://bucket/`` or ``s3://bucket/prefix/`` string kept on the key's record in the
API-key table (attribute ``batch_grants``, a string set), set with ``classifycloud keys grant``.
The web reads it with the key it authenticates; the batch driver reads it again before it reads a
manifest, lists a prefix, presigns an item or writes a shard, so a grant withdrawn after a batch was
accepted stops that batch's access too. The data bucket is never grantable: a key reaches it only
through its own ``batch-io/<key id>/`` folder (shared/batches.py).
"""
from __future__ import annotations

import threading
import time

from shared import naming
from shared.config import Settings

GRANTS_ATTR = "batch_grants"


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


def grants_of_item(item: dict | None) -> tuple[str, ...]:
    """The grants on a key record (DynamoDB low-level item), sorted; () without any."""
    if not item:
        return ()
    return tuple(sorted(item.get(GRANTS_ATTR, {}).get("SS", [])))


class KeyGrants:
    """The driver's view of the key table: a key's grants, read again after api_key_cache_s."""

    def __init__(self, settings: Settings, dynamodb, clock=time.monotonic):
        self.settings = settings
        self.table = naming.api_key_table(settings.prefix)
        self._db = dynamodb
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}

    def of(self, owner: str | None) -> tuple[str, ...]:
        """The grants of a key id (() without keys, for a key that is gone or revoked); DynamoDB errors propagate."""
        if owner is None:
            return ()
        now = self._clock()
        with self._lock:
            hit = self._cache.get(owner)
        if hit is not None and now - hit[0] < self.settings.api_key_cache_s:
            return hit[1]
        item = self._db.get_item(TableName=self.table, Key={"key_id": {"S": owner}}, ConsistentRead=True,
                                 ProjectionExpression="key_id, revoked_at, #g",
                                 ExpressionAttributeNames={"#g": GRANTS_ATTR}).get("Item")
        grants = () if item is None or "revoked_at" in item else grants_of_item(item)   # revoked: its folder only
        with self._lock:
            if len(self._cache) > 10000:    # bounded: the keys with active batches are few
                self._cache.clear()
            self._cache[owner] = (now, grants)
        return grants
