"""The classifier kind: one model's class probabilities, answered as top-k with Unknown below a threshold."""
from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image

from shared.catalogue import Preprocess, ServiceSpec
from shared.config import Settings
from worker.models import backends
from worker.models.handler import Handler, pick_device
from worker.models.loader import load_labels

log = logging.getLogger(__name__)


def _interpolation(p: Preprocess) -> TF.InterpolationMode:
    try:
        return getattr(TF.InterpolationMode, p.interpolation.upper())
    except AttributeError:
        raise ValueError(f"unknown interpolation {p.interpolation!r}") from None


def centre_region(image: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """The source pixels that a shorter-side resize to `resize` and a centre crop of `crop` keep (a view).

    Sizes and offsets follow torchvision's own rounding (resize: int(long side * resize / short side);
    center_crop: round((size - crop) / 2)), so each axis keeps the scale resize-then-crop had.
    """
    h, w = image.shape[-2:]
    nh, nw = (resize, int(resize * w / h)) if h <= w else (int(resize * h / w), resize)
    sy, sx = h / nh, w / nw
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    y0, x0 = max(0, round(top * sy)), max(0, round(left * sx))
    return image[..., y0:y0 + max(1, round(crop * sy)), x0:x0 + max(1, round(crop * sx))]


class ImageClassifier(Handler):
    """The classifier kind: one service's model (through its backend), loaded once; top-k with Unknown."""

    kind = "classifier"
    accepts_tensor = True   # preprocess_tensor exists: the engine may hand it torchvision.io-decoded JPEGs

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device | None = None):
        self.spec = spec
        self.settings = settings
        self.device = device or pick_device(settings.device)
        self.backend: backends.Backend | None = None
        self.labels: list[str] = []
        self.version = ""
        self._interp = _interpolation(spec.preprocess)

    # Keras entries run by the Keras variant (its own loader, inputs and per-request metadata)
    variants = {"keras": "worker.models.keras_classifier:KerasClassifier"}

    @property
    def model(self) -> torch.nn.Module | None:
        """The torch module (torch backend only)."""
        return getattr(self.backend, "model", None)

    @property
    def loaded(self) -> bool:
        """Whether the backend is loaded."""
        return self.backend is not None

    def load(self) -> "ImageClassifier":
        """Labels first (cheap to get wrong), then the backend: strict weights, device, warm-up."""
        spec = self.spec
        if spec.labels is None and spec.labels_note:
            # Class names unknown (labels_note says why): answer ids, never guessed names.
            self.labels = [f"class_{i}" for i in range(spec.num_classes)]
        else:
            self.labels = load_labels(spec.labels, spec.num_classes, self.settings)
        self.backend = backends.create(spec, self.settings, self.device, self.preprocess).load()
        self.device = self.backend.device
        self.version = self.backend.version
        log.info("loaded service %s (%s, %d classes, backend %s) on %s", spec.name, spec.architecture,
                 spec.num_classes, self.backend.name, self.device)
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """Deterministic: resize shorter side, centre crop, to tensor, normalise (PIL path)."""
        p = self.spec.preprocess
        img = image.convert("RGB")
        if p.mode == "squash":  # the whole image to crop x crop, aspect not kept (how such models trained)
            img = TF.resize(img, [p.crop, p.crop], interpolation=self._interp)
        else:
            img = TF.resize(img, p.resize, interpolation=self._interp)
            img = TF.center_crop(img, p.crop)
        return TF.normalize(TF.to_tensor(img), p.mean, p.std)

    def preprocess_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """The same transform for a decoded uint8 [3, H, W] tensor (torchvision.io path).

        Crop mode cuts the centre region out of the source first (a view) and resizes only that to
        crop x crop: the same scale and centre as resize-then-crop, with a third less resizing for a 3:2
        photo (the worker's largest non-model cost, docs/BENCHMARKS.md). Only the outermost output pixels
        differ, where the filter no longer sees source pixels beyond the crop.
        """
        p = self.spec.preprocess
        region = image if p.mode == "squash" else centre_region(image, p.resize, p.crop)
        if image.dtype == torch.uint8 and self._interp == TF.InterpolationMode.BILINEAR:
            # torch's uint8 antialiased bilinear kernel (channels-last input) is about 6x faster than
            # torchvision's resize, which filters in float: within one 8-bit step of it
            x = region[None].contiguous(memory_format=torch.channels_last)
            img = F.interpolate(x, size=(p.crop, p.crop), mode="bilinear", antialias=True, align_corners=False)[0]
            return TF.normalize(img.float().div_(255.0).contiguous(), p.mean, p.std)
        img = TF.resize(region, [p.crop, p.crop], interpolation=self._interp, antialias=True)
        return TF.normalize(img.float().div_(255.0), p.mean, p.std)

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, C] (float32, CPU) for a batch [N, 3, H, W]."""
        assert self.backend is not None, "load() first"
        return self.backend.forward(batch)

    def postprocess(self, probs: torch.Tensor, top_ks: Sequence[int],
                    params: Sequence[dict | None]) -> list[list[dict]]:
        """Per image its top-k [{label, index, score}], or a single Unknown below the threshold."""
        k = max(1, min(max(top_ks, default=1), probs.shape[-1]))
        scores, indices = probs.topk(k, dim=-1)
        out = []
        for s_row, i_row, want in zip(scores.tolist(), indices.tolist(), top_ks):
            if s_row[0] < self.spec.unknown_threshold:
                out.append([{"label": "Unknown", "index": -1, "score": round(s_row[0], 6)}])
                continue
            out.append([{"label": self.labels[i], "index": i, "score": round(s, 6)}
                        for s, i in zip(s_row[: max(1, want)], i_row)])
        return out

    def classify(self, images: Sequence[Image.Image], top_k: int | None = None) -> list[list[dict]]:
        """Convenience: the loaded model's top-k for decoded images (handle: preprocess, infer, postprocess)."""
        return self.handle(images, [top_k or self.spec.top_k] * len(images))

    def close(self) -> None:
        """Release the backend."""
        if self.backend is not None:
            self.backend.close()

    @property
    def backend_choice(self) -> dict:
        """{"backend": serving backend, plus auto's measurements when the entry says backend: auto}."""
        out = {"backend": getattr(self.backend, "name", self.spec.backend)}
        choice = getattr(self.backend, "choice", None)
        if choice:
            out["auto"] = choice
        return out


HANDLER = ImageClassifier  # the kinds table's entry (worker/models/kinds/__init__.py)
