"""A classifier saved by Keras 3 (.keras), run by Keras on its torch backend: no TensorFlow.

Serves sklesion's HAM10000 model: inputs an image (254, 254, 3) of raw 0-255 pixels (the model normalises
inside) and 10 metadata values; output a 7-way softmax.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import threading
import zipfile
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from worker.models.handler import ItemError
from worker.models.kinds.classifier import ImageClassifier
from worker.models.loader import WeightsError, fetch_to_local, sha256_of, verify_sha256

log = logging.getLogger(__name__)

# The 10 metadata values, as sklesion 0.2.2 builds them (sklesion/model.py preprocess, model_props.pkl):
# one-hot sex (3) + one-hot location (5) + age / AGE_MAX + age_missing; a missing age is AGE_MEAN.
SEXES = ("female", "male", "unknown")
LOCATIONS = ("arm", "head-or-neck", "leg-or-genital", "trunk", "unknown")
AGE_MEAN = 51.90180032733224   # model_props["age_mean"]: the training set's mean age
AGE_MAX = 90.0                 # model_props["age_max"]


def metadata_vector(meta: dict | None) -> np.ndarray:
    """The model's 10 metadata values; absent fields are the neutral 'unknown' / missing age."""
    meta = meta or {}
    if not isinstance(meta, dict):
        raise ItemError("invalid_params", "meta must be an object {sex, location, age}")
    sex = meta.get("sex") or "unknown"
    location = meta.get("location") or "unknown"
    age = meta.get("age")
    if sex not in SEXES:
        raise ItemError("invalid_params", f"meta.sex must be one of {', '.join(SEXES)}")
    if location not in LOCATIONS:
        raise ItemError("invalid_params", f"meta.location must be one of {', '.join(LOCATIONS)}")
    if age is not None and (isinstance(age, bool) or not isinstance(age, (int, float))
                            or not math.isfinite(age) or not 0 <= age <= 120):
        raise ItemError("invalid_params", "meta.age must be a number of years in 0..120, or null")
    vec = [float(s == sex) for s in SEXES] + [float(loc == location) for loc in LOCATIONS]
    vec += [(AGE_MEAN if age is None else float(age)) / AGE_MAX, float(age is None)]
    return np.asarray(vec, dtype=np.float32)


def import_keras_on_torch():
    """Keras 3 with its torch backend; the backend is chosen once per process, at first import."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # only this handler imports keras, and only in the worker
    import keras
    if keras.backend.backend() != "torch":
        raise WeightsError(f"keras was already imported with backend {keras.backend.backend()!r}; "
                           "this service needs KERAS_BACKEND=torch")
    return keras


class KerasClassifier(ImageClassifier):
    """The classifier kind, run by Keras 3 on torch; an optional per-request `meta` (see metadata_vector)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.keras_model = None
        self._lock = threading.Lock()

    @property
    def model(self):
        """The Keras model (it has no torch backend object)."""
        return self.keras_model

    @property
    def loaded(self) -> bool:
        """Whether the Keras model is loaded."""
        return self.keras_model is not None

    def load(self) -> "KerasClassifier":
        """Labels, then the .keras file with safe_mode (no lambdas: loading runs no code), then a warm-up."""
        spec = self.spec
        if spec.labels is None:
            raise WeightsError(f"service {spec.name!r}: a Keras classifier needs labels")
        from worker.models.loader import load_labels
        self.labels = load_labels(spec.labels, spec.num_classes, self.settings)
        path = fetch_to_local(spec.weights, self.settings)
        if not path.endswith(".keras") or not zipfile.is_zipfile(path):
            # a .keras file is a zip; anything else would reach Keras' legacy H5 loader (CVE-2025-9905)
            raise WeightsError(f"service {spec.name!r}: {os.path.basename(path)} is not a .keras (zip) file")
        self.version = verify_sha256(path, spec.sha256)[:12] if spec.sha256 else sha256_of(path)[:12]
        keras = import_keras_on_torch()
        try:
            self.keras_model = keras.saving.load_model(path, compile=False, safe_mode=True)
        except Exception as exc:  # keras raises ValueError, TypeError, OSError... for a bad file
            raise WeightsError(f"service {spec.name!r}: cannot load Keras model {path}: {exc}") from None
        crop = spec.preprocess.crop
        shapes = [tuple(t.shape[1:]) for t in self.keras_model.inputs]
        if shapes != [(crop, crop, 3), (10,)]:
            raise WeightsError(f"service {spec.name!r}: model inputs {shapes}, expected [({crop}, {crop}, 3), (10,)]")
        out = self.infer(torch.zeros(1, crop, crop, 3), [None])
        if tuple(out.shape) != (1, spec.num_classes):
            raise WeightsError(f"service {spec.name!r}: model outputs {tuple(out.shape)}, expected [N, {spec.num_classes}]")
        # Keras' torch backend places the model itself: on CUDA when torch sees a GPU.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("loaded service %s (Keras %s on torch, %d classes) from %s", spec.name, keras.__version__,
                 spec.num_classes, path)
        return self

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """[H, W, 3] float 0-255, the whole image squashed to crop x crop (bilinear, as tf.image.resize)."""
        arr = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
        return self.preprocess_tensor(arr)

    def preprocess_tensor(self, image: torch.Tensor) -> torch.Tensor:
        """The same for a decoded uint8 [3, H, W] tensor."""
        crop = self.spec.preprocess.crop
        img = TF.resize(image.float(), [crop, crop], interpolation=TF.InterpolationMode.BILINEAR, antialias=False)
        return img.permute(1, 2, 0).contiguous()

    def infer(self, batch: torch.Tensor, metas: Sequence[dict | None] | None = None) -> torch.Tensor:
        """Class probabilities [N, C] (float32, CPU) for images [N, H, W, 3] and their metadata."""
        assert self.keras_model is not None, "load() first"
        metas = list(metas) if metas is not None else [None] * batch.shape[0]
        meta = np.stack([metadata_vector(m) for m in metas])
        with self._lock, torch.inference_mode():
            out = self.keras_model([batch.numpy(), meta], training=False)
        probs = out.detach().float().cpu() if isinstance(out, torch.Tensor) else torch.as_tensor(np.asarray(out))
        return probs

    def run_batch(self, items: Sequence[torch.Tensor], top_ks: Sequence[int],
                  params: Sequence[dict | None], answerers=None) -> list:
        """One forward pass with each item's metadata (infer takes both: the base's collate cannot);
        an item with invalid metadata fails alone."""
        results: list = [None] * len(items)
        good, metas = [], []
        for i, p in enumerate(params):
            meta = (p or {}).get("meta")
            try:
                metadata_vector(meta)
            except ItemError as exc:
                results[i] = exc
                continue
            good.append(i)
            metas.append(meta)
        if good:
            probs = self.infer(torch.stack([items[i] for i in good]), metas)
            answers = self.answer(probs, [top_ks[i] for i in good], [params[i] for i in good],
                                  [answerers[i] for i in good] if answerers is not None else None)
            for j, i in enumerate(good):
                results[i] = answers[j]
        return results

    def close(self) -> None:
        """Drop the model."""
        self.keras_model = None
