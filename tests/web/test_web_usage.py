"""Usage metering on the real web app against moto: per-minute aggregates, no DynamoDB item per request."""
from __future__ import annotations

import math
import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from web_peer import PeerWorker

from classifycloud import usage_report
from classifycloud.keyadmin import create_key
from shared.aws import client
from shared.messages import now_ms
from webserver import usage_hist
from webserver.usage import Aggregate, table_name

WRITES = ("BatchWriteItem", "PutItem", "UpdateItem", "TransactWriteItems")


@pytest.fixture
def metered(web_settings):
    """Keys on, a key cache, and a flush interval far beyond the test: only an explicit flush writes."""
    return web_settings.replace(api_keys="on", api_key_cache_s=60.0, usage_flush_interval_s=600.0)


@pytest.fixture
def peer2(metered, provisioned):
    """A peer worker answering imagenet and food, so synchronous requests get their replies."""
    p = PeerWorker(metered, services=("imagenet", "food")).start()
    yield p
    p.stop()


def _count_dynamodb_calls(db) -> Counter:
    """Every DynamoDB call this client makes from now on, by operation (botocore's event hook)."""
    seen: Counter = Counter()
    db.meta.events.register("before-call.dynamodb", lambda model, **_: seen.update([model.name]),
                            unique_id=f"usage-count-{id(seen)}")
    return seen


def _classify(web, key: str | None, service: str) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = web.get("/classify", query_string={"url": f"https://example.com/{service}.jpg", "service": service},
                headers=headers)
    return r.status_code


def _stored(settings) -> list[Aggregate]:
    db = client("dynamodb", settings)
    return [Aggregate.from_item(i) for page in db.get_paginator("scan").paginate(TableName=table_name(settings))
            for i in page["Items"]]


def test_usage_aggregates_add_up_to_the_requests_sent(metered, make_app, peer2):
    app = make_app(metered, start=True)
    web = app.test_client()
    a, ka = create_key(metered, "alice", rate_limit=1000, burst=1000, monthly_quota=10_000)
    b, kb = create_key(metered, "bob", rate_limit=1000, burst=1000, monthly_quota=10_000)
    sent = [(a, "imagenet")] * 9 + [(a, "food")] * 5 + [(b, "imagenet")] * 4 + [(b, "food")] * 3 + \
        [(None, "imagenet")] * 2
    random.Random(31).shuffle(sent)
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda kv: _classify(web, *kv), sent))
    assert sorted(codes) == [200] * 21 + [401] * 2
    app.extensions["classifycloud"].edge.usage.flush()

    stored = _stored(metered)
    want = {(ka.key_id, "imagenet"): 9, (ka.key_id, "food"): 5, (kb.key_id, "imagenet"): 4,
            (kb.key_id, "food"): 3, ("anonymous", "imagenet"): 2}
    totals = usage_report.merged(stored)
    assert {k: t.calls for k, t in totals.items()} == want
    assert {k: sum(t.hist.values()) for k, t in totals.items()} == want        # every call in the histogram
    assert {k: sum(t.statuses.values()) for k, t in totals.items()} == want
    assert dict(totals[("anonymous", "imagenet")].statuses) == {401: 2}
    assert all(t.routes == Counter({"GET /classify": t.calls}) for t in totals.values())
    # one item per (key, service, minute) for this process's one flush (two minutes if the test spans one)
    assert len(want) <= len(stored) <= 2 * len(want) and len({x.process for x in stored}) == 1
    rows = usage_report.summarize(usage_report.fetch(metered, now_ms() - 600_000))
    assert {(r["key_id"], r["service"]): r["calls"] for r in rows} == want
    for r in rows:
        t = totals[(r["key_id"], r["service"])]
        assert t.lat_min <= r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] <= t.lat_max
    assert {x.key_id for x in usage_report.fetch(metered, now_ms() - 600_000, key_id=kb.key_id)} == {kb.key_id}


def test_the_request_path_writes_no_dynamodb_item(metered, make_app, peer2):
    app = make_app(metered, start=True)
    web = app.test_client()
    key, _ = create_key(metered, "carol", rate_limit=1000, burst=1000, monthly_quota=10_000)
    edge = app.extensions["classifycloud"].edge
    assert edge.usage._db is edge.keys._db     # one client: the hook below sees the key, quota and usage calls
    calls = _count_dynamodb_calls(edge.usage._db)
    codes = [_classify(web, key, "imagenet") for _ in range(30)]
    assert codes == [200] * 30
    assert not any(calls[op] for op in ("BatchWriteItem", "PutItem", "TransactWriteItems")), calls
    # what DynamoDB does see: the key read once (then cached) and one conditional update per quota block
    # (blocks of 1, 1, 2, 4, 8, 16 calls as the rate builds up), never one per request
    assert calls["GetItem"] <= 1 and calls["UpdateItem"] <= 8, calls
    assert sum(calls.values()) <= 9, calls
    before = sum(calls.values())
    edge.usage.flush()
    assert calls["BatchWriteItem"] == 1 and sum(calls.values()) == before + 1   # one call for the lot
    assert edge.usage.written == 30 and edge.usage.items in (1, 2)


def test_a_percentile_from_the_histogram_is_within_the_documented_error_of_the_exact_one():
    rng = random.Random(7)
    latencies = [rng.lognormvariate(math.log(40), 1.2) for _ in range(5000)] + [0.05, 2_000_000.0]
    hist = Counter(usage_hist.bucket_of(x) for x in latencies)
    ordered = sorted(latencies)
    for q in (1, 10, 50, 90, 95, 99, 99.9, 100):
        exact = ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]
        estimate = usage_hist.percentile(hist, q, ordered[0], ordered[-1])
        if usage_hist.LOW_MS < exact < usage_hist.bounds(usage_hist.BUCKETS - 1)[0]:
            assert abs(estimate - exact) / exact <= usage_hist.MAX_ERROR, (q, exact, estimate)
    one = Counter([usage_hist.bucket_of(123.4)])
    assert usage_hist.percentile(one, 50, 123.4, 123.4) == 123.4      # clamped to what was seen: exact
    assert usage_hist.from_attr(usage_hist.to_attr(hist)) == hist
    assert usage_hist.MAX_ERROR == pytest.approx(0.0593, abs=1e-4)
