"""End to end on the local stack: every real service answers through /classify and /cv/<service>."""
from __future__ import annotations

import io

import pytest
import requests
from PIL import Image, ImageOps
from skimage import data

pytestmark = pytest.mark.slow


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture
def stack(full_stack):
    """The session's stack hosting every available service (tests/conftest.py full_stack)."""
    return full_stack


def test_services_lists_at_least_five_available_services_with_their_kinds(stack):
    services = requests.get(stack.base_url + "/services", timeout=30).json()["services"]
    available = {s["name"]: s["kind"] for s in services if s["available"]}
    # food and insect: derived from imagenet's model (issue 21), so available wherever imagenet is
    assert available == {"imagenet": "classifier", "nsfw": "score", "skin": "classifier",
                         "pdr": "classifier", "facesearch": "embedding", "food": "classifier",
                         "insect": "classifier"}
    food = next(s for s in services if s["name"] == "food")
    assert "ImageNet's 44 food classes" in food["description"] and "Not Food-101" in food["description"]
    assert food["derived_from"] == "imagenet" and len(food["classes"]) == 44 and 967 in food["classes"]


def test_food_and_insect_answer_through_classify_and_the_xcloud_route(stack, sample_bytes):
    r = requests.get(stack.base_url + "/classify", timeout=120,
                     params={"url": stack.sample_url("coffee"), "service": "food", "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["label"] == "espresso" and body["model"]["derived_from"] == "imagenet"
    camera = _jpeg(Image.fromarray(data.camera()))
    r = requests.post(stack.base_url + "/cv/food", files={"image": ("camera.jpg", camera)}, timeout=120)
    env = r.json()
    assert r.status_code == 200 and env["code"] == 0, env
    assert env["results"][0]["name"] == "Unknown", env
    r = requests.post(stack.base_url + "/classify", files={"image": ("chelsea.jpg", sample_bytes["chelsea"])},
                      data={"service": "insect"}, timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "Unknown", r.text
    r = requests.post(stack.base_url + "/cv/insect", data={"image": stack.sample_url("chelsea")}, timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["name"] == "Unknown", r.text


def test_nsfw_skin_and_pdr_answer_through_classify_and_the_xcloud_route(stack, sample_bytes):
    r = requests.get(stack.base_url + "/classify", timeout=120,
                     params={"url": stack.sample_url("astronaut"), "service": "nsfw"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["kind"] == "score" and body["results"][0]["verdict"] == "sfw"
    assert body["results"][0]["score"] < 0.5
    r = requests.post(stack.base_url + "/cv/nsfw", files={"image": ("rocket.jpg", sample_bytes["rocket"])},
                      timeout=120)
    env = r.json()
    assert r.status_code == 200 and env["code"] == 0, env
    assert env["results"][0]["name"] == "nsfw" and env["results"][0]["verdict"] == "sfw"

    r = requests.post(stack.base_url + "/classify", timeout=120,
                      json={"url": stack.sample_url("coffee"), "service": "skin", "top_k": 7,
                            "meta": {"sex": "female", "location": "arm", "age": 40}})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert sorted(x["label"] for x in results) == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert sum(x["score"] for x in results) == pytest.approx(1.0, abs=1e-3)
    r = requests.post(stack.base_url + "/cv/skin", files={"image": ("chelsea.jpg", sample_bytes["chelsea"])},
                      data={"top_k": "3"}, timeout=120)
    assert r.status_code == 200 and len(r.json()["results"]) == 3, r.text

    r = requests.get(stack.base_url + "/classify", timeout=120,
                     params={"url": stack.sample_url("chelsea"), "service": "pdr", "top_k": 38})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 38 and {x["label"] for x in results} == {f"class_{i}" for i in range(38)}
    r = requests.post(stack.base_url + "/cv/pdr", data={"image": stack.sample_url("coffee")}, timeout=120)
    top = r.json()["results"][0]
    assert r.status_code == 200 and top["name"] == f"class_{top['category_id'] - 1}", r.text


def test_facesearch_enrols_through_faces_and_finds_her_through_classify_and_cv(stack, sample_bytes):
    r = requests.post(stack.base_url + "/faces/crew", timeout=120,
                      files={"image": ("astronaut.jpg", sample_bytes["astronaut"])}, data={"name": "Eileen Collins"})
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Eileen Collins" and len(r.json()["box"]) == 4

    variant = ImageOps.mirror(Image.fromarray(data.astronaut()).crop((100, 30, 400, 330)).resize((220, 220)))
    r = requests.post(stack.base_url + "/classify", timeout=120,
                      files={"image": ("variant.jpg", _jpeg(variant))},
                      data={"service": "facesearch", "gallery": "crew"})
    assert r.status_code == 200, r.text
    faces = r.json()["results"]
    assert len(faces) == 1 and faces[0]["label"] == "Eileen Collins" and faces[0]["distance"] < 0.6

    camera = _jpeg(Image.fromarray(data.camera()))
    for name, image in (("camera", camera), ("chelsea", sample_bytes["chelsea"])):
        r = requests.post(stack.base_url + "/cv/facesearch", timeout=120,
                          files={"image": (f"{name}.jpg", image)}, data={"gallery": "crew"})
        env = r.json()
        assert r.status_code == 200 and env["code"] == 0, env
        assert all(not face["matches"] for face in env["results"]), (name, env)

    r = requests.post(stack.base_url + "/faces/crew", timeout=120,
                      files={"image": ("coffee.jpg", sample_bytes["coffee"])}, data={"name": "cup"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "no_face", r.text
