"""Weights loader: prefixes, checkpoint shapes, strict mismatch errors, sha256 pins, s3://, labels."""
from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models import builders
from worker.models.kinds.classifier import ImageClassifier
from worker.models.loader import WeightsError, fetch_to_local, load_labels, read_state_dict
from worker.models.registry import ModelRegistry

ARCH = "torchvision:resnet18"
CLASSES = 4


@pytest.fixture(scope="module")
def reference_model():
    """A resnet18 with 4 classes, random init (a test fixture, not a trained model)."""
    torch.manual_seed(1)
    return builders.build(ARCH, CLASSES).eval()


@pytest.fixture
def local_settings(tmp_path):
    """Settings that need no AWS; s3 downloads cache under tmp_path."""
    return Settings.from_env({}, metrics_enabled=False, device="cpu", model_dir=str(tmp_path),
                             weights_cache=str(tmp_path / "cache"))


def spec_for(weights: str, **kw) -> ServiceSpec:
    """A service entry for the fixture model."""
    return ServiceSpec(name="tiny", architecture=ARCH, num_classes=CLASSES, weights=weights, **kw)


def assert_same_weights(handler: ImageClassifier, model: torch.nn.Module) -> None:
    loaded = handler.model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_dataparallel_module_prefixes_are_stripped_on_load(tmp_path, local_settings, reference_model):
    torch.save(torch.nn.DataParallel(reference_model).state_dict(), tmp_path / "dp.pth")
    assert next(iter(torch.load(tmp_path / "dp.pth"))).startswith("module.")
    handler = ImageClassifier(spec_for("dp.pth"), local_settings).load()  # relative to model_dir
    assert_same_weights(handler, reference_model)


@pytest.mark.parametrize("wrap", ["state_dict", "model_state_dict"])
def test_full_checkpoints_load_like_plain_state_dicts(tmp_path, local_settings, reference_model, wrap):
    obj = {wrap: reference_model.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}
    torch.save(obj, tmp_path / "ckpt.pth")
    handler = ImageClassifier(spec_for(str(tmp_path / "ckpt.pth")), local_settings).load()
    assert_same_weights(handler, reference_model)


def test_safetensors_weights_load(tmp_path, local_settings, reference_model):
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in reference_model.state_dict().items()}, str(tmp_path / "m.safetensors"))
    handler = ImageClassifier(spec_for("m.safetensors"), local_settings).load()
    assert_same_weights(handler, reference_model)


class _Trap:
    """Unpickling this object creates a file: stands for any code a hostile checkpoint would run."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _booby_trapped(tmp_path, reference_model, name: str = "trap.pth"):
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    torch.save({"state_dict": reference_model.state_dict(), "extra": _Trap(str(marker))}, path)
    return path, marker


def test_the_booby_trap_really_runs_code_when_fully_unpickled(tmp_path, reference_model):
    path, marker = _booby_trapped(tmp_path, reference_model)
    torch.load(path, weights_only=False)  # what loader.py did before: the trap fires
    assert marker.exists()


def test_a_booby_trapped_checkpoint_is_refused_and_its_code_never_runs(tmp_path, local_settings, reference_model):
    path, marker = _booby_trapped(tmp_path, reference_model)
    with pytest.raises(WeightsError, match="refused: the checkpoint needs a full pickle"):
        ImageClassifier(spec_for(str(path)), local_settings).load()
    with pytest.raises(WeightsError, match="refused"):
        read_state_dict(str(path))
    assert not marker.exists()


def test_trusted_pickle_with_a_wrong_sha256_is_refused_before_unpickling(tmp_path, local_settings, reference_model):
    path, marker = _booby_trapped(tmp_path, reference_model)
    spec = spec_for(str(path), sha256="0" * 64, trusted_pickle=True)
    with pytest.raises(WeightsError, match="does not match the pinned"):
        ImageClassifier(spec, local_settings).load()
    with pytest.raises(WeightsError, match="does not match the pinned"):
        read_state_dict(str(path), trusted_sha256="f" * 64)
    assert not marker.exists()


def test_a_pickled_module_loads_only_with_trusted_pickle_and_its_pinned_sha256(tmp_path, local_settings,
                                                                              reference_model):
    torch.save(reference_model, tmp_path / "module.pth")
    digest = hashlib.sha256((tmp_path / "module.pth").read_bytes()).hexdigest()
    with pytest.raises(WeightsError, match="refused"):
        ImageClassifier(spec_for("module.pth"), local_settings).load()
    with pytest.raises(WeightsError, match="refused"):  # a pin alone is not the opt-in
        ImageClassifier(spec_for("module.pth", sha256=digest), local_settings).load()
    handler = ImageClassifier(spec_for("module.pth", sha256=digest, trusted_pickle=True), local_settings).load()
    assert_same_weights(handler, reference_model)


def test_the_catalogue_refuses_trusted_pickle_without_a_pin(tmp_path):
    from shared.catalogue import CatalogueError, load_catalogue
    path = tmp_path / "c.yaml"
    path.write_text("services:\n  x: {architecture: torchvision:resnet18, num_classes: 2, weights: a.pth,"
                    " trusted_pickle: true}\n")
    with pytest.raises(CatalogueError, match="trusted_pickle needs a pinned sha256"):
        load_catalogue(str(path))
    path.write_text("services:\n  x: {architecture: torchvision:resnet18, num_classes: 2, weights: a.pth,"
                    " trusted_pickle: true, sha256: '%s'}\n" % ("ab" * 32))
    assert load_catalogue(str(path))["x"].trusted_pickle is True


def test_wrong_num_classes_fails_naming_the_shape_mismatch(tmp_path, local_settings):
    torch.save(builders.build(ARCH, 10).state_dict(), tmp_path / "ten.pth")
    with pytest.raises(WeightsError) as err:
        ImageClassifier(spec_for(str(tmp_path / "ten.pth")), local_settings).load()
    msg = str(err.value)
    assert "shape mismatches" in msg and "fc.weight: checkpoint (10, 512) vs model (4, 512)" in msg
    assert "'tiny'" in msg


def test_missing_and_unexpected_keys_fail_naming_them(tmp_path, local_settings, reference_model):
    state = dict(reference_model.state_dict())
    del state["fc.bias"]
    state["head.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError) as err:
        ImageClassifier(spec_for(str(tmp_path / "broken.pth")), local_settings).load()
    assert "missing keys [fc.bias] (1)" in str(err.value)
    assert "unexpected keys [head.extra] (1)" in str(err.value)


def test_a_file_that_is_not_a_checkpoint_fails_clearly(tmp_path, local_settings):
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(WeightsError, match="not a PyTorch checkpoint"):
        read_state_dict(str(tmp_path / "notes.pth"))
    torch.save({"epoch": 3}, tmp_path / "nostate.pth")
    with pytest.raises(WeightsError, match="not a state_dict"):
        read_state_dict(str(tmp_path / "nostate.pth"))


def test_sha256_pin_is_enforced(tmp_path, local_settings, reference_model):
    path = tmp_path / "pinned.pth"
    torch.save(reference_model.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    handler = ImageClassifier(spec_for(str(path), sha256=digest.upper()), local_settings).load()
    assert handler.version == digest[:12]
    with pytest.raises(WeightsError, match="does not match the pinned"):
        ImageClassifier(spec_for(str(path), sha256="0" * 64), local_settings).load()


def test_missing_weights_file_is_reported_with_its_path(tmp_path, local_settings):
    with pytest.raises(WeightsError, match="file not found: .*absent.pth"):
        ImageClassifier(spec_for("absent.pth"), local_settings).load()


def test_weights_from_s3_are_downloaded_once_and_loaded(moto_endpoint, tmp_path, local_settings, reference_model):
    from shared.aws import client
    s3 = client("s3", local_settings)
    bucket = "weights-" + hashlib.sha1(str(tmp_path).encode()).hexdigest()[:10]
    s3.create_bucket(Bucket=bucket)
    torch.save(reference_model.state_dict(), tmp_path / "up.pth")
    s3.upload_file(str(tmp_path / "up.pth"), bucket, "models/tiny.pth")
    uri = f"s3://{bucket}/models/tiny.pth"
    handler = ImageClassifier(spec_for(uri), local_settings).load()
    assert_same_weights(handler, reference_model)
    cached = fetch_to_local(uri, local_settings)
    assert cached.startswith(str(tmp_path / "cache"))
    s3.delete_object(Bucket=bucket, Key="models/tiny.pth")
    assert fetch_to_local(uri, local_settings) == cached  # served from the cache, no second download
    with pytest.raises(WeightsError, match="cannot download s3://"):
        fetch_to_local(f"s3://{bucket}/models/absent.pth", local_settings)


def test_label_count_must_equal_num_classes(tmp_path, local_settings):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    with pytest.raises(WeightsError, match="3 labels for 4 classes"):
        load_labels("three.txt", 4, local_settings)
    (tmp_path / "four.txt").write_text("cat\ndog\n\nfox\nowl\n")
    assert load_labels("four.txt", 4, local_settings) == ["cat", "dog", "fox", "owl"]
    assert len(load_labels("torchvision:imagenet", 1000, local_settings)) == 1000


def test_registry_lists_a_mismatched_service_unavailable_and_still_loads_the_others(
        tmp_path, local_settings, reference_model):
    from shared.catalogue import Catalogue
    torch.save(reference_model.state_dict(), tmp_path / "good.pth")
    torch.save(builders.build(ARCH, 10).state_dict(), tmp_path / "bad.pth")
    good = spec_for("good.pth")
    bad = dataclasses.replace(good, name="bad", weights="bad.pth")
    unset = dataclasses.replace(good, name="unset", weights=None)
    registry = ModelRegistry(Catalogue({"tiny": good, "bad": bad, "unset": unset}), local_settings).load()
    assert registry.hosted() == ["tiny"]
    assert "fc.weight: checkpoint (10, 512) vs model (4, 512)" in registry.unavailable["bad"]
    assert registry.unavailable["unset"] == "weights not configured for service 'unset'"
    registry.close()
    assert registry.hosted() == []
