"""TensorRT backend: a serialised engine (built by `classifycloud convert --to tensorrt`) run on CUDA tensors."""
from __future__ import annotations

import logging
import threading

import torch

from shared.catalogue import ServiceSpec
from shared.config import Settings
from worker.models.backends.base import BackendBase, BackendUnavailable, softmax_probs
from worker.models.loader import WeightsError, fetch_to_local, verify_sha256

log = logging.getLogger(__name__)


def require_tensorrt():
    """The tensorrt module; BackendUnavailable when the package or a CUDA device is missing."""
    if not torch.cuda.is_available():
        raise BackendUnavailable("backend tensorrt needs a CUDA GPU; none is visible on this machine")
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable("backend tensorrt needs the tensorrt package (pip install tensorrt) "
                                 "matching this machine's CUDA") from None
    return trt


class TensorRTBackend(BackendBase):
    """One TensorRT engine + execution context per service on one GPU; calls are serialised."""

    name = "tensorrt"

    def __init__(self, spec: ServiceSpec, settings: Settings, device: torch.device):
        super().__init__(spec, settings, device if device.type == "cuda" else torch.device("cuda"))
        self.engine = None
        self.context = None
        self._lock = threading.Lock()

    def load(self) -> "TensorRTBackend":
        """Deserialise the engine, find its input/output tensors, warm up."""
        trt = require_tensorrt()
        if not self.spec.artefact:
            raise WeightsError(f"artefact not configured for service {self.spec.name!r}")
        path = fetch_to_local(self.spec.artefact, self.settings)
        digest = verify_sha256(path, self.spec.sha256)
        logger = trt.Logger(trt.Logger.WARNING)
        with open(path, "rb") as fh:
            self.engine = trt.Runtime(logger).deserialize_cuda_engine(fh.read())
        if self.engine is None:
            raise WeightsError(f"service {self.spec.name!r}: {path} is not a TensorRT engine for this "
                               "GPU/TensorRT version (rebuild it with classifycloud convert --to tensorrt)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == mode.OUTPUT)
        self.context = self.engine.create_execution_context()
        self.version = digest[:12]
        crop = self.spec.preprocess.crop
        self.forward(torch.zeros(1, 3, crop, crop))
        log.info("service %s: TensorRT engine %s on %s", self.spec.name, path, self.device)
        return self

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, C] (float32, CPU) for a normalised float batch [N, 3, H, W]."""
        assert self.context is not None, "load() first"
        with self._lock, torch.inference_mode(), torch.cuda.device(self.device):
            x = batch.to(self.device, dtype=torch.float32, non_blocking=True).contiguous()
            self.context.set_input_shape(self.input_name, tuple(x.shape))
            out_shape = tuple(self.context.get_tensor_shape(self.output_name))
            out = torch.empty(out_shape, dtype=torch.float32, device=self.device)
            self.context.set_tensor_address(self.input_name, x.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            stream = torch.cuda.current_stream(self.device)
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError(f"service {self.spec.name!r}: TensorRT execution failed")
            stream.synchronize()
            return softmax_probs(out, self.spec.num_classes, f"service {self.spec.name!r}")

    def close(self) -> None:
        """Release the context and engine."""
        self.context = None
        self.engine = None
