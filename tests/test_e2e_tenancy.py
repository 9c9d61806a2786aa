"""Tenants stay apart and face data can be erased: a web process and a facesearch worker, API keys on."""
from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid

import pytest
import requests
from PIL import Image, ImageOps
from skimage import data

from classifycloud.local import LocalStack
from shared.aws import client
from shared.config import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(moto_endpoint):
    """One web process and one worker hosting facesearch only, API keys on."""
    settings = Settings.from_env({}, prefix="g" + uuid.uuid4().hex[:8], metrics_enabled=False, api_keys="on",
                                 api_key_cache_s=0.0, services=("facesearch",))
    s = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, workers=1).start()
    try:
        s.wait_ready(timeout=300)
        yield s
    finally:
        s.stop()


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos():
    """The astronaut (Eileen Collins), a mirrored crop of her, and the cameraman."""
    astronaut = Image.fromarray(data.astronaut())
    return {"astronaut": _jpeg(astronaut), "camera": _jpeg(Image.fromarray(data.camera())),
            "variant": _jpeg(ImageOps.mirror(astronaut.crop((100, 30, 400, 330)).resize((220, 220))))}


def new_key(stack, owner: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "classifycloud", "keys", "create", "--owner", owner, "--json"],
                         env=stack.child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    key = json.loads(out.stdout)
    return {"id": key["key_id"], "auth": {"Authorization": f"Bearer {key['key']}"}}


def enrol(stack, key, gallery: str, name: str, image: bytes) -> requests.Response:
    return requests.post(f"{stack.base_url}/faces/{gallery}", headers=key["auth"], timeout=120,
                         files={"image": ("face.jpg", image)}, data={"name": name})


def search(stack, key, gallery: str, image: bytes) -> list[dict]:
    r = requests.post(stack.base_url + "/classify", headers=key["auth"], timeout=120,
                      files={"image": ("probe.jpg", image)}, data={"service": "facesearch", "gallery": gallery})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def gallery_versions(stack, prefix: str) -> list[str]:
    """Every object version and delete marker under the prefix (the bucket is versioned)."""
    s3 = client("s3", stack.settings)
    out = s3.list_object_versions(Bucket=stack.settings.bucket_name, Prefix=prefix)
    return [v["Key"] for v in out.get("Versions", []) + out.get("DeleteMarkers", [])]


def test_two_keys_with_the_same_gallery_name_neither_see_nor_change_each_other(stack, photos):
    alice, mallory = new_key(stack, "alice"), new_key(stack, "mallory")
    r = enrol(stack, alice, "employees", "Eileen Collins", photos["astronaut"])
    assert r.status_code == 201, r.text
    found = search(stack, alice, "employees", photos["variant"])
    assert found[0]["label"] == "Eileen Collins" and found[0]["distance"] < 0.6

    # mallory's search of the same gallery name sees nothing of alice's: no names, no distances
    (face,) = search(stack, mallory, "employees", photos["variant"])
    assert face["matches"] == [] and face["label"] == "Unknown" and face["distance"] is None
    # mallory plants a face under alice's name in "her" employees: alice's gallery does not change
    assert enrol(stack, mallory, "employees", "Eileen Collins", photos["camera"]).status_code in (201, 422)
    r = enrol(stack, mallory, "employees", "Chief", photos["astronaut"])
    assert r.status_code == 201, r.text
    for probe in (photos["variant"], photos["astronaut"]):
        assert [m["name"] for m in search(stack, alice, "employees", probe)[0]["matches"]] == ["Eileen Collins"]
    assert [m["name"] for m in search(stack, mallory, "employees", photos["variant"])[0]["matches"]] == ["Chief"]
    # and mallory cannot erase alice's face
    assert requests.delete(f"{stack.base_url}/faces/employees/Eileen%20Collins", headers=mallory["auth"],
                           timeout=30).status_code == 404
    assert search(stack, alice, "employees", photos["variant"])[0]["label"] == "Eileen Collins"
    # each tenant's faces live under its own key id; neither tenant's prefix holds the other's
    assert gallery_versions(stack, f"galleries/{alice['id']}/employees/")
    assert gallery_versions(stack, f"galleries/{mallory['id']}/employees/")
    assert not gallery_versions(stack, "galleries/employees/")


def test_after_delete_no_search_finds_the_face_and_no_object_or_version_is_left(stack, photos):
    owner = new_key(stack, "erasure")
    prefix = f"galleries/{owner['id']}/crew/"
    for _ in range(2):  # enrolled twice: the same key written twice leaves two versions in the bucket
        r = enrol(stack, owner, "crew", "Eileen Collins", photos["astronaut"])
        assert r.status_code == 201
        assert gallery_versions(stack, f"uploads/{r.json()['id']}") == []   # the photo went with the answer
    assert enrol(stack, owner, "crew", "Eileen Collins", photos["variant"]).status_code == 201
    assert len(gallery_versions(stack, prefix)) == 3
    assert search(stack, owner, "crew", photos["variant"])[0]["label"] == "Eileen Collins"

    r = requests.delete(f"{stack.base_url}/faces/crew/Eileen%20Collins", headers=owner["auth"], timeout=30)
    assert r.status_code == 200 and r.json() == {"gallery": "crew", "name": "Eileen Collins", "erased": 2}, r.text
    assert gallery_versions(stack, prefix) == []
    (face,) = search(stack, owner, "crew", photos["variant"])
    assert face["matches"] == [] and face["label"] == "Unknown"
    r = requests.delete(f"{stack.base_url}/faces/crew/Eileen%20Collins", headers=owner["auth"], timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_face"

    # a whole gallery: every face, every version
    assert enrol(stack, owner, "visitors", "Eileen Collins", photos["astronaut"]).status_code == 201
    r = requests.delete(f"{stack.base_url}/faces/visitors", headers=owner["auth"], timeout=30)
    assert r.status_code == 200 and r.json()["erased"] == 1, r.text
    assert gallery_versions(stack, f"galleries/{owner['id']}/visitors/") == []
    assert search(stack, owner, "visitors", photos["variant"])[0]["matches"] == []
