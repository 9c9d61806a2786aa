"""ONNX Runtime backend: runs an exported artefact (dynamic batch axis); CUDA EP when present, else CPU."""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.backends.base import BackendBase, BackendUnavailable, softmax_probs
from worker.models.loader import WeightsError, fetch_to_local, verify_sha256

log = logging.getLogger(__name__)


class OnnxBackend(BackendBase):
    """One ONNX Runtime session per service; session.run is thread-safe, so no lock."""

    name = "onnx"

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device):
        super().__init__(spec, settings, device)
        self.session = None
        self.input_name = ""
        self.providers: list[str] = []

    def load(self) -> "OnnxBackend":
        """Open the artefact, check its input/output fit the catalogue entry, warm up."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(f"service {self.spec.name!r}: backend onnx needs the onnxruntime package "
                                     "(pip install classifycloud[onnx])") from None
        if not self.spec.artefact:
            raise WeightsError(f"artefact not configured for service {self.spec.name!r}")
        path = fetch_to_local(self.spec.artefact, self.settings)
        digest = verify_sha256(path, self.spec.sha256)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # ONNX Runtime's own default counts the machine's cores, not this process's: pinned to one core it ran
        # two spinning threads there, twice the CPU and 1.7x the wall time of one thread (docs/BENCHMARKS.md)
        opts.intra_op_num_threads = self.settings.onnx_threads or len(os.sched_getaffinity(0))
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise WeightsError(f"service {self.spec.name!r}: cannot open ONNX artefact {path}: {exc}") from None
        self.providers = self.session.get_providers()
        if "CUDAExecutionProvider" not in self.providers:
            self.device = torch.device("cpu")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        crop = self.spec.preprocess.crop
        shape = (crop, crop, 3) if self.spec.layout == "nhwc" else (3, crop, crop)
        if len(inp.shape) != 4 or any(isinstance(d, int) and d != want for d, want in zip(inp.shape[1:], shape)):
            raise WeightsError(f"service {self.spec.name!r}: artefact {path} takes input {inp.shape}, "
                               f"expected [N, {', '.join(map(str, shape))}] (layout {self.spec.layout})")
        self.version = digest[:12]
        self.forward(torch.zeros(1, *shape))  # warm-up; also checks the output width
        log.info("service %s: ONNX artefact %s on %s", self.spec.name, path, self.providers)
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, C] (float32, CPU) for a normalised float batch in the artefact's layout."""
        assert self.session is not None, "load() first"
        x = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: x})[:1]
        return softmax_probs(torch.from_numpy(logits), self.spec.num_classes, f"service {self.spec.name!r}",
                             self.spec.outputs)

    def close(self) -> None:
        """Release the session."""
        self.session = None
