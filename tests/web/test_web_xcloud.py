"""XCloud-compatible POST /cv/<service>: field `image` as a file, a URL or base64; XCloud's envelope."""
from __future__ import annotations

import base64
import io

import pytest
from web_peer import sha_label

from webserver.xcloud import xcloud_results

pytestmark = pytest.mark.services("imagenet", "skin")   # only these queues (tests/conftest.py provisioned)

ENVELOPE = {"code", "msg", "results", "elapse"}


def check_success(r, top1_name: str) -> dict:
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert ENVELOPE <= set(body)
    assert body["code"] == 0 and body["msg"] == "success"
    assert isinstance(body["elapse"], float) and body["elapse"] >= 0
    assert body["results"][0] == {"name": top1_name, "category_id": 1, "prob": 0.9}
    assert all(set(r) == {"name", "category_id", "prob"} for r in body["results"])
    return body


def test_cv_accepts_an_uploaded_file(web, peer, sample_bytes):
    data = sample_bytes["chelsea"]
    r = web.post("/cv/imagenet", data={"image": (io.BytesIO(data), "chelsea.jpg")},
                 content_type="multipart/form-data")
    body = check_success(r, sha_label(data))
    assert len(body["results"]) == 5
    assert next(q for q in peer.requests if q.id == body["id"]).image["s3"].endswith(body["id"])


def test_cv_accepts_an_image_url_as_the_form_value(web, peer):
    r = web.post("/cv/imagenet", data={"image": "https://example.com/plant.jpg", "top_k": "2"})
    body = check_success(r, "url:https://example.com/plant.jpg")
    assert len(body["results"]) == 2


def test_cv_accepts_base64_and_a_data_uri(web, peer, sample_bytes):
    data = sample_bytes["coffee"]
    plain = base64.b64encode(data).decode()
    check_success(web.post("/cv/imagenet", data={"image": plain}), sha_label(data))
    check_success(web.post("/cv/imagenet", data={"image": "data:image/jpeg;base64," + plain}), sha_label(data))


def test_cv_errors_answer_the_envelope_with_a_nonzero_code_and_the_reason(web, peer):
    r = web.post("/cv/imagenet", data={})
    assert r.status_code == 400
    assert r.get_json() == {"code": 3, "msg": "form field 'image' (file, URL or base64), 'imgraw' (file) or "
                                              "'imgurl' (URL) is required",
                            "results": None, "elapse": 0.0, "error": "missing_image"}
    r = web.post("/cv/imagenet", data={"image": "%%% not base64 %%%"})
    assert r.status_code == 400 and r.get_json()["code"] == 1 and r.get_json()["results"] is None
    r = web.post("/cv/imagenet", data={"image": "ftp://example.com/a.jpg"})
    assert r.status_code == 400 and r.get_json()["code"] == 2
    r = web.post("/cv/imagenet", data={"image": "http://169.254.169.254/latest/meta-data/"})
    assert r.status_code == 400 and r.get_json()["code"] == 2 and "link-local" in r.get_json()["msg"]
    r = web.post("/cv/nosuch", data={"image": "http://example.com/a.jpg"})
    assert r.status_code == 404 and r.get_json()["code"] == 4 and "imagenet" in r.get_json()["services"]
    r = web.get("/cv/imagenet")
    assert r.status_code == 405 and r.get_json()["code"] == 3 and r.get_json()["results"] is None


def test_xcloud_results_use_one_based_category_ids_and_keep_unknown_at_minus_one():
    ours = [{"label": "tabby", "index": 281, "score": 0.612345}, {"label": "tench", "index": 0, "score": 0.1}]
    assert xcloud_results(ours) == [{"name": "tabby", "category_id": 282, "prob": 0.6123},
                                    {"name": "tench", "category_id": 1, "prob": 0.1}]
    assert xcloud_results([{"label": "Unknown", "index": -1, "score": 0.21}]) == [
        {"name": "Unknown", "category_id": -1, "prob": 0.21}]


def test_cv_accepts_xcloud_imgraw_as_an_uploaded_file(web, peer, sample_bytes):
    data = sample_bytes["astronaut"]
    r = web.post("/cv/imagenet", data={"imgraw": (io.BytesIO(data), "astronaut.jpg")},
                 content_type="multipart/form-data")
    body = check_success(r, sha_label(data))
    assert next(q for q in peer.requests if q.id == body["id"]).image["s3"].endswith(body["id"])


def test_cv_accepts_xcloud_imgraw_as_base64_text(web, peer, sample_bytes):
    data = sample_bytes["rocket"]
    check_success(web.post("/cv/imagenet", data={"imgraw": base64.b64encode(data).decode()}), sha_label(data))


def test_cv_accepts_xcloud_imgurl(web, peer):
    r = web.post("/cv/imagenet", data={"imgurl": "https://example.com/leaf.jpg", "top_k": "3"})
    body = check_success(r, "url:https://example.com/leaf.jpg")
    assert len(body["results"]) == 3
    assert next(q for q in peer.requests if q.id == body["id"]).image == {"url": "https://example.com/leaf.jpg"}


def test_cv_xcloud_names_are_checked_like_ours(web, peer, sample_bytes):
    r = web.post("/cv/imagenet", data={"imgurl": "ftp://example.com/a.jpg"})
    assert r.status_code == 400 and r.get_json()["code"] == 2 and r.get_json()["error"] == "unsupported_scheme"
    r = web.post("/cv/imagenet", data={"imgurl": "https://example.com/a.jpg",
                                       "imgraw": (io.BytesIO(sample_bytes["coffee"]), "c.jpg")},
                 content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "ambiguous_image" and r.get_json()["code"] == 3
    r = web.post("/cv/imagenet", data={"imgraw": (io.BytesIO(b""), "empty.jpg")}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["error"] == "empty_image"
    assert len(peer.requests) == 0  # nothing bad was enqueued


def test_cv_mcloud_skin_is_served_by_the_skin_service(make_app, web_settings, provisioned, catalogue, sample_bytes):
    import dataclasses

    from web_peer import PeerWorker

    from shared.catalogue import Catalogue
    # the web checks only that weights are configured; the peer answers on the skin queue
    skin = dataclasses.replace(catalogue["skin"], weights="s3://bucket/models/skin/w.safetensors")
    app = make_app(web_settings, catalogue=Catalogue({**catalogue.services, "skin": skin}))
    peer = PeerWorker(web_settings, services=("skin",)).start()
    try:
        data = sample_bytes["chelsea"]
        r = app.test_client().post("/cv/mcloud/skin", data={"imgraw": (io.BytesIO(data), "lesion.jpg")},
                                   content_type="multipart/form-data")
        body = check_success(r, sha_label(data))
        assert [q.service for q in peer.requests if q.id == body["id"]] == ["skin"]
        r = app.test_client().post("/cv/skin", data={"imgurl": "https://example.com/s.jpg"})
        assert r.status_code == 200 and r.get_json()["results"][0]["name"] == "url:https://example.com/s.jpg"
    finally:
        peer.stop()


def test_cv_and_classify_both_answer_503_shutting_down_when_the_process_stops_before_the_reply(app):
    import threading
    import time

    answers = {}

    def call(path, **kw):
        answers[path] = app.test_client().post(path, **kw)

    threads = [threading.Thread(target=call, args=("/cv/imagenet",), kwargs={"data": {"image": "https://e.com/a.jpg"}}),
               threading.Thread(target=call, args=("/classify",), kwargs={"json": {"url": "https://e.com/a.jpg"}})]
    for t in threads:
        t.start()
    listener = app.extensions["classifycloud"].listener
    deadline = time.monotonic() + 30
    while listener.waiting < 2:        # no worker answers: both wait for their reply
        assert time.monotonic() < deadline, "the requests never waited"
        time.sleep(0.05)
    listener.drain(0.1)
    for t in threads:
        t.join(30)
    native, xcloud = answers["/classify"], answers["/cv/imagenet"]
    assert native.status_code == 503 and native.get_json()["error"]["code"] == "shutting_down"
    body = xcloud.get_json()
    assert xcloud.status_code == 503 and body["error"] == "shutting_down" and body["results"] is None
    assert body["code"] == 4 and body["status_url"].endswith(f"/jobs/{body['id']}")
