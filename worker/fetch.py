"""Safe image fetch: strangers type these URLs, so every hop is resolved, checked and pinned."""
from __future__ import annotations

import io
import ipaddress
import logging
import socket
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from botocore.exceptions import ClientError
from PIL import Image, UnidentifiedImageError

from shared.aws import parse_s3_uri
from shared.config import Settings

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

try:  # requests ships certifi; fall back to the system store without it
    import certifi
    _CA_CERTS: str | None = certifi.where()
except ImportError:  # pragma: no cover
    _CA_CERTS = None


class FetchError(Exception):
    """A refused or failed image fetch; `code` goes into the error reply, the message is the reason."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Target:
    """One hop: the parsed URL and the checked address we will connect to."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str
    ip: str


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address hidden in an IPv4-mapped, 6to4 or NAT64 IPv6 address."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str, allow_loopback: bool = False) -> str | None:
    """Why an IP address may not be fetched from (None when it is a public address)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone id
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_v4(ip)
        if inner is not None:
            reason = address_refusal(str(inner), allow_loopback)
            return f"{reason} (embedded in {ip})" if reason else None
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    for attr, what in (("is_unspecified", "unspecified"), ("is_link_local", "link-local"),
                       ("is_multicast", "multicast"), ("is_private", "private"),
                       ("is_reserved", "reserved")):
        if getattr(ip, attr):
            return f"{ip} is a {what} address"
    if not ip.is_global:  # shared address space (100.64/10) and other non-routable ranges
        return f"{ip} is not a public address"
    return None


def resolve_checked(host: str, port: int, allow_loopback: bool) -> str:
    """Resolve host and check every address it resolves to; return the one to connect to."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise FetchError("fetch_failed", f"cannot resolve host {host!r}: {exc}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchError("fetch_failed", f"host {host!r} has no address")
    for addr in addresses:  # refuse if any answer is internal: a mixed answer is a rebinding trick
        reason = address_refusal(addr, allow_loopback)
        if reason:
            raise FetchError("forbidden_address", f"host {host!r} resolves to {reason}")
    return addresses[0]


def parse_target(url: str, allow_loopback: bool) -> Target:
    """Validate a URL, resolve and check its host."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("invalid_url", "the image URL is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise FetchError("invalid_url", f"invalid URL {url[:200]!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("unsupported_scheme", f"only http and https URLs can be fetched, not {scheme or 'none'!r}")
    if not host:
        raise FetchError("invalid_url", f"URL {url[:200]!r} has no host")
    port = port or (443 if scheme == "https" else 80)
    ip = resolve_checked(host, port, allow_loopback)
    shown = f"[{host}]" if ":" in host else host
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, shown if default else f"{shown}:{port}", ip)


class Fetcher:
    """Fetches request images from http(s) URLs (safely) and from S3, under one byte cap."""

    def __init__(self, settings: Settings, s3_client=None):
        self.settings = settings
        self.max_bytes = settings.fetch_max_bytes
        self.allow_loopback = settings.fetch_allow_loopback
        self.timeout = urllib3.Timeout(connect=settings.fetch_connect_timeout_s, read=settings.fetch_read_timeout_s)
        # a slow drip of bytes resets the read timeout on every chunk; bound the whole body too
        self.body_deadline_s = settings.fetch_connect_timeout_s + 2 * settings.fetch_read_timeout_s
        self._s3 = s3_client

    def fetch(self, image: dict) -> bytes:
        """The bytes of a request's image ({"url": ...} or {"s3": ...}), checked to look like an image."""
        if "url" in image:
            data = self.fetch_url(image["url"])
        elif "s3" in image:
            data = self.fetch_s3(image["s3"])
        else:
            raise FetchError("invalid_url", "image must be {'url': ...} or {'s3': ...}")
        check_image_header(data)
        return data

    def fetch_url(self, url: str) -> bytes:
        """GET a URL, following redirects by hand and re-checking every hop."""
        current = url
        for hop in range(self.settings.fetch_max_redirects + 1):
            target = parse_target(current, self.allow_loopback)
            status, location, data = self._get(target, current)
            if status in _REDIRECTS:
                if not location:
                    raise FetchError("fetch_failed", f"HTTP {status} redirect without a Location from {target.host}")
                current = urljoin(current, location)
                log.debug("redirect %d -> %s", hop + 1, current)
                continue
            if not 200 <= status < 300:
                raise FetchError("fetch_failed", f"HTTP {status} from {target.host}")
            return data
        raise FetchError("too_many_redirects",
                         f"more than {self.settings.fetch_max_redirects} redirects starting at {url[:200]}")

    def _get(self, target: Target, url: str) -> tuple[int, str | None, bytes]:
        """One request to the pinned IP with the original Host (and TLS name); (status, location, body)."""
        kw = {}
        if target.scheme == "https":
            pool_cls = urllib3.HTTPSConnectionPool
            kw = dict(server_hostname=target.host, assert_hostname=target.host,
                      cert_reqs="CERT_REQUIRED", ca_certs=_CA_CERTS)
        else:
            pool_cls = urllib3.HTTPConnectionPool
        pool = pool_cls(target.ip, target.port, timeout=self.timeout, retries=False, maxsize=1, **kw)
        headers = {"Host": target.host_header, "Accept": "image/*",
                   "Accept-Encoding": "identity",  # no compressed bodies: the byte cap counts real bytes
                   "User-Agent": "ClassifyCloud-worker/1"}
        resp = None
        try:
            resp = pool.urlopen("GET", target.path, headers=headers, redirect=False, retries=False,
                                preload_content=False, decode_content=False)
            if resp.status in _REDIRECTS:
                return resp.status, resp.headers.get("Location"), b""
            if not 200 <= resp.status < 300:
                return resp.status, None, b""
            return resp.status, None, self._read_capped(resp, url)
        except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError,
                TimeoutError, socket.timeout):
            raise FetchError("fetch_timeout", f"timed out fetching {url[:200]}") from None
        except urllib3.exceptions.SSLError as exc:
            raise FetchError("fetch_failed", f"TLS error from {target.host}: {exc}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise FetchError("fetch_failed", f"cannot fetch {url[:200]}: {exc}") from None
        finally:
            if resp is not None:
                resp.release_conn()
            pool.close()

    def _read_capped(self, resp, url: str) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError("image_too_large", f"{url[:200]} is {int(length)} bytes; the limit is {self.max_bytes}")
        deadline = time.monotonic() + self.body_deadline_s
        buf = bytearray()
        for chunk in resp.stream(_CHUNK):
            buf += chunk
            if len(buf) > self.max_bytes:
                raise FetchError("image_too_large", f"{url[:200]} is larger than the limit of {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError("fetch_timeout", f"{url[:200]} took longer than {self.body_deadline_s:.0f}s to send")
        return bytes(buf)

    def fetch_s3(self, uri: str) -> bytes:
        """get_object from this deployment's bucket under the byte cap; missing -> image_not_found."""
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError as exc:
            raise FetchError("invalid_url", str(exc)) from None
        if bucket != self.settings.bucket_name:
            raise FetchError("forbidden_address", f"only objects in bucket {self.settings.bucket_name!r} can be read")
        try:
            obj = self._s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
                raise FetchError("image_not_found", f"{uri} does not exist") from None
            raise FetchError("fetch_failed", f"cannot read {uri}: {code or exc}") from None
        body = obj["Body"]
        try:
            if obj.get("ContentLength", 0) > self.max_bytes:
                raise FetchError("image_too_large",
                                 f"{uri} is {obj['ContentLength']} bytes; the limit is {self.max_bytes}")
            data = body.read(self.max_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise FetchError("image_too_large", f"{uri} is larger than the limit of {self.max_bytes} bytes")
        return data

    def _s3_client(self):
        if self._s3 is None:
            from shared.aws import client
            self._s3 = client("s3", self.settings)
        return self._s3


def check_image_header(data: bytes) -> None:
    """Refuse bytes whose header is not an image, or whose size trips Pillow's bomb limit."""
    if not data:
        raise FetchError("invalid_image", "the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
    except Image.DecompressionBombError as exc:
        raise FetchError("image_too_large", f"image rejected by the decompression-bomb limit: {exc}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise FetchError("invalid_image", f"not an image: {exc}") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:  # between 1x and 2x Pillow only warns; we refuse
        raise FetchError("image_too_large", f"image is {width}x{height} pixels; the limit is {limit} pixels")
