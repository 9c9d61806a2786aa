"""FP32 pixels [N,3,H,W] from a client that preprocessed itself, carried to the worker as lossless PNGs.

The worker takes encoded images, not tensors. For a model whose preprocessing leaves an image of its input
size unchanged (resize to the crop size, or squash, then normalise), the pixels a client computes are
((p / 255) - mean) / std of 8-bit values p: those p are recovered exactly and sent as a PNG, which the
worker decodes and normalises back to the same tensor. Pixels that are not such values (another
normalisation, a resize the model does not do) cannot be carried exactly and are refused with the reason.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from shared.catalogue import ServiceSpec
from webserver.errors import ApiError

TOLERANCE = 0.01   # in 8-bit steps: float32 rounding of the client's normalisation is far below it


def pixel_size(spec: ServiceSpec) -> int | None:
    """The H = W a model takes FP32 pixels at, or None when its preprocessing would change such an image."""
    p = spec.preprocess
    if spec.kind != "classifier" or spec.backend == "keras" or (p.mode == "crop" and p.resize != p.crop):
        return None
    return p.crop


def pixels_to_png(pixels: np.ndarray, spec: ServiceSpec, model: str) -> list[bytes]:
    """One lossless PNG per image of the batch; 400 when the pixels cannot reach this model exactly."""
    size = pixel_size(spec)
    p = spec.preprocess
    if size is None:
        raise ApiError(400, "pixels_not_supported",
                       f"model {model!r} resizes images itself (shorter side to {p.resize}, centre crop "
                       f"{p.crop}); FP32 pixels cannot reach it exactly: send the encoded image as BYTES "
                       "input 'image'")
    n, _, h, w = pixels.shape
    if (h, w) != (size, size):
        raise ApiError(400, "invalid_tensor", f"model {model!r} takes pixels [N,3,{size},{size}], not "
                                              f"[{n},3,{h},{w}]")
    mean = np.asarray(p.mean, dtype=np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(p.std, dtype=np.float64).reshape(1, 3, 1, 1)
    with np.errstate(all="ignore"):
        values = (pixels.astype(np.float64) * std + mean) * 255.0
        steps = np.rint(values)
    if not np.isfinite(values).all() or np.abs(values - steps).max() > TOLERANCE \
            or steps.min() < 0 or steps.max() > 255:
        raise ApiError(400, "pixels_not_exact",
                       f"model {model!r} takes pixels as ((p / 255) - mean) / std of 8-bit RGB values p, with "
                       f"mean {list(p.mean)} and std {list(p.std)}; these pixels are not such values, and the "
                       "worker takes images, so they cannot be carried exactly: send the encoded image as BYTES")
    out = []
    for image in steps.astype(np.uint8):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0)), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out
