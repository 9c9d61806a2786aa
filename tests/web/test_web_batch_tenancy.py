"""Batch locations are bound to keys: each key's own folder and what the operator granted to it; the results route."""
from __future__ import annotations

import json

import pytest
from test_edge_keys import app  # noqa: F401  (the keyed app fixture, with this module's `keyed`)
from test_web_batches import Client as KeyClient

from autoscaler.batches import BatchDriver
from classifycloud import keyadmin
from classifycloud.keyadmin import create_key, grant_location, register_topic
from shared.aws import client
from shared.batches import io_prefix
from shared.grants import GrantError

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def keyed(settings, provisioned):
    """Keys on, one customer bucket the deployment was given (shared by every tenant)."""
    s = settings.replace(api_keys="on", api_key_cache_s=0.0, usage_log=False,
                         batch_buckets=(f"{settings.prefix}-shared", settings.bucket_name))
    client("s3", s).create_bucket(Bucket=f"{settings.prefix}-shared")
    return s


class Client(KeyClient):
    """test_web_batches' keyed client, which also knows its key id."""

    def __init__(self, app, key, key_id):  # noqa: F811
        super().__init__(app, key)
        self.key_id = key_id


@pytest.fixture
def alice(app, keyed):  # noqa: F811
    key, record = create_key(keyed, "alice")
    grant_location(keyed, record.key_id, f"s3://{keyed.prefix}-shared/alice")
    return Client(app, key, record.key_id)


@pytest.fixture
def bob(app, keyed):  # noqa: F811
    key, record = create_key(keyed, "bob")
    return Client(app, key, record.key_id)


def shared(keyed, path: str) -> str:
    return f"s3://{keyed.prefix}-shared/{path}"


def own(keyed, key_id: str, path: str) -> str:
    return f"s3://{keyed.bucket_name}/{io_prefix(key_id)}{path}"


def test_a_granted_prefix_of_a_shared_bucket_is_usable_by_its_key_only(keyed, alice, bob):
    s3 = client("s3", keyed)
    s3.put_object(Bucket=f"{keyed.prefix}-shared", Key="alice/m.jsonl", Body=b'"https://example.com/a.jpg"\n')
    doc = {"service": "imagenet", "input": {"manifest": shared(keyed, "alice/m.jsonl")},
           "output": shared(keyed, "alice/out/")}
    assert alice.open("POST", "/batches", json=doc).status_code == 202
    stolen = {**doc, "output": own(keyed, bob.key_id, "out/")}      # bob reads alice's manifest into his folder
    r = bob.open("POST", "/batches", json=stolen)
    assert r.status_code == 400 and r.json["error"]["code"] == "forbidden_location"
    for change in ({"input": {"s3_prefix": shared(keyed, "bob/")}}, {"output": shared(keyed, "other/out/")},
                   {"output": shared(keyed, "alice/../x/")}):
        r = alice.open("POST", "/batches", json={**doc, **change})   # outside alice's grant
        assert r.status_code == 400 and r.json["error"]["code"] == "forbidden_location", change


def test_the_data_bucket_is_never_granted_even_when_listed_as_a_batch_bucket(keyed, alice):
    for where in ("notify/secrets/k0123456789ab.json", f"{io_prefix('k0123456789ab')}m.jsonl", "batches/x"):
        doc = {"service": "imagenet", "input": {"manifest": f"s3://{keyed.bucket_name}/{where}"},
               "output": own(keyed, alice.key_id, "out/")}
        r = alice.open("POST", "/batches", json=doc)
        assert r.status_code == 400 and r.json["error"]["code"] == "forbidden_location", where
    with pytest.raises(GrantError):
        grant_location(keyed, alice.key_id, f"s3://{keyed.bucket_name}/notify/")


def test_keys_grant_is_refused_for_the_data_bucket_and_shown_by_keys_list(keyed, alice, monkeypatch, capsys):
    for name, value in keyed.to_env().items():
        monkeypatch.setenv(name, value)
    assert keyadmin.main(["grant", alice.key_id, f"s3://{keyed.bucket_name}/"]) == 2
    assert "never grantable" in capsys.readouterr().err
    assert keyadmin.main(["grant", alice.key_id, shared(keyed, "extra/")]) == 0
    capsys.readouterr()
    assert keyadmin.main(["list", "--json"]) == 0
    (rec,) = [k for k in json.loads(capsys.readouterr().out) if k["key_id"] == alice.key_id]
    assert rec["batch_grants"] == [shared(keyed, "alice/"), shared(keyed, "extra/")]
    assert keyadmin.main(["ungrant", alice.key_id, shared(keyed, "extra")]) == 0
    assert keyadmin.main(["grant", "k000000000000", shared(keyed, "x/")]) == 2


def test_the_owner_downloads_its_shards_and_another_key_learns_nothing_of_them(keyed, alice, bob, catalogue):
    doc = {"service": "imagenet", "input": {"items": ["https://example.com/a.jpg", "https://example.com/b.jpg"]},
           "output": own(keyed, alice.key_id, "out/")}
    bid = alice.open("POST", "/batches", json=doc).json["id"]
    r = alice.open("GET", f"/batches/{bid}/results")
    assert r.status_code == 409 and r.json["error"]["code"] == "batch_not_finished"
    alice.open("DELETE", f"/batches/{bid}")
    BatchDriver(keyed, catalogue).advance(bid)                    # cancelled: the shard says so per line
    r = alice.open("GET", f"/batches/{bid}/results")
    assert r.status_code == 200 and r.json["state"] == "cancelled"
    (shard,) = r.json["shards"]
    assert shard["uri"].startswith(own(keyed, alice.key_id, f"out/{bid}/")) and shard["url"].endswith(
        f"/batches/{bid}/results/0")
    got = alice.open("GET", f"/batches/{bid}/results/0")
    assert got.status_code == 200 and got.content_type.startswith("application/x-ndjson")
    lines = [json.loads(x) for x in got.get_data(as_text=True).splitlines()]
    assert [x["index"] for x in lines] == [0, 1] and {x["error"]["code"] for x in lines} == {"cancelled"}
    for path in (f"/batches/{bid}/results", f"/batches/{bid}/results/0"):
        r = bob.open("GET", path)
        assert r.status_code == 404 and r.json["error"]["code"] == "unknown_batch", path
    r = alice.open("GET", f"/batches/{bid}/results/1")
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_shard"


def test_shards_in_a_granted_bucket_are_listed_without_a_download_link(keyed, alice, catalogue):
    doc = {"service": "imagenet", "input": {"items": ["https://example.com/a.jpg"]},
           "output": shared(keyed, "alice/out/")}
    bid = alice.open("POST", "/batches", json=doc).json["id"]
    alice.open("DELETE", f"/batches/{bid}")
    BatchDriver(keyed, catalogue).advance(bid)
    (shard,) = alice.open("GET", f"/batches/{bid}/results").json["shards"]
    assert shard["uri"] == shared(keyed, f"alice/out/{bid}/part-00000.jsonl") and shard["url"] is None
    r = alice.open("GET", f"/batches/{bid}/results/0")
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_shard"


def test_a_key_notifies_only_the_sns_topics_the_operator_registered_to_it(keyed, alice, bob):
    mine, theirs = ("arn:aws:sns:us-east-1:123456789012:alice-done", "arn:aws:sns:us-east-1:123456789012:payments")
    register_topic(keyed, alice.key_id, mine)
    doc = {"service": "imagenet", "input": {"items": ["https://example.com/a.jpg"]},
           "output": own(keyed, alice.key_id, "out/")}
    assert alice.open("POST", "/batches", json={**doc, "notify": {"success_topic": mine}}).status_code == 202
    for who, notify in ((alice, {"error_topic": theirs}), (bob, {"success_topic": mine})):
        body = {**doc, "output": own(keyed, who.key_id, "out/"), "notify": notify}
        r = who.open("POST", "/batches", json=body)
        assert r.status_code == 400 and r.json["error"]["code"] == "topic_not_registered", (who.key_id, r.json)
        r = who.open("POST", "/jobs", json={"url": "https://example.com/a.jpg", "notify": notify})
        assert r.status_code == 400 and r.json["error"]["code"] == "topic_not_registered"
