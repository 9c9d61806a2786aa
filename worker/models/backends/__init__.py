"""Inference backends: torch (CPU/GPU), ONNX Runtime, TensorRT; picked by the catalogue entry's `backend`.

The interface is backends/base.py; each backend is a module here, named in BACKEND_CLASSES and imported
only when a service uses it (onnxruntime and TensorRT load only where they serve).
"""
from __future__ import annotations

import importlib

import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.backends.base import Backend, BackendUnavailable, softmax_probs

__all__ = ["BACKENDS", "BACKEND_CLASSES", "Backend", "BackendUnavailable", "create", "softmax_probs"]

# backend name (a catalogue entry's `backend`) -> "module:class" of this folder
BACKEND_CLASSES = {
    "torch": "torch_backend:TorchBackend",
    "onnx": "onnx_backend:OnnxBackend",
    "tensorrt": "tensorrt_backend:TensorRTBackend",
    "auto": "auto_backend:AutoBackend",
}
BACKENDS = tuple(BACKEND_CLASSES)


def create(spec: ServiceSpec, settings: Settings, device: torch.device, preprocess=None) -> Backend:
    """The (not yet loaded) backend the service's catalogue entry names (auto times its candidates on
    real photos, prepared with `preprocess`)."""
    if spec.backend not in BACKEND_CLASSES:
        raise ValueError(f"service {spec.name!r}: unknown backend {spec.backend!r}; known: {BACKENDS}")
    module, cls = BACKEND_CLASSES[spec.backend].split(":")
    backend = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    if spec.backend != "auto":
        return backend(spec, settings, device)
    if preprocess is None:
        raise ValueError(f"service {spec.name!r}: backend auto needs the handler's preprocess")
    return backend(spec, settings, device, preprocess)
