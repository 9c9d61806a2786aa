"""Model conversion: ONNX export with a dynamic batch axis, TensorRT engine build from the ONNX file."""
from __future__ import annotations

import logging
import os
import warnings

import torch

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(model: torch.nn.Module, path: str, crop: int = 224, opset: int = 17) -> str:
    """Write model to path as ONNX (input [batch, 3, crop, crop] -> logits [batch, C]); returns path."""
    if opset < 17:
        raise ValueError("opset must be >= 17")
    model = model.eval().cpu()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    example = torch.randn(2, 3, crop, crop)
    tmp = f"{path}.{os.getpid()}.part"   # two processes exporting the same file never write one .part
    with warnings.catch_warnings():
        # The TorchScript exporter needs no extra packages (the dynamo one needs onnxscript); it warns it is legacy.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), tmp, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    os.replace(tmp, path)
    log.info("exported ONNX %s (opset %d)", path, opset)
    return path


def build_tensorrt_engine(onnx_path: str, path: str, crop: int = 224, max_batch: int = 64,
                          opt_batch: int | None = None, fp16: bool = True) -> str:
    """Build a serialised TensorRT engine from an ONNX file (dynamic batch 1..max_batch); returns path."""
    from worker.models.backends.tensorrt_backend import require_tensorrt
    trt = require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT >= 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as fh:
        if not parser.parse(fh.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = opt_batch or max(1, max_batch // 2)
    profile.set_shape(INPUT_NAME, (1, 3, crop, crop), (opt, 3, crop, crop), (max_batch, 3, crop, crop))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    with open(path, "wb") as fh:
        fh.write(serialized)
    log.info("built TensorRT engine %s (fp16=%s, batch 1..%d)", path, fp16, max_batch)
    return path
