"""XCloud's catalogue entries: architectures, classes, labels, unavailability, state_dict round-trips."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from shared.catalogue import IMAGENET_MEAN, IMAGENET_STD, load_catalogue
from shared.config import Settings
from worker.models import builders
from worker.models.kinds.classifier import ImageClassifier
from worker.models.loader import load_labels
from worker.models.registry import ModelRegistry

XCLOUD = {  # service: (architecture, num_classes), as XCloud's code builds them (no weights published)
    "plant": ("torchvision:resnet50", 998),
    "ifood": ("torchvision:densenet161", 251),   # XCloud's food (the name food is derived now)
    "garbage": ("torchvision:resnet152", 40),
    "ip102": ("torchvision:densenet121", 102),   # XCloud's insect (the name insect is derived now)
}
REAL = ("imagenet", "nsfw", "skin", "pdr", "facesearch")  # real weights from installed packages


@pytest.fixture(scope="module")
def cat():
    """The packaged catalogue."""
    return load_catalogue()


@pytest.fixture
def local_settings(tmp_path):
    """Settings that need no AWS (models only)."""
    return Settings.from_env({}, metrics_enabled=False, device="cpu", model_dir=str(tmp_path))


def test_catalogue_lists_every_xcloud_service_with_its_architecture_and_class_count(cat):
    for name, (arch, n) in XCLOUD.items():
        spec = cat[name]
        assert (spec.architecture, spec.num_classes) == (arch, n), name
        assert spec.preprocess.crop == 224 and spec.preprocess.resize in (224, 227, 256)
        assert (spec.preprocess.mean, spec.preprocess.std) == (IMAGENET_MEAN, IMAGENET_STD)
        assert spec.backend == "torch" and spec.top_k == 5


def test_xcloud_services_without_weights_are_unavailable_with_the_reason(local_settings, cat):
    settings = local_settings.replace(services=(*XCLOUD, "fbp"))
    registry = ModelRegistry(cat, settings).load()
    assert registry.hosted() == []
    assert set(registry.unavailable) == {*XCLOUD, "fbp"}
    for name in XCLOUD:
        assert registry.unavailable[name] == f"weights not configured for service {name!r}"
    assert registry.unavailable["fbp"].startswith("weights not configured for service 'fbp' (XCloud never published")
    assert cat.available() == [*REAL, "food", "insect"]  # the derived services serve with imagenet's weights


def test_builtin_label_files_have_one_label_per_class(local_settings, cat):
    # XCloud's own label lists stay shipped (for whoever holds its weights): pdr 61, nsfw 5, skin 198.
    for name, n in (("pdr", 61), ("nsfw", 5), ("skin", 198), ("ham10000", 7), ("open_nsfw", 2)):
        labels = load_labels(f"builtin:{name}", n, local_settings)
        assert len(labels) == n and all(labels), name
    assert load_labels("builtin:insect", 102, local_settings)
    nsfw = load_labels("builtin:nsfw", 5, local_settings)
    assert nsfw == ["drawings", "hentai", "neutral", "porn", "sexy"]
    insect = load_labels(cat["ip102"].labels, 102, local_settings)
    assert insect[0] == "rice leaf roller" and insect[-1] == "Cicadellidae"


def test_services_without_public_labels_answer_with_index_names(local_settings, cat):
    for name in ("plant", "ifood", "garbage"):
        assert cat[name].labels is None
        assert load_labels(None, cat[name].num_classes, local_settings)[:2] == ["0", "1"]


ARCHS = sorted({(s.architecture, s.num_classes) for s in load_catalogue().services.values()
                if s.architecture.startswith("torchvision:") and s.kind == "classifier"})


@pytest.mark.parametrize("arch,num_classes", ARCHS, ids=[f"{a.split(':')[1]}-{n}" for a, n in ARCHS])
def test_every_catalogue_architecture_builds_and_round_trips_a_saved_state_dict(
        arch, num_classes, tmp_path, local_settings, cat, sample_bytes):
    # Fixture checkpoint: random init, saved by this test; it proves loading, not accuracy.
    torch.manual_seed(0)
    model = builders.build(arch, num_classes).eval()
    path = tmp_path / "fixture-random-init.pth"
    torch.save(model.state_dict(), path)
    base = next(s for s in cat.services.values() if (s.architecture, s.num_classes) == (arch, num_classes))
    spec = dataclasses.replace(base, weights=str(path), labels=None, unknown_threshold=0.0)
    handler = ImageClassifier(spec, local_settings).load()
    loaded = handler.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
    from worker.models.engine import decode_image
    probs = handler.infer(torch.stack([handler.preprocess(decode_image(sample_bytes["chelsea"]))]))
    assert probs.shape == (1, num_classes)
    assert abs(float(probs.sum()) - 1.0) < 1e-4
    with torch.inference_mode():
        expected = model(torch.stack([handler.preprocess(decode_image(sample_bytes["chelsea"]))])).softmax(-1)
    assert torch.allclose(probs, expected, atol=1e-5)


def test_a_configured_but_missing_file_makes_the_service_unavailable_naming_it(local_settings, cat):
    from shared.catalogue import Catalogue
    base = cat["plant"]
    torch_spec = dataclasses.replace(base, name="gone", weights="nowhere.pth")
    onnx_spec = dataclasses.replace(base, name="gone-onnx", backend="onnx", artefact="nowhere.onnx")
    registry = ModelRegistry(Catalogue({"gone": torch_spec, "gone-onnx": onnx_spec}), local_settings).load()
    assert registry.hosted() == []
    assert registry.unavailable["gone"] == f"weights file not found: {local_settings.model_dir}/nowhere.pth"
    assert registry.unavailable["gone-onnx"] == f"artefact file not found: {local_settings.model_dir}/nowhere.onnx"
