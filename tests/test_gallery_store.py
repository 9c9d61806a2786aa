"""Face galleries in (moto's) S3: per tenant, capped per gallery, a cache that follows what S3 holds."""
from __future__ import annotations

import numpy as np
import pytest

from classifycloud.provision import ensure_bucket
from shared.aws import client
from worker.models.gallery import GalleryFull, GalleryStore


@pytest.fixture
def store(settings):
    """A store on a fresh versioned bucket, at most 3 faces per gallery and 2 galleries cached."""
    s3 = client("s3", settings)
    ensure_bucket(s3, settings)
    return GalleryStore(s3, settings.bucket_name, max_entries=3, cached_galleries=2)


def _face(i: int) -> np.ndarray:
    return np.full(128, i / 100, dtype=np.float32)


def test_a_gallery_past_its_cap_refuses_new_faces_but_a_redelivered_enrolment_still_lands(store):
    keys = [store.add("ka", "crew", f"n{i}", _face(i), f"e{i}", [0, 0, 1, 1]) for i in range(3)]
    with pytest.raises(GalleryFull, match="3 faces"):
        store.add("ka", "crew", "n3", _face(3), "e3", [0, 0, 1, 1])
    assert store.add("ka", "crew", "n0", _face(0), "e0", [0, 0, 1, 1]) == keys[0]   # same key: idempotent
    assert len(store.entries("ka", "crew")) == 3
    store.add("kb", "crew", "n3", _face(3), "e3", [0, 0, 1, 1])                       # another tenant's own cap
    assert [n for n, _ in store.entries("kb", "crew")] == ["n3"]


def test_a_flooded_gallery_is_read_only_up_to_the_cap(store, settings):
    s3 = client("s3", settings)
    for i in range(7):   # written around the store (an old stack, or a race): the search still reads 3
        s3.put_object(Bucket=settings.bucket_name, Key=f"galleries/ka/flood/x/{i}.json",
                      Body=b'{"name": "n", "embedding": [0.0]}')
    assert len(store.entries("ka", "flood")) == 3


def test_the_cache_holds_only_what_s3_lists_and_only_the_recent_galleries(store, settings):
    s3 = client("s3", settings)
    key = store.add("ka", "crew", "ann", _face(1), "e1", [0, 0, 1, 1])
    store.entries("ka", "crew")
    assert key in store.cached_keys()
    s3.delete_object(Bucket=settings.bucket_name, Key=key)           # erased (by the web's DELETE)
    assert store.entries("ka", "crew") == [] and key not in store.cached_keys()
    for g in ("g1", "g2", "g3"):
        store.add("ka", g, "bob", _face(2), "e2", [0, 0, 1, 1])
        store.entries("ka", g)
    assert {k.split("/")[2] for k in store.cached_keys()} == {"g2", "g3"}
