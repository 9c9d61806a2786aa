"""Safe image fetch: strangers type these URLs, so every hop is resolved, checked and pinned."""
from __future__ import annotations

import http.client
import logging
import socket
import ssl
import time
from urllib.parse import urljoin

import urllib3
from botocore.exceptions import ClientError
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from shared import naming
from shared.aws import parse_s3_uri
from shared.config import Settings
from shared.images import ImageRefused, checked_image, open_checked
from shared.url_safety import CA_CERTS as _CA_CERTS  # the fetch's trust store (tests point it at their own CA)
from shared.url_safety import (  # noqa: F401  (re-exported: the fetch's errors and policy, long imported from here)
    FetchError,
    OwnEndpoints,
    Target,
    address_refusal,
    parse_target,
    safe_url,
)
from shared.url_safety import SocketDeadline as _Watchdog

log = logging.getLogger(__name__)

_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class Fetcher:
    """Fetches request images from http(s) URLs (safely) and from S3, under one byte cap and one deadline."""

    def __init__(self, settings: Settings, s3_client=None):
        self.settings = settings
        self.max_bytes = settings.fetch_max_bytes
        self.max_pixels = settings.max_image_pixels
        self.allow_loopback = settings.fetch_allow_loopback
        # a drip of bytes resets a per-read timeout forever: the whole fetch has one hard deadline
        self.deadline_s = settings.fetch_deadline_s
        self.own = OwnEndpoints(settings)
        self._s3 = s3_client

    def fetch(self, image: dict, request_id: str | None = None) -> bytes:
        """The bytes of a request's image ({"url": ...} or {"s3": uploads/<request_id>}), checked to be an image
        (a shared.images.CheckedImage: its header travels with it to the decoder)."""
        if "url" in image:
            if image.get("expires_at") is not None and time.time() * 1000 >= image["expires_at"]:
                # a batch item taken after its presigned link died: the driver signs it again and re-sends it
                raise FetchError("link_expired", "the item's presigned link expired before a worker took it")
            data = self.fetch_url(image["url"])
        elif "s3" in image:
            data = self.fetch_s3(image["s3"], request_id)
        else:
            raise FetchError("invalid_url", "image must be {'url': ...} or {'s3': ...}")
        try:  # opened and checked once: the engine decodes from this header, it does not open the bytes again
            return checked_image(data, self.max_pixels)
        except ImageRefused as exc:
            raise FetchError(exc.code, exc.message) from None

    def fetch_url(self, url: str) -> bytes:
        """GET a URL within fetch_deadline_s, following redirects by hand and re-checking every hop."""
        deadline = time.monotonic() + self.deadline_s
        current = url
        seen: set[str] = set()
        for hop in range(self.settings.fetch_max_redirects + 1):
            if current in seen:
                raise FetchError("redirect_loop", f"redirect loop at {safe_url(current)}")
            seen.add(current)
            self.own.check_name(current)
            target = parse_target(current, self.allow_loopback, deadline - time.monotonic())  # DNS counts too
            self.own.check(target)
            status, location, data = self._get(target, current, deadline)
            if status in _REDIRECTS:
                if not location:
                    raise FetchError("fetch_failed", f"HTTP {status} redirect without a Location from {target.host}")
                current = urljoin(current, location)
                log.debug("redirect %d -> %s", hop + 1, safe_url(current))
                continue
            if not 200 <= status < 300:
                raise FetchError("fetch_failed", f"HTTP {status} from {target.host}")
            return data
        raise FetchError("too_many_redirects",
                         f"more than {self.settings.fetch_max_redirects} redirects starting at {safe_url(url)}")

    def _connection(self, target: Target, connect_s: float):
        if target.scheme == "https":
            return HTTPSConnection(target.ip, target.port, timeout=connect_s, server_hostname=target.host,
                                   assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=_CA_CERTS)
        return HTTPConnection(target.ip, target.port, timeout=connect_s)

    def _get(self, target: Target, url: str, deadline: float) -> tuple[int, str | None, bytes]:
        """One request to the pinned IP with the original Host (and TLS name); (status, location, body)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._timeout(url)
        conn = self._connection(target, min(self.settings.fetch_connect_timeout_s, remaining))
        headers = {"Host": target.host_header, "Accept": "image/*",
                   "Accept-Encoding": "identity",  # no compressed bodies: the byte cap counts real bytes
                   "User-Agent": "ClassifyCloud-worker/1"}
        watchdog = _Watchdog(conn, remaining)
        try:
            conn.connect()
            watchdog.sock = conn.sock
            if watchdog.fired:  # fired while connecting: nothing to close then
                raise self._timeout(url)
            read_s = min(self.settings.fetch_read_timeout_s, max(0.01, deadline - time.monotonic()))
            conn.timeout = read_s   # urllib3's getresponse() resets the socket to conn.timeout (was: the connect timeout)
            conn.sock.settimeout(read_s)
            conn.request("GET", target.path, headers=headers, preload_content=False, decode_content=False)
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                return resp.status, resp.headers.get("Location"), b""
            if not 200 <= resp.status < 300:
                return resp.status, None, b""
            return resp.status, None, self._read_capped(resp, url, deadline)
        except FetchError:
            raise
        except (urllib3.exceptions.ConnectTimeoutError, urllib3.exceptions.ReadTimeoutError,
                TimeoutError, socket.timeout):
            raise self._timeout(url) from None
        except Exception as exc:  # after the watchdog closed the socket, any read error is the deadline
            if watchdog.fired:
                raise self._timeout(url) from None
            if isinstance(exc, (urllib3.exceptions.SSLError, ssl.SSLError, CertificateError)):
                log.info("TLS error from %s: %s", target.host, exc)
                raise FetchError("fetch_failed", f"TLS error from {target.host} (certificate or handshake)") from None
            if isinstance(exc, (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException)):
                raise FetchError("fetch_failed", f"cannot fetch {safe_url(url)}: {type(exc).__name__}") from None
            raise
        finally:
            watchdog.cancel()
            conn.close()

    def _timeout(self, url: str) -> FetchError:
        return FetchError("fetch_timeout", f"{safe_url(url)} was not fetched within {self.deadline_s:g} s")

    def _read_capped(self, resp, url: str, deadline: float) -> bytes:
        length = resp.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > self.max_bytes:
            raise FetchError("image_too_large",
                             f"{safe_url(url)} is {int(length)} bytes; the limit is {self.max_bytes}")
        buf = bytearray()
        for chunk in resp.stream(_CHUNK):
            buf += chunk
            if len(buf) > self.max_bytes:
                raise FetchError("image_too_large",
                                 f"{safe_url(url)} is larger than the limit of {self.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise self._timeout(url)
        return bytes(buf)

    def fetch_s3(self, uri: str, request_id: str | None = None) -> bytes:
        """get_object of uploads/<request_id> in this deployment's bucket under the byte cap."""
        try:
            bucket, key = parse_s3_uri(uri)
        except ValueError as exc:
            raise FetchError("invalid_url", str(exc)) from None
        if bucket != self.settings.bucket_name:
            raise FetchError("forbidden_address", "only this deployment's uploads can be read")
        # a forged request must not read models/, results/ or another request's upload
        allowed = naming.upload_key(request_id) if request_id is not None else None
        if not key.startswith(naming.upload_key("")) or (allowed is not None and key != allowed):
            raise FetchError("forbidden_address", "an s3 image must be this request's own upload")
        try:
            obj = self._s3_client().get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NoSuchBucket", "NotFound"):
                raise FetchError("image_not_found", "the uploaded image does not exist (expired or never stored)") from None
            log.warning("s3 read of %s failed: %s", key, exc)
            raise FetchError("fetch_failed", "the uploaded image cannot be read; try again") from None
        body = obj["Body"]
        try:
            if obj.get("ContentLength", 0) > self.max_bytes:
                raise FetchError("image_too_large",
                                 f"the upload is {obj['ContentLength']} bytes; the limit is {self.max_bytes}")
            data = body.read(self.max_bytes + 1)
        finally:
            body.close()
        if len(data) > self.max_bytes:
            raise FetchError("image_too_large", f"the upload is larger than the limit of {self.max_bytes} bytes")
        return data

    def _s3_client(self):
        if self._s3 is None:
            from shared.aws import client
            self._s3 = client("s3", self.settings)
        return self._s3


def check_image_header(data: bytes, max_pixels: int | None = None) -> None:
    """Refuse bytes that are not an allowed image format, or whose header claims too many pixels."""
    try:
        open_checked(data, Settings.max_image_pixels if max_pixels is None else max_pixels).close()
    except ImageRefused as exc:
        raise FetchError(exc.code, exc.message) from None
