"""Schemathesis hooks (SCHEMATHESIS_HOOKS): values of the document's formats that JSON Schema cannot generate.

An image is a real photo (scikit-image), a batch location is the stack's own batch folder, a deadline is in
the future: the document says what the server accepts, and these are instances of it."""
from __future__ import annotations

import base64
import io
import os
import time
from datetime import datetime, timezone

import schemathesis
from hypothesis import strategies as st
from PIL import Image
from schemathesis.specs.openapi.formats import Binary
from skimage import data as photos

PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera")


def _small(name: str, fmt: str) -> bytes:
    img = Image.fromarray(getattr(photos, name)())
    img.thumbnail((96, 96))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


IMAGES = [_small(name, fmt) for name in PHOTOS for fmt in ("JPEG", "PNG")]
FOLDER = f"s3://{os.environ['CC_SCHEMATHESIS_BUCKET']}/batch-io/anonymous/"
NOW = int(time.time())

schemathesis.openapi.format("binary", st.sampled_from(IMAGES).map(Binary))
schemathesis.openapi.format("byte", st.sampled_from(IMAGES).map(lambda b: base64.b64encode(b).decode()))
schemathesis.openapi.format("s3-location", st.from_regex(r"\A[a-z0-9]{1,12}(/[a-z0-9_-]{1,12}){0,2}/?\Z")
                            .map(FOLDER.__add__))
schemathesis.openapi.format("future-epoch-seconds", st.integers(NOW + 3600, NOW + 30 * 86400))
schemathesis.openapi.format("future-date-time", st.integers(NOW + 3600, NOW + 30 * 86400).map(
    lambda t: datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")))


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    """An OIP inference input's shape [N] (or [N, 1]) states how many images its data holds; JSON Schema
    cannot tie the two, so a generated N is set to the data's length. Only where both are already valid
    (N in 1..16, 1..16 items): a case that breaks the schema still breaks it."""
    body = case.body
    if not (case.operation.path.startswith("/v2/") and isinstance(body, dict)
            and isinstance(body.get("inputs"), list)):
        return
    for tensor in body["inputs"]:
        shape, data = (tensor.get("shape"), tensor.get("data")) if isinstance(tensor, dict) else (None, None)
        if not (isinstance(shape, list) and isinstance(data, list) and 1 <= len(data) <= 16 and 1 <= len(shape) <= 2):
            continue
        if all(type(d) in (int, float) and float(d).is_integer() for d in shape) and 1 <= shape[0] <= 16 \
                and shape[1:] in ([], [1]):
            shape[0] = len(data)
