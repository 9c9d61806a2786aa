"""A dead-lettered job ends as an error (code dead_lettered, last reason); `classifycloud dlq list|redrive`."""
from __future__ import annotations

import time

import pytest

from autoscaler.deadletters import DeadLetterSettler
from classifycloud.dlq import list_dead_letters, redrive
from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.messages import Reply, Request, new_id
from shared.transport import Transport
from webserver.app import create_app
from worker.consumer import Held
from worker.results import ResultSink


@pytest.fixture
def env(settings, catalogue):
    s = settings.replace(max_receive_count=2, janitor_interval_s=0.01)
    urls = ensure_all(s, catalogue)
    app = create_app(s, catalogue)
    yield s, urls, client("sqs", s), client("s3", s), app
    app.extensions["classifycloud"].close()


def _dead_letter(sqs, queue_url: str, body: str, s3=None, settings=None, reason: str | None = None) -> None:
    """Send a request, then fail it max_receive_count times as crashing workers would, until SQS moves it."""
    sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    for _ in range(6):
        msgs = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=1, VisibilityTimeout=0,
                                   AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        if msgs and reason:
            m = msgs[0]
            sink = ResultSink(settings, Transport(settings), s3)
            sink.note_failure([Held("imagenet", queue_url, m["MessageId"], m["ReceiptHandle"], m["Body"], 0,
                                    int(m["Attributes"]["ApproximateReceiveCount"]))], reason)
            sink.close()
        if not msgs:
            break
    attrs = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    assert attrs == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}


def test_a_dead_lettered_job_ends_as_an_error_with_code_dead_lettered_and_the_last_reason(env, catalogue):
    s, urls, sqs, s3, app = env
    web = app.test_client()
    r = web.post("/jobs", json={"url": "http://example.com/poison.jpg"})
    assert r.status_code == 202
    rid = r.get_json()["id"]
    # take the request off the queue as the failing workers would (the web already sent it)
    msg = sqs.receive_message(QueueUrl=urls["imagenet"], MaxNumberOfMessages=1, VisibilityTimeout=0)["Messages"][0]
    assert msg["Body"]
    for _ in range(6):
        msgs = sqs.receive_message(QueueUrl=urls["imagenet"], MaxNumberOfMessages=1, VisibilityTimeout=0,
                                   AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        if not msgs:
            break
        sink = ResultSink(s, Transport(s), s3)
        m = msgs[0]
        sink.note_failure([Held("imagenet", urls["imagenet"], m["MessageId"], m["ReceiptHandle"], m["Body"], 0, 1)],
                          "RuntimeError: decoder crashed")
        sink.close()
    assert web.get(f"/jobs/{rid}").status_code == 202        # before the sweep: pending (forever, before)
    settler = DeadLetterSettler(s, catalogue, Transport(s), s3)
    assert settler.settle() == [rid]
    r = web.get(f"/jobs/{rid}")
    assert r.status_code == 200
    doc = r.get_json()
    assert doc["status"] == "error" and doc["error"]["code"] == "dead_lettered"
    # the worker's exception text is for operators (the log), never the client (issue 20: internal text)
    assert "2 deliveries" in doc["error"]["message"] and "internal error" in doc["error"]["message"]
    assert "RuntimeError" not in doc["error"]["message"] and "decoder crashed" not in doc["error"]["message"]
    assert settler.settle() == []                              # settled once, however often it sweeps
    lines = []
    assert list_dead_letters(s, out=lines.append) == 1          # and the message stays in the DLQ


def test_a_waiting_sync_request_gets_the_dead_lettered_reply(env, catalogue):
    s, urls, sqs, s3, app = env
    reply_q = sqs.create_queue(QueueName=naming.reply_queue(s.prefix))["QueueUrl"]
    rid = new_id()
    _dead_letter(sqs, urls["imagenet"], Request(id=rid, service="imagenet", image={"url": "http://x/y.jpg"},
                                                reply_to=reply_q).to_json())
    assert DeadLetterSettler(s, catalogue, Transport(s), s3).settle() == [rid]
    (m,) = sqs.receive_message(QueueUrl=reply_q, MaxNumberOfMessages=10)["Messages"]
    reply = Reply.from_json(m["Body"])
    assert reply.id == rid and reply.error["code"] == "dead_lettered"
    assert "stopped or timed out" in reply.error["message"]    # no failure noted: the generic reason


def test_an_unreadable_dead_letter_is_listed_but_not_settled(env, catalogue):
    s, urls, sqs, s3, _ = env
    _dead_letter(sqs, urls["imagenet"], "not json at all")
    assert DeadLetterSettler(s, catalogue, Transport(s), s3).settle() == []
    lines = []
    time.sleep(0.1)
    assert list_dead_letters(s, "imagenet", out=lines.append) == 1
    assert "unreadable message" in "\n".join(lines)


def test_dlq_list_then_redrive_sends_the_job_back_and_it_is_pending_again(env, catalogue):
    s, urls, sqs, s3, app = env
    web = app.test_client()
    rid = web.post("/jobs", json={"url": "http://example.com/again.jpg"}).get_json()["id"]
    for _ in range(6):
        if not sqs.receive_message(QueueUrl=urls["imagenet"], MaxNumberOfMessages=1,
                                   VisibilityTimeout=0).get("Messages"):
            break
    DeadLetterSettler(s, catalogue, Transport(s), s3).settle()
    assert web.get(f"/jobs/{rid}").get_json()["error"]["code"] == "dead_lettered"
    lines = []
    assert list_dead_letters(s, out=lines.append) == 1
    assert rid in "\n".join(lines) and "not answered after 2 deliveries" in "\n".join(lines)
    assert redrive(s, out=lines.append) == 1
    assert web.get(f"/jobs/{rid}").status_code == 202           # the record is gone: pending again
    (m,) = sqs.receive_message(QueueUrl=urls["imagenet"], MaxNumberOfMessages=10)["Messages"]
    assert Request.from_json(m["Body"]).id == rid               # back on its request queue, body unchanged
    dlq = sqs.get_queue_url(QueueName=naming.dead_letter_queue(s.prefix, "imagenet"))["QueueUrl"]
    assert sqs.receive_message(QueueUrl=dlq).get("Messages", []) == []


def test_the_autoscaler_tick_settles_dead_letters(env, catalogue):
    from autoscaler.fleet.local import LocalFleet
    from autoscaler.loop import Autoscaler
    s, urls, sqs, s3, _ = env
    rid = new_id()
    _dead_letter(sqs, urls["imagenet"], Request(id=rid, service="imagenet", image={"url": "http://x/z.jpg"},
                                                reply_to=None).to_json())
    loop = Autoscaler(s.replace(min_workers=0), LocalFleet(s, command=["true"]), catalogue, transport=Transport(s),
                      s3=s3)
    assert loop.tick() is not None and loop.dead_letters.settled == [rid]


def test_a_service_added_after_start_has_its_dead_letters_settled_too(env, catalogue):
    from shared.catalogue import Catalogue
    s, urls, sqs, s3, app = env
    grown = {"imagenet": catalogue["imagenet"]}
    settler = DeadLetterSettler(s, Catalogue(grown), Transport(s), s3)   # the live catalogue at start: imagenet only
    grown["pdr"] = catalogue["pdr"]                              # a service appears later (an S3 entry)
    rid = new_id()
    _dead_letter(sqs, urls["pdr"], Request(id=rid, service="pdr", image={"url": "http://example.com/x.jpg"},
                                           reply_to=None, top_k=1, submitted_at=int(time.time() * 1000)).to_json())
    assert settler.settle() == [rid]


def test_dlq_list_and_redrive_see_a_service_published_to_s3(env, tmp_path):
    from test_live_models import ENTRY

    from classifycloud.publish import push_service
    s, urls, sqs, s3, _ = env
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights are not read by a listing")
    push_service(s, "mycats", str(weights), ["cat", "not cat"], {**ENTRY, "num_classes": 2}, s3=s3)
    queue = sqs.get_queue_url(QueueName=naming.request_queue(s.prefix, "mycats"))["QueueUrl"]
    rid = new_id()
    _dead_letter(sqs, queue, Request(id=rid, service="mycats", image={"url": "http://x/c.jpg"},
                                     reply_to=None).to_json())
    lines = []
    assert list_dead_letters(s, "mycats", out=lines.append) == 1 and rid in "\n".join(lines)
    assert redrive(s, "mycats", out=lines.append) == 1
    (m,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    assert Request.from_json(m["Body"]).id == rid
