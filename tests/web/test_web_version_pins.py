"""The web's version routing: pins reach only versions with traffic unless the policy allows; enrolments stay live."""
from __future__ import annotations

import json

from openapi_check import check_flask_response

from shared.aws import client
from shared.traffic import TrafficStore
from shared.version_entries import version_prefix
from shared.versions import TrafficPolicy


def classify(web, service: str):
    path = "/classify"
    resp = web.get(path, query_string={"url": "https://example.com/cat.jpg", "service": service})
    check_flask_response("GET", path, resp)
    return resp


def test_a_pin_to_a_version_without_traffic_is_refused_unless_the_policy_allows_idle_pins(make_app, web_settings):
    s = web_settings.replace(catalogue_ttl_s=0.0, reply_timeout_s=1.0)
    store = TrafficStore(s, client("s3", s))
    store.write(TrafficPolicy("imagenet", weights={"v1": 1, "v2": 0, "v3": 0}, pinning=True,
                              rolled_back={"v3": {"reason": "error rate", "at": 1, "by": "controller"}}))
    web = make_app(s).test_client()
    for pin in ("imagenet@v2", "imagenet@v3"):     # weight 0; rolled back by the controller
        r = classify(web, pin)
        assert r.status_code == 403 and r.json["error"]["code"] == "version_not_serving", (pin, r.json)
    store.write(TrafficPolicy("imagenet", weights={"v1": 1, "v2": 0}, pinning=True, pin_idle=True))
    r = classify(web, "imagenet@v2")
    assert r.status_code == 504, r.json          # accepted and sent (no worker here answers it)
    store.write(TrafficPolicy("imagenet", weights={"v1": 1, "v2": 1}, pinning=True))
    assert classify(web, "imagenet@v2").status_code == 504     # a version with traffic: pins as before


def test_an_enrolment_goes_to_the_live_version_and_is_never_shadowed(make_app, web_settings, provisioned):
    s = web_settings.replace(catalogue_ttl_s=0.0, reply_timeout_s=1.0)
    TrafficStore(s, client("s3", s)).write(TrafficPolicy("facesearch", weights={"v1": 1, "v2": 1}, live="v1",
                                                         shadow="v2", shadow_share=1.0))
    web = make_app(s).test_client()
    for _ in range(3):
        r = web.post("/faces/staff", data={"url": "https://example.com/face.jpg", "name": "ann"})
        assert r.status_code == 504, r.json
    sqs = client("sqs", s)
    got = []
    while len(got) < 3:
        msgs = sqs.receive_message(QueueUrl=provisioned["facesearch"], MaxNumberOfMessages=10,
                                   WaitTimeSeconds=1).get("Messages", [])
        assert msgs, f"only {len(got)} of 3 enrolments queued"
        got.extend(json.loads(m["Body"]) for m in msgs)
    assert all(m["params"]["op"] == "enroll" for m in got)
    assert {(m.get("version"), m.get("shadow")) for m in got} == {("v1", None)}


def imagenet_listing(web) -> dict:
    resp = web.get("/services")
    check_flask_response("GET", "/services", resp)
    return next(s for s in resp.json["services"] if s["name"] == "imagenet")["versions"]


def test_services_lists_packaged_and_s3_versions_with_origin_weight_and_state(make_app, web_settings):
    # S3 versions of a packaged service are refused unless the operator allows them (docs/VERSIONS.md)
    s = web_settings.replace(catalogue_ttl_s=0.0, catalogue_s3_replaces_packaged=True)
    web = make_app(s).test_client()
    listed = imagenet_listing(web)
    assert listed["policy"] is False and listed["pinning"] is False
    assert {v["version"]: (v["origin"], v["weight"], v["state"]) for v in listed["list"]} == {
        "v1": ("catalogue", 1.0, "live"), "v2": ("packaged", 0.0, "idle")}
    s3 = client("s3", s)
    prefix = version_prefix("imagenet", "v3")
    s3.put_object(Bucket=s.bucket_name, Key=prefix + "model.pth", Body=b"weights")
    s3.put_object(Bucket=s.bucket_name, Key=prefix + "entry.yaml", Body=(
        b"architecture: efficientnet_lite0\nnum_classes: 1000\nlabels: torchvision:imagenet\nweights: model.pth\n"))
    s3.put_object(Bucket=s.bucket_name, Key=version_prefix("imagenet", "v4") + "entry.yaml", Body=b"colour: red\n")
    TrafficStore(s, s3).write(TrafficPolicy("imagenet", weights={"v1": 90, "v3": 10}, pinning=True))
    by_version = {v["version"]: v for v in imagenet_listing(web)["list"]}
    assert (by_version["v3"]["origin"], by_version["v3"]["weight"], by_version["v3"]["state"]) == ("s3", 10.0, "canary")
    assert by_version["v3"]["architecture"] == "efficientnet_lite0"
    assert by_version["v4"]["origin"] == "s3" and by_version["v4"]["state"] == "invalid" and by_version["v4"]["reason"]
    assert by_version["v2"]["state"] == "idle" and by_version["v1"]["state"] == "live"


def test_a_pin_of_a_packaged_version_behaves_as_the_policy_says(make_app, web_settings):
    s = web_settings.replace(catalogue_ttl_s=0.0, reply_timeout_s=1.0)
    web = make_app(s).test_client()
    r = classify(web, "imagenet@v2")     # no traffic.json: the version exists, pins are off
    assert r.status_code == 403 and r.json["error"]["code"] == "pinning_not_allowed", r.json
    r = classify(web, "imagenet@v9")
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_version"
    assert r.json["versions"] == ["v1", "v2"]
    store = TrafficStore(s, client("s3", s))
    store.write(TrafficPolicy("imagenet", weights={"v1": 1}, pinning=True))
    r = classify(web, "imagenet@v2")     # packaged, weight 0: idle
    assert r.status_code == 403 and r.json["error"]["code"] == "version_not_serving", r.json
    store.write(TrafficPolicy("imagenet", weights={"v1": 1}, pinning=True, pin_idle=True))
    assert classify(web, "imagenet@v2").status_code == 504     # accepted and sent (no worker here answers it)


def test_whitespace_around_a_pinned_service_name_is_not_part_of_its_version(make_app, web_settings):
    s = web_settings.replace(catalogue_ttl_s=0.0, reply_timeout_s=1.0)
    web = make_app(s).test_client()
    r = web.post("/batches", json={"service": " imagenet@v2\u000b ", "input": {"items": ["https://example.com/a.jpg"]},
                                   "output": f"s3://{s.bucket_name}/batch-io/anonymous/out/"})
    check_flask_response("POST", "/batches", r)
    assert r.status_code == 202 and r.json["service"] == "imagenet", r.json   # not 400 invalid_version
