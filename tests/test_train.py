"""classifycloud train's parts: stratified split, S3 datasets, and weights that serve through the worker's loader."""
from __future__ import annotations

import io
import types

import pytest
from PIL import Image

from classifycloud.train import TrainProgress, fetch_dataset, split, train_service
from shared.aws import client

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

PHOTOS = ("chelsea", "coffee", "rocket")


def test_split_holds_out_the_same_share_of_every_class():
    targets = [0] * 50 + [1] * 10 + [2] * 3 + [3]
    train, val = split(targets, 0.2, seed=0)
    assert sorted(train + val) == list(range(len(targets))) and not set(train) & set(val)
    held = [targets[i] for i in val]
    assert (held.count(0), held.count(1), held.count(2), held.count(3)) == (10, 2, 1, 0)
    assert split(targets, 0.2, seed=0) == (train, val) != split(targets, 0.2, seed=1)


def test_progress_without_a_terminal_prints_every_tenth():
    out = io.StringIO()
    bar = TrainProgress("features", 100, stream=out)
    for _ in range(100):
        bar.update(1, "loss 0.1")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("features   [######") and "100/100" in lines[-1]


def _crops(data: bytes, n: int) -> list[bytes]:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    out = []
    for i in range(n):
        w, h = img.size
        box = (i * w // 20, i * h // 20, w - i * w // 25, h - i * h // 25)
        buf = io.BytesIO()
        img.crop(box).resize((160, 160)).save(buf, "JPEG")
        out.append(buf.getvalue())
    return out


def test_a_dataset_under_an_s3_prefix_is_fetched_as_an_imagefolder(settings, provisioned, sample_bytes, tmp_path):
    s3 = client("s3", settings)
    for photo in PHOTOS:
        for i, data in enumerate(_crops(sample_bytes[photo], 2)):
            s3.put_object(Bucket=settings.bucket_name, Key=f"datasets/three/{photo}/{i}.jpg", Body=data)
    s3.put_object(Bucket=settings.bucket_name, Key="datasets/three/readme.txt", Body=b"not an image")
    s3.put_object(Bucket=settings.bucket_name, Key="datasets/three/chelsea/deeper/x.jpg", Body=b"nested")
    root = fetch_dataset(f"s3://{settings.bucket_name}/datasets/three", settings, str(tmp_path / "d"))
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(PHOTOS)
    assert sorted(p.name for p in (tmp_path / "d" / "chelsea").iterdir()) == ["0.jpg", "1.jpg"]
    assert root == str(tmp_path / "d")
    with pytest.raises(SystemExit, match="no images under"):
        fetch_dataset(f"s3://{settings.bucket_name}/datasets/none", settings, str(tmp_path / "e"))


def test_trained_weights_load_with_no_pickle_and_classify_like_training(tmp_path, sample_bytes):
    from shared.catalogue import parse_entry
    from shared.config import Settings
    from worker.models.kinds.classifier import ImageClassifier
    for photo in PHOTOS:
        (tmp_path / "data" / photo).mkdir(parents=True)
        for i, data in enumerate(_crops(sample_bytes[photo], 6)):
            (tmp_path / "data" / photo / f"{i}.jpg").write_bytes(data)
    args = types.SimpleNamespace(service="three", data=str(tmp_path / "data"), arch="efficientnet_lite0",
                                 epochs=30, batch_size=16, lr=3e-3, size=128, val_fraction=0.34, min_accuracy=0.0,
                                 device="cpu", seed=0, description="", out=str(tmp_path / "out"), no_push=True)
    settings = Settings.from_env({}, metrics_enabled=False, device="cpu")
    result = train_service(args, settings)
    assert result["weights"].endswith(".safetensors") and result["labels"] == sorted(PHOTOS)
    assert result["held_out"] == 6 and result["accuracy"] == 1.0  # three very different photos
    spec = parse_entry("three", {**result["entry"], "weights": result["weights"]}, "test")
    handler = ImageClassifier(spec, settings).load()  # the worker's loader: safetensors, strict
    handler.labels = result["labels"]
    for photo in PHOTOS:
        top = handler.classify([Image.open(io.BytesIO(sample_bytes[photo]))])[0][0]
        assert top["label"] == photo
