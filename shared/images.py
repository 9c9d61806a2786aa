"""The image formats the service accepts, by magic bytes and by Pillow's allow-listed decoders.

Only these decoders are reachable: Pillow can open dozens of formats (EPS calls Ghostscript,
PSD, ICNS, FITS, ...), each a parser a stranger's bytes would reach. Decode time and memory are
bounded by the pixel cap, checked from the header before any pixel is decoded.
"""
from __future__ import annotations

import io

# Pillow format names; docs/API.md lists the same set.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
ALLOWED_TEXT = "JPEG, PNG, WebP, GIF or BMP"

_ALLOWED_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
# Formats Pillow (or a browser) knows that we refuse by name, so the client hears "unsupported", not "broken".
_REFUSED_MAGIC = (
    (b"8BPS", "PSD"), (b"%!PS", "EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"), (b"%PDF", "PDF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"icns", "ICNS"), (b"SIMPLE  =", "FITS"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"DDS ", "DDS"), (b"qoif", "QOI"), (b"gimp xcf", "XCF"),
    (b"/* XPM */", "XPM"), (b"P4\n", "PBM"), (b"P5\n", "PGM"), (b"P6\n", "PPM"), (b"\x59\xa6\x6a\x95", "Sun raster"),
)


class ImageRefused(ValueError):
    """Bytes the service will not decode: `code` is unsupported_format, image_too_large or invalid_image."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def sniff(data: bytes) -> str | None:
    """The allowed format the magic bytes announce, else None."""
    head = bytes(data[:16])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    for magic, name in _ALLOWED_MAGIC:
        if head.startswith(magic):
            return name
    return None


def refused_format(data: bytes) -> str | None:
    """The name of a known image format we refuse, when the magic bytes announce one."""
    if sniff(data) is not None:
        return None
    head = bytes(data[:16])
    if head[:4] == b"RIFF" or head[4:8] == b"ftyp":  # RIFF that is not WebP; HEIF/AVIF (ISO BMFF)
        return "RIFF" if head[:4] == b"RIFF" else "HEIF/AVIF"
    for magic, name in _REFUSED_MAGIC:
        if head.startswith(magic):
            return name
    return None


def open_checked(data: bytes, max_pixels: int):
    """Pillow's lazy open restricted to the allowed formats, with the pixel cap checked from the header."""
    from PIL import Image, UnidentifiedImageError  # here: the web only sniffs bytes and never loads Pillow
    if not data:
        raise ImageRefused("invalid_image", "the image is empty")
    other = refused_format(data)
    if other:
        raise ImageRefused("unsupported_format", f"{other} images are not accepted; send {ALLOWED_TEXT}")
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError:
        raise ImageRefused("image_too_large", "image too large: past Pillow's decompression-bomb limit") from None
    except UnidentifiedImageError:
        raise ImageRefused("invalid_image", f"not a decodable image ({ALLOWED_TEXT} expected)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRefused("invalid_image", f"not a decodable image: {exc}") from None
    width, height = img.size
    limits = [n for n in (max_pixels, Image.MAX_IMAGE_PIXELS) if n]  # Pillow's global cap, if lower, too
    limit = min(limits) if limits else 0
    if limit and width * height > limit:
        img.close()
        raise ImageRefused("image_too_large", f"image too large: {width}x{height} pixels; the limit is {limit}")
    return img


class CheckedImage(bytes):
    """Image bytes whose header was already opened and checked (open_checked): the decoder takes the
    lazily opened image (`header`) instead of opening and checking the bytes a second time."""

    header = None   # the PIL image open_checked returned (lazy: no pixels decoded yet); taken once


def checked_image(data: bytes, max_pixels: int) -> CheckedImage:
    """The bytes as a CheckedImage, header opened and checked once; ImageRefused as open_checked."""
    out = CheckedImage(data)
    out.header = open_checked(out, max_pixels)
    return out


def take_header(data: bytes):
    """The already checked lazy image of CheckedImage bytes (once: a second caller opens again), else None."""
    header = getattr(data, "header", None)
    if header is not None:
        data.header = None
    return header
