"""POST /jobs: its time-to-live, and a notice that is queued before the job is sent (issue 33)."""
from __future__ import annotations

import boto3
import yaml
from botocore.config import Config

from classifycloud.local import free_port
from shared import naming
from shared.aws import client
from shared.config import Settings
from shared.messages import Request, now_ms
from shared.transport import Transport

NOTIFY = {"success_topic": "arn:aws:sns:us-east-1:123456789012:done"}


def _dead(service: str):
    """A client of an endpoint nobody listens on (one try, quick)."""
    return boto3.session.Session().client(service, region_name="us-east-1",
                                          endpoint_url=f"http://127.0.0.1:{free_port()}",
                                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))


def _queued(settings) -> list[Request]:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, "imagenet"))["QueueUrl"]
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
    return [Request.from_json(m["Body"]) for m in msgs]


def test_post_jobs_puts_its_ttl_on_the_message_and_get_jobs_shows_the_deadline(web, web_settings):
    before = now_ms()
    r = web.post("/jobs", json={"url": "http://example.com/ttl.jpg", "ttl_s": 90})
    assert r.status_code == 202, r.get_json()
    expires = r.get_json()["expires_at"]
    assert before + 90_000 <= expires <= now_ms() + 90_000
    (sent,) = _queued(web_settings)
    assert sent.id == r.get_json()["id"] and sent.expires_at == expires and sent.reply_to is None
    pending = web.get(f"/jobs/{sent.id}")
    assert pending.status_code == 202 and pending.get_json()["expires_at"] == expires
    default = web.post("/jobs", data={"url": "http://example.com/d.jpg"}, content_type="multipart/form-data")
    assert default.get_json()["expires_at"] - now_ms() > web_settings.job_ttl_s * 1000 - 60_000


def test_post_jobs_refuses_a_ttl_past_the_maximum_or_not_a_number_and_sends_nothing(web, web_settings):
    most = web_settings.job_ttl_max_s
    for body in ({"ttl_s": most + 1}, {"ttl_s": 0}, {"ttl_s": "soon"}, {"ttl_s": 1.5}, {"ttl_s": True}):
        r = web.post("/jobs", json={"url": "http://example.com/a.jpg", **body})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_ttl", (body, r.get_json())
        assert str(most) in r.get_json()["error"]["message"]
    r = web.post("/jobs", data={"url": "http://example.com/a.jpg", "ttl_s": "soon"}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_ttl"
    assert _queued(web_settings) == []


def test_the_ttl_limits_are_settings_below_the_queue_retention_and_the_openapi_maximum_is_the_setting():
    s = Settings()
    assert s.job_ttl_s <= s.job_ttl_max_s < s.message_retention_s   # the deadline comes before SQS drops it
    import os
    spec = yaml.safe_load(open(os.path.join(os.path.dirname(__file__), "..", "..", "webserver", "openapi.yaml")))
    assert spec["components"]["schemas"]["JobTtl"]["maximum"] == s.job_ttl_max_s


def test_a_job_whose_notice_cannot_be_stored_is_refused_and_never_sent(app, web, web_settings):
    ctx = app.extensions["classifycloud"]
    ctx.s3 = ctx.jobs._s3 = _dead("s3")   # S3 down, SQS up: before, the job was sent, then an error answered
    r = web.post("/jobs", json={"url": "http://example.com/n.jpg", "notify": NOTIFY})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "storage_unavailable", r.get_json()
    assert _queued(web_settings) == []   # a client's retry makes the only job


def test_a_job_whose_send_is_refused_has_its_notice_withdrawn_and_never_sent(app, web, web_settings):
    from autoscaler.notify import Notifier
    ctx = app.extensions["classifycloud"]
    ctx.submitter.transport = Transport(web_settings, sqs=_dead("sqs"))
    r = web.post("/jobs", json={"url": "http://example.com/n.jpg", "notify": NOTIFY})
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "queue_unavailable"
    s3 = client("s3", web_settings)
    (key,) = [o["Key"] for o in s3.list_objects_v2(Bucket=web_settings.bucket_name,
                                                    Prefix="notify/pending/").get("Contents", [])]
    notifier = Notifier(web_settings, s3)
    assert notifier.deliver_due() == 1          # filed at once, not left waiting for a result that never comes
    done = notifier.record(key[len("notify/pending/"):-len(".json")])
    assert done["state"] == "withdrawn" and done["attempts"] == []
    assert s3.list_objects_v2(Bucket=web_settings.bucket_name, Prefix="notify/pending/").get("KeyCount", 0) == 0
