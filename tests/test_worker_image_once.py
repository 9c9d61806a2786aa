"""A fetched image is opened and checked once: the engine decodes from the fetcher's header."""
from __future__ import annotations

import pytest
from PIL import Image

from shared.images import CheckedImage, ImageRefused, checked_image
from worker.models.engine import decode_image, decode_jpeg_tensor


@pytest.fixture
def opens(monkeypatch):
    """Counts PIL.Image.open calls (every header check and every decode goes through it)."""
    count = [0]
    real = Image.open

    def counting(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counting)
    return count


def test_a_checked_image_is_decoded_without_opening_it_again(opens, sample_bytes):
    data = checked_image(sample_bytes["coffee"], 40_000_000)
    assert isinstance(data, CheckedImage) and data == sample_bytes["coffee"] and opens[0] == 1
    img = decode_image(data)
    assert img.mode == "RGB" and img.size == Image.open(__import__("io").BytesIO(sample_bytes["coffee"])).size
    assert opens[0] == 2                       # the second open is this test's own size probe
    assert decode_jpeg_tensor(checked_image(sample_bytes["chelsea"], 40_000_000)).shape[0] == 3
    assert opens[0] == 3                       # the JPEG fast path skips its header check too


def test_plain_bytes_are_still_opened_and_checked_by_the_engine(opens, sample_bytes):
    decode_image(sample_bytes["coffee"])
    decode_jpeg_tensor(sample_bytes["coffee"])
    assert opens[0] == 2


def test_checking_refuses_what_the_engine_would_refuse():
    with pytest.raises(ImageRefused) as exc:
        checked_image(b"<html>not an image</html>", 40_000_000)
    assert exc.value.code in ("invalid_image", "unsupported_format")
