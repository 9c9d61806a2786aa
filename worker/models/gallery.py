"""Face galleries in S3: galleries/<tenant>/<gallery>/<name-hash>/<entry>.json, one object per enrolled face.

Every worker reads the same prefix, so a face enrolled through one worker is found by all. Entries are
immutable (a new enrolment is a new object), so a worker caches each entry by key and only lists the prefix.
The tenant comes from the web (the API key's id), never from the client: one tenant's gallery names,
faces and erasures never reach another's.
"""
from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict

import numpy as np

from shared.naming import GALLERY_RE, face_name_id, gallery_prefix

MAX_NAME = 100
MAX_ENTRIES = 1000          # faces per gallery: bounds one search's listing, reads and distance matrix
CACHED_GALLERIES = 64       # galleries whose entries a worker keeps in memory (least recently searched go)


class GalleryFull(Exception):
    """The gallery holds its maximum number of faces."""


def check_gallery(gallery: object) -> str:
    """The gallery name, or ValueError saying what is allowed."""
    if not isinstance(gallery, str) or not GALLERY_RE.match(gallery):
        raise ValueError("gallery must be 1-64 characters of [A-Za-z0-9_-]")
    return gallery


def check_tenant(tenant: object) -> str:
    """The tenant the web named (an API key id or the default tenant), or ValueError."""
    if not isinstance(tenant, str) or not GALLERY_RE.match(tenant):
        raise ValueError("the request names no valid tenant")
    return tenant


def check_name(name: object) -> str:
    """An identity's display name, or ValueError."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be 1-{MAX_NAME} printable characters")
    return name.strip()


class GalleryStore:
    """Reads and writes one bucket's galleries; thread-safe."""

    def __init__(self, s3, bucket: str, max_entries: int = MAX_ENTRIES, cached_galleries: int = CACHED_GALLERIES):
        self.s3 = s3
        self.bucket = bucket
        self.max_entries = max_entries
        self.cached_galleries = cached_galleries
        # prefix -> {key: (name, embedding)}: replaced by each listing, so erased faces leave memory too
        self._cache: OrderedDict[str, dict[str, tuple[str, np.ndarray]]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, tenant: str, gallery: str, name: str, embedding: np.ndarray, entry_id: str,
            box: list[int]) -> str:
        """Write one face; returns its key. Idempotent by entry_id (a redelivered enrol writes the same key)."""
        prefix = gallery_prefix(check_tenant(tenant), check_gallery(gallery))
        key = f"{prefix}{face_name_id(name)}/{entry_id}.json"
        existing = self._keys(prefix)
        if len(existing) >= self.max_entries and key not in existing:
            raise GalleryFull(f"gallery {gallery!r} holds {self.max_entries} faces, its maximum")
        body = {"name": name, "embedding": [round(float(x), 7) for x in embedding], "box": box,
                "id": entry_id, "enrolled_at": int(time.time() * 1000)}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(body).encode(),
                           ContentType="application/json")
        return key

    def _keys(self, prefix: str) -> list[str]:
        """The entry keys under a prefix, at most max_entries (a flooded gallery cannot stall a search)."""
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"MaxItems": self.max_entries})
        for page in pages:
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
        return keys[:self.max_entries]

    def entries(self, tenant: str, gallery: str) -> list[tuple[str, np.ndarray]]:
        """Every (name, embedding) of the tenant's gallery, as S3 holds it now."""
        prefix = gallery_prefix(check_tenant(tenant), check_gallery(gallery))
        keys = self._keys(prefix)
        with self._lock:
            known = dict(self._cache.get(prefix, {}))
        fresh: dict[str, tuple[str, np.ndarray]] = {}
        for key in keys:   # S3 reads outside the lock: one slow gallery does not stall the others
            hit = known.get(key)
            if hit is None:
                doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                hit = (str(doc["name"]), np.asarray(doc["embedding"], dtype=np.float32))
            fresh[key] = hit
        with self._lock:
            self._cache[prefix] = fresh          # only what S3 lists now: erased entries are dropped
            self._cache.move_to_end(prefix)
            while len(self._cache) > self.cached_galleries:
                self._cache.popitem(last=False)
        return list(fresh.values())

    def cached_keys(self) -> set[str]:
        """Every entry key held in memory (what an erasure must leave out)."""
        with self._lock:
            return {k for entries in self._cache.values() for k in entries}
