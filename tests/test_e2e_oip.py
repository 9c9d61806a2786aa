"""Triton's own HTTP client (tritonclient) against the local stack: gunicorn web, a real imagenet worker, keys on."""
from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from classifycloud.local import LocalStack
from shared.config import Settings
from webserver.auth import owns

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(moto_endpoint):
    """One web process and one worker hosting imagenet, API keys on."""
    settings = Settings.from_env({}, prefix="o" + uuid.uuid4().hex[:8], metrics_enabled=False, api_keys="on",
                                 api_key_cache_s=0.0, services=("imagenet",))
    s = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, workers=1).start()
    try:
        s.wait_ready(timeout=300, workers=True)
        yield s
    finally:
        s.stop()


def keys(stack, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "classifycloud", "keys", *args], env=stack.child_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def key(stack) -> dict:
    made = json.loads(keys(stack, "create", "--owner", "oip", "--json"))
    return {"id": made["key_id"], "auth": {"Authorization": f"Bearer {made['key']}"}}


def auth(key) -> dict:
    """A fresh headers dict: tritonclient adds its own headers (Inference-Header-Content-Length) to the one given."""
    return dict(key["auth"])


@pytest.fixture(scope="module")
def client(stack):
    c = triton.InferenceServerClient(stack.base_url.removeprefix("http://"), network_timeout=180.0,
                                     connection_timeout=30.0)
    yield c
    c.close()


def classify(stack, key, data: bytes) -> list[dict]:
    r = requests.post(stack.base_url + "/classify", headers=key["auth"], files={"image": ("i.jpg", data)},
                      timeout=180)
    assert r.status_code == 200, r.text
    return r.json()["results"]


def image_input(*images: bytes, binary: bool = True) -> triton.InferInput:
    inp = triton.InferInput("image", [len(images)], "BYTES")
    values = list(images) if binary else [base64.b64encode(i).decode() for i in images]
    return inp.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)


def test_tritons_client_classifies_chelsea_as_egyptian_cat_with_the_labels_and_scores_of_classify(
        stack, key, client, sample_bytes):
    photos = [sample_bytes["chelsea"], sample_bytes["coffee"]]
    result = client.infer("imagenet", [image_input(*photos)], headers=auth(key))   # binary in and out
    labels, scores, indices = (result.as_numpy(n) for n in ("labels", "scores", "indices"))
    assert labels.shape == scores.shape == indices.shape == (2, 5)
    assert labels[0, 0] == b"Egyptian cat" and indices[0, 0] == 285 and labels[1, 0] == b"espresso"
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    for row, photo in enumerate(photos):
        native = classify(stack, key, photo)
        assert [lb.decode() for lb in labels[row]] == [r["label"] for r in native]
        assert list(indices[row]) == [r["index"] for r in native]
        assert list(scores[row]) == [np.float32(r["score"]) for r in native]
    response = result.get_response()
    assert response["model_name"] == "imagenet" and response["model_version"] == "v1"
    # each image's queued request is the key's own (GET /jobs/<id> answers it), also those sent side by side
    assert all(owns(rid, key["id"]) for rid in response["parameters"]["request_ids"])


def test_json_tensors_and_the_classification_extension_through_tritons_client(stack, key, client, sample_bytes):
    outputs = [triton.InferRequestedOutput("scores", binary_data=False, class_count=3),
               triton.InferRequestedOutput("labels", binary_data=False)]
    result = client.infer("imagenet", [image_input(sample_bytes["chelsea"], binary=False)], outputs=outputs,
                          headers=auth(key), request_id="chelsea-1", parameters={"top_k": 2})
    top3 = [s.split(":", 2) for s in result.as_numpy("scores")[0]]
    native = classify(stack, key, sample_bytes["chelsea"])
    assert [(float(s), int(i), label) for s, i, label in top3] == [
        (r["score"], r["index"], r["label"]) for r in native[:3]]
    assert top3[0][1:] == ["285", "Egyptian cat"]
    assert list(result.as_numpy("labels")[0]) == [r["label"] for r in native[:2]]   # top_k 2 for plain outputs
    assert result.get_response()["id"] == "chelsea-1"


def test_fp32_pixels_a_client_preprocessed_answer_as_their_png_does(stack, key, client, sample_bytes):
    img = Image.open(io.BytesIO(sample_bytes["chelsea"])).convert("RGB")
    side = min(img.size)
    img = img.crop(((img.width - side) // 2, (img.height - side) // 2,
                    (img.width + side) // 2, (img.height + side) // 2)).resize((224, 224), Image.BILINEAR)
    rgb = np.asarray(img).transpose(2, 0, 1)[None]
    pixels = triton.InferInput("pixels", [1, 3, 224, 224], "FP32").set_data_from_numpy(
        ((rgb.astype(np.float32) / 255.0) - 0.5) / 0.5)
    result = client.infer("imagenet", [pixels], headers=auth(key))
    assert result.as_numpy("labels")[0, 0] == b"Egyptian cat"
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    native = classify(stack, key, buf.getvalue())
    assert list(result.as_numpy("scores")[0]) == [np.float32(r["score"]) for r in native]


def test_health_and_metadata_through_tritons_client(client):
    assert client.is_server_live() and client.is_server_ready()
    assert {"classification", "binary_tensor_data"} <= set(client.get_server_metadata()["extensions"])
    meta = client.get_model_metadata("imagenet")
    assert meta["name"] == "imagenet" and "v1" in meta["versions"]
    assert client.is_model_ready("imagenet") and not client.is_model_ready("nosuch")
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("imagenet", model_version="v9")
    assert err.value.status() == "404" and "no version 'v9'" in err.value.message()


def test_a_missing_or_revoked_key_is_refused_in_the_protocols_error_shape(stack, client, sample_bytes):
    with pytest.raises(InferenceServerException) as err:
        client.infer("imagenet", [image_input(sample_bytes["chelsea"])])
    assert err.value.status() == "401" and "needs a key" in err.value.message()
    made = json.loads(keys(stack, "create", "--owner", "gone", "--json"))
    keys(stack, "revoke", made["key_id"])
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(sample_bytes["chelsea"]).decode()]}]}
    r = requests.post(stack.base_url + "/v2/models/imagenet/infer", json=doc, timeout=60,
                      headers={"Authorization": f"Bearer {made['key']}"})
    assert r.status_code == 401 and r.json()["code"] == "revoked_api_key" and isinstance(r.json()["error"], str)


def test_the_monthly_quota_counts_each_image_of_a_call(stack, sample_bytes):
    made = json.loads(keys(stack, "create", "--owner", "small", "--quota", "2", "--json"))
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3],
                       "data": [base64.b64encode(sample_bytes[n]).decode() for n in ("chelsea", "coffee", "rocket")]}]}
    r = requests.post(stack.base_url + "/v2/models/imagenet/infer", json=doc, timeout=60,
                      headers={"Authorization": f"Bearer {made['key']}"})
    assert r.status_code == 403 and r.json()["code"] == "quota_exceeded" and "one per image" in r.json()["error"]


def test_curl_style_json_and_errors_match_the_described_shapes(stack, key, sample_bytes):
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                       "data": [base64.b64encode(sample_bytes["chelsea"]).decode()]}],
           "outputs": [{"name": "labels"}, {"name": "scores", "parameters": {"classification": 1}}]}
    r = requests.post(stack.base_url + "/v2/models/imagenet/infer", json=doc, headers=key["auth"], timeout=180)
    assert r.status_code == 200, r.text   # and the conftest hook checked it against webserver/openapi.yaml
    labels, top1 = r.json()["outputs"]
    assert labels["data"][0] == "Egyptian cat" and top1["data"][0].endswith(":285:Egyptian cat")
    doc["inputs"][0]["shape"] = [2]
    r = requests.post(stack.base_url + "/v2/models/imagenet/infer", json=doc, headers=key["auth"], timeout=60)
    assert r.status_code == 400 and "shape of 2 element(s) but 1 in data" in r.json()["error"]
    doc["inputs"][0]["shape"] = [1]
    r = requests.post(stack.base_url + "/v2/models/imagenet/versions/v1/infer", json=doc, headers=key["auth"],
                      timeout=60)
    assert r.status_code == 403 and r.json()["code"] == "pinning_not_allowed"


KSERVE_PYTHON = os.environ.get("CLASSIFYCLOUD_KSERVE_PYTHON") or os.path.join(
    os.path.dirname(__file__), "..", ".venv-kserve", "bin", "python")


def test_kserves_own_client_classifies_chelsea_with_the_labels_and_scores_of_classify(stack, key, tmp_path,
                                                                                      sample_bytes):
    assert os.path.exists(KSERVE_PYTHON), "make test builds .venv-kserve (KServe's client, in a venv of its own)"
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(sample_bytes["chelsea"])
    out = subprocess.run([KSERVE_PYTHON, os.path.join(os.path.dirname(__file__), "kserve_client.py"),
                          stack.base_url, "imagenet", str(photo), json.dumps(auth(key))],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    outputs = json.loads(out.stdout)
    native = classify(stack, key, sample_bytes["chelsea"])
    assert outputs["labels"][0] == "Egyptian cat" == native[0]["label"]
    assert outputs["indices"][:5] == [r["index"] for r in native]
    assert outputs["scores"][:5] == pytest.approx([r["score"] for r in native], abs=1e-5)
