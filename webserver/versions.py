"""Which version answers a request: the service's traffic policy (live, TTL-cached), a sticky hash, or a pin."""
from __future__ import annotations

import logging
import threading
import time

from shared.config import Settings
from shared.traffic import LiveTraffic
from shared.versions import BASE_VERSION, TrafficPolicy, VersionError, parse_pin
from webserver.errors import ApiError

log = logging.getLogger(__name__)


def split_service(name: str | None) -> tuple[str | None, str | None]:
    """'imagenet@v2' -> ('imagenet', 'v2'); a malformed pin is 400 invalid_version. Surrounding whitespace is
    not part of either (the document's ServiceName allows it, as /classify's parse_service strips it)."""
    try:
        # only a pin is stripped: a bare name stays as given (whitespace alone must not become the default service)
        return parse_pin(name.strip() if isinstance(name, str) and "@" in name else name)
    except VersionError as exc:
        raise ApiError(400, exc.code, exc.message) from None


class VersionRouter:
    """Chooses (version, shadow) for a request id; None for both where a service has no traffic policy."""

    def __init__(self, settings: Settings, catalogue, s3=None, entries=None, clock=time.monotonic):
        self.catalogue = catalogue
        self.traffic = LiveTraffic(settings, s3)
        self.entries = entries      # a shared.version_entries.VersionEntries (None: the policy's versions only)
        self.ttl = settings.catalogue_ttl_s
        self.clock = clock
        self._known: dict = {}
        self._read_at: float | None = None
        self._lock = threading.Lock()

    def known(self) -> dict:
        """{service: {version: VersionEntry}}: packaged and S3 versions, re-read at most every catalogue_ttl_s.

        One ListObjectsV2 per (non-derived) service per refresh, and only when a pin or /services asks; a
        failed read keeps the last good listing (the packaged versions at first), like the catalogue."""
        if self.entries is None:
            return {}
        now = self.clock()
        with self._lock:
            if self._read_at is None or now - self._read_at >= self.ttl:
                self._read_at = now
                try:
                    self._known = self.entries.read(self.catalogue)
                except Exception as exc:   # S3 trouble: pins and /services go on with what was read last
                    log.warning("versions: S3 version entries unreadable (%s); keeping the last listing", exc)
                    if not self._known:
                        self._known = self.entries.packaged(self.catalogue, self.catalogue.names())
            return self._known

    def policy(self, service: str) -> TrafficPolicy | None:
        """The stored policy of a service (None without traffic.json: the service has one version)."""
        policy, stored = self.traffic.get(service)
        return policy if stored else None

    def route(self, service: str, request_id: str, pin: str | None,
              steady: bool = False) -> tuple[str | None, str | None]:
        """The version that answers and the shadow that copies; 403/404 for a pin not allowed or not known.

        steady: a request that changes state (a face enrolment) goes to the live version only, never to a
        canary nor a shadow (a shadow would enrol the face a second time, with another model)."""
        policy = self.policy(service)
        if pin is not None:
            known = set(policy.versions() if policy else [BASE_VERSION])
            known |= set(self.known().get(service, {}))   # packaged and S3 versions: the policy may name none
            if pin not in known:
                raise ApiError(404, "unknown_version", f"service {service!r} has no version {pin!r}",
                               versions=sorted(known))
            if policy is None or not policy.pinning:
                raise ApiError(403, "pinning_not_allowed",
                               f"service {service!r} does not allow pinning a version; send service={service}")
            if not policy.serves(pin) and not policy.pin_idle:
                raise ApiError(403, "version_not_serving",
                               f"version {pin!r} of service {service!r} has no traffic (weight 0 or rolled "
                               "back) and its policy does not allow pins to such versions")
            return pin, None
        if policy is None:
            return None, None
        if steady:
            return policy.live, None
        version = policy.choose(request_id)
        return version, policy.shadow_for(request_id, version)

    def describe(self, service: str) -> dict:
        """What /services shows of a service's versions: the policy (defaults without one) and every version."""
        policy, stored = self.traffic.get(service)
        entries = self.known().get(service, {})
        listed = []
        for v in sorted(set(entries) | set(policy.versions())):
            entry = entries.get(v)
            listed.append({"version": v, "origin": entry.origin if entry else "policy",
                           "weight": float(policy.weights.get(v, 0.0)), "state": version_state(policy, v, entry),
                           "architecture": entry.spec.architecture if entry and entry.spec else None,
                           "reason": entry.error if entry else "named by the policy; no such version is stored"})
        return {"policy": stored, "live": policy.live, "weights": dict(policy.weights), "shadow": policy.shadow,
                "shadow_share": policy.shadow_share, "pinning": policy.pinning, "pin_idle": policy.pin_idle,
                "rolled_back": dict(policy.rolled_back), "policy_error": self.traffic.error(service),
                "list": listed}


def version_state(policy: TrafficPolicy, version: str, entry) -> str:
    """live | canary (weight > 0) | shadow | rolled_back | idle (weight 0: pinnable with pin_idle) | invalid | missing."""
    if entry is None:
        return "missing"
    if entry.spec is None:
        return "invalid"
    if version == policy.live:
        return "live"
    if version in policy.rolled_back:
        return "rolled_back"
    if policy.weights.get(version, 0) > 0:
        return "canary"
    return "shadow" if version == policy.shadow else "idle"

