"""The web facing hostile clients: refused formats, forged Host headers, X-Forwarded-* from the ALB only."""
from __future__ import annotations

import base64
import io

import pytest
from test_security_fetch import _eps, _psd


def _queue_depth(settings) -> int:
    from shared import naming
    from shared.aws import client
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, "imagenet"))["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


@pytest.mark.parametrize("make,fmt", [(_eps, "EPS"), (_psd, "PSD"), (lambda: b"II*\x00" + b"\0" * 64, "TIFF")])
def test_eps_psd_and_tiff_uploads_are_refused_415_before_anything_is_stored_or_sent(web, web_settings, make, fmt):
    data = make()
    answers = [
        web.post("/classify", data={"image": (io.BytesIO(data), "x.img")}, content_type="multipart/form-data"),
        web.post("/jobs", json={"image_base64": base64.b64encode(data).decode()}),
        web.post("/cv/imagenet", data={"image": (io.BytesIO(data), "x.img")}, content_type="multipart/form-data"),
    ]
    for r in answers[:2]:
        assert r.status_code == 415
        assert r.get_json()["error"]["code"] == "unsupported_format" and fmt in r.get_json()["error"]["message"]
    assert answers[2].status_code == 415
    assert _queue_depth(web_settings) == 0


def test_status_url_and_location_use_a_trusted_host_whatever_host_the_request_named(make_app, web_settings):
    web = make_app(web_settings.replace(trusted_hosts=("api.example.com", "alb-1.elb.amazonaws.com"))).test_client()
    r = web.post("/jobs", json={"url": "http://example.com/cat.jpg"}, headers={"Host": "evil.example.net"})
    assert r.status_code == 202
    body = r.get_json()
    assert body["status_url"] == f"http://api.example.com/jobs/{body['id']}"
    assert r.headers["Location"] == body["status_url"]
    r = web.post("/jobs", json={"url": "http://example.com/cat.jpg"}, headers={"Host": "alb-1.elb.amazonaws.com"})
    assert r.get_json()["status_url"].startswith("http://alb-1.elb.amazonaws.com/jobs/")
    assert web.get("/services", headers={"Host": "10.0.100.5:8080"}).status_code == 200  # ALB health checks


def test_behind_the_alb_the_scheme_comes_from_x_forwarded_proto_and_not_from_x_forwarded_host(make_app, web_settings):
    web = make_app(web_settings.replace(trusted_hosts=("api.example.com",), proxy_hops=1)).test_client()
    r = web.post("/jobs", json={"url": "http://example.com/cat.jpg"},
                 headers={"Host": "api.example.com", "X-Forwarded-Proto": "https",
                          "X-Forwarded-Host": "evil.example.net", "X-Forwarded-For": "203.0.113.7"})
    assert r.get_json()["status_url"].startswith("https://api.example.com/jobs/")


def test_a_url_naming_this_service_itself_is_refused_by_the_web(make_app, web_settings):
    web = make_app(web_settings.replace(own_hosts=("my-alb-1.elb.amazonaws.com",),
                                        trusted_hosts=("api.example.com",))).test_client()
    loops = ["http://localhost/classify?url=http://x/y.jpg",                  # the Host of this request
             "http://my-alb-1.elb.amazonaws.com/classify?url=http://x/y.jpg",  # the load balancer
             "https://API.example.com./cv/imagenet"]                           # a public name
    for url in loops:
        r = web.get("/classify", query_string={"url": url})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "forbidden_address", url
        r = web.post("/jobs", json={"url": url})
        assert r.status_code == 400, url
    assert _queue_depth(web_settings) == 0
    assert web.post("/jobs", json={"url": "http://localhost:8081/cat.jpg"}).status_code == 202  # another port


def test_every_answer_carries_nosniff_no_framing_and_a_csp_and_the_pages_admit_only_their_own_scripts(web):
    from webserver.headers import inline_script_hashes
    for path in ("/services", "/jobs/nope!", "/classify"):
        r = web.get(path)
        assert r.headers["X-Content-Type-Options"] == "nosniff" and r.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"], path
        assert "Strict-Transport-Security" not in r.headers            # plain HTTP: no HSTS
    hashes = inline_script_hashes()
    assert len(hashes) == 2                                              # the upload page's and /docs'
    for page in ("/", "/docs"):
        csp = web.get(page).headers["Content-Security-Policy"]
        assert "script-src 'self' " + " ".join(hashes) + ";" in csp and "'unsafe-inline'" not in csp.split(";")[1]
        assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    page = web.get("/").get_data(as_text=True)
    assert "localStorage" not in page and "sessionStorage" in page     # the key does not outlive the tab


def test_hsts_is_sent_when_the_load_balancer_says_the_client_came_over_tls(make_app, web_settings):
    app = make_app(web_settings.replace(proxy_hops=1))
    r = app.test_client().get("/services", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert r.headers["Strict-Transport-Security"].startswith("max-age=")
    assert "Strict-Transport-Security" not in app.test_client().get("/services").headers


@pytest.mark.parametrize("path", ["/faces/crew", "/classify", "/jobs", "/classify?service=facesearch"])
def test_deeply_nested_json_is_a_400_on_every_route_that_reads_json(web, path):
    body = "[" * 200_000 + "]" * 200_000
    r = web.post(path, data=body, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed_json", r.get_data(as_text=True)[:200]
