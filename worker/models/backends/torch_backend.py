"""PyTorch backend: eager or torch.compile, fp32 or fp16/bf16 autocast, pinned non-blocking copies on CUDA."""
from __future__ import annotations

import logging
import threading

import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models import builders
from worker.models.backends.base import BackendBase, softmax_probs
from worker.models.loader import WeightsError, fetch_to_local, load_strict, read_state_dict, verify_sha256

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """auto -> fp16 on CUDA, fp32 elsewhere; else the named dtype."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be auto, fp32, fp16 or bf16, not {precision!r}")
    return _DTYPES[precision]


def bucket_size(n: int) -> int:
    """The power of two >= n: compiled models see few distinct shapes (one graph each)."""
    return 1 << max(0, (n - 1).bit_length())


class TorchBackend(BackendBase):
    """One model instance on one device; forward calls are serialised (one device, one stream)."""

    name = "torch"

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device):
        super().__init__(spec, settings, device)
        self.dtype = resolve_precision(settings.precision, device)
        self.channels_last = settings.channels_last
        self.compiled = bool(settings.compile_mode)
        self.model: torch.nn.Module | None = None
        self.version = ""
        self._lock = threading.Lock()
        self._pinned: torch.Tensor | None = None

    def load(self) -> "TorchBackend":
        """Build, load the weights strictly, place on the device, optionally compile, warm up."""
        spec = self.spec
        if not spec.weights:
            raise WeightsError(f"weights not configured for service {spec.name!r}")
        path = fetch_to_local(spec.weights, self.settings)
        digest = verify_sha256(path, spec.sha256)
        model = builders.build(spec.architecture, spec.num_classes)
        state = read_state_dict(path, trusted_sha256=spec.sha256 if spec.trusted_pickle else None)
        load_strict(model, state, f"service {spec.name!r} ({spec.architecture}) weights {path}")
        self.set_model(model, version=digest[:12])
        return self

    def set_model(self, model: torch.nn.Module, version: str = "") -> "TorchBackend":
        """Adopt an already-loaded model (benchmarks, conversion): eval, device, memory format, compile, warm-up."""
        model = model.eval().to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compiled:
            mode = None if self.settings.compile_mode == "default" else self.settings.compile_mode
            model = torch.compile(model, mode=mode, dynamic=False)
        self.model = model
        self.version = version
        self.warm_up()
        return self

    def warm_up(self) -> None:
        """Run the shapes the worker will use, so the first request pays no allocation/compile cost."""
        crop = self.spec.preprocess.crop
        sizes = {1}
        if self.device.type == "cuda" or self.compiled:
            top = bucket_size(max(1, self.settings.max_batch_size))
            sizes |= {bucket_size(n) for n in range(1, top + 1)} if self.compiled else {top}
        for n in sorted(sizes):
            self.forward(torch.zeros(n, 3, crop, crop))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _to_device(self, batch: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return batch
        n = batch.shape[0]
        if self._pinned is None or self._pinned.shape[0] < n or self._pinned.shape[1:] != batch.shape[1:]:
            self._pinned = torch.empty((bucket_size(n), *batch.shape[1:]), dtype=batch.dtype, pin_memory=True)
        staging = self._pinned[:n]
        staging.copy_(batch)
        # Safe to reuse the staging buffer next call: forward() ends with a synchronising .cpu().
        return staging.to(self.device, non_blocking=True)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, C] (float32, CPU) for a normalised float batch [N, 3, H, W]."""
        assert self.model is not None, "load() first"
        n = batch.shape[0]
        if self.compiled and bucket_size(n) != n:
            pad = batch.new_zeros((bucket_size(n) - n, *batch.shape[1:]))
            batch = torch.cat([batch, pad])
        with self._lock, torch.inference_mode():
            x = self._to_device(batch)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
                logits = self.model(x)
            return softmax_probs(logits[:n], self.spec.num_classes, f"service {self.spec.name!r}", self.spec.outputs)

    def close(self) -> None:
        """Drop the model (frees device memory)."""
        self.model = None
        self._pinned = None
