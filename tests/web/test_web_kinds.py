"""Service kinds at the web tier: /services, per-kind parameters, /faces enrolment, XCloud's envelope per kind."""
from __future__ import annotations

import pytest
from web_peer import PeerWorker

from shared import naming
from shared.aws import client
from webserver.xcloud import xcloud_results


@pytest.fixture
def face_peer(web_settings, provisioned):
    """A peer worker on the facesearch queue (records the requests it got)."""
    p = PeerWorker(web_settings, services=("facesearch",)).start()
    yield p
    p.stop()


def _queued(settings, service: str) -> int:
    sqs = client("sqs", settings)
    url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, service))["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
    return int(attrs["Attributes"]["ApproximateNumberOfMessages"])


def test_services_lists_each_kind_and_at_least_five_available_services(web):
    services = {s["name"]: s for s in web.get("/services").get_json()["services"]}
    available = [n for n, s in services.items() if s["available"]]
    # food and insect: derived from imagenet's model (issue 21), available wherever imagenet is
    assert set(available) == {"imagenet", "nsfw", "skin", "pdr", "facesearch", "food", "insect"}
    kinds = {n: s["kind"] for n, s in services.items()}
    assert kinds["nsfw"] == kinds["fbp"] == "score" and kinds["facesearch"] == "embedding"
    assert kinds["imagenet"] == kinds["skin"] == kinds["pdr"] == "classifier"
    assert services["nsfw"]["threshold"] == 0.5
    assert "os.listdir" in services["pdr"]["labels_note"]
    assert services["fbp"]["available"] is False and "never published" in services["fbp"]["reason"]


def test_facesearch_without_a_valid_gallery_is_refused_and_nothing_is_queued(web, web_settings):
    r = web.get("/classify?url=http://example.com/a.jpg&service=facesearch")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "missing_gallery"
    r = web.get("/classify?url=http://example.com/a.jpg&service=facesearch&gallery=no/slash")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_gallery"
    r = web.post("/cv/facesearch", data={"image": "http://example.com/a.jpg"})
    assert r.status_code == 400 and r.get_json()["code"] == 3 and r.get_json()["error"] == "missing_gallery"
    r = web.post("/faces/crew", data={"url": "http://example.com/a.jpg"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_name"
    r = web.post("/faces/bad.name", data={"url": "http://example.com/a.jpg", "name": "x"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_gallery"
    r = web.get("/classify?url=http://example.com/a.jpg&service=skin&meta={oops")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_params"
    assert _queued(web_settings, "facesearch") == 0 and _queued(web_settings, "skin") == 0


def test_search_and_enrol_carry_their_parameters_to_the_facesearch_queue(web, face_peer):
    r = web.get("/classify?url=http://example.com/a.jpg&service=facesearch&gallery=crew")
    assert r.status_code == 200, r.get_json()
    r = web.post("/faces/crew", data={"url": "http://example.com/b.jpg", "name": " Eileen Collins "})
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["gallery"] == "crew" and body["id"]
    r = web.post("/cv/facesearch", data={"image": "http://example.com/c.jpg", "gallery": "crew"})
    assert r.status_code == 200 and r.get_json()["code"] == 0
    params = [q.params for q in face_peer.requests]
    # keys off (this app): every gallery belongs to the one default tenant, named by the server
    assert params == [{"op": "search", "gallery": "crew", "tenant": "default"},
                      {"op": "enroll", "gallery": "crew", "name": "Eileen Collins", "tenant": "default"},
                      {"op": "search", "gallery": "crew", "tenant": "default"}]


def test_xcloud_envelope_maps_each_kind():
    assert xcloud_results([{"label": "cat", "index": 0, "score": 0.91234}]) == [
        {"name": "cat", "category_id": 1, "prob": 0.9123}]
    score = [{"label": "nsfw", "index": 1, "score": 0.01, "verdict": "sfw", "threshold": 0.5}]
    assert xcloud_results(score, "score") == [
        {"name": "nsfw", "category_id": 2, "prob": 0.01, "verdict": "sfw", "threshold": 0.5}]
    assert xcloud_results([{"label": "score", "index": 0, "score": 3.21}], "score") == [
        {"name": "score", "score": 3.21}]
    face = [{"face": 0, "box": [1, 2, 3, 4], "label": "Ann", "distance": 0.2,
             "matches": [{"name": "Ann", "distance": 0.2}]}]
    assert xcloud_results(face, "embedding") == [
        {"name": "Ann", "distance": 0.2, "box": [1, 2, 3, 4], "matches": [{"name": "Ann", "distance": 0.2}]}]
