"""Black-hole workers: a worker whose model fails run after run checks itself on a bundled photo (issue 33)."""
from __future__ import annotations

import pytest
import torch
from test_worker_loop import CATS, model, run_burst, stack  # noqa: F401  (the module's fixtures)

from shared.config import Settings
from worker.selfcheck import EXIT_BROKEN


@pytest.fixture
def broken(catalogue):
    """Its own imagenet model, loaded for real and then broken: the first convolution's weights lost their
    shape (as a bad weights file would leave them), so every forward pass raises."""
    from worker.models.engine import InferenceEngine
    from worker.models.registry import ModelRegistry
    registry = ModelRegistry(catalogue, Settings(device="cpu", metrics_enabled=False, services=("imagenet",))).load()
    net = registry.get("imagenet").model
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.weight = torch.nn.Parameter(torch.zeros(1, 1, 1, 1))
    engine = InferenceEngine(registry, 2)
    yield registry, engine
    engine.close()


def test_a_worker_whose_model_fails_the_self_check_gives_its_work_back_and_exits_4(
        stack, broken, model, sample_bytes):  # noqa: F811
    for i in range(6):
        stack.request(stack.upload(f"uploads/bh-{i}", sample_bytes["chelsea"]), f"bh-{i}", reply=False)
    worker = stack.worker(broken, max_batch_size=1, selfcheck_after_failures=2)
    assert run_burst(worker) == EXIT_BROKEN
    assert worker.stop_reason.startswith("broken: imagenet: 2 model failures")
    errors = [rid for rid in (f"bh-{i}" for i in range(6)) if stack.record(rid) is not None]
    assert len(errors) == 1                       # only the first failure was answered (inference_failed)
    assert stack.record(errors[0])["error"]["code"] == "inference_failed"
    assert stack.settled((5, 0)) == (5, 0)        # the other five are visible again at once, not drained
    assert run_burst(stack.worker(model)) == 0    # a sound worker answers them all
    for i in range(6):
        rec = stack.record(f"bh-{i}")
        if f"bh-{i}" not in errors:
            assert rec["status"] == "ok" and rec["results"][0]["index"] in CATS


def test_bad_images_in_a_row_are_the_inputs_fault_and_never_stop_a_sound_worker(stack, model):  # noqa: F811
    for i in range(5):
        stack.request(stack.upload(f"uploads/bad-{i}", b"not an image at all" + bytes([i])), f"bad-{i}")
    worker = stack.worker(model, max_batch_size=1, selfcheck_after_failures=2)
    assert run_burst(worker) == 0
    replies = stack.replies(5)
    assert sorted(replies) == [f"bad-{i}" for i in range(5)]
    assert all(r.error["code"] == "invalid_image" for r in replies.values())
    assert worker.processor.health.broken is None


def test_the_self_check_passes_on_a_sound_model_and_fails_on_a_broken_one(broken, model):  # noqa: F811
    from worker.selfcheck import ModelHealth
    s = Settings(selfcheck_after_failures=2)
    sound = ModelHealth(s, model[1])
    assert sound.failed("imagenet") is None and sound.failed("imagenet") is None    # 2: checked, passed
    assert sound.checks == 1 and sound.failures == 0 and sound.broken is None      # the count starts again
    bad = ModelHealth(s, broken[1])
    assert bad.failed("imagenet") is None
    assert "self-check failed" in bad.failed("imagenet") and bad.checks == 1
