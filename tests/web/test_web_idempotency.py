"""POST /jobs with an Idempotency-Key: the same key and inputs make one job, never a second (issue 33)."""
from __future__ import annotations

import io
import threading
import time

from test_web_jobs import _dead, _queued

from shared.transport import Transport

URL = {"url": "http://example.com/once.jpg"}


def test_the_same_key_and_body_twice_answer_the_same_job_and_send_it_once(web, web_settings):
    first = web.post("/jobs", json=URL, headers={"Idempotency-Key": "order-1"})
    again = web.post("/jobs", json=URL, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202, (first.get_json(), again.get_json())
    assert again.get_json() == first.get_json() and again.headers["Location"] == first.headers["Location"]
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    other = web.post("/jobs", json=URL, headers={"Idempotency-Key": "order-2"})   # another key: another job
    assert other.get_json()["id"] != first.get_json()["id"]
    assert sorted(r.id for r in _queued(web_settings)) == sorted([first.get_json()["id"], other.get_json()["id"]])


def test_the_same_key_with_other_inputs_is_a_409_and_sends_nothing_more(web, web_settings):
    first = web.post("/jobs", json=URL, headers={"Idempotency-Key": "k-1"})
    for changed in ({"url": "http://example.com/other.jpg"}, {**URL, "top_k": 3}, {**URL, "ttl_s": 60}):
        r = web.post("/jobs", json=changed, headers={"Idempotency-Key": "k-1"})
        assert r.status_code == 409, r.get_json()
        assert r.get_json()["error"]["code"] == "idempotency_key_reused"
        assert r.get_json()["error"]["id"] == first.get_json()["id"]
    assert [r.id for r in _queued(web_settings)] == [first.get_json()["id"]]


def test_an_upload_sent_twice_with_other_multipart_framing_is_one_job(web, web_settings, sample_bytes):
    ids = []
    for name in ("a.jpg", "b.jpg"):      # another file name and boundary: the same image
        r = web.post("/jobs", data={"image": (io.BytesIO(sample_bytes["coffee"]), name)},
                     content_type="multipart/form-data", headers={"Idempotency-Key": "upload-7"})
        assert r.status_code == 202, r.get_json()
        ids.append(r.get_json()["id"])
    assert ids[0] == ids[1] and [r.id for r in _queued(web_settings)] == ids[:1]


def test_twelve_concurrent_requests_with_one_key_make_one_job(app, web_settings):
    answers = []

    def one():
        r = app.test_client().post("/jobs", json=URL, headers={"Idempotency-Key": "burst"})
        answers.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(answers) == 12
    accepted = {body["id"] for status, body in answers if status == 202}
    assert len(accepted) == 1, answers
    busy = [body for status, body in answers if status != 202]
    assert all(b["error"]["code"] == "idempotency_key_in_progress" for b in busy), busy
    assert [r.id for r in _queued(web_settings)] == list(accepted)


def test_a_key_whose_send_was_refused_sends_the_same_job_id_on_retry(app, web, web_settings):
    sub = app.extensions["classifycloud"].submitter
    good, sub.transport = sub.transport, Transport(web_settings, sqs=_dead("sqs"))
    refused = web.post("/jobs", json=URL, headers={"Idempotency-Key": "retry-me"})
    assert refused.status_code == 503 and refused.get_json()["error"]["code"] == "queue_unavailable"
    store = app.extensions["classifycloud"].idempotency
    claim = store._get(store.s3_key(None, "retry-me"))
    assert claim.state == "refused"
    sub.transport = good
    retried = web.post("/jobs", json=URL, headers={"Idempotency-Key": "retry-me"})
    assert retried.status_code == 202 and retried.get_json()["id"] == claim.job_id
    assert [r.id for r in _queued(web_settings)] == [retried.get_json()["id"]]


def test_a_claim_left_by_a_dead_process_is_taken_over_with_its_job_id(make_app, web_settings):
    app = make_app(web_settings.replace(idempotency_claim_s=0.5))
    store = app.extensions["classifycloud"].idempotency
    from webserver.idempotency import fingerprint
    web = app.test_client()
    first = web.post("/jobs", json=URL, headers={"Idempotency-Key": "crash"})
    # as if that process had died after its claim: the claim says 'claimed' again, the send never happened
    where = store.s3_key(None, "crash")
    claim = store._get(where)
    store._put(where, claim.__class__(claim.job_id, claim.fingerprint, claim.created_at, "claimed", time.time()))
    assert claim.fingerprint == fingerprint({"image": URL, "service": None, "top_k": None, "params": None,
                                             "notify": None, "ttl_s": web_settings.job_ttl_s})
    busy = web.post("/jobs", json=URL, headers={"Idempotency-Key": "crash"})
    assert busy.status_code == 409 and busy.headers["Retry-After"] == "1"
    time.sleep(0.6)
    taken = web.post("/jobs", json=URL, headers={"Idempotency-Key": "crash"})
    assert taken.status_code == 202 and taken.get_json()["id"] == first.get_json()["id"]


def test_a_key_older_than_the_window_makes_a_new_job(app, web):
    first = web.post("/jobs", json=URL, headers={"Idempotency-Key": "daily"})
    store = app.extensions["classifycloud"].idempotency
    store.clock = lambda: time.time() + app.extensions["classifycloud"].settings.idempotency_window_s + 1
    later = web.post("/jobs", json={"url": "http://example.com/tomorrow.jpg"}, headers={"Idempotency-Key": "daily"})
    assert later.status_code == 202 and later.get_json()["id"] != first.get_json()["id"]


def test_a_malformed_key_is_a_400(web, web_settings):
    r = web.post("/jobs", json=URL, headers={"Idempotency-Key": "has space"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_idempotency_key"
    assert _queued(web_settings) == []


def _batch(web_settings, **over):
    doc = {"service": "imagenet", "input": {"items": ["https://example.com/a.jpg", "https://example.com/b.jpg"]},
           "output": f"s3://{web_settings.bucket_name}/batch-io/anonymous/out/"}
    doc.update(over)
    return doc


def test_post_batches_with_one_key_twice_records_one_batch_and_other_inputs_are_a_409(app, web, web_settings):
    from shared.aws import client
    from shared.batches import BatchStore
    first = web.post("/batches", json=_batch(web_settings), headers={"Idempotency-Key": "nightly-2026-12-07"})
    again = web.post("/batches", json=_batch(web_settings), headers={"Idempotency-Key": "nightly-2026-12-07"})
    assert first.status_code == again.status_code == 202, (first.get_json(), again.get_json())
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    other = web.post("/batches", json=_batch(web_settings, top_k=2), headers={"Idempotency-Key": "nightly-2026-12-07"})
    assert other.status_code == 409 and other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert BatchStore(web_settings, client("s3", web_settings)).active_ids() == [first.get_json()["id"]]
