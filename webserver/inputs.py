"""Parse and check what a client sent: an image (URL or bytes), a service name and top_k."""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from flask import Request, current_app

from shared.images import ALLOWED_TEXT, refused_format
from webserver.errors import ApiError

# An image URL, as the OpenAPI document states it (webserver/docs.py copies this pattern): http(s), an optional
# user:password@ (accepted as before; every log redacts it), a host name or IPv4 address (not an IPv6 literal),
# a port in 1-65535, then printable ASCII (others percent-encoded).
IMAGE_URL_PATTERN = (r"^[Hh][Tt][Tt][Pp][Ss]?://([A-Za-z0-9._~%!$&'()*+,;=:-]+@)?"
                     r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?"
                     r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
                     r"([/?#][!-~]*)?$")
_IMAGE_URL = re.compile(IMAGE_URL_PATTERN)
_DATA_URI = re.compile(r"^data:[\w.+/-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
_WS = re.compile(r"\s+")
# What decode_base64 takes, as the OpenAPI document states it (webserver/docs.py copies it; a test holds the
# two together): an optional data: URI prefix, then base64 that decodes to at least one byte, whitespace
# anywhere, padding optional (after 2 characters at most "==", after 3 at most "=", after a full group any).
_B64 = r"[A-Za-z0-9+/]\s*"
BASE64_PATTERN = (r"^\s*(?:[Dd][Aa][Tt][Aa]:[\w.+/-]*(?:;[\w=.+-]+)*;[Bb][Aa][Ss][Ee]64,)?\s*"
                  rf"(?:(?:{_B64}){{4}})*(?:(?:{_B64}){{4}}(?:=\s*)*|(?:{_B64}){{2}}(?:=\s*){{0,2}}|(?:{_B64}){{3}}(?:=\s*)?)$")
MAX_URL_LENGTH = 2048


@dataclass
class ImageInput:
    """Either a URL for the worker to fetch, or bytes the client sent."""

    url: str | None = None
    data: bytes | None = None

    @property
    def kind(self) -> str:
        """'url' or 'bytes'."""
        return "url" if self.url is not None else "bytes"

    def release(self) -> None:
        """Drop the bytes once they are stored (the request may wait minutes for its reply)."""
        self.data = None


def check_image_bytes(data: bytes) -> bytes:
    """Refuse formats the workers will not decode (EPS, PSD, TIFF, ...) by their magic bytes: 415."""
    other = refused_format(data)
    if other:
        raise ApiError(415, "unsupported_format", f"{other} images are not accepted; send {ALLOWED_TEXT}")
    return data


@dataclass(frozen=True)
class ClassifyInput:
    """A parsed classification request; service is None when the client named none."""

    image: ImageInput
    service: str | None
    top_k: int | None


def check_url(url: object) -> str:
    """Cheap syntactic checks only (scheme, host); the worker does the network-level ones."""
    if not isinstance(url, str) or not url.strip():
        raise ApiError(400, "invalid_url", "url must be a non-empty string")
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise ApiError(400, "invalid_url", f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
    except ValueError as exc:
        raise ApiError(400, "invalid_url", f"url is not valid: {exc}") from None
    if not parts.scheme:
        raise ApiError(400, "invalid_url", "url has no scheme; use http:// or https://")
    if parts.scheme.lower() not in ("http", "https"):
        raise ApiError(400, "unsupported_scheme", f"url scheme {parts.scheme!r} is not supported; use http or https")
    if not parts.hostname:
        raise ApiError(400, "invalid_url", "url has no host")
    if port == 0:
        raise ApiError(400, "invalid_url", "url port 0 is not valid")
    if not _IMAGE_URL.match(url):
        raise ApiError(400, "invalid_url", "url must be http(s)://host[:port][/path] in printable ASCII "
                                           "(percent-encode other characters)")
    return url


def _host_port(netloc_host: str, scheme: str) -> tuple[str, int]:
    parts = urlsplit(f"{scheme}://{netloc_host}")
    return (parts.hostname or "").rstrip(".").lower(), parts.port or (443 if scheme == "https" else 80)


def refuse_self(url: str, req: Request) -> str:
    """A URL naming this service itself would loop requests back in (the worker refuses it too): 400."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host, port = _host_port(parts.netloc.rsplit("@", 1)[-1], scheme)
    names: set[str] = set()
    ctx = current_app.extensions.get("classifycloud")
    if ctx is not None:
        names = {_host_port(h, "http")[0] for h in (*ctx.settings.own_hosts, *ctx.settings.trusted_hosts)}
    if host in names or (host, port) == _host_port(req.host, req.scheme):
        raise ApiError(400, "forbidden_address", "the image URL points at this service itself")
    return url


def decode_base64(text: object) -> bytes:
    """Bytes from base64 text, optionally a data: URI; strict alphabet, padding tolerated if missing."""
    if not isinstance(text, str) or not text.strip():
        raise ApiError(400, "invalid_base64", "image_base64 must be a non-empty base64 string")
    body = _DATA_URI.sub("", text.strip(), count=1)
    body = _WS.sub("", body)
    body += "=" * (-len(body) % 4)
    try:
        data = base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(400, "invalid_base64", f"image is not valid base64: {exc}") from None
    if not data:
        raise ApiError(400, "invalid_base64", "image_base64 decodes to no bytes")
    return check_image_bytes(data)


def parse_top_k(value: object) -> int | None:
    """top_k as an int in 1..100 (None when absent); strings from query/form are parsed."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ApiError(400, "invalid_top_k", "top_k must be an integer in 1..100")
    if isinstance(value, float) and value.is_integer():
        value = int(value)   # 5.0 is an integer in JSON (and in the OpenAPI document's JSON Schema)
    if isinstance(value, str):
        try:
            value = int(value.strip(), 10)
        except ValueError:
            raise ApiError(400, "invalid_top_k", "top_k must be an integer in 1..100") from None
    if not isinstance(value, int) or not 1 <= value <= 100:
        raise ApiError(400, "invalid_top_k", "top_k must be an integer in 1..100")
    return value


def parse_service(value: object) -> str | None:
    """The service name, or None when absent; it is checked against the catalogue later."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_service", "service must be a string")
    return value.strip()


def _upload(req: Request, field: str = "image") -> bytes:
    f = req.files[field]
    data = f.read()
    if not data:
        raise ApiError(400, "empty_image", "the uploaded image file is empty")
    return check_image_bytes(data)


def _merged(name: str, query: object, body: object, parse):
    """A parameter from the query string or the body; both given and different is a 400, never a silent pick."""
    q, b = parse(query), parse(body)
    if q is not None and b is not None and q != b:
        raise ApiError(400, "conflicting_parameter",
                       f"{name} is {q!r} in the query string but {b!r} in the body; give one, or the same")
    return q if q is not None else b


def _with_query(req: Request, image: ImageInput, service: object, top_k: object) -> ClassifyInput:
    """service and top_k from the body, or from the query string on any method (a conflict is refused)."""
    return ClassifyInput(image, _merged("service", req.args.get("service"), service, parse_service),
                         _merged("top_k", req.args.get("top_k"), top_k, parse_top_k))


def classify_input_with(req: Request, image: ImageInput, service: object, top_k: object) -> ClassifyInput:
    """A ClassifyInput for an image found elsewhere (POST /jobs's input_location), service and top_k as usual."""
    return _with_query(req, image, service, top_k)


def parse_json_body(req: Request) -> object:
    """The JSON body, or None when it does not parse (too deeply nested included)."""
    try:
        return req.get_json(silent=True)
    except RecursionError:  # the C decoder's depth guard; a client's problem, not a 500
        raise ApiError(400, "malformed_json", "request body JSON is nested too deeply") from None


def refuse_repeated(req: Request, fields: tuple[str, ...]) -> None:
    """400 for a form field given more than once: which one counts would be a guess (the OpenAPI document
    says each field once)."""
    for name in fields:
        if len(req.form.getlist(name)) + len(req.files.getlist(name)) > 1:
            raise ApiError(400, "bad_request", f"form field {name!r} is given more than once")


def parse_classify(req: Request) -> ClassifyInput:
    """One of: GET ?url=; POST JSON {url | image_base64}; POST multipart field image (+ service, top_k)."""
    if req.method == "GET":
        args = req.args
        if not args.get("url"):
            raise ApiError(400, "missing_image", "give ?url=<http(s) image URL>")
        return ClassifyInput(ImageInput(url=refuse_self(check_url(args.get("url")), req)),
                             parse_service(args.get("service")), parse_top_k(args.get("top_k")))
    if req.is_json:
        doc = parse_json_body(req)
        if doc is None:
            raise ApiError(400, "malformed_json", "request body is not valid JSON")
        if not isinstance(doc, dict):
            raise ApiError(400, "malformed_json", "request body must be a JSON object")
        has_url, has_b64 = doc.get("url") is not None, doc.get("image_base64") is not None
        if has_url and has_b64:
            raise ApiError(400, "ambiguous_image", "give either url or image_base64, not both")
        if has_url:
            image = ImageInput(url=refuse_self(check_url(doc["url"]), req))
        elif has_b64:
            image = ImageInput(data=decode_base64(doc["image_base64"]))
        else:
            raise ApiError(400, "missing_image", "JSON body needs url or image_base64")
        return _with_query(req, image, doc.get("service"), doc.get("top_k"))
    form = req.form  # multipart or urlencoded; reading it enforces the body limits
    refuse_repeated(req, ("image", "url", "image_base64", "service", "top_k", "ttl_s"))
    if "image" in req.files and form.get("url"):
        check_url(form.get("url"))   # the file is used, but a malformed field is refused, not ignored
    if "image" in req.files:
        image = ImageInput(data=_upload(req))
    elif form.get("url"):
        image = ImageInput(url=refuse_self(check_url(form.get("url")), req))
    elif form.get("image_base64"):
        image = ImageInput(data=decode_base64(form.get("image_base64")))
    else:
        raise ApiError(400, "missing_image",
                       "send JSON {url | image_base64}, or multipart with a file field 'image'")
    return _with_query(req, image, form.get("service"), form.get("top_k"))


# XCloud's own POST parameters (its paper's API table): imgraw = the file, imgurl = a URL. Ours: image.
XCLOUD_FIELDS = ("image", "imgraw", "imgurl")


def parse_xcloud_image(req: Request) -> ImageInput:
    """One of XCloud's imgraw (file) / imgurl (URL), or our image (file, http(s) URL or base64)."""
    refuse_repeated(req, XCLOUD_FIELDS + ("top_k",))
    given = [f for f in XCLOUD_FIELDS if f in req.files or (req.form.get(f) or "").strip()]
    if not given:
        raise ApiError(400, "missing_image",
                       "form field 'image' (file, URL or base64), 'imgraw' (file) or 'imgurl' (URL) is required")
    if len(given) > 1:
        raise ApiError(400, "ambiguous_image", f"give one image, not {' and '.join(given)}")
    field = given[0]
    if field in req.files:
        return ImageInput(data=_upload(req, field))
    value = req.form[field].strip()
    if field == "imgurl":
        return ImageInput(url=refuse_self(check_url(value), req))
    if field == "imgraw" or not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        return ImageInput(data=decode_base64(value))  # XCloud clients may post imgraw as base64 text
    return ImageInput(url=refuse_self(check_url(value), req))
