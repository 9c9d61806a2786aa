"""The batch driver checks locations again against the key's grants, and reads manifests within bounds.

The real driver against moto; the items here never reach a worker (each fails where it is read), so no
model is loaded."""
from __future__ import annotations

import json
import logging

import pytest
from waiting import wait_for

from autoscaler.batches import BatchDriver
from classifycloud.keyadmin import create_key, grant_location
from classifycloud.provision import ensure_all
from shared import logsafe
from shared.aws import client
from shared.batches import BatchStore, io_prefix, new_batch_id
from shared.messages import now_ms

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def keyed(settings, catalogue):
    """Keys on, queues provisioned, one customer bucket the deployment was given."""
    s = settings.replace(api_keys="on", api_key_cache_s=0.0, batch_buckets=(f"{settings.prefix}-shared",))
    ensure_all(s, catalogue)
    client("s3", s).create_bucket(Bucket=f"{settings.prefix}-shared")
    return s


def batch(s, owner: str | None, input_spec: dict, output: str | None = None) -> dict:
    """A batch record as the web writes it (the driver trusts none of its locations)."""
    rec = {"id": new_batch_id(), "owner": owner, "service": "imagenet", "top_k": 3, "input": input_spec,
           "output": output or f"s3://{s.bucket_name}/{io_prefix(owner)}out/", "notify": None, "deadline": None,
           "state": "accepted", "created_at": now_ms(), "total": None, "enqueued": 0, "done": 0, "failed": 0}
    BatchStore(s, client("s3", s)).create(rec, None)
    return rec


def run_to_end(driver: BatchDriver, bid: str) -> dict:
    """Advance the batch until it is final (a batch that raises every tick never gets there)."""
    final = {}

    def step():
        final["rec"] = driver.advance(bid)
        return final["rec"] and final["rec"]["state"] in ("succeeded", "failed", "cancelled")
    wait_for(step, timeout=30, interval=0.1)
    return final["rec"]


def shard_text(s3, rec: dict) -> str:
    out = []
    for uri in rec["shards"]:
        bucket, key = uri[5:].split("/", 1)
        out.append(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    return "".join(out)


def test_the_driver_refuses_another_keys_granted_manifest_even_in_a_record_the_web_let_through(keyed, catalogue):
    s3 = client("s3", keyed)
    _, alice = create_key(keyed, "alice")
    _, bob = create_key(keyed, "bob")
    grant_location(keyed, alice.key_id, f"s3://{keyed.prefix}-shared/alice/")
    s3.put_object(Bucket=f"{keyed.prefix}-shared", Key="alice/m.csv", Body=b"name,card\nann,4111111111111111\n")
    rec = batch(keyed, bob.key_id, {"manifest": f"s3://{keyed.prefix}-shared/alice/m.csv"})
    final = BatchDriver(keyed, catalogue).advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == "forbidden_location"
    assert "4111" not in json.dumps(final)


def test_a_grant_withdrawn_after_acceptance_stops_the_batch_at_the_driver(keyed, catalogue):
    s3 = client("s3", keyed)
    _, alice = create_key(keyed, "alice")
    grant_location(keyed, alice.key_id, f"s3://{keyed.prefix}-shared/alice/")
    s3.put_object(Bucket=f"{keyed.prefix}-shared", Key="alice/in/cat.jpg", Body=b"x")
    rec = batch(keyed, alice.key_id, {"s3_prefix": f"s3://{keyed.prefix}-shared/alice/in/"})
    grant_location(keyed, alice.key_id, f"s3://{keyed.prefix}-shared/alice/", withdraw=True)
    final = BatchDriver(keyed, catalogue).advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == "forbidden_location"


def test_bad_manifest_lines_fail_alone_by_number_and_code_and_their_text_never_reaches_the_output(keyed, catalogue):
    s3 = client("s3", keyed)
    _, alice = create_key(keyed, "alice")
    lines = ["secret-one, not json at all", "", "[" * 5000, json.dumps("secret-two is a string, not a URL"),
             json.dumps({"colour": "secret-three"}), "x" * 9000, json.dumps({"s3": "s3://elsewhere/photo.jpg"})]
    key = f"{io_prefix(alice.key_id)}m.jsonl"
    s3.put_object(Bucket=keyed.bucket_name, Key=key, Body="\n".join(lines).encode())
    rec = batch(keyed, alice.key_id, {"manifest": f"s3://{keyed.bucket_name}/{key}"})
    final = run_to_end(BatchDriver(keyed, catalogue), rec["id"])
    assert final["state"] == "succeeded" and final["total"] == 6 and final["failed"] == 6
    text = shard_text(s3, final)
    assert "secret" not in text and "xxxx" not in text and "[[[[" not in text
    out = sorted((json.loads(x) for x in text.splitlines()), key=lambda x: x["index"])
    assert [(x["input"], x["error"]["code"]) for x in out[:5]] == [
        ("manifest-line:1:invalid_json", "invalid_json"), ("manifest-line:3:invalid_json", "invalid_json"),
        ("manifest-line:4:invalid_input", "invalid_input"), ("manifest-line:5:invalid_input", "invalid_input"),
        ("manifest-line:6:line_too_long", "line_too_long")]
    assert out[0]["error"]["message"] == "manifest line 1 is not JSON (or is nested too deeply)"
    assert out[5]["input"] == "s3://elsewhere/photo.jpg" and out[5]["error"]["code"] == "forbidden_location"


@pytest.mark.parametrize("limits, code", [({"batch_manifest_max_bytes": 100}, "manifest_too_large"),
                                          ({"batch_max_lines": 3}, "input_too_large")])
def test_a_manifest_over_the_byte_or_line_cap_fails_its_batch_with_the_reason(keyed, catalogue, limits, code):
    s = keyed.replace(**limits)
    s3 = client("s3", s)
    key = f"{io_prefix(None)}m.jsonl"
    body = "\n".join(json.dumps(f"https://example.com/{i}.jpg") for i in range(10))
    s3.put_object(Bucket=s.bucket_name, Key=key, Body=body.encode())
    rec = batch(s, None, {"manifest": f"s3://{s.bucket_name}/{key}"})
    final = BatchDriver(s, catalogue).advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == code


def test_a_client_s3_key_with_line_breaks_is_logged_escaped_never_as_a_new_line(keyed, catalogue, caplog):
    logsafe.install()           # as every entry point does (webserver.app, worker, autoscaler, cli)
    key = f"{io_prefix(None)}m\r\n2026-12-07 00:00:00 ERROR forged: all keys revoked\u2028.jsonl"
    rec = batch(keyed, None, {"manifest": f"s3://{keyed.bucket_name}/{key}"})
    with caplog.at_level(logging.INFO):
        final = BatchDriver(keyed, catalogue).advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == "manifest_not_found"
    logged = [r.getMessage() for r in caplog.records if rec["id"] in r.getMessage()]
    assert any("forged" in m for m in logged), logged
    assert not any(c in m for m in logged for c in ("\r", "\n", "\u2028"))
    assert any("m\\r\\n2026" in m and "\\u2028" in m for m in logged)


def test_an_output_grant_withdrawn_before_the_shards_are_written_ends_the_batch_failed_with_nothing_written(
        keyed, catalogue):
    s3 = client("s3", keyed)
    _, alice = create_key(keyed, "alice")
    grant_location(keyed, alice.key_id, f"s3://{keyed.prefix}-shared/alice/")
    rec = batch(keyed, alice.key_id, {"items": 2}, output=f"s3://{keyed.prefix}-shared/alice/out/")
    BatchStore(keyed, s3).write_inputs(rec["id"], ["https://example.com/a.jpg", "https://example.com/b.jpg"])
    driver = BatchDriver(keyed, catalogue)
    driver.advance(rec["id"])                         # queued; no worker runs
    BatchStore(keyed, s3).cancel(rec["id"])
    grant_location(keyed, alice.key_id, f"s3://{keyed.prefix}-shared/alice/", withdraw=True)
    final = driver.advance(rec["id"])
    assert final["state"] == "failed" and final["error"]["code"] == "forbidden_location" and final["total"] == 2
    assert s3.list_objects_v2(Bucket=f"{keyed.prefix}-shared", Prefix="alice/out/").get("KeyCount") == 0
    assert rec["id"] not in BatchStore(keyed, s3).active_ids()
