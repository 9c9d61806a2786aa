"""The Open Inference Protocol under /v2 on the real app, the peer playing the worker over real SQS (moto)."""
from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from openapi_check import check_flask_response
from PIL import Image
from web_peer import sha_label

from webserver.oip_tensors import HEADER

INFER = "/v2/models/imagenet/infer"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_input(*images: bytes) -> dict:
    return {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": [b64(i) for i in images]}


def post(web, doc: dict, path: str = INFER, **kw):
    r = web.post(path, data=json.dumps(doc), content_type="application/json", **kw)
    check_flask_response("POST", path, r)
    return r


def binary_body(doc: dict, raw: bytes) -> tuple[bytes, dict]:
    head = json.dumps(doc).encode()
    return head + raw, {HEADER: str(len(head))}


def bytes_tensor(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def split_binary(r) -> tuple[dict, dict]:
    """The JSON header and each binary output's data, by name, as numpy arrays."""
    size = int(r.headers[HEADER])
    head, rest, arrays = json.loads(r.data[:size]), r.data[size:], {}
    for out in head["outputs"]:
        if "data" in out:
            continue
        n = out["parameters"]["binary_data_size"]
        chunk, rest = rest[:n], rest[n:]
        if out["datatype"] == "BYTES":
            values, at = [], 0
            while at < len(chunk):
                (length,) = struct.unpack_from("<I", chunk, at)
                values.append(chunk[at + 4:at + 4 + length].decode())
                at += 4 + length
            arrays[out["name"]] = np.array(values, dtype=object).reshape(out["shape"])
        else:
            arrays[out["name"]] = np.frombuffer(chunk, {"FP32": "<f4", "INT64": "<i8"}[out["datatype"]]).reshape(
                out["shape"])
    return head, arrays


def test_a_json_request_of_three_images_answers_labels_scores_and_indices_in_image_order(web, peer, sample_bytes):
    photos = [sample_bytes[n] for n in ("chelsea", "coffee", "astronaut")]
    r = post(web, {"id": "req-1", "inputs": [image_input(*photos)], "parameters": {"top_k": 3}})
    assert r.status_code == 200, r.data
    body = r.json
    assert body["model_name"] == "imagenet" and body["model_version"] == "v1" and body["id"] == "req-1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert {n: (o["datatype"], o["shape"]) for n, o in outputs.items()} == {
        "labels": ("BYTES", [3, 3]), "scores": ("FP32", [3, 3]), "indices": ("INT64", [3, 3])}
    assert [outputs["labels"]["data"][i * 3] for i in range(3)] == [sha_label(p) for p in photos]
    assert outputs["scores"]["data"][:3] == [0.9, 0.45, 0.3] and outputs["indices"]["data"][:3] == [0, 7, 14]
    assert len(set(body["parameters"]["request_ids"])) == 3


def test_the_binary_tensor_extension_carries_inputs_and_outputs(web, peer, sample_bytes):
    photos = [sample_bytes["chelsea"], sample_bytes["rocket"]]
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                       "parameters": {"binary_data_size": len(bytes_tensor(*photos))}}],
           "outputs": [{"name": "labels", "parameters": {"binary_data": True}},
                       {"name": "scores", "parameters": {"binary_data": True}},
                       {"name": "indices", "parameters": {"binary_data": False}}]}
    body, headers = binary_body(doc, bytes_tensor(*photos))
    r = web.post(INFER, data=body, headers=headers)
    check_flask_response("POST", INFER, r)
    assert r.status_code == 200 and r.mimetype == "application/octet-stream", r.data[:300]
    head, arrays = split_binary(r)
    assert list(arrays["labels"][:, 0]) == [sha_label(p) for p in photos]
    assert arrays["scores"].dtype == np.float32 and arrays["scores"][0, 0] == np.float32(0.9)
    assert head["outputs"][2]["data"][:2] == [0, 7]     # the JSON output beside the binary ones


def test_binary_data_output_makes_every_output_binary(web, peer, sample_bytes):
    raw = bytes_tensor(sample_bytes["coffee"])
    body, headers = binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                             "parameters": {"binary_data_size": len(raw)}}],
                                 "parameters": {"binary_data_output": True}}, raw)
    r = web.post(INFER, data=body, headers=headers)
    assert r.status_code == 200, r.data
    _, arrays = split_binary(r)
    assert set(arrays) == {"labels", "scores", "indices"} and arrays["indices"].dtype == np.int64


def test_the_classification_extension_answers_score_index_label_strings(web, peer, sample_bytes):
    r = post(web, {"inputs": [image_input(sample_bytes["chelsea"])],
                   "outputs": [{"name": "scores", "parameters": {"classification": 2}}]})
    assert r.status_code == 200, r.data
    (out,) = r.json["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [1, 2]
    assert out["data"] == [f"0.900000:0:{sha_label(sample_bytes['chelsea'])}", "0.450000:7:other-1"]


@pytest.mark.parametrize("doc, code", [
    ({"inputs": []}, "missing_image"),
    ({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": ["x"]}]}, "invalid_tensor"),
    ({"inputs": [{"name": "picture", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}, "invalid_tensor"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["iVBORw0KGgo="]}]}, "invalid_tensor"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [17], "data": ["x"] * 17}]}, "invalid_tensor"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64!"]}]}, "invalid_base64"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["iVBORw0KGgo="]}],
      "outputs": [{"name": "probabilities"}]}, "invalid_tensor"),
    ({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["iVBORw0KGgo="]}],
      "outputs": [{"name": "scores", "parameters": {"classification": 0}}]}, "invalid_tensor"),
])
def test_a_bad_inference_request_answers_400_in_the_protocols_error_shape(web, doc, code):
    r = post(web, doc)
    assert r.status_code == 400 and r.json["code"] == code and isinstance(r.json["error"], str), r.json


def test_binary_sizes_that_disagree_with_the_body_are_refused(web, sample_bytes):
    raw = bytes_tensor(sample_bytes["chelsea"])
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "parameters": {"binary_data_size": len(raw) + 1}}]}
    body, headers = binary_body(doc, raw)
    r = web.post(INFER, data=body, headers=headers)
    assert r.status_code == 400 and "binary_data_size" in r.json["error"]
    r = web.post(INFER, data=body, headers={HEADER: str(len(body) + 5)})
    assert r.status_code == 400 and r.json["code"] == "bad_request"
    truncated = struct.pack("<I", 999) + b"abc"
    body, headers = binary_body({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                             "parameters": {"binary_data_size": len(truncated)}}]}, truncated)
    r = web.post(INFER, data=body, headers=headers)
    assert r.status_code == 400 and "longer than the data" in r.json["error"]


def test_refused_formats_compressed_bodies_and_unknown_models_answer_their_4xx(web, sample_bytes):
    tiff = b"II*\x00" + b"\x00" * 64
    r = post(web, {"inputs": [image_input(tiff)]})
    assert r.status_code == 415 and r.json["code"] == "unsupported_format"
    r = web.post(INFER, data=b"\x1f\x8b...", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 415 and "Content-Encoding" in r.json["error"]
    r = post(web, {"inputs": [image_input(sample_bytes["chelsea"])]}, path="/v2/models/nosuch/infer")
    assert r.status_code == 404 and r.json["code"] == "unknown_service"
    r = post(web, {"inputs": [image_input(sample_bytes["chelsea"])]}, path="/v2/models/facesearch/infer")
    assert r.status_code == 404 and "not a classifier" in r.json["error"]
    r = web.get(INFER)
    assert r.status_code == 405 and r.json["code"] == "method_not_allowed" and isinstance(r.json["error"], str)
    r = web.post(INFER, data=b"{not json", content_type="application/json")
    assert r.status_code == 400 and r.json["code"] == "malformed_json"


def test_a_pin_through_the_versions_path_is_checked_as_service_at_version_is(web, sample_bytes):
    r = post(web, {"inputs": [image_input(sample_bytes["chelsea"])]}, path="/v2/models/imagenet/versions/v9/infer")
    assert r.status_code == 404 and r.json["code"] == "unknown_version" and "v1" in r.json["versions"]
    r = post(web, {"inputs": [image_input(sample_bytes["chelsea"])]}, path="/v2/models/imagenet/versions/V!/infer")
    assert r.status_code == 400 and r.json["code"] == "invalid_version"


def test_health_server_and_model_metadata_follow_the_protocol(web):
    for path, body in [("/v2/health/live", {"live": True}), ("/v2/health/ready", {"ready": True}),
                       ("/v2/models/imagenet/ready", {"name": "imagenet", "ready": True})]:
        r = web.get(path)
        check_flask_response("GET", path, r)
        assert (r.status_code, r.json) == (200, body), path
    r = web.get("/v2")
    check_flask_response("GET", "/v2", r)
    assert r.json["name"] == "classifycloud" and {"classification", "binary_tensor_data"} <= set(r.json["extensions"])
    r = web.get("/v2/models/imagenet")
    check_flask_response("GET", "/v2/models/imagenet", r)
    meta = r.json
    assert meta["name"] == "imagenet" and meta["versions"] == ["v1", "v2"] and meta["platform"] == "pytorch_torchvision"
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                              {"name": "pixels", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]] == [
        ("labels", "BYTES"), ("scores", "FP32"), ("indices", "INT64")]
    r = web.get("/v2/models/imagenet/versions/v2")
    assert r.status_code == 200 and r.json["inputs"][1]["shape"] == [-1, 3, 260, 260]
    for path in ("/v2/models/imagenet/versions/v7", "/v2/models/nsfw", "/v2/models/nosuch/ready"):
        r = web.get(path)
        check_flask_response("GET", path, r)
        assert r.status_code == 404 and isinstance(r.json["error"], str), path


def _preprocessed(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit RGB [3,224,224], its imagenet normalisation) as a client that preprocesses itself computes."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    side = min(img.size)
    img = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                    (img.width + side) // 2, (img.height + side) // 2)).resize((224, 224), Image.BILINEAR)
    rgb = np.asarray(img).transpose(2, 0, 1)
    return rgb, ((rgb.astype(np.float32) / 255.0) - 0.5) / 0.5


def test_fp32_pixels_reach_the_worker_as_a_png_of_exactly_those_pixels(web, peer, sample_bytes):
    rgb, pixels = _preprocessed(sample_bytes["chelsea"])
    raw = pixels[None].astype("<f4").tobytes()
    body, headers = binary_body({"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224],
                                             "parameters": {"binary_data_size": len(raw)}}]}, raw)
    r = web.post(INFER, data=body, headers=headers)
    assert r.status_code == 200, r.data
    (req,) = [q for q in peer.requests if q.id == r.json["parameters"]["request_ids"][0]]
    bucket, key = req.image["s3"][5:].split("/", 1)
    png = peer.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert png.startswith(b"\x89PNG") and r.json["outputs"][0]["data"][0] == sha_label(png)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))).transpose(2, 0, 1), rgb)


def test_fp32_pixels_that_are_not_the_models_normalisation_are_refused_with_the_reason(web):
    pixels = np.full((1, 3, 224, 224), 0.123, dtype=np.float32)
    doc = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 3, 224, 224],
                       "data": pixels.ravel().tolist()}]}
    r = web.post(INFER, data=json.dumps(doc), content_type="application/json")
    assert r.status_code == 400 and r.json["code"] == "pixels_not_exact" and "mean [0.5, 0.5, 0.5]" in r.json["error"]
    doc["inputs"][0].update(shape=[1, 3, 32, 32], data=[0.0] * 3 * 32 * 32)
    r = web.post(INFER, data=json.dumps(doc), content_type="application/json")
    assert r.status_code == 400 and "[N,3,224,224]" in r.json["error"]
