"""Batch execution: decode and preprocess in a thread pool, one forward pass, per-item results."""
from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_jpeg

from shared.config import get_settings
from shared.images import CheckedImage, ImageRefused, open_checked, take_header
from worker.models.cpu_clock import ModelClock
from worker.models.registry import ModelRegistry

log = logging.getLogger(__name__)

JPEG_MAGIC = b"\xff\xd8\xff"


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""

    code = "invalid_image"


@dataclass
class BatchResult:
    """Per-item outcome of a batch: results or an error, and the batch's model time."""

    results: list          # per item: the kind's result list, or an ImageDecodeError / ItemError
    inference_ms: float
    preprocess_ms: float = 0.0                       # decode + preprocess wall time of the batch
    decoders: list[str] = field(default_factory=list)  # per item: as Prepared.decoders


@dataclass
class Prepared:
    """A batch decoded and preprocessed for one service's model, waiting for its forward pass."""

    service: str
    items: list            # per image: the preprocessed item, or its ImageDecodeError
    decoders: list[str]    # per image: "draft" (DCT-scaled JPEG), "jpeg" (torchvision.io), "pil" or "error"
    preprocess_ms: float = 0.0


def _open_header(data: bytes) -> Image.Image:
    """Pillow's lazy open of an allowed format (shared.images); refuses too many pixels from the header."""
    try:
        return open_checked(data, get_settings().max_image_pixels)
    except ImageRefused as exc:
        err = ImageDecodeError(exc.message)
        err.code = exc.code  # unsupported_format / image_too_large / invalid_image
        raise err from None


def decode_image(data: bytes) -> Image.Image:
    """Fully decode bytes to an RGB image with EXIF orientation applied (Pillow path)."""
    img = take_header(data) or _open_header(data)   # fetched bytes arrive opened and checked
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        return img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from None


def decode_jpeg_tensor(data: bytes) -> torch.Tensor:
    """A JPEG as uint8 [3, H, W] via torchvision.io (libjpeg-turbo), dimensions checked first."""
    if not isinstance(data, CheckedImage):
        _open_header(data)  # size check before allocating the decoded pixels (fetched bytes had theirs)
    try:
        return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                           mode=ImageReadMode.RGB, apply_exif_orientation=True)
    except RuntimeError as exc:
        raise ImageDecodeError(f"not a decodable JPEG: {exc}") from None


def draft_size(preprocess, width: int, height: int) -> tuple[int, int] | None:
    """The smallest size the preprocessing needs from a width x height photo, when DCT scaling can reach it.

    JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free (Pillow's draft: libjpeg scales in the DCT), so
    a photo at least twice the model's input is decoded near that size instead of in full; the resize
    then has a quarter of the pixels or fewer to filter. None when the photo is under twice the input.
    """
    if preprocess.mode == "squash":   # each axis to crop
        need_w = need_h = preprocess.crop
    else:                             # the shorter side to resize (the crop is cut from that)
        scale = preprocess.resize / min(width, height)
        need_w, need_h = math.ceil(width * scale), math.ceil(height * scale)
    if width < 2 * need_w or height < 2 * need_h:
        return None
    return need_w, need_h


def decode_jpeg_draft(data: bytes, preprocess) -> torch.Tensor | None:
    """A large JPEG as uint8 [3, H, W], DCT-scaled to no less than the preprocessing needs (EXIF applied);
    None when the photo is too small for DCT scaling to help (the caller decodes it in full)."""
    img = take_header(data) or _open_header(data)
    size = draft_size(preprocess, *img.size)   # the shorter side and squash are the same after a 90° turn
    if size is None:
        if isinstance(data, CheckedImage):
            data.header = img   # unused: the full decode may take it
        return None
    try:
        img.draft("RGB", size)
        img.load()
        img = ImageOps.exif_transpose(img)
        if img.mode != "RGB":
            img = img.convert("RGB")
        return torch.from_numpy(np.array(img)).permute(2, 0, 1)   # a writable copy: torch refuses read-only views
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable JPEG: {exc}") from None


def usable_cores() -> int:
    """Cores this process may run on (its affinity: a pinned or containerised worker has fewer)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class InferenceEngine:
    """Runs batches for the registry's services; safe to call from several threads at once."""

    def __init__(self, registry: ModelRegistry, decode_threads: int = 4, jpeg_fast_path: bool = True,
                 clock: ModelClock | None = None, jpeg_draft: bool = True):
        self.registry = registry
        self.jpeg_fast_path = jpeg_fast_path
        self.jpeg_draft = jpeg_draft           # DCT-scaled decode of photos at least twice the model's input
        self.clock = clock or ModelClock()   # the model's CPU time, apart from fetch/decode/queue work
        # no more decode threads than cores: more only contend with each other and with the forward pass
        self.threads = max(1, min(decode_threads, usable_cores()))
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")

    def _prepare(self, handler, data: bytes) -> tuple[torch.Tensor | ImageDecodeError, str]:
        try:
            if self.jpeg_fast_path and handler.accepts_tensor and data[:3] == JPEG_MAGIC:
                try:
                    if self.jpeg_draft:
                        drafted = decode_jpeg_draft(data, handler.spec.preprocess)
                        if drafted is not None:
                            return handler.preprocess_tensor(drafted), "draft"
                    return handler.preprocess_tensor(decode_jpeg_tensor(data)), "jpeg"
                except ImageDecodeError as exc:
                    # libjpeg refuses some files Pillow reads (odd markers); Pillow has the last word.
                    log.debug("torchvision.io could not decode a JPEG (%s); trying Pillow", exc)
            return handler.preprocess(decode_image(data)), "pil"
        except ImageDecodeError as exc:
            return exc, "error"
        except Exception as exc:  # a hostile image must fail only its own item
            return ImageDecodeError(f"cannot preprocess image: {type(exc).__name__}: {exc}"), "error"

    def _handler(self, service: str):
        handler = self.registry.get(service)
        if handler is None:
            raise KeyError(f"service {service!r} is not hosted here")
        return handler

    def run(self, service: str, images: Sequence[bytes], top_ks: Sequence[int],
            params: Sequence[dict | None] | None = None, answer_as: Sequence[str] | None = None) -> BatchResult:
        """Run images (bytes) of one service through its kind's handler; a bad image fails only its own item.

        answer_as names each item's service when the batch mixes a model service with services derived
        from it (forward_owner): one forward pass, each item answered by its own service's postprocess.
        """
        return self.forward(self.prepare(service, images), top_ks, params, answer_as)

    def prepare(self, service: str, images: Sequence[bytes]) -> Prepared:
        """Decode and preprocess a batch in the decode pool (the worker does this while the model runs)."""
        handler = self._handler(service)
        owner = handler.forward_owner
        t0 = time.perf_counter()
        if self.threads == 1:   # one core: decode in the calling thread, without a hand-off per image
            prepared = [self._prepare(owner, b) for b in images]
        else:
            prepared = list(self.pool.map(lambda b: self._prepare(owner, b), images))
        return Prepared(service, [p for p, _ in prepared], [d for _, d in prepared], (time.perf_counter() - t0) * 1000)

    def forward(self, prepared: Prepared, top_ks: Sequence[int], params: Sequence[dict | None] | None = None,
                answer_as: Sequence[str] | None = None) -> BatchResult:
        """One forward pass over prepared items (decode errors stay in their places), answered per item."""
        service = prepared.service
        handler = self._handler(service)
        images = prepared.items
        if len(top_ks) != len(images):
            raise ValueError(f"{len(images)} images but {len(top_ks)} top_k values")
        params = list(params) if params is not None else [None] * len(images)
        answerers = [self._handler(s) for s in answer_as] if answer_as else [handler] * len(images)
        owner = handler.forward_owner
        if any(a.forward_owner is not owner for a in answerers):
            raise ValueError("answer_as mixes services that do not share one model")
        results: list = list(images)  # errors stay in place
        good = [i for i, d in enumerate(prepared.decoders) if d != "error"]
        t1 = time.perf_counter()
        if good:
            # one forward pass (the model's owner), each item answered by its service: a derived service is
            # a handler wrapping its parent's. Every kind's batch runs under inference_mode (Handler's promise).
            mixed = any(a is not owner for a in answerers)
            with self.clock.measure(len(good)), torch.inference_mode():
                answers = owner.run_batch([results[i] for i in good], [top_ks[i] for i in good],
                                          [params[i] for i in good], [answerers[i] for i in good] if mixed else None)
            for j, i in enumerate(good):
                results[i] = answers[j]
        return BatchResult(results=results, inference_ms=(time.perf_counter() - t1) * 1000,
                           preprocess_ms=prepared.preprocess_ms, decoders=list(prepared.decoders))

    def close(self) -> None:
        """Stop the decode pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.clock.close()
