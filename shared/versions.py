"""Model versions of a service: the traffic policy, the sticky hash split, pins and the rollback rule (pure).

No I/O here: shared/traffic.py reads and writes the policy (models/<service>/traffic.json), the web
routes with choose()/shadow_for(), the autoscaler's controller calls rollback_decision(), the CLI
calls promote()/rollback()/with_weights(). See docs/VERSIONS.md.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, field, replace
from typing import Iterable, Mapping

BASE_VERSION = "v1"                       # the service's own catalogue entry
VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,19}$")
PIN_SEP = "@"


class VersionError(ValueError):
    """A malformed version name, pin or traffic policy; `code` is the client-facing error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def check_version(name: object) -> str:
    """The version name, validated (lower-case letters, digits, _ and -, at most 20)."""
    if not isinstance(name, str) or not VERSION_RE.match(name):
        raise VersionError("invalid_version", f"version {name!r} must match {VERSION_RE.pattern}")
    return name


def parse_pin(value: str | None) -> tuple[str | None, str | None]:
    """'imagenet@v2' -> ('imagenet', 'v2'); 'imagenet' -> ('imagenet', None); a malformed pin raises."""
    if value is None or PIN_SEP not in value:
        return value, None
    service, _, version = value.partition(PIN_SEP)
    if not service or PIN_SEP in version:
        raise VersionError("invalid_version", f"{value!r}: a pinned service is <service>@<version>")
    return service, check_version(version)


def versioned_name(service: str, version: str | None) -> str:
    """'imagenet@v2' (the name metrics, usage records and the worker's version handlers use)."""
    return f"{service}{PIN_SEP}{version}" if version else service


def unit_hash(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts (sha256: the same on every process and machine)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return int(digest[:15], 16) / float(16 ** 15)


@dataclass(frozen=True)
class Bounds:
    """When the controller takes a canary's traffic away: error rate or p95 model time over enough requests."""

    max_error_rate: float = 0.05
    max_p95_ms: float = 5000.0
    min_requests: int = 20


@dataclass(frozen=True)
class TrafficPolicy:
    """Who answers a service's requests: weights per version, a shadow, pinning, rollback bounds and record."""

    service: str
    weights: dict = field(default_factory=lambda: {BASE_VERSION: 1.0})  # version -> weight >= 0
    live: str = BASE_VERSION            # the stable version: promote moves it, rollback returns to it
    previous: str | None = None         # the live version before the last promote (rollback target)
    shadow: str | None = None           # runs on a sampled copy of the traffic; its answers are never returned
    shadow_share: float = 0.0
    pinning: bool = False               # may a client ask for service@version
    pin_idle: bool = False              # ... even a version without traffic (weight 0, rolled back)
    bounds: Bounds = field(default_factory=Bounds)
    rolled_back: dict = field(default_factory=dict)   # version -> {"reason", "at", "by"}
    since: int = 0                      # epoch ms the weights last changed: the controller's window starts here

    # --- routing ---------------------------------------------------------------------
    def versions(self) -> list[str]:
        """Every version the policy names (live first)."""
        named = [self.live, *self.weights, *([self.shadow] if self.shadow else [])]
        return list(dict.fromkeys(named))

    def serving(self) -> list[tuple[str, float]]:
        """(version, weight) with weight > 0, live first then by name (the order the hash split walks)."""
        items = [(v, float(w)) for v, w in self.weights.items() if w > 0]
        items.sort(key=lambda vw: (vw[0] != self.live, vw[0]))
        return items or [(self.live, 1.0)]

    def choose(self, request_id: str) -> str:
        """The version that answers this request: sticky (a hash of the id), in proportion to the weights."""
        serving = self.serving()
        total = sum(w for _, w in serving)
        u = unit_hash("route", self.service, request_id) * total
        for version, weight in serving:
            if u < weight:
                return version
            u -= weight
        return serving[-1][0]

    def shadow_for(self, request_id: str, answered_by: str) -> str | None:
        """The shadow version for this request when sampled (never the version already answering it)."""
        if not self.shadow or self.shadow == answered_by or self.shadow_share <= 0:
            return None
        return self.shadow if unit_hash("shadow", self.service, request_id) < self.shadow_share else None

    def serves(self, version: str) -> bool:
        """Whether the version answers traffic now: the live one, or one with weight > 0 not rolled back."""
        return version == self.live or (self.weights.get(version, 0) > 0 and version not in self.rolled_back)

    def canaries(self) -> list[str]:
        """Versions other than live that get traffic."""
        return [v for v, _ in self.serving() if v != self.live]

    def share(self, version: str) -> float:
        """The fraction of the traffic this version answers."""
        serving = self.serving()
        total = sum(w for _, w in serving)
        return sum(w for v, w in serving if v == version) / total

    # --- changes (each returns a new policy) -----------------------------------------
    def with_weights(self, weights: Mapping[str, float], now_ms: int) -> "TrafficPolicy":
        """New weights (versions left out keep theirs); a version given weight again leaves rolled_back."""
        merged = {**self.weights, **{check_version(v): _weight(w, v) for v, w in weights.items()}}
        if not any(w > 0 for w in merged.values()):
            raise VersionError("invalid_weights", "at least one version needs a weight above 0")
        back = {v: r for v, r in self.rolled_back.items() if not merged.get(v)}
        return replace(self, weights=merged, rolled_back=back, since=now_ms)

    def promote(self, version: str, now_ms: int) -> "TrafficPolicy":
        """All traffic to `version`, which becomes live; the old live is kept as the rollback target."""
        check_version(version)
        if version == self.live:
            return replace(self, weights={**{v: 0.0 for v in self.weights}, version: 1.0}, since=now_ms)
        return replace(self, weights={**{v: 0.0 for v in self.weights}, version: 1.0}, live=version,
                       previous=self.live, shadow=None if self.shadow == version else self.shadow,
                       rolled_back={v: r for v, r in self.rolled_back.items() if v != version}, since=now_ms)

    def rollback(self, reason: str, now_ms: int, by: str = "operator") -> "TrafficPolicy":
        """Canaries to 0; with none, back to the previous live version. The versions that lost traffic are noted."""
        note = {"reason": reason, "at": now_ms, "by": by}
        canaries = self.canaries()
        if canaries:
            weights = {**self.weights, **{v: 0.0 for v in canaries}}
            return replace(self, weights=weights, rolled_back={**self.rolled_back, **{v: note for v in canaries}},
                           since=now_ms)
        if not self.previous:
            raise VersionError("nothing_to_roll_back", f"service {self.service!r}: no canary and no previous version")
        return replace(self, weights={**{v: 0.0 for v in self.weights}, self.previous: 1.0}, live=self.previous,
                       previous=None, rolled_back={**self.rolled_back, self.live: note}, since=now_ms)

    def with_shadow(self, version: str | None, share: float, now_ms: int) -> "TrafficPolicy":
        """Set (or clear, with None) the shadow version and its sampled share."""
        if version is not None:
            check_version(version)
        if not (isinstance(share, (int, float)) and 0.0 <= share <= 1.0):
            raise VersionError("invalid_weights", "shadow share must be in [0, 1]")
        return replace(self, shadow=version, shadow_share=float(share) if version else 0.0, since=now_ms)

    # --- JSON ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The traffic.json document."""
        return asdict(self)

    def to_json(self) -> str:
        """traffic.json's body."""
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, service: str, doc: object) -> "TrafficPolicy":
        """A validated policy from traffic.json (VersionError names what is wrong)."""
        if not isinstance(doc, dict):
            raise VersionError("invalid_policy", "traffic policy must be a JSON object")
        unknown = set(doc) - set(cls.__dataclass_fields__)
        if unknown:
            raise VersionError("invalid_policy", f"traffic policy: unknown keys {sorted(unknown)}")
        weights = doc.get("weights", {BASE_VERSION: 1.0})
        if not isinstance(weights, dict) or not weights:
            raise VersionError("invalid_policy", "traffic policy: weights must be a non-empty object")
        weights = {check_version(v): _weight(w, v) for v, w in weights.items()}
        if not any(w > 0 for w in weights.values()):
            raise VersionError("invalid_policy", "traffic policy: at least one weight must be above 0")
        bounds = doc.get("bounds") or {}
        if not isinstance(bounds, dict) or set(bounds) - set(Bounds.__dataclass_fields__):
            raise VersionError("invalid_policy", f"traffic policy: bounds takes {sorted(Bounds.__dataclass_fields__)}")
        try:
            b = Bounds(**{k: (int(v) if k == "min_requests" else float(v)) for k, v in bounds.items()})
        except (TypeError, ValueError):
            raise VersionError("invalid_policy", "traffic policy: bounds must be numbers") from None
        share = doc.get("shadow_share", 0.0)
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
            raise VersionError("invalid_policy", "traffic policy: shadow_share must be in [0, 1]")
        shadow, previous = doc.get("shadow"), doc.get("previous")
        rolled = doc.get("rolled_back") or {}
        if not isinstance(rolled, dict):
            raise VersionError("invalid_policy", "traffic policy: rolled_back must be an object")
        return cls(service=service, weights=weights, live=check_version(doc.get("live", BASE_VERSION)),
                   previous=check_version(previous) if previous else None,
                   shadow=check_version(shadow) if shadow else None, shadow_share=float(share),
                   pinning=bool(doc.get("pinning", False)), pin_idle=bool(doc.get("pin_idle", False)), bounds=b,
                   rolled_back=dict(rolled), since=int(doc.get("since") or 0))

    @classmethod
    def from_json(cls, service: str, text: str | bytes) -> "TrafficPolicy":
        """Parse traffic.json (VersionError when it is not JSON or not valid)."""
        try:
            doc = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise VersionError("invalid_policy", f"traffic policy is not JSON: {exc}") from None
        return cls.from_dict(service, doc)


def _weight(value: object, version: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise VersionError("invalid_weights", f"weight of {version!r} must be a number >= 0")
    return float(value)


# --- the rollback rule ---------------------------------------------------------------------

@dataclass(frozen=True)
class VersionOutcome:
    """One answered request of one version (what workers record for the controller)."""

    at: int          # epoch ms
    version: str
    ok: bool
    ms: float        # the version's model time for the request's batch (what the request waited)
    cost_ms: float = 0.0  # its share of that time (batch time / batch size): the autoscaler's service time


@dataclass(frozen=True)
class VersionStats:
    """A version's requests, errors and p95 model time over a window."""

    requests: int = 0
    errors: int = 0
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        """errors / requests (0 without requests)."""
        return self.errors / self.requests if self.requests else 0.0


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile by nearest rank (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


def stats_since(outcomes: Iterable[VersionOutcome], since_ms: int) -> dict[str, VersionStats]:
    """Per version: requests, errors and p95 model time of the outcomes at or after since_ms."""
    by: dict[str, list[VersionOutcome]] = {}
    for o in outcomes:
        if o.at >= since_ms:
            by.setdefault(o.version, []).append(o)
    return {v: VersionStats(len(os_), sum(1 for o in os_ if not o.ok), percentile([o.ms for o in os_ if o.ok], 95))
            for v, os_ in by.items()}


def rollback_decision(policy: TrafficPolicy, stats: Mapping[str, VersionStats]) -> dict[str, str]:
    """{canary: why it must lose its traffic} for canaries past a bound over at least min_requests."""
    b = policy.bounds
    out = {}
    for version in policy.canaries():
        s = stats.get(version)
        if s is None or s.requests < b.min_requests:
            continue
        if s.error_rate > b.max_error_rate:
            out[version] = (f"error rate {s.error_rate:.2f} > {b.max_error_rate:.2f} "
                            f"({s.errors} of {s.requests} requests)")
        elif s.p95_ms is not None and s.p95_ms > b.max_p95_ms:
            out[version] = f"p95 model time {s.p95_ms:.0f} ms > {b.max_p95_ms:.0f} ms over {s.requests} requests"
    return out


def seconds_per_request(policy: TrafficPolicy, per_version: Mapping[str, float], default: float) -> float:
    """Worker seconds one request of the service costs: the versions' times by share, plus the shadow's sample."""
    cost = sum(policy.share(v) * per_version.get(v, default) for v, _ in policy.serving())
    if policy.shadow and policy.shadow_share > 0:
        # a request answered by the shadow version itself gets no shadow copy
        cost += policy.shadow_share * (1 - policy.share(policy.shadow)) * per_version.get(policy.shadow, default)
    return cost
