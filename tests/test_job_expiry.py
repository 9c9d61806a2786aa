"""Jobs expire cleanly: a job not started within its time-to-live ends `expired`, with its notice (issue 33)."""
from __future__ import annotations

import base64
import json

from test_notify import Receiver, deliver_until
from test_worker_loop import CATS, model, run_burst  # noqa: F401  (model: the module's fixture)
from waiting import wait_for

from autoscaler.notify import Notifier
from classifycloud.provision import ensure_all
from shared.aws import client
from shared.messages import now_ms
from shared.notify import WebhookSecrets
from webserver.app import create_app
from worker.loop import Worker


def test_a_job_not_started_within_its_ttl_ends_expired_with_its_notice_and_a_live_one_runs(
        settings, catalogue, model, sample_bytes):  # noqa: F811
    s = settings.replace(fetch_allow_loopback=True, wait_time_s=1, instance_id="w-ttl", max_batch_wait_ms=20,
                         notify_backoff_s=0.3)
    ensure_all(s, catalogue)
    secrets = WebhookSecrets(s, client("s3", s))
    receiver = Receiver(lambda: secrets.get(None))
    app = create_app(s, catalogue)
    web = app.test_client()
    photo = base64.b64encode(sample_bytes["chelsea"]).decode()
    try:
        short = web.post("/jobs", json={"image_base64": photo, "ttl_s": 1, "notify": {"webhook": receiver.url}})
        live = web.post("/jobs", json={"image_base64": photo})   # the default ttl (6 h)
        assert short.status_code == 202 and live.status_code == 202, (short.json, live.json)
        assert abs(short.json["expires_at"] - (now_ms() + 1000)) < 5000
        assert live.json["expires_at"] - now_ms() > s.job_ttl_s * 1000 - 60_000
        wait_for(lambda: now_ms() > short.json["expires_at"] + 200)   # no worker ran meanwhile
        registry, engine = model
        assert run_burst(Worker(s, catalogue, registry=registry, engine=engine)) == 0
        expired = web.get(f"/jobs/{short.json['id']}")
        assert expired.status_code == 200
        assert expired.json["status"] == "error" and expired.json["error"]["code"] == "expired"
        assert expired.json["timings_ms"]["inference"] == 0          # answered, never run
        done = web.get(f"/jobs/{live.json['id']}")
        assert done.json["status"] == "ok" and done.json["results"][0]["index"] in CATS
        notice = deliver_until(Notifier(s, client("s3", s)), f"job-{short.json['id']}")
        assert notice["state"] == "delivered"
        body = json.loads(receiver.calls[0]["body"])
        assert body["event"] == "job.expired" and body["id"] == short.json["id"] and receiver.calls[0]["valid"]
        assert body["result"]["error"]["code"] == "expired"
    finally:
        app.extensions["classifycloud"].close()
        receiver.close()


def test_the_worker_answers_a_redelivered_expired_job_with_its_stored_result(settings, catalogue, model):  # noqa: F811
    from shared import naming
    from shared.messages import Reply, Request
    s = settings.replace(wait_time_s=1, instance_id="w-ttl2")
    urls = ensure_all(s, catalogue)
    s3, sqs = client("s3", s), client("sqs", s)
    stored = Reply.ok("done-before", "imagenet", [{"label": "tabby", "index": 281, "score": 0.9}], worker="earlier")
    s3.put_object(Bucket=s.bucket_name, Key=naming.result_key("done-before"), Body=stored.to_json())
    sqs.send_message(QueueUrl=urls["imagenet"], MessageBody=Request(
        id="done-before", service="imagenet", image={"url": "http://example.com/x.jpg"}, reply_to=None,
        expires_at=now_ms() - 1000).to_json())
    # the first delivery wrote its record and died before the delete: visible again, now past the deadline
    first = sqs.receive_message(QueueUrl=urls["imagenet"], WaitTimeSeconds=1)["Messages"][0]
    sqs.change_message_visibility(QueueUrl=urls["imagenet"], ReceiptHandle=first["ReceiptHandle"],
                                  VisibilityTimeout=0)
    registry, engine = model
    assert run_burst(Worker(s, catalogue, registry=registry, engine=engine)) == 0
    record = json.loads(s3.get_object(Bucket=s.bucket_name, Key=naming.result_key("done-before"))["Body"].read())
    assert record["status"] == "ok" and record["worker"] == "earlier"
