"""The safety policy for a URL a client names, shared by the worker's image fetch and the autoscaler's
webhook delivery: public addresses only (every address a name resolves to, checked before connecting),
never this stack's own endpoints, name resolution and reads within a deadline, and URLs shown without
credentials, queries or fragments."""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from shared.config import Settings

log = logging.getLogger(__name__)

_NAT64 = ipaddress.ip_network("64:ff9b::/96")

try:  # requests ships certifi; fall back to the system store without it
    import certifi
    CA_CERTS: str | None = certifi.where()
except ImportError:  # pragma: no cover
    CA_CERTS = None


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


class SocketDeadline:
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


MAX_SHOWN = 200


def safe_url(url: object, limit: int = MAX_SHOWN) -> str:
    """The URL without user:password@, ?query and #fragment (presigned signatures live there), shortened."""
    if not isinstance(url, str):
        return "<not a string>"
    text = url.strip()
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        # unparseable: keep only what precedes any query and drop anything that looks like credentials
        head = text.split("?", 1)[0].split("#", 1)[0]
        if "@" in head:
            head = head.rsplit("@", 1)[1]
        return _shorten(head, limit)
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    return _shorten(urlunsplit((parts.scheme, netloc, parts.path, "", "")), limit)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
