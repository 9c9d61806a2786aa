"""Inference engine: JPEG fast path vs Pillow, bad images, Unknown threshold, concurrency across services."""
from __future__ import annotations

import dataclasses
import io
import os
import random
import threading

import pytest
import torch
from PIL import Image

from shared.catalogue import Catalogue, load_catalogue
from shared.config import Settings
from worker.models import builders
from worker.models.engine import ImageDecodeError, InferenceEngine
from worker.models.registry import ModelRegistry

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "classifycloud", "samples")


def reencode(data: bytes, fmt: str, scale: float = 1.0) -> bytes:
    """The photo re-encoded (and optionally rescaled): other sizes and formats of the same real image."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if scale != 1.0:
        img = img.resize((max(1, int(img.width * scale)), max(1, int(img.height * scale))))
    out = io.BytesIO()
    img.save(out, format=fmt, quality=92) if fmt == "JPEG" else img.save(out, format=fmt)
    return out.getvalue()


def photo_fitted_resnet18() -> torch.nn.Module:
    """Test fixture: random resnet18 backbone, head fitted by least squares so photo i scores class i.

    A purely random head ranks every image alike, which would hide results handed to the wrong request.
    """
    import torchvision.transforms.functional as TF

    from worker.models.engine import decode_image
    torch.manual_seed(2)
    model = builders.build("torchvision:resnet18", 4).eval()
    crops = []
    for name in PHOTOS:
        with open(f"{SAMPLES}/{name}.jpg", "rb") as fh:
            img = TF.center_crop(TF.resize(decode_image(fh.read()), 256), 224)
        crops.append(TF.normalize(TF.to_tensor(img), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    with torch.no_grad():
        feats = torch.nn.Sequential(*list(model.children())[:-1])(torch.stack(crops)).flatten(1)
        design = torch.cat([feats, torch.ones(len(PHOTOS), 1)], dim=1)
        solution = torch.linalg.lstsq(design, 10 * torch.eye(len(PHOTOS))).solution  # [513, 4]
        model.fc.weight.copy_(solution[:-1].T)
        model.fc.bias.copy_(solution[-1])
    return model


@pytest.fixture(scope="module")
def two_service_registry(tmp_path_factory):
    """imagenet (real weights) and `tiny`, a resnet18 fixture checkpoint with 4 classes (one per photo)."""
    root = tmp_path_factory.mktemp("engine")
    torch.save(photo_fitted_resnet18().state_dict(), root / "tiny-fixture.pth")
    (root / "tiny.txt").write_text("north\neast\nsouth\nwest\n")
    imagenet = load_catalogue()["imagenet"]
    tiny = dataclasses.replace(imagenet, name="tiny", architecture="torchvision:resnet18", num_classes=4,
                               weights="tiny-fixture.pth", labels="tiny.txt", sha256=None,
                               preprocess=dataclasses.replace(imagenet.preprocess, resize=256))
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", model_dir=str(root))
    registry = ModelRegistry(Catalogue({"imagenet": imagenet, "tiny": tiny}), settings).load()
    assert registry.hosted() == ["imagenet", "tiny"], registry.unavailable
    yield registry
    registry.close()


@pytest.fixture
def engine(two_service_registry):
    """An engine with two decode threads."""
    eng = InferenceEngine(two_service_registry, decode_threads=2)
    yield eng
    eng.close()


def top1(result) -> int:
    return result[0]["index"]


def test_real_photos_get_their_imagenet_labels(engine, sample_bytes):
    out = engine.run("imagenet", [sample_bytes["chelsea"], sample_bytes["coffee"]], [5, 2])
    assert top1(out.results[0]) == 285 and {r["index"] for r in out.results[0][:3]} == {281, 282, 285}
    assert out.results[1][0]["label"] == "espresso" and len(out.results[1]) == 2
    assert out.decoders == ["jpeg", "jpeg"] and out.inference_ms > 0


def test_jpeg_fast_path_and_pillow_path_agree_on_top1(two_service_registry, sample_bytes):
    fast = InferenceEngine(two_service_registry, decode_threads=2, jpeg_fast_path=True, jpeg_draft=False)
    slow = InferenceEngine(two_service_registry, decode_threads=2, jpeg_fast_path=False)
    try:
        images = [sample_bytes[n] for n in PHOTOS]
        a = fast.run("imagenet", images, [3] * 4)
        b = slow.run("imagenet", images, [3] * 4)
        assert a.decoders == ["jpeg"] * 4 and b.decoders == ["pil"] * 4
        for x, y in zip(a.results, b.results):
            assert top1(x) == top1(y)
            assert abs(x[0]["score"] - y[0]["score"]) < 0.02
    finally:
        fast.close()
        slow.close()


def test_truncated_jpeg_fails_only_its_own_item(engine, sample_bytes):
    chelsea = sample_bytes["chelsea"]
    out = engine.run("imagenet", [chelsea, chelsea[: len(chelsea) // 2], sample_bytes["coffee"], b"\x00" * 64],
                     [1, 1, 1, 1])
    assert top1(out.results[0]) == 285 and top1(out.results[2]) == 967
    assert isinstance(out.results[1], ImageDecodeError) and "truncated" in str(out.results[1])
    assert isinstance(out.results[3], ImageDecodeError) and out.results[3].code == "invalid_image"
    assert out.decoders == ["jpeg", "error", "jpeg", "error"]


def test_png_and_webp_go_through_pillow_with_the_same_label(engine, sample_bytes):
    out = engine.run("imagenet", [reencode(sample_bytes["coffee"], "PNG"), reencode(sample_bytes["coffee"], "WEBP")],
                     [1, 1])
    assert out.decoders == ["pil", "pil"]
    assert [top1(r) for r in out.results] == [967, 967]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_images_over_the_pixel_limit_are_refused_from_their_header(engine, sample_bytes, monkeypatch, fmt):
    big, small = reencode(sample_bytes["chelsea"], fmt), reencode(sample_bytes["coffee"], fmt, scale=0.5)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 300)  # chelsea is 451x300, half-size coffee 300x200
    out = engine.run("imagenet", [big, small], [1, 1])
    assert isinstance(out.results[0], ImageDecodeError) and "too large" in str(out.results[0])
    assert top1(out.results[1]) == 967


def test_unknown_threshold_answers_a_single_unknown_with_the_top1_score(two_service_registry, sample_bytes):
    handler = two_service_registry.get("imagenet")
    strict = dataclasses.replace(handler.spec, unknown_threshold=0.5)
    from worker.models.engine import decode_image
    from worker.models.kinds.classifier import ImageClassifier
    gated = ImageClassifier(strict, handler.settings, handler.device)
    gated.backend, gated.labels = handler.backend, handler.labels  # same model, stricter threshold
    cat, coffee = gated.classify([decode_image(sample_bytes["chelsea"]), decode_image(sample_bytes["coffee"])])
    plain = handler.classify([decode_image(sample_bytes["chelsea"]), decode_image(sample_bytes["coffee"])])[0]
    assert plain[0]["index"] == 285 and plain[0]["score"] < 0.5
    assert len(cat) == 1 and (cat[0]["label"], cat[0]["index"]) == ("Unknown", -1)
    assert cat[0]["score"] == pytest.approx(plain[0]["score"], abs=1e-5)
    assert coffee[0]["label"] == "espresso" and len(coffee) == 5


def test_engine_refuses_a_service_it_does_not_host(engine, sample_bytes):
    with pytest.raises(KeyError, match="not hosted"):
        engine.run("plant", [sample_bytes["chelsea"]], [5])
    with pytest.raises(ValueError, match="top_k"):
        engine.run("imagenet", [sample_bytes["chelsea"]], [5, 5])


def test_concurrent_runs_return_each_request_its_own_result(engine, sample_bytes):
    # Mixed sizes and formats of four real photos, for two services with different models and label sets.
    images = {}
    for name in PHOTOS:
        images[f"{name}-orig"] = sample_bytes[name]
        images[f"{name}-small"] = reencode(sample_bytes[name], "JPEG", scale=0.4)
        images[f"{name}-large.png"] = reencode(sample_bytes[name], "PNG", scale=1.7)
    keys = sorted(images)
    expected = {}
    for service in ("imagenet", "tiny"):
        for key in keys:
            (res,) = engine.run(service, [images[key]], [3]).results
            expected[service, key] = [r["index"] for r in res]
    # Distinct answers per photo, or results handed to the wrong request would go unseen.
    assert [expected["tiny", f"{n}-orig"][0] for n in PHOTOS] == [0, 1, 2, 3]
    assert len({expected["imagenet", f"{n}-orig"][0] for n in PHOTOS}) == 4

    failures: list[str] = []
    calls = [0]

    def client(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(6):
            service = rng.choice(("imagenet", "tiny"))
            batch = rng.sample(keys, rng.randint(1, 5))
            out = engine.run(service, [images[k] for k in batch], [3] * len(batch))
            calls[0] += 1
            for key, res in zip(batch, out.results):
                got = [r["index"] for r in res]
                if got[0] != expected[service, key][0]:
                    failures.append(f"{service}/{key}: got {got}, expected {expected[service, key]}")

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads)
    assert calls[0] == 24
    assert failures == []


def test_bf16_autocast_keeps_the_top1_on_real_photos(sample_bytes):
    from worker.models.engine import decode_image
    from worker.models.kinds.classifier import ImageClassifier
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", precision="bf16")
    handler = ImageClassifier(load_catalogue()["imagenet"], settings).load()
    assert handler.backend.dtype == torch.bfloat16
    res = handler.classify([decode_image(sample_bytes["chelsea"]), decode_image(sample_bytes["coffee"])], 3)
    assert res[0][0]["index"] in (281, 282, 285) and res[1][0]["index"] == 967
    assert all(r[0]["score"] <= 1.0 for r in res)


def test_an_invalid_precision_setting_makes_services_unavailable_with_the_reason():
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", precision="fp8")
    registry = ModelRegistry(Catalogue({"imagenet": load_catalogue()["imagenet"]}), settings).load()
    assert registry.hosted() == []
    assert "precision must be auto, fp32, fp16 or bf16, not 'fp8'" in registry.unavailable["imagenet"]


def test_compiled_batches_are_padded_to_power_of_two_buckets():
    from worker.models.backends.torch_backend import bucket_size
    assert [bucket_size(n) for n in (1, 2, 3, 5, 8, 9, 16, 17)] == [1, 2, 4, 8, 8, 16, 16, 32]


def test_draft_decode_keeps_the_imagenet_top1_of_every_bundled_photo_at_every_size(two_service_registry, sample_bytes):
    drafted = InferenceEngine(two_service_registry, decode_threads=1, jpeg_draft=True)
    full = InferenceEngine(two_service_registry, decode_threads=1, jpeg_draft=False)
    try:
        for scale in (1, 2, 4):   # as bundled, then as a phone's larger photo: DCT-scaled by 1/2 and 1/4
            images = [reencode(sample_bytes[n], "JPEG", scale) for n in PHOTOS]
            a = drafted.run("imagenet", images, [3] * 4)
            b = full.run("imagenet", images, [3] * 4)
            assert b.decoders == ["jpeg"] * 4
            assert a.decoders == (["jpeg", "jpeg", "draft", "jpeg"] if scale == 1 else ["draft"] * 4)
            assert [top1(x) for x in a.results] == [top1(y) for y in b.results]
    finally:
        drafted.close()
        full.close()


def test_draft_size_asks_for_the_model_input_only_from_photos_at_least_twice_as_large():
    from shared.catalogue import Preprocess
    from worker.models.engine import draft_size
    crop = Preprocess(resize=224, crop=224)
    assert draft_size(crop, 600, 400) is None                      # 400 < 2 x 224: decoded in full
    assert draft_size(crop, 1800, 1200) == (336, 224)              # the shorter side to resize, aspect kept
    assert draft_size(crop, 1200, 1800) == (224, 336)
    squash = Preprocess(resize=254, crop=254, mode="squash")
    assert draft_size(squash, 600, 600) == (254, 254)
    assert draft_size(squash, 2000, 500) is None                   # one axis under twice the input
