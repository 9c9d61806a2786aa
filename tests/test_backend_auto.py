"""`backend: auto`: candidates timed on real photos, the fastest that agrees serves; a broken candidate is skipped."""
from __future__ import annotations

import dataclasses

import pytest

from shared.catalogue import load_catalogue
from shared.config import Settings
from worker.heartbeat import HeartbeatThread
from worker.models.cpu_clock import ModelClock, read_stats
from worker.models.engine import InferenceEngine, decode_image
from worker.models.kinds.classifier import ImageClassifier
from worker.models.registry import ModelRegistry

pytestmark = pytest.mark.services("imagenet", "nsfw")   # only these queues (tests/conftest.py provisioned)


def auto_spec(**changes):
    """The real imagenet entry with backend: auto."""
    return dataclasses.replace(load_catalogue()["imagenet"], backend="auto", **changes)


def top1(handler, photo: bytes) -> str:
    return handler.classify([decode_image(photo)], top_k=1)[0][0]["label"]


@pytest.fixture(scope="module")
def auto_settings(tmp_path_factory):
    """CPU settings whose ONNX exports go to a fresh folder (so the export really runs)."""
    return Settings.from_env({}, metrics_enabled=False, device="cpu",
                             backend_export_dir=str(tmp_path_factory.mktemp("exports")))


@pytest.fixture(scope="module")
def auto_handler(auto_settings):
    """The packaged imagenet entry (torch) served with backend auto through the backend_auto setting."""
    settings = auto_settings.replace(services=("imagenet",), backend_auto=("imagenet",))
    registry = ModelRegistry(load_catalogue(), settings).load()
    assert registry.unavailable == {}
    yield registry.get("imagenet")
    registry.close()


def test_auto_measures_torch_and_onnx_and_serves_chelsea_as_egyptian_cat(auto_handler, sample_bytes):
    choice = auto_handler.backend.choice
    assert auto_handler.spec.backend == "auto" and set(choice["candidates"]) == {"torch", "onnx"}
    for name, report in choice["candidates"].items():
        assert "skipped" not in report, (name, report)
        assert report["ms"]["batch1"] > 0 and report["ms"]["batch8"] > 0
    fastest = min(choice["candidates"], key=lambda n: sum(choice["candidates"][n]["ms"].values()))
    assert choice["chosen"] == fastest == auto_handler.backend.name
    assert auto_handler.backend_choice == {"backend": fastest, "auto": choice}
    assert top1(auto_handler, sample_bytes["chelsea"]) == "Egyptian cat"
    assert top1(auto_handler, sample_bytes["coffee"]) == "espresso"


def test_auto_skips_onnx_when_its_export_folder_cannot_be_made_and_serves_with_torch(tmp_path, sample_bytes):
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a folder")
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu",
                                 backend_export_dir=str(blocker / "exports"))  # under a file: mkdir fails
    handler = ImageClassifier(auto_spec(), settings).load()
    try:
        candidates = handler.backend.choice["candidates"]
        assert "skipped" in candidates["onnx"] and "a-file" in candidates["onnx"]["skipped"]
        assert handler.backend.choice["chosen"] == "torch" and handler.backend.name == "torch"
        assert top1(handler, sample_bytes["chelsea"]) == "Egyptian cat"
    finally:
        handler.close()


def test_auto_skips_a_broken_onnx_artefact_and_the_registry_still_hosts_the_service(tmp_path, sample_bytes):
    broken = tmp_path / "imagenet.onnx"
    broken.write_bytes(b"\x08\x07garbage, not a protobuf model" * 10)
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu", services=("imagenet",))
    from shared.catalogue import Catalogue
    registry = ModelRegistry(Catalogue({"imagenet": auto_spec(artefact=str(broken))}), settings).load()
    try:
        assert registry.unavailable == {}
        choice = registry.backend_choices()["imagenet"]
        assert choice["backend"] == "torch"
        assert "cannot open ONNX artefact" in choice["auto"]["candidates"]["onnx"]["skipped"]
        engine = InferenceEngine(registry, decode_threads=1)
        result = engine.run("imagenet", [sample_bytes["chelsea"]], [1])
        engine.close()
        assert result.results[0][0]["label"] == "Egyptian cat"
    finally:
        registry.close()


def test_the_model_clock_counts_forward_cpu_in_its_file(auto_handler, tmp_path, sample_bytes):
    registry = ModelRegistry(load_catalogue(), auto_handler.settings.replace(services=("imagenet",)))
    registry.handlers["imagenet"] = auto_handler
    path = str(tmp_path / "model-cpu")
    engine = InferenceEngine(registry, decode_threads=1, clock=ModelClock(path))
    try:
        assert read_stats(path) == dict.fromkeys(("batches", "images", "thread_cpu_ns", "process_cpu_ns",
                                                  "wall_ns"), 0)
        engine.run("imagenet", [sample_bytes["chelsea"], sample_bytes["coffee"], b"not an image"], [1, 1, 1])
        stats = read_stats(path)
        assert stats["batches"] == 1 and stats["images"] == 2   # the undecodable item never reached the model
        assert 0 < stats["thread_cpu_ns"] <= stats["process_cpu_ns"]
        assert stats["wall_ns"] > 0
    finally:
        engine.close()


def test_services_reports_the_backend_auto_chose_from_the_worker_heartbeat(auto_handler, settings, provisioned):
    from shared.aws import client
    from webserver.app import create_app
    beat = HeartbeatThread(settings, client("s3", settings), "auto-1", ["imagenet"], {}, lambda: 0,
                     backends={"imagenet": auto_handler.backend_choice})
    assert beat.beat()
    app = create_app(settings.replace(wait_time_s=1))
    try:
        entry = {s["name"]: s for s in app.test_client().get("/services").get_json()["services"]}["imagenet"]
    finally:
        app.extensions["classifycloud"].close()
        beat.stop()
    chosen = auto_handler.backend.choice["chosen"]
    assert entry["serving_backends"] == {chosen: 1}
    assert entry["backend_choice"]["chosen"] == chosen
    assert set(entry["backend_choice"]["candidates"]) == {"torch", "onnx"}


PINNED_ONNX_CHILD = """
import os
import onnxruntime  # noqa: F401  (its import starts a thread of its own: counted before)
from shared.catalogue import load_catalogue
from shared.config import Settings
from worker.models.registry import ModelRegistry
before = len(os.listdir("/proc/self/task"))
registry = ModelRegistry(load_catalogue(), Settings.from_env({}, device="cpu", services=("nsfw",))).load()
assert registry.get("nsfw").backend.name == "onnx", registry.unavailable
print(len(os.listdir("/proc/self/task")) - before)
"""


def test_onnx_runtime_runs_one_thread_in_a_process_pinned_to_one_core():
    # ONNX Runtime's default counts the machine's cores: on one allowed core it ran a second, spinning thread
    import os
    import subprocess
    import sys
    core = min(os.sched_getaffinity(0))
    out = subprocess.run([sys.executable, "-c", PINNED_ONNX_CHILD], capture_output=True, text=True, timeout=300,
                         preexec_fn=lambda: os.sched_setaffinity(0, {core}), check=True)
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout + out.stderr


def test_centre_region_then_resize_matches_resize_then_crop_on_real_photos(auto_handler, sample_bytes):
    import torchvision.transforms.functional as TF

    from worker.models.engine import decode_jpeg_tensor
    p = auto_handler.spec.preprocess
    for name, photo in sample_bytes.items():
        image = decode_jpeg_tensor(photo)
        full = TF.center_crop(TF.resize(image, p.resize, antialias=True), p.crop)   # the reference transform
        reference = auto_handler.infer(TF.normalize(full.float().div_(255.0), p.mean, p.std)[None])
        fast = auto_handler.infer(auto_handler.preprocess_tensor(image)[None])
        assert fast.argmax().item() == reference.argmax().item(), name
        assert float((fast - reference).abs().max()) < 0.01, name
