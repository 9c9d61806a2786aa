"""Conversion: ONNX export fidelity on real photos, the onnx backend through the engine, the CLI, TensorRT."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import yaml

from classifycloud.convert import main as convert_main
from shared.catalogue import Catalogue, load_catalogue
from shared.config import Settings
from worker.models.backends import BackendUnavailable
from worker.models.engine import InferenceEngine, decode_image
from worker.models.export import export_onnx
from worker.models.kinds.classifier import ImageClassifier
from worker.models.loader import WeightsError
from worker.models.registry import ModelRegistry

PHOTOS = ("chelsea", "coffee")


@pytest.fixture(scope="module")
def local_settings(tmp_path_factory):
    """Settings that need no AWS."""
    root = tmp_path_factory.mktemp("convert")
    return Settings.from_env({}, metrics_enabled=False, device="cpu", model_dir=str(root))


@pytest.fixture(scope="module")
def imagenet(local_settings):
    """The real imagenet service, torch backend."""
    handler = ImageClassifier(load_catalogue()["imagenet"], local_settings).load()
    yield handler
    handler.close()


@pytest.fixture(scope="module")
def onnx_file(imagenet, local_settings):
    """imagenet exported to ONNX (opset 17, dynamic batch)."""
    return export_onnx(imagenet.model, os.path.join(local_settings.model_dir, "imagenet.onnx"), crop=224)


def photo_batch(handler, sample_bytes) -> torch.Tensor:
    return torch.stack([handler.preprocess(decode_image(sample_bytes[n])) for n in PHOTOS])


def test_onnx_export_matches_torch_within_1e_3_on_real_photos(imagenet, onnx_file, sample_bytes):
    import onnx
    import onnxruntime as ort
    model = onnx.load(onnx_file)
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch"  # dynamic batch axis
    x = photo_batch(imagenet, sample_bytes)
    ref = imagenet.infer(x).numpy()
    sess = ort.InferenceSession(onnx_file, providers=["CPUExecutionProvider"])
    for n in (1, 2):  # two batch sizes through the same artefact
        logits = sess.run(None, {"input": x[:n].numpy()})[0]
        probs = torch.from_numpy(logits).softmax(-1).numpy()
        assert np.abs(probs - ref[:n]).max() < 1e-3
        assert np.abs(logits - imagenet.model(x[:n]).detach().numpy()).max() < 1e-3
    assert ref.argmax(-1).tolist() == [285, 967]


def test_onnx_backend_through_the_engine_gives_the_same_top1(imagenet, onnx_file, local_settings, sample_bytes):
    spec = dataclasses.replace(imagenet.spec, name="imagenet-onnx", backend="onnx", artefact=onnx_file)
    cat = Catalogue({"imagenet": imagenet.spec, "imagenet-onnx": spec})
    registry = ModelRegistry(cat, local_settings).load()
    engine = InferenceEngine(registry, decode_threads=2)
    try:
        assert registry.get("imagenet-onnx").backend.name == "onnx"
        images = [sample_bytes[n] for n in ("chelsea", "coffee", "astronaut", "rocket")]
        a = engine.run("imagenet", images, [5] * 4).results
        b = engine.run("imagenet-onnx", images, [5] * 4).results
        assert [r[0]["index"] for r in a] == [r[0]["index"] for r in b]
        assert [r[0]["index"] for r in b][:2] == [285, 967]
        for x, y in zip(a, b):
            assert abs(x[0]["score"] - y[0]["score"]) < 1e-3
    finally:
        engine.close()
        registry.close()


def test_onnx_backend_rejects_an_artefact_with_the_wrong_class_count(imagenet, onnx_file, local_settings):
    spec = dataclasses.replace(imagenet.spec, name="wrong", backend="onnx", artefact=onnx_file, num_classes=10,
                               labels=None)
    with pytest.raises(WeightsError, match=r"outputs shape \(1, 1000\), expected \[N, 10\]"):
        ImageClassifier(spec, local_settings).load()


def test_convert_cli_writes_the_artefact_and_prints_a_catalogue_entry_that_serves(
        tmp_path, local_settings, capsys, sample_bytes, monkeypatch):
    monkeypatch.delenv("CLASSIFYCLOUD_CATALOGUE", raising=False)
    out = tmp_path / "art" / "imagenet.onnx"
    assert convert_main(["--service", "imagenet", "--to", "onnx", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert out.exists() and "max |p_onnx - p_torch|" in captured.err
    snippet = yaml.safe_load(captured.out)
    entry = snippet["services"]["imagenet"]
    assert entry["backend"] == "onnx" and entry["artefact"] == str(out) and len(entry["sha256"]) == 64
    path = tmp_path / "catalogue.yaml"
    path.write_text(captured.out)
    registry = ModelRegistry(load_catalogue(str(path)), local_settings).load()
    try:
        res = InferenceEngine(registry, 1).run("imagenet", [sample_bytes["coffee"]], [1]).results[0]
        assert res[0]["label"] == "espresso"
    finally:
        registry.close()


def test_convert_refuses_services_without_weights_and_unknown_ones(tmp_path, capsys):
    assert convert_main(["--service", "plant", "--to", "onnx", "--out", str(tmp_path / "p.onnx")]) == 2
    assert "weights not configured for service 'plant'" in capsys.readouterr().err
    assert not (tmp_path / "p.onnx").exists()
    assert convert_main(["--service", "nope", "--to", "onnx"]) == 2
    assert "unknown service 'nope'" in capsys.readouterr().err


def _tensorrt_usable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_tensorrt_backend_serves_or_says_clearly_what_is_missing(imagenet, onnx_file, local_settings, tmp_path,
                                                                 sample_bytes):
    spec = dataclasses.replace(imagenet.spec, name="imagenet-trt", backend="tensorrt",
                               artefact=str(tmp_path / "imagenet.plan"))
    if not _tensorrt_usable():
        with pytest.raises(BackendUnavailable, match="needs a CUDA GPU|needs the tensorrt package"):
            ImageClassifier(spec, local_settings).load()
        registry = ModelRegistry(Catalogue({"imagenet-trt": spec}), local_settings).load()
        assert "tensorrt" in registry.unavailable["imagenet-trt"]
        return
    # On a GPU machine with TensorRT: build the engine and check it agrees with torch on the photos.
    from worker.models.export import build_tensorrt_engine
    build_tensorrt_engine(onnx_file, spec.artefact, max_batch=8)
    handler = ImageClassifier(spec, local_settings.replace(device="cuda")).load()
    probs = handler.infer(photo_batch(imagenet, sample_bytes))
    assert probs.argmax(-1).tolist() == [285, 967]


def test_a_converted_entry_is_the_original_with_only_backend_and_artefact_changed_and_answers_the_same(
        tmp_path, local_settings, capsys, sample_bytes, monkeypatch):
    monkeypatch.delenv("CLASSIFYCLOUD_CATALOGUE", raising=False)
    from shared.catalogue import default_catalogue_path
    original = yaml.safe_load(open(default_catalogue_path(), encoding="utf-8"))["services"]["pdr"]
    out = tmp_path / "pdr.onnx"
    assert convert_main(["--service", "pdr", "--to", "onnx", "--out", str(out)]) == 0
    entry = yaml.safe_load(capsys.readouterr().out)["services"]["pdr"]
    changed = {k for k in set(entry) | set(original) if entry.get(k) != original.get(k)}
    assert changed == {"backend", "artefact", "sha256"}      # squash resize, labels_note, ... all kept
    assert entry["preprocess"]["mode"] == "squash" and entry["labels_note"] == original["labels_note"]
    path = tmp_path / "catalogue.yaml"
    path.write_text(yaml.safe_dump({"services": {"pdr": entry}}))
    converted = ModelRegistry(load_catalogue(str(path)), local_settings).load()
    torch_reg = ModelRegistry(load_catalogue(), local_settings.replace(services=("pdr",))).load()
    try:
        photos = [sample_bytes["chelsea"], sample_bytes["astronaut"]]
        got = InferenceEngine(converted, 1).run("pdr", photos, [3, 3]).results
        want = InferenceEngine(torch_reg, 1).run("pdr", photos, [3, 3]).results
        for g, w in zip(got, want):
            assert [r["index"] for r in g] == [r["index"] for r in w]
            assert [r["score"] for r in g] == pytest.approx([r["score"] for r in w], abs=1e-3)
    finally:
        converted.close()
        torch_reg.close()
