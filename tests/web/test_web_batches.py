"""POST/GET/DELETE /batches, the webhook secret and `notify` on jobs: the Flask app against moto, keys on."""
from __future__ import annotations

import time

import pytest
from openapi_check import check_flask_response
from test_edge_keys import app  # noqa: F401  (the keyed app fixture, with this module's `keyed`)

from autoscaler.batches import BatchDriver
from classifycloud.keyadmin import create_key, register_topic
from shared.aws import client
from shared.batches import BatchStore, io_prefix
from shared.notify import Outbox
from shared.quota import month_attr
from webserver.keys import table_name

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def keyed(settings, provisioned):
    return settings.replace(api_keys="on", api_key_cache_s=0.0, usage_log=False, batch_max_items=5,
                            batch_max_active_per_key=3, batch_max_open_items_per_key=6)


class Client:
    """The test client with a key; every response checked against the OpenAPI description."""

    def __init__(self, app, key):
        self.c = app.test_client()
        self.key = key

    def open(self, method, path, **kw):
        resp = self.c.open(path, method=method, headers={"Authorization": f"Bearer {self.key}"}, **kw)
        check_flask_response(method, path, resp)
        return resp


@pytest.fixture
def alice(app, keyed):
    key, record = create_key(keyed, "alice")
    c = Client(app, key)
    c.key_id = record.key_id
    return c


@pytest.fixture
def bob(app, keyed):
    key, record = create_key(keyed, "bob")
    c = Client(app, key)
    c.key_id = record.key_id
    return c


def body(keyed, key_id, **over):
    out = f"s3://{keyed.bucket_name}/{io_prefix(key_id)}out/"
    doc = {"service": "imagenet", "input": {"items": ["https://example.com/a.jpg", "https://example.com/b.jpg"]},
           "output": out}
    doc.update(over)
    return doc


def test_a_batch_is_accepted_with_its_status_url_and_reports_progress_as_the_driver_runs(keyed, alice, catalogue):
    r = alice.open("POST", "/batches", json=body(keyed, alice.key_id, top_k=2))
    assert r.status_code == 202, r.json
    bid = r.json["id"]
    assert r.json["state"] == "accepted" and r.json["total"] == 2
    assert r.headers["Location"] == r.json["status_url"] and r.json["status_url"].endswith(f"/batches/{bid}")
    got = alice.open("GET", f"/batches/{bid}").json
    assert got["state"] == "accepted" and got["done"] == 0 and got["total"] == 2
    BatchDriver(keyed, catalogue).advance(bid)
    got = alice.open("GET", f"/batches/{bid}").json
    assert got["state"] == "running" and got["total"] == 2 and got["failed"] == 0
    rec = BatchStore(keyed, client("s3", keyed)).record(bid)
    assert rec["owner"] == alice.key_id and rec["enqueued"] == 2 and rec["top_k"] == 2


@pytest.mark.parametrize("change, code", [
    ({"input": {"items": [], "s3_prefix": "s3://x/y"}}, "invalid_input"),
    ({"input": {"items": ["https://e.com/%d.jpg" % i for i in range(6)]}}, "invalid_input"),
    ({"input": {"items": ["ftp://e.com/a.jpg"]}}, "unsupported_scheme"),
    ({"input": {"s3_prefix": "s3://someone-elses-bucket/in/"}}, "forbidden_location"),
    ({"output": "https://example.com/out/"}, "invalid_location"),
    ({"notify": {"webhook": "http://example.com/hook"}}, "invalid_webhook"),
    ({"notify": {"success_topic": "not-an-arn"}}, "invalid_notify"),
    ({"notify": {"email": "a@b.c"}}, "invalid_notify"),
    ({"deadline": "2001-01-01T00:00:00Z"}, "invalid_deadline"),
    ({"deadline": "tomorrow"}, "invalid_deadline"),
    ({"time_limit_s": 0}, "invalid_time_limit"),
    ({"time_limit_s": "1h"}, "invalid_time_limit"),
    ({"time_limit_s": 86400 * 14 + 1}, "invalid_time_limit"),
    ({"colour": "red"}, "bad_request"),
    ({"service": "no-such-service"}, "unknown_service"),
])
def test_a_batch_that_cannot_run_is_refused_with_a_json_error(keyed, alice, change, code):
    r = alice.open("POST", "/batches", json=body(keyed, alice.key_id, **change))
    assert 400 <= r.status_code < 500 and r.json["error"]["code"] == code, r.json
    assert BatchStore(keyed, client("s3", keyed)).active_ids() == []


def test_a_batch_time_limit_is_shown_as_its_expiry(keyed, alice):
    before = int(time.time())
    r = alice.open("POST", "/batches", json=body(keyed, alice.key_id, time_limit_s=3600))
    assert r.status_code == 202, r.json
    got = alice.open("GET", f"/batches/{r.json['id']}").json
    assert before + 3600 <= got["expires_at"] <= int(time.time()) + 3600
    plain = alice.open("POST", "/batches", json=body(keyed, alice.key_id)).json["id"]
    assert alice.open("GET", f"/batches/{plain}").json["expires_at"] is None


def test_a_key_past_its_batch_caps_gets_a_429_and_another_key_is_not_held_back(keyed, alice, bob):
    def post(client, n):
        return client.open("POST", "/batches", json=body(keyed, client.key_id, input={
            "items": [f"https://example.com/{i}.jpg" for i in range(n)]}))
    assert [post(alice, 1).status_code for _ in range(3)] == [202, 202, 202]
    r = post(alice, 1)
    assert r.status_code == 429 and r.json["error"]["code"] == "too_many_batches", r.json
    assert post(bob, 5).status_code == 202
    r = post(bob, 2)                               # 5 to go + 2 > 6
    assert r.status_code == 429 and r.json["error"]["code"] == "too_many_items", r.json
    assert post(bob, 1).status_code == 202
    owners = [BatchStore(keyed, client("s3", keyed)).record(b)["owner"]
              for b in BatchStore(keyed, client("s3", keyed)).active_ids()]
    assert sorted(owners) == sorted([alice.key_id] * 3 + [bob.key_id] * 2)


def test_batch_items_count_against_the_keys_monthly_quota_and_a_batch_past_it_fails(keyed, app, catalogue):
    key, record = create_key(keyed, "carol", monthly_quota=7)
    carol = Client(app, key)
    carol.key_id = record.key_id
    driver = BatchDriver(keyed, catalogue)

    def run(n):
        r = carol.open("POST", "/batches", json=body(keyed, carol.key_id, input={
            "items": [f"https://example.com/{i}.jpg" for i in range(n)]}))
        assert r.status_code == 202, r.json
        return driver.advance(r.json["id"])

    assert run(3)["state"] == "running"             # 1 call + 3 items (the module caps open items at 6)
    failed = run(3)                                 # 4 + 1 call + 3 items: 8 > 7
    assert failed["state"] == "failed" and failed["error"]["code"] == "quota_exceeded", failed
    month = month_attr()
    used = client("dynamodb", keyed).get_item(TableName=table_name(keyed), Key={"key_id": {"S": carol.key_id}},
                                              ConsistentRead=True)["Item"][month]["N"]
    assert 5 <= int(used) <= 7                      # calls (reserved in blocks) and the first 3 items; never the next 3
    r = carol.open("POST", "/batches", json=body(keyed, carol.key_id))
    assert r.status_code in (202, 403)              # what is left of the quota is still the key's to use


def test_another_keys_data_bucket_folder_is_refused(keyed, alice, bob):
    r = bob.open("POST", "/batches", json=body(keyed, alice.key_id))     # bob names alice's folder
    assert r.status_code == 400 and r.json["error"]["code"] == "forbidden_location"


def test_only_the_owner_key_sees_and_cancels_a_batch(keyed, alice, bob, catalogue):
    bid = alice.open("POST", "/batches", json=body(keyed, alice.key_id)).json["id"]
    for method, path in (("GET", f"/batches/{bid}"), ("DELETE", f"/batches/{bid}"), ("POST", f"/batches/{bid}/cancel")):
        r = bob.open(method, path)
        assert r.status_code == 404 and r.json["error"]["code"] == "unknown_batch"
    assert alice.open("GET", "/batches/not-a-batch").status_code == 400
    r = alice.open("DELETE", f"/batches/{bid}")
    assert r.status_code == 202 and r.json["state"] == "cancelling"
    assert alice.open("GET", f"/batches/{bid}").json["state"] == "cancelling"
    BatchDriver(keyed, catalogue).advance(bid)
    got = alice.open("GET", f"/batches/{bid}").json
    assert got["state"] == "cancelled" and len(got["shards"]) == 1
    r = alice.open("POST", f"/batches/{bid}/cancel")
    assert r.status_code == 409 and r.json["error"]["code"] == "batch_finished"


def test_the_webhook_secret_is_per_key_and_rotates(alice, bob):
    a1 = alice.open("GET", "/webhooks/secret").json["secret"]
    assert alice.open("GET", "/webhooks/secret").json["secret"] == a1
    assert bob.open("GET", "/webhooks/secret").json["secret"] != a1
    a2 = alice.open("POST", "/webhooks/secret").json["secret"]
    assert a2 != a1 and alice.open("GET", "/webhooks/secret").json["secret"] == a2


def test_a_job_with_notify_queues_its_notice_and_a_bad_notify_sends_no_job(keyed, alice, provisioned):
    topic = "arn:aws:sns:us-east-1:123456789012:done"
    register_topic(keyed, alice.key_id, topic)           # keys on: the operator registers a key's topics
    r = alice.open("POST", "/jobs", json={"url": "https://example.com/cat.jpg", "notify": {"success_topic": topic}})
    assert r.status_code == 202
    notice = Outbox(keyed, client("s3", keyed)).record(f"job-{r.json['id']}")
    assert notice["job_id"] == r.json["id"] and notice["notify"] == {"success_topic": topic}
    assert notice["owner"] == alice.key_id and notice["payload"] is None
    sqs = client("sqs", keyed)
    before = sqs.get_queue_attributes(QueueUrl=provisioned["imagenet"],
                                      AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    r = alice.open("POST", "/jobs", json={"url": "https://example.com/cat.jpg", "notify": {"webhook": "ftp://x"}})
    assert r.status_code == 400 and r.json["error"]["code"] == "invalid_webhook"
    after = sqs.get_queue_attributes(QueueUrl=provisioned["imagenet"],
                                     AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    assert after == before


def test_the_upload_page_and_api_md_document_batches_and_the_docs_verifier_accepts_our_signature(app):
    import os
    import re

    from shared.notify import sign
    page = app.test_client().get("/").get_data(as_text=True)
    assert "/batches" in page and "X-ClassifyCloud-Signature" in page and "classifycloud batch" in page
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "API.md"), encoding="utf-8") as fh:
        doc = fh.read()
    code = re.search(r"\*\*Verifying a webhook\.\*\*.*?```python\n(.*?)```", doc, re.S).group(1)
    scope: dict = {}
    exec(code, scope)                     # the receiver's few lines, as printed
    body = b'{"kind":"batch","id":"b1","event":"batch.succeeded"}'
    header = sign("whsec_abc", body)
    assert scope["verify"]("whsec_abc", header, body)
    assert not scope["verify"]("whsec_abc", header, body + b" ")
    assert not scope["verify"]("whsec_xyz", header, body)
