"""Batch execution: decode and preprocess in a thread pool, one forward pass, per-item results."""
from __future__ import annotations

import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image, UnidentifiedImageError

from worker.models.registry import ModelRegistry

log = logging.getLogger(__name__)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image."""

    code = "invalid_image"


@dataclass
class BatchResult:
    """Per-item outcome of a batch: results or an error, and the batch's model time."""

    results: list          # per item: list of {"label","index","score"} or an ImageDecodeError
    inference_ms: float


def decode_image(data: bytes) -> Image.Image:
    """Fully decode bytes to an RGB image (Pillow's decompression-bomb limit applies)."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from None


class InferenceEngine:
    """Runs batches for the registry's services."""

    def __init__(self, registry: ModelRegistry, decode_threads: int = 4):
        self.registry = registry
        self.pool = ThreadPoolExecutor(max_workers=max(1, decode_threads), thread_name_prefix="decode")

    def _prepare(self, service: str, data: bytes):
        handler = self.registry.get(service)
        try:
            return handler.preprocess(decode_image(data))
        except ImageDecodeError as exc:
            return exc

    def run(self, service: str, images: Sequence[bytes], top_ks: Sequence[int]) -> BatchResult:
        """Classify images (bytes) of one service; a bad image fails only its own item."""
        handler = self.registry.get(service)
        if handler is None:
            raise KeyError(f"service {service!r} is not hosted here")
        prepared = list(self.pool.map(lambda b: self._prepare(service, b), images))
        good = [i for i, p in enumerate(prepared) if isinstance(p, torch.Tensor)]
        results: list = [p for p in prepared]  # errors stay in place
        t0 = time.perf_counter()
        if good:
            probs = handler.infer(torch.stack([prepared[i] for i in good]))
            kmax = max(top_ks[i] for i in good)
            ranked = handler.postprocess(probs, kmax)
            for j, i in enumerate(good):
                results[i] = ranked[j][: top_ks[i]]
        return BatchResult(results=results, inference_ms=(time.perf_counter() - t0) * 1000)

    def close(self) -> None:
        """Stop the decode pool."""
        self.pool.shutdown(wait=False, cancel_futures=True)
