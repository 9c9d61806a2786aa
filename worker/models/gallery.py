"""Face galleries in S3: galleries/<gallery>/<name-hash>/<entry>.json, one object per enrolled face.

Every worker reads the same prefix, so a face enrolled through one worker is found by all. Entries are
immutable (a new enrolment is a new object), so a worker caches each entry by key and only lists the prefix.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time

import numpy as np

from shared.naming import GALLERY_RE, gallery_prefix

MAX_NAME = 100


def check_gallery(gallery: object) -> str:
    """The gallery name, or ValueError saying what is allowed."""
    if not isinstance(gallery, str) or not GALLERY_RE.match(gallery):
        raise ValueError("gallery must be 1-64 characters of [A-Za-z0-9_-]")
    return gallery


def check_name(name: object) -> str:
    """An identity's display name, or ValueError."""
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > MAX_NAME or not name.isprintable():
        raise ValueError(f"name must be 1-{MAX_NAME} printable characters")
    return name.strip()


class GalleryStore:
    """Reads and writes one bucket's galleries; thread-safe."""

    def __init__(self, s3, bucket: str):
        self.s3 = s3
        self.bucket = bucket
        self._cache: dict[str, tuple[str, np.ndarray]] = {}
        self._lock = threading.Lock()

    def add(self, gallery: str, name: str, embedding: np.ndarray, entry_id: str, box: list[int]) -> str:
        """Write one face; returns its key. Idempotent by entry_id (a redelivered enrol writes the same key)."""
        who = hashlib.sha256(name.encode()).hexdigest()[:16]  # names may hold characters keys should not
        key = f"{gallery_prefix(check_gallery(gallery))}{who}/{entry_id}.json"
        body = {"name": name, "embedding": [round(float(x), 7) for x in embedding], "box": box,
                "id": entry_id, "enrolled_at": int(time.time() * 1000)}
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(body).encode(),
                           ContentType="application/json")
        return key

    def entries(self, gallery: str) -> list[tuple[str, np.ndarray]]:
        """Every (name, embedding) of the gallery, as S3 holds it now."""
        prefix = gallery_prefix(check_gallery(gallery))
        keys = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if o["Key"].endswith(".json")]
        out = []
        for key in keys:
            with self._lock:
                hit = self._cache.get(key)
            if hit is None:
                doc = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
                hit = (str(doc["name"]), np.asarray(doc["embedding"], dtype=np.float32))
                with self._lock:
                    self._cache[key] = hit
            out.append(hit)
        return out
