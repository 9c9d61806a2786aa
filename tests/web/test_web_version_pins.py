"""The web's version routing: pins reach only versions with traffic unless the policy allows; enrolments stay live."""
from __future__ import annotations

import json

from openapi_check import check_flask_response

from shared.aws import client
from shared.traffic import TrafficStore
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
