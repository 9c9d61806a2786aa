"""train -> serve on the running local stack, no restart: scikit-learn's digits, upscaled, on CPU."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
from PIL import Image

pytestmark = pytest.mark.slow
HELD_BACK = 30  # digits kept out of the training folder entirely, classified through the web API at the end


def _png(img8x8: np.ndarray) -> bytes:
    a = (img8x8 / 16.0 * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).resize((64, 64), Image.BILINEAR).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """An ImageFolder of 1,797 - HELD_BACK digit scans (8x8 upscaled to 64x64) and the held-back ones."""
    from sklearn.datasets import load_digits
    d = load_digits()
    rng = np.random.default_rng(0)
    back = set(rng.choice(len(d.target), HELD_BACK, replace=False).tolist())
    root = tmp_path_factory.mktemp("digits")
    held = []
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        if i in back:
            held.append((_png(img), int(y)))
            continue
        os.makedirs(root / str(y), exist_ok=True)
        (root / str(y) / f"{i:04d}.png").write_bytes(_png(img))
    return str(root), held


@pytest.fixture
def stack(full_stack):
    """The session's stack with every service and default refresh settings (tests/conftest.py full_stack)."""
    return full_stack


def test_train_digits_then_the_running_stack_serves_them_through_the_web_api(stack, digits):
    root, held = digits
    worker_pid = stack.worker_procs[0].pid
    r = requests.get(stack.base_url + "/services", timeout=30)
    assert "digits" not in {s["name"] for s in r.json()["services"]}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "classifycloud", "train", "--service", "digits", "--data", root,
                           "--size", "96", "--epochs", "40", "--device", "cpu"],
                          env=stack.child_env(), capture_output=True, text=True, timeout=900)
    trained_s = time.monotonic() - started
    print(proc.stdout[-2000:], proc.stderr[-1500:], sep="\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(re.search(r"held-out accuracy: ([0-9.]+) \((\d+) images", proc.stdout).group(1))
    print(f"train: held-out accuracy {accuracy:.4f}, {trained_s:.0f} s on CPU")
    assert accuracy >= 0.9
    assert "features" in proc.stderr and "[####" in proc.stderr  # the progress bar

    published = time.monotonic()
    deadline = published + 60  # "serves the new service within a minute"
    while time.monotonic() < deadline:
        names = {s["name"]: s for s in requests.get(stack.base_url + "/services", timeout=30).json()["services"]}
        if names.get("digits", {}).get("available"):
            break
        time.sleep(1)
    else:
        raise AssertionError("the web did not list digits within a minute")
    correct = 0
    for data, label in held:
        r = requests.post(stack.base_url + "/classify", files={"image": ("digit.png", data)},
                          data={"service": "digits"}, timeout=max(5.0, deadline - time.monotonic() + 60))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["service"] == "digits" and body["model"]["name"] == "digits/efficientnet_lite0"
        correct += body["results"][0]["label"] == str(label)
    served_s = time.monotonic() - published
    print(f"served: {correct}/{len(held)} held-back digits correct, first answers {served_s:.0f} s after publishing")
    assert correct >= 0.8 * len(held)  # the held-out accuracy above is >= 0.9 (about 0.94 measured)
    assert stack.worker_procs[0].pid == worker_pid and stack.worker_procs[0].poll() is None  # no restart
