"""Version-1 messages with the optional fields of service kinds: request params, reply kind."""
from __future__ import annotations

import json

import pytest

from shared.messages import MessageError, Reply, Request


def test_a_request_without_params_keeps_its_v1_shape_and_params_round_trip():
    plain = Request(id="r1", service="imagenet", image={"url": "http://x/a.jpg"}, reply_to=None)
    assert "params" not in json.loads(plain.to_json())
    assert Request.from_json(plain.to_json()).params is None
    face = Request(id="r2", service="facesearch", image={"url": "http://x/a.jpg"}, reply_to=None,
                   params={"op": "enroll", "gallery": "crew", "name": "Ann"})
    assert Request.from_json(face.to_json()).params == {"op": "enroll", "gallery": "crew", "name": "Ann"}


@pytest.mark.parametrize("params", [[1, 2], "gallery=crew", {"meta": "x" * 5000}])
def test_request_params_that_are_not_a_small_object_are_malformed(params):
    body = json.dumps({"v": 1, "id": "r3", "service": "skin", "image": {"url": "http://x/a.jpg"},
                       "reply_to": None, "params": params})
    with pytest.raises(MessageError) as err:
        Request.from_json(body)
    assert err.value.code == "malformed_message" and "params" in err.value.message


def test_reply_kind_is_optional_and_defaults_to_classifier():
    reply = Reply.ok("r1", "nsfw", [{"label": "nsfw", "index": 1, "score": 0.01, "verdict": "sfw"}], kind="score")
    assert Reply.from_json(reply.to_json()).kind == "score"
    old = json.loads(reply.to_json())
    del old["kind"]  # a reply from a worker that predates kinds
    assert Reply.from_json(json.dumps(old)).kind == "classifier"
