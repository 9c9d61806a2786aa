"""Open Inference Protocol tensors: parse an inference request (JSON or Triton's binary extension), write the answer.

The protocol (KServe v2 / Triton HTTP): a JSON header {id, parameters, inputs, outputs}; with the header
Inference-Header-Content-Length the JSON is followed by the inputs' raw bytes, in input order, each input
saying its size in parameters.binary_data_size. BYTES elements in binary are a 4-byte little-endian length
and the bytes; FP32 and INT64 are little-endian arrays. docs/API.md describes what this server takes.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from webserver.errors import ApiError
from webserver.inputs import ImageInput, check_image_bytes, decode_base64

HEADER = "Inference-Header-Content-Length"
IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"     # BYTES [N] encoded images | FP32 [N,3,H,W] preprocessed
OUTPUTS = {"labels": "BYTES", "scores": "FP32", "indices": "INT64"}
MAX_ITEMS = 16        # images in one call: each is one queued request (the body limit bounds their bytes too)
MAX_TOP_K = 100       # as top_k everywhere (shared/messages.py)
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}


def bad(message: str, code: str = "invalid_tensor") -> ApiError:
    """A 400 for a request the protocol (or this server's model) does not allow."""
    return ApiError(400, code, message)


@dataclass(frozen=True)
class Output:
    """One requested output: its name, binary or JSON data, and the classification extension's k (0: off)."""

    name: str
    binary: bool
    classification: int = 0


@dataclass
class InferRequest:
    """A parsed inference request: the images (or pixels) it carries, the outputs it asks for, and top_k."""

    id: str | None
    outputs: list[Output]
    top_k: int | None
    images: list[ImageInput] = field(default_factory=list)
    pixels: np.ndarray | None = None      # FP32 [N, 3, H, W] when the input is PIXELS_INPUT

    @property
    def count(self) -> int:
        """How many images the request classifies."""
        return len(self.pixels) if self.pixels is not None else len(self.images)


def integer(value: object) -> int | None:
    """An integer of JSON (5 or 5.0, as JSON Schema's integer), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _int_param(params: dict, key: str, low: int, high: int) -> int | None:
    if params.get(key) is None:
        return None
    value = integer(params[key])
    if value is None or not low <= value <= high:
        raise bad(f"parameter {key!r} must be an integer in {low}..{high}")
    return value


def _bool_param(params: dict, key: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad(f"parameter {key!r} must be true or false")
    return value


def _params(obj: dict, where: str) -> dict:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise bad(f"{where}: parameters must be an object")
    return params


def split_body(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON header as an object, and the binary data after it (empty without the extension)."""
    if header_length is None:
        head, rest = body, b""
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise bad(f"{HEADER} must be a byte count", "bad_request") from None
        if not 0 < size <= len(body):
            raise bad(f"{HEADER} is {size} but the body has {len(body)} bytes", "bad_request")
        head, rest = body[:size], body[size:]
    try:
        doc = json.loads(head)
    except (ValueError, RecursionError):
        raise bad("the inference request header is not valid JSON", "malformed_json") from None
    if not isinstance(doc, dict):
        raise bad("the inference request must be a JSON object", "malformed_json")
    return doc, rest


def parse_infer(body: bytes, header_length: str | None) -> InferRequest:
    """Check an inference request and take its one input: BYTES images, or FP32 pixels."""
    doc, binary = split_body(body, header_length)
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise bad("id must be a string")
    params = _params(doc, "the request")
    top_k = _int_param(params, "top_k", 1, MAX_TOP_K)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad(f"inputs must hold one tensor: {IMAGE_INPUT!r} (BYTES [N], encoded images) or "
                  f"{PIXELS_INPUT!r} (FP32 [N,3,H,W])", "missing_image")
    req = InferRequest(rid, _outputs(doc.get("outputs"), _bool_param(params, "binary_data_output")), top_k)
    tensor = inputs[0]
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    shape = [integer(d) for d in shape] if isinstance(shape, list) else []
    if not shape or not all(d is not None and d >= 0 for d in shape):
        raise bad("input shape must be a list of non-negative integers")
    raw = _raw_data(tensor, binary)
    if name == IMAGE_INPUT:
        if datatype != "BYTES":
            raise bad(f"input {IMAGE_INPUT!r} is BYTES (encoded images), not {datatype!r}")
        if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
            raise bad(f"input {IMAGE_INPUT!r} has shape [N] (or [N,1]), not {shape}")
        req.images = _images(tensor, raw, _count(shape))
    elif name == PIXELS_INPUT:
        if datatype != "FP32":
            raise bad(f"input {PIXELS_INPUT!r} is FP32, not {datatype!r}")
        if len(shape) != 4 or shape[1] != 3:
            raise bad(f"input {PIXELS_INPUT!r} has shape [N,3,H,W], not {shape}")
        _count([shape[0]])
        req.pixels = _floats(tensor, raw, shape)
    else:
        raise bad(f"unknown input {name!r}: give {IMAGE_INPUT!r} (BYTES) or {PIXELS_INPUT!r} (FP32)")
    return req


def _count(shape: list[int]) -> int:
    n = math.prod(shape)
    if not 1 <= n <= MAX_ITEMS:
        raise bad(f"an inference request classifies 1 to {MAX_ITEMS} images, not {n}")
    return n


def _raw_data(tensor: dict, binary: bytes) -> bytes | None:
    """The input's bytes from the binary part (binary_data_size), or None when its data is in the JSON."""
    given = _params(tensor, "the input").get("binary_data_size")
    if given is None:
        if binary:
            raise bad(f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size")
        return None
    size = integer(given)
    if size != len(binary):
        raise bad(f"binary_data_size is {given!r} but {len(binary)} bytes follow the JSON header")
    if "data" in tensor:
        raise bad("an input has either data or binary_data_size, not both")
    return binary


def _flat(data: object) -> list:
    """The data of a JSON tensor, row-major (nested lists are allowed by the protocol)."""
    if not isinstance(data, list):
        raise bad("input data must be a list")
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _images(tensor: dict, raw: bytes | None, n: int) -> list[ImageInput]:
    if raw is None:
        data = _flat(tensor.get("data"))
        if len(data) != n:
            raise bad(f"input {IMAGE_INPUT!r} has shape of {n} element(s) but {len(data)} in data")
        return [ImageInput(data=_element(i, lambda v=v: decode_base64(v))) for i, v in enumerate(data)]
    out, at = [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise bad("BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", raw, at)
        if at + 4 + size > len(raw):
            raise bad("a BYTES element is longer than the data that follows")
        element = raw[at + 4:at + 4 + size]
        at += 4 + size
        if not element:
            raise ApiError(400, "empty_image", f"input {IMAGE_INPUT!r} element {len(out)} is empty")
        out.append(ImageInput(data=_element(len(out), lambda e=element: check_image_bytes(e))))
    if len(out) != n:
        raise bad(f"input {IMAGE_INPUT!r} has shape of {n} element(s) but {len(out)} in its binary data")
    return out


def _element(index: int, check):
    """check() for one element; its error names the element."""
    try:
        return check()
    except ApiError as exc:
        exc.message = f"input {IMAGE_INPUT!r} element {index}: {exc.message}"
        raise


def _floats(tensor: dict, raw: bytes | None, shape: list[int]) -> np.ndarray:
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count * 4:
            raise bad(f"FP32 {shape} is {count * 4} bytes, not {len(raw)}")
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    data = _flat(tensor.get("data"))
    if len(data) != count or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data):
        raise bad(f"input {PIXELS_INPUT!r} needs {count} numbers for shape {shape}")
    return np.asarray(data, dtype=np.float32).reshape(shape)


def _outputs(spec: object, binary_default: bool) -> list[Output]:
    if spec is None:
        return [Output(name, binary_default) for name in OUTPUTS]
    if not isinstance(spec, list) or not spec:
        raise bad("outputs must be a non-empty list")
    out = []
    for item in spec:
        if not isinstance(item, dict) or item.get("name") not in OUTPUTS:
            raise bad(f"requested outputs are named {', '.join(OUTPUTS)}")
        params = _params(item, f"output {item['name']!r}")
        binary = params["binary_data"] if "binary_data" in params else binary_default
        if not isinstance(binary, bool):
            raise bad("binary_data must be true or false")
        out.append(Output(item["name"], binary, _int_param(params, "classification", 1, MAX_TOP_K) or 0))
    return out


def _rows(results: list[list[dict]], k: int) -> list[list[dict]]:
    """Each image's first k results, padded to one width (label '', index -1, score 0: an Unknown row is short)."""
    width = max(min(k, len(r)) for r in results)
    blank = {"label": "", "index": -1, "score": 0.0}
    return [r[:width] + [blank] * (width - len(r[:width])) for r in results]


def output_tensor(out: Output, results: list[list[dict]], top_k: int) -> tuple[dict, list]:
    """(tensor header, its values row-major) for one requested output."""
    rows = _rows(results, out.classification or top_k)
    shape = [len(rows), len(rows[0])]
    if out.classification:   # Triton's classification extension: "score:index:label", BYTES
        return {"name": out.name, "datatype": "BYTES", "shape": shape}, [
            f"{float(r['score']):f}:{r['index']}:{r['label']}" for row in rows for r in row]
    key = {"labels": "label", "scores": "score", "indices": "index"}[out.name]
    return {"name": out.name, "datatype": OUTPUTS[out.name], "shape": shape}, [r[key] for row in rows for r in row]


def _binary(datatype: str, values: list) -> bytes:
    if datatype == "BYTES":
        parts = [str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return np.asarray(values, dtype=_NUMPY[datatype]).tobytes()


def infer_response(head: dict, outputs: list[Output], results: list[list[dict]],
                   top_k: int) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary outputs follow it (None: all JSON)."""
    tensors, blobs = [], []
    for out in outputs:
        tensor, values = output_tensor(out, results, top_k)
        if out.binary:
            blob = _binary(tensor["datatype"], values)
            tensor["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            tensor["data"] = values
        tensors.append(tensor)
    text = json.dumps({**head, "outputs": tensors}, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
