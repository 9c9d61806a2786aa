"""The Handler base class: what the registry and the engine ask of every model kind (one module each in kinds/)."""
from __future__ import annotations

import importlib
from typing import Any, Sequence

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


class Handler:
    """One service's model, loaded once: load, preprocess per image, infer per batch, postprocess per item.

    The engine calls preprocess (or preprocess_tensor, when accepts_tensor) in its decode threads, then
    run_batch once per batch under torch.inference_mode(): collate, infer, postprocess, in that order and
    with one postprocess signature for every kind. A kind is a module in worker/models/kinds/ (or a plug-in,
    shared/kinds/) whose HANDLER is its subclass (`kind` is the catalogue's name for it) and a module in
    shared/kinds/ with its request parameters and result shapes: nothing else names a kind.
    """

    kind: str = ""             # the catalogue's `kind:` this class serves
    accepts_tensor = False     # preprocess_tensor exists: the engine may hand it torchvision.io-decoded JPEGs
    spec: ServiceSpec
    settings: Settings
    labels: list[str]
    version: str = ""          # set by load(): the model's version (replies carry it)

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
        return self

    @property
    def loaded(self) -> bool:
        """Whether load() has run (it sets the version)."""
        return bool(self.version)

    def preprocess(self, image: Image.Image) -> Any:
        """One decoded RGB image -> the item infer takes (deterministic; runs in a decode thread)."""
        raise NotImplementedError(f"kind {self.kind!r} has no preprocess")

    def preprocess_tensor(self, image: torch.Tensor) -> Any:
        """The same for a uint8 [3, H, W] tensor (only called when accepts_tensor)."""
        raise NotImplementedError(f"kind {self.kind!r} takes Pillow images only")

    def collate(self, items: Sequence[Any]) -> Any:
        """Preprocessed items -> infer's batch: stacked when they are tensors, else the list."""
        items = list(items)
        return torch.stack(items) if items and all(isinstance(i, torch.Tensor) for i in items) else items

    def infer(self, batch: Any) -> Any:
        """The model's output for a batch (rows in item order; the engine holds torch.inference_mode())."""
        raise NotImplementedError(f"kind {self.kind!r} has no infer")

    def postprocess(self, output: Any, top_ks: Sequence[int], params: Sequence[dict | None]) -> list:
        """infer's output -> per item its result list (at most its top_k), or the ItemError that fails it."""
        raise NotImplementedError(f"kind {self.kind!r} has no postprocess")

    def select(self, output: Any, rows: Sequence[int]) -> Any:
        """The rows of infer's output for some items (a tensor's rows, or a list's entries)."""
        if isinstance(output, torch.Tensor):
            return output[list(rows)]
        return [output[i] for i in rows]

    def run_batch(self, items: Sequence[Any], top_ks: Sequence[int], params: Sequence[dict | None],
                  answerers: Sequence["Handler"] | None = None) -> list:
        """collate, one infer, postprocess: per item its results (or an ItemError that fails it alone).

        answerers: per item the handler that answers it (a service derived from this model); None: this one."""
        return self.answer(self.infer(self.collate(items)), top_ks, params, answerers)

    def answer(self, output: Any, top_ks: Sequence[int], params: Sequence[dict | None],
               answerers: Sequence["Handler"] | None = None) -> list:
        """postprocess infer's output, each item by its answerer (the rows of one answerer go together)."""
        top_ks, params = list(top_ks), list(params)
        if answerers is None or all(a is self for a in answerers):
            return self.postprocess(output, top_ks, params)
        groups: dict[int, tuple[Handler, list[int]]] = {}
        for i, a in enumerate(answerers):
            groups.setdefault(id(a), (a, []))[1].append(i)
        results: list = [None] * len(top_ks)
        for a, rows in groups.values():
            for i, r in zip(rows, a.postprocess(self.select(output, rows), [top_ks[i] for i in rows],
                                                [params[i] for i in rows])):
                results[i] = r
        return results

    def handle(self, images: Sequence[Image.Image], top_ks: Sequence[int] | None = None,
               params: Sequence[dict | None] | None = None) -> list:
        """The whole pipeline for decoded images, in order: load (once), preprocess, infer, postprocess."""
        if not self.loaded:
            self.load()
        top_ks = list(top_ks) if top_ks is not None else [self.spec.top_k] * len(images)
        params = list(params) if params is not None else [None] * len(images)
        items = [self.preprocess(im) for im in images]
        with torch.inference_mode():
            return self.run_batch(items, top_ks, params)

    @property
    def forward_owner(self) -> "Handler":
        """The handler whose forward pass answers this service (a derived service's: its parent's)."""
        return self

    def close(self) -> None:
        """Release the model."""

    @property
    def model_info(self) -> dict:
        """{"name", "version"} for replies."""
        return {"name": f"{self.spec.name}/{self.spec.architecture}", "version": self.version}
