"""The OpenAPI document is exact where it can be: what its schemas accept, the server does not refuse for their reasons."""
from __future__ import annotations

import base64
import random
import re

from jsonschema import Draft202012Validator
from openapi_check import check_flask_response, load_spec

from webserver.errors import ApiError
from webserver.inputs import decode_base64


def validator(*path: str) -> Draft202012Validator:
    """A validator for one schema of the served document (its $refs resolved within it)."""
    spec = load_spec()
    node = spec
    for part in path:
        node = node[part]
    return Draft202012Validator({**node, "components": spec["components"]})


def server_decodes(text: str) -> bool:
    """Whether decode_base64 takes the text as base64 (an image format it refuses is another matter: 415)."""
    try:
        decode_base64(text)
    except ApiError as exc:
        return exc.code != "invalid_base64"
    return True


def test_the_documented_base64_accepts_exactly_what_the_server_decodes(sample_bytes):
    schema = validator("components", "schemas", "ImageBase64")
    rng = random.Random(34)
    alphabet = "AB+/=9 \n\t:;,-datbse64/"
    cases = ["", " ", "A", "AA", "AA=", "AA==", "AA===", "AAA=", "AAA==", "AAAA", "AAAA=", "AAAA====", "A=AA",
             "data:image/png;base64,AAAA", "DATA:image/png;BASE64,AA==", "data:;base64,", " \n AA \n ",
             base64.b64encode(sample_bytes["chelsea"]).decode(),
             "data:image/jpeg;base64," + base64.encodebytes(sample_bytes["coffee"]).decode()]
    cases += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20000)]
    cases += ["data:image/png;base64," + c for c in cases[-2000:]]
    wrong = [c for c in cases if schema.is_valid(c) != server_decodes(c)]
    assert wrong == [], wrong[:10]


def test_an_xcloud_form_the_document_accepts_always_carries_an_image():
    form = validator("components", "requestBodies", "XCloudInput", "content", "application/x-www-form-urlencoded",
                     "schema")
    for blank in ("", " ", "\n", "="):
        assert not form.is_valid({"image": blank}), blank
    assert form.is_valid({"image": "https://example.com/lesion.jpg"})


def test_what_the_document_refuses_the_server_refuses_too_on_the_skin_route(web):
    for body in ({"image": ""}, {"image": "   "}):
        r = web.post("/cv/mcloud/skin", data=body, content_type="application/x-www-form-urlencoded")
        check_flask_response("POST", "/cv/mcloud/skin", r)
        assert r.status_code == 400 and r.json["code"] != 0, r.json
    r = web.post("/cv/mcloud/skin", data={"image": "A"}, content_type="application/x-www-form-urlencoded")
    assert r.status_code == 400


def test_job_input_allows_exactly_one_image_source():
    body = validator("components", "requestBodies", "JobInput", "content", "application/json", "schema")
    loc = "s3://bucket-name/batch-io/anonymous/in/cat.jpg"
    assert body.is_valid({"url": "https://example.com/a.jpg"})
    assert body.is_valid({"input_location": loc, "url": None})
    assert not body.is_valid({"input_location": loc, "url": "https://example.com/a.jpg"})
    assert not body.is_valid({"input_location": loc, "image_base64": "AAAA"})
    assert not body.is_valid({"ttl_s": 60})
    form = validator("components", "requestBodies", "JobInput", "content", "multipart/form-data", "schema")
    assert form.is_valid({"input_location": loc, "url": ""}) and form.is_valid({"image": "x", "input_location": ""})
    assert form.is_valid({"input_location": loc, "image": "x"})     # the file is used, the location checked
    assert not form.is_valid({"input_location": loc, "url": "https://example.com/a.jpg"})
    classify = validator("components", "requestBodies", "ClassifyInput", "content", "multipart/form-data", "schema")
    assert not classify.is_valid({"input_location": loc})     # /classify takes no S3 location
    assert re.match(load_spec()["components"]["schemas"]["JobInputLocation"]["pattern"], loc)
