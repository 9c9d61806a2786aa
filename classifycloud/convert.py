"""`classifycloud convert`: export a service's model to ONNX or a TensorRT engine, print its catalogue entry."""
from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from shared.catalogue import CatalogueError, ServiceSpec, catalogue_for
from shared.config import Settings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog="classifycloud convert",
                                description="Export a service's trained model to ONNX or TensorRT.")
    p.add_argument("--service", required=True, help="catalogue service name")
    p.add_argument("--to", required=True, choices=("onnx", "tensorrt"), help="target format")
    p.add_argument("--out", help="output file (default: <model_dir or .>/<service>.onnx|.plan)")
    p.add_argument("--catalogue", help="catalogue YAML (default: CLASSIFYCLOUD_CATALOGUE or the packaged one)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--max-batch", type=int, default=64, help="TensorRT: largest batch the engine accepts")
    p.add_argument("--fp32", action="store_true", help="TensorRT: build in fp32 (default fp16)")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the artefact's output with the torch model's")
    return p


def load_torch_model(spec: ServiceSpec, settings: Settings):
    """The service's torch model with its configured weights, loaded strictly (never random weights)."""
    from worker.models import builders
    from worker.models.loader import WeightsError, fetch_to_local, load_strict, read_state_dict, verify_sha256
    if not spec.weights:
        raise WeightsError(f"weights not configured for service {spec.name!r}: nothing to convert")
    path = fetch_to_local(spec.weights, settings)
    verify_sha256(path, spec.sha256)
    model = builders.build(spec.architecture, spec.num_classes)
    state = read_state_dict(path, trusted_sha256=spec.sha256 if spec.trusted_pickle else None)
    load_strict(model, state, f"service {spec.name!r} weights {path}")
    return model.eval()


def original_entry(catalogue_path: str, service: str) -> dict:
    """The service's entry exactly as its catalogue YAML has it (every key, including ones this version ignores)."""
    with open(catalogue_path, encoding="utf-8") as fh:
        return dict(yaml.safe_load(fh)["services"][service])


def catalogue_snippet(entry: dict, service: str, backend: str, artefact: str, sha256: str | None = None) -> str:
    """The original catalogue entry serving the converted artefact: only backend, artefact and its sha256 pin change.

    Preprocessing (resize mode, interpolation), kind, layout, outputs, labels and their notes are the
    model's, not the format's: a converted service must answer as the original does.
    """
    converted = {**entry, "backend": backend, "artefact": os.path.abspath(artefact)}
    if sha256 is not None:
        converted["sha256"] = sha256      # the pin checks the file the backend loads: the artefact
    return yaml.safe_dump({"services": {service: converted}}, sort_keys=False, allow_unicode=True,
                          default_flow_style=None)


def check_onnx(model, onnx_path: str, crop: int) -> float:
    """Largest |softmax difference| between torch and ONNX Runtime on a random batch of 2."""
    import numpy as np
    import onnxruntime as ort
    import torch
    x = torch.randn(2, 3, crop, crop)
    with torch.inference_mode():
        ref = model(x).softmax(-1).numpy()
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    e = np.exp(out - out.max(-1, keepdims=True))
    return float(np.abs(e / e.sum(-1, keepdims=True) - ref).max())


def main(argv: list[str] | None = None) -> int:
    """Run the conversion; 0 on success, 2 on a usage/configuration error, 1 on a failed conversion."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if args.catalogue:
        settings = settings.replace(catalogue=args.catalogue)
    from worker.models.export import build_tensorrt_engine, export_onnx
    from worker.models.loader import WeightsError, sha256_of
    try:
        catalogue = catalogue_for(settings)
    except CatalogueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.service not in catalogue:
        print(f"error: unknown service {args.service!r}; catalogue has {catalogue.names()}", file=sys.stderr)
        return 2
    spec = catalogue[args.service]
    ext = ".onnx" if args.to == "onnx" else ".plan"
    out = args.out or os.path.join(settings.model_dir or ".", f"{spec.name}{ext}")
    crop = spec.preprocess.crop
    try:
        if args.to == "tensorrt":
            from worker.models.backends.tensorrt_backend import require_tensorrt
            require_tensorrt()  # fail before the export, not after
        model = load_torch_model(spec, settings)
        onnx_path = out if args.to == "onnx" else os.path.splitext(out)[0] + ".onnx"
        export_onnx(model, onnx_path, crop=crop, opset=args.opset)
        if not args.no_check:
            diff = check_onnx(model, onnx_path, crop)
            print(f"checked: max |p_onnx - p_torch| = {diff:.2e}", file=sys.stderr)
            if diff > 1e-3:
                print(f"error: ONNX output differs from torch by {diff:.2e} (> 1e-3)", file=sys.stderr)
                return 1
        if args.to == "tensorrt":
            build_tensorrt_engine(onnx_path, out, crop=crop, max_batch=args.max_batch, fp16=not args.fp32)
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, OSError) as exc:
        print(f"error: conversion failed: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out}", file=sys.stderr)
    print("# add to the catalogue (replaces the entry, or rename it to serve both):")
    entry = original_entry(catalogue.source, spec.name)
    print(catalogue_snippet(entry, spec.name, args.to, out, sha256_of(out)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
