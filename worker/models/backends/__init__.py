"""Inference backends: torch (CPU/GPU), ONNX Runtime, TensorRT; picked by the catalogue entry's `backend`."""
from __future__ import annotations

from typing import Protocol

import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.loader import WeightsError

BACKENDS = ("torch", "onnx", "tensorrt", "auto")


class BackendUnavailable(WeightsError):
    """The backend's runtime (package or device) is not present on this machine."""


class Backend(Protocol):
    """A loaded model that maps a normalised float batch [N,3,H,W] to class probabilities [N,C]."""

    name: str
    device: torch.device
    version: str

    def load(self) -> "Backend": ...

    def forward(self, batch: torch.Tensor) -> torch.Tensor: ...

    def close(self) -> None: ...


def create(spec: ServiceSpec, settings: Settings, device: torch.device, preprocess=None) -> Backend:
    """The (not yet loaded) backend the service's catalogue entry names (auto times its candidates on
    real photos, prepared with `preprocess`)."""
    if spec.backend == "torch":
        from worker.models.backends.torch_backend import TorchBackend
        return TorchBackend(spec, settings, device)
    if spec.backend == "onnx":
        from worker.models.backends.onnx_backend import OnnxBackend
        return OnnxBackend(spec, settings, device)
    if spec.backend == "tensorrt":
        from worker.models.backends.tensorrt_backend import TensorRTBackend
        return TensorRTBackend(spec, settings, device)
    if spec.backend == "auto":
        from worker.models.backends.auto_backend import AutoBackend
        if preprocess is None:
            raise ValueError(f"service {spec.name!r}: backend auto needs the handler's preprocess")
        return AutoBackend(spec, settings, device, preprocess)
    raise ValueError(f"service {spec.name!r}: unknown backend {spec.backend!r}; known: {BACKENDS}")


def softmax_probs(logits: torch.Tensor, num_classes: int, where: str, outputs: str = "logits") -> torch.Tensor:
    """Float32 CPU probabilities (softmax of logits; probabilities/regression outputs as they are).

    Raises WeightsError when the model's output width is not num_classes."""
    if logits.ndim != 2 or logits.shape[-1] != num_classes:
        raise WeightsError(f"{where}: model outputs shape {tuple(logits.shape)}, expected [N, {num_classes}]")
    if outputs != "logits":  # the graph ends in its own softmax, or the output is a regression value
        return logits.float().cpu()
    return logits.float().softmax(dim=-1).cpu()
