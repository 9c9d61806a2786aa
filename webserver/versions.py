"""Which version answers a request: the service's traffic policy (live, TTL-cached), a sticky hash, or a pin."""
from __future__ import annotations

import logging

from shared.config import Settings
from shared.traffic import LiveTraffic
from shared.versions import BASE_VERSION, TrafficPolicy, VersionError, parse_pin
from webserver.errors import ApiError

log = logging.getLogger(__name__)


def split_service(name: str | None) -> tuple[str | None, str | None]:
    """'imagenet@v2' -> ('imagenet', 'v2'); a malformed pin is 400 invalid_version."""
    try:
        return parse_pin(name)
    except VersionError as exc:
        raise ApiError(400, exc.code, exc.message) from None


class VersionRouter:
    """Chooses (version, shadow) for a request id; None for both where a service has no traffic policy."""

    def __init__(self, settings: Settings, catalogue, s3=None):
        self.catalogue = catalogue
        self.traffic = LiveTraffic(settings, s3)

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
            known |= set(getattr(self.catalogue, "versions", {}).get(service, {}))
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

    def describe(self, service: str) -> dict | None:
        """What /services shows of a service's versions (None without a policy)."""
        policy = self.policy(service)
        if policy is None:
            return None
        return {"live": policy.live, "weights": dict(policy.weights), "shadow": policy.shadow,
                "shadow_share": policy.shadow_share, "pinning": policy.pinning, "pin_idle": policy.pin_idle,
                "rolled_back": dict(policy.rolled_back), "policy_error": self.traffic.error(service)}
