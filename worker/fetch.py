"""Safe image fetch: strangers type these URLs, so every hop is resolved, checked and pinned."""
from __future__ import annotations

import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import urllib3
from botocore.exceptions import ClientError
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.util.ssl_match_hostname import CertificateError

from shared import naming
from shared.aws import parse_s3_uri
from shared.config import Settings
from shared.images import ImageRefused, checked_image, open_checked
from worker.redact import safe_url

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


# getaddrinfo has no timeout of its own (the system resolver may retry for 10 s and more): a lookup runs on
# a daemon thread and the fetch waits for it only until its deadline. At most this many lookups at once.
_LOOKUP_SLOTS = threading.BoundedSemaphore(16)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return True
    except ValueError:
        return False


class LookupTimeout(Exception):
    """The host name did not resolve within the time left."""


def getaddrinfo_within(host: str, port: int, timeout_s: float | None) -> list:
    """socket.getaddrinfo, given up (LookupTimeout) after timeout_s; None waits as long as the resolver does."""
    if timeout_s is None or _is_ip_literal(host):   # an address needs no lookup: no thread for it
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    started = time.monotonic()
    if not _LOOKUP_SLOTS.acquire(timeout=max(0.0, timeout_s)):
        raise LookupTimeout(host)
    out: dict = {}
    done = threading.Event()

    def lookup():
        try:
            out["infos"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except BaseException as exc:  # handed to the waiting fetch (or dropped if it gave up)
            out["error"] = exc
        finally:
            _LOOKUP_SLOTS.release()
            done.set()

    threading.Thread(target=lookup, name="dns-lookup", daemon=True).start()
    if not done.wait(max(0.0, timeout_s - (time.monotonic() - started))):
        raise LookupTimeout(host)
    if "error" in out:
        raise out["error"]
    return out["infos"]


def resolve_checked(host: str, port: int, allow_loopback: bool, timeout_s: float | None = None) -> str:
    """Resolve host (within timeout_s) and check every address it resolves to; return the one to connect to."""
    try:
        infos = getaddrinfo_within(host, port, timeout_s)
    except LookupTimeout:
        log.info("cannot resolve %r within %.1f s", host, timeout_s)
        raise FetchError("fetch_timeout", f"host {host!r} did not resolve within the fetch deadline") from None
    except (socket.gaierror, UnicodeError) as exc:
        log.info("cannot resolve %r: %s", host, exc)
        raise FetchError("fetch_failed", f"cannot resolve host {host!r}") from None
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise FetchError("fetch_failed", f"host {host!r} has no address")
    for addr in addresses:  # refuse if any answer is internal: a mixed answer is a rebinding trick
        reason = address_refusal(addr, allow_loopback)
        if reason:
            raise FetchError("forbidden_address", f"host {host!r} resolves to {reason}")
    return addresses[0]


def parse_target(url: str, allow_loopback: bool, timeout_s: float | None = None) -> Target:
    """Validate a URL, resolve (within timeout_s) and check its host."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("invalid_url", "the image URL is empty")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
        host = parts.hostname
    except ValueError as exc:
        raise FetchError("invalid_url", f"invalid URL {safe_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("unsupported_scheme", f"only http and https URLs can be fetched, not {scheme or 'none'!r}")
    if not host:
        raise FetchError("invalid_url", f"URL {safe_url(url)!r} has no host")
    port = port or (443 if scheme == "https" else 80)
    ip = resolve_checked(host, port, allow_loopback, timeout_s)
    shown = f"[{host}]" if ":" in host else host
    default = (scheme == "http" and port == 80) or (scheme == "https" and port == 443)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, shown if default else f"{shown}:{port}", ip)


class _Watchdog:
    """Closes a connection's socket at the fetch deadline, so no read can outlive it."""

    def __init__(self, conn, remaining_s: float):
        self.conn = conn
        self.sock = None  # kept once connected: http.client drops conn.sock when the response will close
        self.fired = False
        self._timer = threading.Timer(max(0.0, remaining_s), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.sock or getattr(self.conn, "sock", None)
        if sock is not None:
            try:  # the plain socket's shutdown (not SSLSocket's): a blocked recv returns at once
                socket.socket.shutdown(sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


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


class OwnEndpoints:
    """This stack's own public endpoints: a URL (or redirect) pointing there would loop requests back in."""

    _TTL_S = 60.0

    def __init__(self, settings: Settings):
        self.names: set[str] = set()
        self.endpoints: list[tuple[str, int | None]] = []
        for entry in settings.own_hosts:
            host, _, port = entry.strip().lower().rpartition(":") if _has_port(entry) else (entry.strip().lower(), "", "")
            host = host.strip("[]")
            self.names.add(host.rstrip("."))
            self.endpoints.append((host, int(port) if port else None))
        if settings.web_port:  # the local web (and on an instance, the web beside the worker)
            self.endpoints.append((settings.web_host or "127.0.0.1", settings.web_port))
        self._ips: tuple[float, set[tuple[str, int | None]]] | None = None

    def _addresses(self) -> set[tuple[str, int | None]]:
        now = time.monotonic()
        if self._ips is not None and now - self._ips[0] < self._TTL_S:
            return self._ips[1]
        found: set[tuple[str, int | None]] = set()
        for host, port in self.endpoints:
            try:
                infos = socket.getaddrinfo(host, port or 80, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                continue
            for info in infos:
                ip = info[4][0]
                if ip in ("0.0.0.0", "::"):
                    ip = "127.0.0.1"
                found.add((ip, port))
        if any(host in ("0.0.0.0", "::") for host, _ in self.endpoints):  # a wildcard bind answers on loopback
            found |= {("127.0.0.1", p) for h, p in self.endpoints if h in ("0.0.0.0", "::")}
        self._ips = (now, found)
        return found

    def check_name(self, url: str) -> None:
        """Refuse a URL naming one of this stack's public host names (before any DNS lookup)."""
        try:
            host = (urlsplit(url.strip()).hostname or "").rstrip(".")
        except (ValueError, AttributeError):
            return  # parse_target reports the bad URL
        if host and host in self.names:
            raise FetchError("forbidden_address", f"{host} is this service's own endpoint")

    def check(self, target: Target) -> None:
        """Refuse a hop whose address:port is one of this stack's own endpoints (loopback web included)."""
        if target.host.lower().rstrip(".") in self.names:
            raise FetchError("forbidden_address", f"{target.host} is this service's own endpoint")
        for ip, port in self._addresses():
            if target.ip == ip and (port is None or port == target.port):
                raise FetchError("forbidden_address", f"{target.host} is this service's own endpoint")


def _has_port(entry: str) -> bool:
    entry = entry.strip()
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def check_image_header(data: bytes, max_pixels: int | None = None) -> None:
    """Refuse bytes that are not an allowed image format, or whose header claims too many pixels."""
    try:
        open_checked(data, Settings.max_image_pixels if max_pixels is None else max_pixels).close()
    except ImageRefused as exc:
        raise FetchError(exc.code, exc.message) from None
