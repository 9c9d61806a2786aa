"""`backend: auto`: load each candidate backend, time it on real photos, serve with the fastest that agrees."""
from __future__ import annotations

import copy
import dataclasses
import logging
import os
import statistics
import time
from importlib import resources
from typing import Callable

import torch
from PIL import Image

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.backends.base import Backend, BackendBase, BackendUnavailable
from worker.models.loader import WeightsError, weights_cache_dir

log = logging.getLogger(__name__)

PROBE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket")
AGREE_ATOL = 2e-2  # probabilities; fp16 engines (TensorRT) differ from fp32 torch by about 1e-3


def candidate_names(device: torch.device) -> list[str]:
    """torch and ONNX Runtime everywhere; on CUDA also torch.compile and TensorRT (skipped when absent)."""
    names = ["torch", "onnx"]
    if device.type == "cuda":
        names += ["torch-compile", "tensorrt"]
    return names


def probe_paths(settings: Settings) -> list[str]:
    """The photos the candidates are timed on: settings.backend_probe_images, else the bundled samples."""
    if settings.backend_probe_images:
        return list(settings.backend_probe_images)
    # The sample photos ship as package data (classifycloud/samples): read as files, no code imported from there.
    root = resources.files("classifycloud").joinpath("samples")
    return [str(root.joinpath(f"{name}.jpg")) for name in PROBE_PHOTOS]


class AutoBackend(BackendBase):
    """Loads the candidates in turn, keeps the fastest one whose answers match torch's, closes the rest."""

    name = "auto"

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device,
                 preprocess: Callable[[Image.Image], torch.Tensor]):
        super().__init__(spec, settings, device)
        self.preprocess = preprocess
        self.chosen: Backend | None = None
        self.choice: dict = {}     # {"chosen", "candidates": {name: {"ms": {...}} | {"skipped": reason}}, "load_s"}

    # --- Backend protocol: everything after load() is the chosen backend's --------------------
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The chosen backend's probabilities."""
        assert self.chosen is not None, "load() first"
        return self.chosen.forward(batch)

    def close(self) -> None:
        """Release the chosen backend."""
        if self.chosen is not None:
            self.chosen.close()

    @property
    def model(self):
        """The torch module when torch won (the handler's `model` property reads it)."""
        return getattr(self.chosen, "model", None)

    def load(self) -> "AutoBackend":
        """Measure every candidate; WeightsError only when none loads (the reasons are in the message)."""
        started = time.perf_counter()
        probe = self._probe_batch()
        sizes = sorted({1, max(1, min(8, self.settings.max_batch_size))})
        loaded: dict[str, Backend] = {}
        report: dict[str, dict] = {}
        reference: torch.Tensor | None = None
        for name in candidate_names(self.device):
            try:
                backend = self._load_candidate(name, loaded)
                probs = backend.forward(probe[: len(probe)])
                if reference is None:
                    reference = probs       # torch (eager) is first: the others must agree with it
                else:
                    self._check_agreement(name, probs, reference)
                report[name] = {"ms": self._time(backend, probe, sizes)}
                loaded[name] = backend
            except Exception as exc:  # a candidate that cannot load, export or agree is skipped, not fatal
                reason = str(exc) if isinstance(exc, (WeightsError, OSError)) else f"{type(exc).__name__}: {exc}"
                report[name] = {"skipped": reason[:500]}
                level = logging.INFO if isinstance(exc, BackendUnavailable) else logging.WARNING
                log.log(level, "service %s: backend %s skipped: %s", self.spec.name, name, reason)
        if not loaded:
            raise WeightsError(f"service {self.spec.name!r}: no backend loaded: "
                               + "; ".join(f"{n}: {r.get('skipped')}" for n, r in report.items()))
        best = min(loaded, key=lambda n: sum(report[n]["ms"].values()))
        for name, backend in loaded.items():
            if name != best:
                backend.close()
        self.chosen = loaded[best]
        self.name = self.chosen.name
        self.device = self.chosen.device
        self.version = self.chosen.version
        self.choice = {"chosen": best, "candidates": report, "load_s": round(time.perf_counter() - started, 2)}
        log.info("service %s: backend auto chose %s (%s) in %.1f s", self.spec.name, best,
                 ", ".join(f"{n} {self._summary(r)}" for n, r in report.items()), self.choice["load_s"])
        return self

    # --- candidates -------------------------------------------------------------------------
    def _load_candidate(self, name: str, loaded: dict[str, Backend]) -> Backend:
        from worker.models.backends.onnx_backend import OnnxBackend
        from worker.models.backends.torch_backend import TorchBackend
        if name == "torch":
            return TorchBackend(self._spec("torch"), self.settings.replace(compile_mode=""), self.device).load()
        if name == "torch-compile":
            return TorchBackend(self._spec("torch"), self.settings.replace(compile_mode="default"),
                                self.device).load()
        if name == "onnx":
            artefact = self.spec.artefact or self._export(loaded)
            return OnnxBackend(self._spec("onnx", artefact), self.settings, self.device).load()
        if name == "tensorrt":
            from worker.models.backends.tensorrt_backend import TensorRTBackend, require_tensorrt
            require_tensorrt()
            onnx = self.spec.artefact or self._export(loaded)
            engine = os.path.splitext(onnx)[0] + ".plan"
            if not os.path.exists(engine):
                from worker.models.export import build_tensorrt_engine
                build_tensorrt_engine(onnx, engine, crop=self.spec.preprocess.crop,
                                      max_batch=max(1, self.settings.max_batch_size))
            return TensorRTBackend(self._spec("tensorrt", engine), self.settings, self.device).load()
        raise ValueError(f"unknown candidate backend {name!r}")

    def _spec(self, backend: str, artefact: str | None = None) -> ServiceSpec:
        # an artefact made here is not the file the catalogue's sha256 pins (that pins the weights)
        if backend == "torch":
            return dataclasses.replace(self.spec, backend="torch", artefact=None)
        return dataclasses.replace(self.spec, backend=backend, artefact=artefact, sha256=None)

    def _export(self, loaded: dict[str, Backend]) -> str:
        """The torch model as ONNX, cached by weights version under settings.backend_export_dir."""
        torch_backend = loaded.get("torch")
        if torch_backend is None:
            raise WeightsError("no ONNX artefact configured and the torch model (to export from) did not load")
        out_dir = self.settings.backend_export_dir or os.path.join(weights_cache_dir(self.settings), "exports")
        path = os.path.join(out_dir, f"{self.spec.name}-{torch_backend.version or 'unversioned'}.onnx")
        if os.path.exists(path):
            return path
        from worker.models.export import export_onnx
        # export a copy: export_onnx moves its model to the CPU, and the torch candidate may be on a GPU
        model = copy.deepcopy(torch_backend.model).float()
        return export_onnx(model, path, crop=self.spec.preprocess.crop)

    # --- measuring --------------------------------------------------------------------------
    def _probe_batch(self) -> torch.Tensor:
        images = []
        for path in probe_paths(self.settings):
            with Image.open(path) as img:
                images.append(self.preprocess(img.convert("RGB")))
        if not images:
            raise WeightsError(f"service {self.spec.name!r}: backend auto has no probe photos")
        return torch.stack(images)

    def _time(self, backend: Backend, probe: torch.Tensor, sizes: list[int]) -> dict[str, float]:
        """Median ms of a forward per batch size, over backend_probe_repeats runs after one warm-up (fewer
        once the candidate's timed runs pass backend_probe_budget_s: a slow candidate need not be timed long)."""
        out = {}
        spent = 0.0
        for n in sizes:
            batch = probe[torch.arange(n) % len(probe)]   # real photos, repeated to fill the batch
            backend.forward(batch)
            runs = []
            for _ in range(max(1, self.settings.backend_probe_repeats)):
                t0 = time.perf_counter()
                backend.forward(batch)
                runs.append((time.perf_counter() - t0) * 1000)
                spent += runs[-1] / 1000
                if spent > self.settings.backend_probe_budget_s:
                    break
            out[f"batch{n}"] = round(statistics.median(runs), 2)
        return out

    def _check_agreement(self, name: str, probs: torch.Tensor, reference: torch.Tensor) -> None:
        same_top1 = probs.argmax(-1).tolist() == reference.argmax(-1).tolist()
        diff = float((probs - reference).abs().max())
        if not same_top1 or diff > AGREE_ATOL:
            raise WeightsError(f"{name} disagrees with torch on the probe photos (top-1 "
                               f"{probs.argmax(-1).tolist()} vs {reference.argmax(-1).tolist()}, max diff {diff:.3g})")

    @staticmethod
    def _summary(r: dict) -> str:
        if "skipped" in r:
            return "skipped"
        return "/".join(f"{v:.1f}" for v in r["ms"].values()) + " ms"
