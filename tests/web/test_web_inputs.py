"""Bad input: each a clear 4xx JSON error, nothing sent to a queue, never a 500 or a hang."""
from __future__ import annotations

import base64
import io

import pytest

from shared.aws import client

BAD = [
    # (id, method, path, request kwargs, status, error code)
    ("missing-url", "GET", "/classify", {}, 400, "missing_image"),
    ("empty-url", "GET", "/classify?url=", {}, 400, "missing_image"),
    ("no-scheme", "GET", "/classify?url=example.com/cat.jpg", {}, 400, "invalid_url"),
    ("no-host", "GET", "/classify?url=http:///cat.jpg", {}, 400, "invalid_url"),
    ("bad-port", "GET", "/classify?url=http://example.com:99999/a.jpg", {}, 400, "invalid_url"),
    ("ftp-scheme", "GET", "/classify?url=ftp://example.com/cat.jpg", {}, 400, "unsupported_scheme"),
    ("file-scheme", "POST", "/classify", {"json": {"url": "file:///etc/passwd"}}, 400, "unsupported_scheme"),
    ("url-not-string", "POST", "/classify", {"json": {"url": 42}}, 400, "invalid_url"),
    ("bad-base64", "POST", "/classify", {"json": {"image_base64": "not base64 at all!"}}, 400, "invalid_base64"),
    ("empty-base64", "POST", "/classify", {"json": {"image_base64": ""}}, 400, "invalid_base64"),
    ("both-images", "POST", "/classify", {"json": {"url": "http://a.b/c.jpg", "image_base64": "AAAA"}},
     400, "ambiguous_image"),
    ("no-image", "POST", "/classify", {"json": {"service": "imagenet"}}, 400, "missing_image"),
    ("malformed-json", "POST", "/classify", {"data": b'{"url": "http://a.b/c.jpg",',
                                             "content_type": "application/json"}, 400, "malformed_json"),
    ("json-array", "POST", "/classify", {"json": ["http://a.b/c.jpg"]}, 400, "malformed_json"),
    ("top-k-text", "GET", "/classify?url=http://a.b/c.jpg&top_k=abc", {}, 400, "invalid_top_k"),
    ("top-k-zero", "GET", "/classify?url=http://a.b/c.jpg&top_k=0", {}, 400, "invalid_top_k"),
    ("top-k-101", "POST", "/classify", {"json": {"url": "http://a.b/c.jpg", "top_k": 101}}, 400, "invalid_top_k"),
    ("top-k-float", "POST", "/classify", {"json": {"url": "http://a.b/c.jpg", "top_k": 2.5}}, 400, "invalid_top_k"),
    ("top-k-bool", "POST", "/classify", {"json": {"url": "http://a.b/c.jpg", "top_k": True}}, 400, "invalid_top_k"),
    ("service-not-string", "POST", "/classify", {"json": {"url": "http://a.b/c.jpg", "service": 3}},
     400, "invalid_service"),
    ("empty-upload", "POST", "/classify", {"data": {"image": (io.BytesIO(b""), "x.jpg")},
                                           "content_type": "multipart/form-data"}, 400, "empty_image"),
    ("multipart-no-image", "POST", "/classify", {"data": {"service": "imagenet"},
                                                 "content_type": "multipart/form-data"}, 400, "missing_image"),
    ("jobs-bad-url", "POST", "/jobs", {"json": {"url": "gopher://x/y"}}, 400, "unsupported_scheme"),
    ("wrong-method-classify", "PUT", "/classify", {}, 405, "method_not_allowed"),
    ("wrong-method-jobs", "PUT", "/jobs", {}, 405, "method_not_allowed"),
    ("wrong-method-services", "DELETE", "/services", {}, 405, "method_not_allowed"),
    ("no-such-route", "GET", "/nope", {}, 404, "not_found"),
]


def queue_depth(settings) -> int:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=f"{settings.prefix}-requests-imagenet")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages",
                                                                   "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in attrs["Attributes"].values())


def test_every_bad_input_gets_its_own_clear_json_error_and_sends_nothing(web, web_settings):
    for name, method, path, kw, status, code in BAD:
        r = web.open(path, method=method, **kw)
        assert r.status_code == status, (name, r.status_code, r.get_data(as_text=True))
        body = r.get_json()
        assert body is not None, name
        assert body["error"]["code"] == code, (name, body)
        assert body["error"]["message"], name
    assert queue_depth(web_settings) == 0


def test_wrong_method_names_the_allowed_ones(web):
    r = web.put("/classify")
    assert r.status_code == 405
    assert set(r.headers["Allow"].split(", ")) >= {"GET", "POST"}
    assert "POST" in r.get_json()["error"]["message"]


def test_unknown_service_is_404_with_the_list_of_services(web, web_settings, catalogue):
    r = web.get("/classify?url=http://example.com/a.jpg&service=nosuch")
    assert r.status_code == 404
    body = r.get_json()
    assert body["error"]["code"] == "unknown_service" and "nosuch" in body["error"]["message"]
    assert body["services"] == catalogue.names() and "imagenet" in body["services"]
    r = web.post("/jobs", json={"url": "http://example.com/a.jpg", "service": "nosuch"})
    assert r.status_code == 404 and r.get_json()["services"] == catalogue.names()
    assert queue_depth(web_settings) == 0


@pytest.mark.parametrize("how", ["json", "multipart"])
def test_body_over_the_upload_limit_is_413(make_app, web_settings, how):
    web = make_app(web_settings.replace(max_upload_bytes=10_000)).test_client()
    payload = bytes(range(256)) * 60  # 15,360 bytes
    if how == "json":
        r = web.post("/classify", json={"image_base64": base64.b64encode(payload).decode()})
    else:
        r = web.post("/classify", data={"image": (io.BytesIO(payload), "big.jpg")},
                     content_type="multipart/form-data")
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] in ("too_large", "image_too_large")  # body limit or image limit
    assert queue_depth(web_settings) == 0


def test_a_good_request_after_bad_ones_still_works(web, peer):
    assert web.get("/classify?url=ftp://x/y").status_code == 400
    assert web.post("/classify", data=b"{", content_type="application/json").status_code == 400
    r = web.get("/classify?url=http://example.com/fine.jpg")
    assert r.status_code == 200 and r.get_json()["results"][0]["label"] == "url:http://example.com/fine.jpg"


def _queued(settings) -> list[dict]:
    """Every request message now on the imagenet queue (made visible again after reading)."""
    import json
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=f"{settings.prefix}-requests-imagenet")["QueueUrl"]
    msgs = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get("Messages", [])
    return [json.loads(m["Body"]) for m in msgs]


@pytest.mark.parametrize("how", ["json", "multipart", "form-url"])
def test_query_string_service_is_honoured_on_post(web, web_settings, how):
    kw = {"json": {"url": "http://example.com/a.jpg"}} if how == "json" else \
        {"data": {"image": (io.BytesIO(b"\xff\xd8jpeg"), "a.jpg")}, "content_type": "multipart/form-data"} \
        if how == "multipart" else {"data": {"url": "http://example.com/a.jpg"}}
    r = web.post("/classify?service=plant-not-here", **kw)
    assert r.status_code == 404, r.get_data(as_text=True)   # not silently the imagenet model
    assert r.get_json()["error"]["code"] == "unknown_service"
    assert queue_depth(web_settings) == 0


def test_query_string_top_k_is_honoured_on_post_jobs(web, web_settings):
    r = web.post("/jobs?top_k=7&service=imagenet", json={"url": "http://example.com/a.jpg"})
    assert r.status_code == 202 and r.get_json()["service"] == "imagenet"
    (msg,) = _queued(web_settings)
    assert msg["top_k"] == 7 and msg["service"] == "imagenet"


@pytest.mark.parametrize("path,kw", [
    ("/classify?service=imagenet", {"json": {"url": "http://a.b/c.jpg", "service": "plant"}}),
    ("/jobs?top_k=3", {"json": {"url": "http://a.b/c.jpg", "top_k": 5}}),
    ("/classify?service=imagenet", {"data": {"url": "http://a.b/c.jpg", "service": "skin"}}),
])
def test_conflict_between_query_and_body_is_400(web, web_settings, path, kw):
    r = web.post(path, **kw)
    assert r.status_code == 400, r.get_data(as_text=True)
    err = r.get_json()["error"]
    assert err["code"] == "conflicting_parameter" and "query string" in err["message"]
    assert queue_depth(web_settings) == 0


def test_same_value_in_query_and_body_is_fine(web, web_settings):
    r = web.post("/jobs?service=imagenet&top_k=2", json={"url": "http://a.b/c.jpg", "service": "imagenet",
                                                          "top_k": 2})
    assert r.status_code == 202
    assert _queued(web_settings)[0]["top_k"] == 2


@pytest.mark.parametrize("path", ["/classify", "/jobs"])
def test_json_nested_100000_levels_is_a_json_400(web, web_settings, path):
    body = b"[" * 100_000 + b"]" * 100_000
    r = web.post(path, data=body, content_type="application/json")
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    err = r.get_json()["error"]
    assert err["code"] == "malformed_json" and "nested" in err["message"]
    assert queue_depth(web_settings) == 0
