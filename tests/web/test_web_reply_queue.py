"""A reply queue deleted under a running web process (janitor, operator, re-provisioning) is made again."""
from __future__ import annotations

import threading
import time

from botocore.exceptions import ClientError
from waiting import wait_for
from web_peer import PeerWorker

from shared.aws import client


def _gone(sqs, name: str) -> bool:
    try:
        sqs.get_queue_url(QueueName=name)
        return False
    except ClientError:
        return True


def test_readyz_replaces_a_deleted_reply_queue_and_answers_200_in_one_probe(app, web, web_settings):
    ctx = app.extensions["classifycloud"]
    ctx.start()
    old_name, old_url = ctx.listener.queue_name, ctx.listener.queue_url
    sqs = client("sqs", web_settings)
    sqs.delete_queue(QueueUrl=old_url)
    r = web.get("/readyz")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["reply_queue"] != old_name and r.get_json()["listener"] is True
    assert sqs.get_queue_url(QueueName=ctx.listener.queue_name)["QueueUrl"] == ctx.listener.queue_url
    assert _gone(sqs, old_name) and ctx.listener.replaced == 1


def test_a_request_after_its_reply_queue_was_deleted_gets_a_200_promptly(app, web, peer, web_settings):
    ctx = app.extensions["classifycloud"]
    ctx.start()
    old_url = ctx.listener.queue_url
    client("sqs", web_settings).delete_queue(QueueUrl=old_url)
    started = time.monotonic()
    r = web.get("/classify?url=http://example.com/after-delete.jpg")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["label"] == "url:http://example.com/after-delete.jpg"
    assert time.monotonic() - started < web_settings.reply_timeout_s / 2   # not the 504 path
    wait_for(lambda: ctx.listener.replaced == 1 and ctx.listener.queue_url != old_url)
    assert web.get("/readyz").status_code == 200
    again = web.get("/classify?url=http://example.com/new-queue.jpg")   # through the new queue
    assert again.status_code == 200, again.get_json()
    assert next(q for q in peer.requests if q.id == again.get_json()["id"]).reply_to == ctx.listener.queue_url
    assert ctx.waiting == 0


def test_a_request_waiting_when_its_reply_queue_is_deleted_is_answered_from_its_result_record(
        app, web_settings):
    ctx = app.extensions["classifycloud"]
    ctx.start()
    old_url = ctx.listener.queue_url
    answers = []
    asker = threading.Thread(target=lambda: answers.append(
        app.test_client().get("/classify?url=http://example.com/in-flight.jpg")))
    asker.start()
    wait_for(lambda: ctx.waiting == 1)                 # sent with reply_to = the queue about to die
    client("sqs", web_settings).delete_queue(QueueUrl=old_url)
    wait_for(lambda: ctx.listener.replaced == 1)       # the listener's own poll noticed
    late = PeerWorker(web_settings).start()            # its reply finds the queue gone: a record only
    try:
        asker.join(web_settings.reply_timeout_s + 5)
    finally:
        late.stop()
    r = answers[0]
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["results"][0]["label"] == "url:http://example.com/in-flight.jpg"
    assert ctx.listener.from_records == 1 and ctx.waiting == 0
