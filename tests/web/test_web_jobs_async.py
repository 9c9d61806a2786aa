"""/jobs with SageMaker-async parity: S3 input and output locations, invocation timeout, cancel, list (issue 34)."""
from __future__ import annotations

import io
import json
import time
from urllib.parse import urlsplit

import pytest
from test_edge_keys import app  # noqa: F401  (the keyed app fixture, with this module's `keyed`)
from test_web_batch_tenancy import Client as TenantClient

from autoscaler.notify import Notifier
from classifycloud.keyadmin import create_key, grant_location
from shared import naming
from shared.aws import client
from shared.batches import io_prefix
from shared.messages import Reply, Request
from webserver.jobs import JobStore


class Client(TenantClient):
    """A keyed client (responses checked against the OpenAPI description) with one method per verb."""

    def get(self, path, **kw):
        return self.open("GET", path, **kw)

    def post(self, path, **kw):
        return self.open("POST", path, **kw)

    def delete(self, path, **kw):
        return self.open("DELETE", path, **kw)


@pytest.fixture
def keyed(settings, provisioned):
    """Keys on, one customer bucket shared by the tenants (each gets its own granted prefix)."""
    s = settings.replace(api_keys="on", api_key_cache_s=0.0, usage_log=False,
                         batch_buckets=(f"{settings.prefix}-shared",))
    client("s3", s).create_bucket(Bucket=f"{settings.prefix}-shared")
    return s


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


def queued(settings) -> list[Request]:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, "imagenet"))["QueueUrl"]
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return [Request.from_json(m["Body"]) for m in msgs]


def answer(settings, job_id: str, inference_ms: float = 20.0) -> None:
    """The result record a worker writes when it finishes the job."""
    JobStore(settings, client("s3", settings)).record_result(Reply.ok(
        job_id, "imagenet", [{"label": "Egyptian cat", "index": 285, "score": 0.5}],
        timings_ms={"queue": 5.0, "fetch": 1.0, "inference": inference_ms, "total": inference_ms + 6}))


def submit(who, **body):
    r = who.post("/jobs", json={"url": "https://example.com/cat.jpg", **body})
    assert r.status_code == 202, r.json
    return r.json["id"]


def test_an_input_location_in_a_granted_prefix_is_sent_as_a_presigned_link_to_that_object(keyed, alice):
    client("s3", keyed).put_object(Bucket=f"{keyed.prefix}-shared", Key="alice/in/cat.jpg", Body=b"jpeg")
    r = alice.post("/jobs", json={"input_location": shared(keyed, "alice/in/cat.jpg"), "invocation_timeout_s": 120,
                                  "output_location": shared(keyed, "alice/out/")})
    assert r.status_code == 202, r.json
    (sent,) = queued(keyed)
    link = urlsplit(sent.image["url"])
    assert sent.id == r.json["id"] and link.path.endswith(f"/{keyed.prefix}-shared/alice/in/cat.jpg")
    assert "Signature" in link.query
    pending = alice.get(f"/jobs/{sent.id}")
    assert pending.status_code == 202
    assert pending.json["input_location"] == shared(keyed, "alice/in/cat.jpg")
    assert pending.json["output_location"] == shared(keyed, "alice/out/")
    assert pending.json["invocation_timeout_s"] == 120


def test_locations_not_granted_to_the_key_are_refused_403_and_nothing_is_sent(keyed, alice, bob):
    theirs = f"s3://{keyed.bucket_name}/{io_prefix(alice.key_id)}in/cat.jpg"   # alice's own folder
    for who, body in ((bob, {"input_location": shared(keyed, "alice/in/cat.jpg")}),
                      (bob, {"input_location": theirs}),
                      (alice, {"input_location": "s3://someone-elses-bucket/cat.jpg"}),
                      (alice, {"input_location": f"s3://{keyed.bucket_name}/models/imagenet/entry.yaml"}),
                      (bob, {"url": "https://example.com/cat.jpg", "output_location": shared(keyed, "alice/out/")})):
        r = who.post("/jobs", json=body)
        assert r.status_code == 403 and r.json["error"]["code"] == "forbidden_location", (body, r.json)
    assert queued(keyed) == []


def test_an_input_location_with_another_image_or_a_bad_timeout_is_refused_400(keyed, alice):
    r = alice.post("/jobs", json={"input_location": shared(keyed, "alice/a.jpg"), "url": "https://example.com/a.jpg"})
    assert r.status_code == 400 and r.json["error"]["code"] == "ambiguous_image"
    r = alice.post("/jobs", data={"input_location": shared(keyed, "alice/a.jpg"), "url": "https://example.com/a.jpg"},
                   content_type="multipart/form-data")
    assert r.status_code == 400 and r.json["error"]["code"] == "ambiguous_image"
    for bad in (0, 3601, "soon", 1.5, True, "²"):
        r = alice.post("/jobs", json={"url": "https://example.com/a.jpg", "invocation_timeout_s": bad})
        assert r.status_code == 400 and r.json["error"]["code"] == "invalid_invocation_timeout", bad
    assert queued(keyed) == []
    for whole in ({"invocation_timeout_s": 60.0}, {"ttl_s": 90.0}):     # integers, as JSON Schema counts them
        assert alice.post("/jobs", json={"url": "https://example.com/a.jpg", **whole}).status_code == 202, whole


def test_a_form_file_wins_over_an_input_location_which_is_checked_all_the_same(keyed, alice, sample_bytes):
    def form(location):
        return alice.post("/jobs", content_type="multipart/form-data",
                          data={"image": (io.BytesIO(sample_bytes["chelsea"]), "chelsea.jpg"), "input_location": location})
    r = form("s3://someone-elses-bucket/cat.jpg")
    assert r.status_code == 403 and r.json["error"]["code"] == "forbidden_location"
    r = form(shared(keyed, "alice/in/cat.jpg"))
    assert r.status_code == 202, r.json
    (sent,) = queued(keyed)
    assert sent.image["s3"].endswith(f"uploads/{sent.id}")       # the file, uploaded as any other


def test_a_cancelled_job_is_never_answered_as_done_even_when_a_worker_answers_it_later(keyed, alice):
    job = submit(alice)
    r = alice.delete(f"/jobs/{job}")
    assert r.status_code == 200 and r.json["status"] == "cancelled" and r.json["cancelled_at"]
    answer(keyed, job)                                   # the worker had already taken it
    r = alice.get(f"/jobs/{job}")
    assert r.status_code == 200 and r.json["status"] == "cancelled", r.json
    assert alice.delete(f"/jobs/{job}").json["status"] == "cancelled"   # again: the same answer


def test_a_job_with_its_answer_cannot_be_cancelled(keyed, alice):
    job = submit(alice)
    answer(keyed, job)
    r = alice.delete(f"/jobs/{job}")
    assert r.status_code == 409 and r.json["error"]["code"] == "job_finished"
    assert alice.get(f"/jobs/{job}").json["status"] == "ok"


def test_another_keys_job_is_404_to_get_and_delete_and_absent_from_its_list(keyed, alice, bob):
    job = submit(alice)
    for method in ("get", "delete"):
        r = getattr(bob, method)(f"/jobs/{job}")
        assert r.status_code == 404 and r.json["error"]["code"] == "unknown_job", method
    assert bob.get("/jobs").json == {"jobs": [], "next_token": None}
    assert alice.get(f"/jobs/{job}").status_code == 202      # bob's DELETE cancelled nothing


def test_get_jobs_lists_the_keys_own_jobs_a_page_at_a_time_and_filters_by_status(keyed, alice, bob):
    jobs = [submit(alice) for _ in range(3)]
    submit(bob)
    answer(keyed, jobs[0])
    alice.delete(f"/jobs/{jobs[1]}")
    first = alice.get("/jobs", query_string={"limit": 2}).json
    assert [j["id"] for j in first["jobs"]] == jobs[:2] and first["next_token"]
    second = alice.get("/jobs", query_string={"limit": 2, "next_token": first["next_token"]}).json
    assert [j["id"] for j in second["jobs"]] == jobs[2:] and second["next_token"] is None
    statuses = {j["id"]: j["status"] for j in first["jobs"] + second["jobs"]}
    assert statuses == {jobs[0]: "succeeded", jobs[1]: "cancelled", jobs[2]: "pending"}
    for status, expected in (("cancelled", [jobs[1]]), ("pending", [jobs[2]]), ("succeeded", [jobs[0]]),
                             ("failed", [])):
        listed = alice.get("/jobs", query_string={"status": status}).json
        assert [j["id"] for j in listed["jobs"]] == expected, status
    for bad in ({"status": "done"}, {"limit": 0}, {"limit": 101}, {"next_token": "../x"},
                {"next_token": "0000000000000_a\n"}, {"next_token": ""}, {"status": ""}, {"limit": ""}):
        assert alice.get("/jobs", query_string=bad).status_code == 400, bad


def test_an_answer_slower_than_the_invocation_timeout_fails_the_job(keyed, alice):
    job = submit(alice, invocation_timeout_s=1)
    answer(keyed, job, inference_ms=1500.0)
    r = alice.get(f"/jobs/{job}")
    assert r.status_code == 200 and r.json["status"] == "error"
    assert r.json["error"]["code"] == "invocation_timeout"
    assert alice.get("/jobs", query_string={"status": "failed"}).json["jobs"][0]["id"] == job


def test_no_answer_by_expiry_plus_the_invocation_timeout_fails_the_job(keyed, alice):
    job = submit(alice, ttl_s=1, invocation_timeout_s=1)
    deadline = time.monotonic() + 15
    while (r := alice.get(f"/jobs/{job}")).status_code == 202:
        assert time.monotonic() < deadline, "the job stayed pending past expiry + invocation timeout"
        time.sleep(0.2)
    assert r.json["error"]["code"] == "invocation_timeout"


def test_the_driver_writes_the_answer_to_the_output_location_and_nothing_for_a_cancelled_job(keyed, alice):
    s3 = client("s3", keyed)
    done, cancelled = (submit(alice, output_location=shared(keyed, "alice/out/")) for _ in range(2))
    alice.delete(f"/jobs/{cancelled}")
    answer(keyed, done)
    answer(keyed, cancelled)
    notifier = Notifier(keyed, s3)
    assert notifier.deliver_due() == 2
    written = json.loads(s3.get_object(Bucket=f"{keyed.prefix}-shared", Key=f"alice/out/{done}.json")["Body"].read())
    assert written["id"] == done and written["status"] == "ok"
    listed = s3.list_objects_v2(Bucket=f"{keyed.prefix}-shared", Prefix="alice/out/").get("Contents", [])
    assert [o["Key"] for o in listed] == [f"alice/out/{done}.json"]
    assert notifier.record(f"job-{cancelled}")["state"] == "cancelled"


def test_a_grant_withdrawn_after_the_job_was_accepted_stops_the_output_write(keyed, alice):
    s3 = client("s3", keyed)
    job = submit(alice, output_location=shared(keyed, "alice/out/"))
    grant_location(keyed, alice.key_id, shared(keyed, "alice"), withdraw=True)
    answer(keyed, job)
    Notifier(keyed, s3).deliver_due()
    assert s3.list_objects_v2(Bucket=f"{keyed.prefix}-shared", Prefix="alice/out/").get("KeyCount", 0) == 0
    attempts = Notifier(keyed, s3).record(f"job-{job}")["attempts"]
    assert attempts and "forbidden_location" in attempts[0]["detail"]
