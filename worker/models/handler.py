"""The Handler protocol: what the registry and the engine ask of every model kind (one module each in kinds/)."""
from __future__ import annotations

import importlib
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from PIL import Image

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.loader import WeightsError  # noqa: F401  (loading a handler raises it: callers catch it here)


class ItemError(ValueError):
    """One request of a batch cannot be answered (its reply is an error with this code); the others go on."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when present, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@runtime_checkable
class Handler(Protocol):
    """One service's model, loaded once: load(), preprocess per image, infer per batch, postprocess per answer.

    The engine calls preprocess (or preprocess_tensor, when accepts_tensor) in its decode threads, then
    run_batch once per batch under torch.inference_mode(). A kind is a module in worker/models/kinds/
    whose HANDLER is its class (the class's `kind` is the catalogue's name for it) and a module in
    shared/kinds/ with its request parameters and result shapes: nothing else names a kind.
    """

    kind: str                  # the catalogue's `kind:` this class serves
    accepts_tensor: bool       # preprocess_tensor exists: the engine may hand it torchvision.io-decoded JPEGs
    spec: ServiceSpec
    settings: Settings
    labels: list[str]
    version: str

    # a kind's variants: catalogue backend -> "module:class" that serves such entries (imported on first use)
    variants: dict[str, str] = {}

    @classmethod
    def for_spec(cls, spec: ServiceSpec) -> type:
        """The class that serves this entry: the variant `variants` names for its backend, else this one."""
        ref = cls.variants.get(spec.backend)
        if ref is None:
            return cls
        module, name = ref.split(":")
        return getattr(importlib.import_module(module), name)

    def load(self) -> "Handler":
        """Fetch and load the model once (raises WeightsError with the reason it cannot serve)."""
        ...

    def preprocess(self, image: Image.Image) -> Any:
        """One decoded RGB image -> the item infer takes (deterministic; runs in a decode thread)."""
        ...

    def preprocess_tensor(self, image: torch.Tensor) -> Any:
        """The same for a uint8 [3, H, W] tensor (only called when accepts_tensor)."""
        raise NotImplementedError(f"kind {self.kind!r} takes Pillow images only")

    def infer(self, batch: Any) -> Any:
        """The model's output for a batch of preprocessed items (the engine holds torch.inference_mode())."""
        ...

    def postprocess(self, output: Any, top_k: int | None = None) -> list:
        """infer's output -> one result list per item (what the reply's `results` carry)."""
        ...

    def run_batch(self, items: Sequence[Any], top_ks: Sequence[int], params: Sequence[dict | None]) -> list:
        """infer then postprocess: per item its results, or an ItemError that fails that item alone."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...

    @property
    def model_info(self) -> dict:
        """{"name", "version"} for replies."""
        return {"name": f"{self.spec.name}/{self.spec.architecture}", "version": self.version}
