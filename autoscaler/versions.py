"""The canary controller and version costs: reads the workers' version outcomes, rolls canaries back, prices work.

Runs in the autoscaler's loop (it already ticks); the decision itself is shared.versions.rollback_decision
(pure). A rollback writes the service's traffic.json with the reason (shown in /services); the web
stops routing to the canary within catalogue_ttl_s, no process restarts.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from shared.config import Settings
from shared.metrics import MetricsPublisher
from shared.traffic import STATS_PREFIX, TrafficStore
from shared.versions import TrafficPolicy, VersionOutcome, rollback_decision, seconds_per_request, stats_since

log = logging.getLogger(__name__)

STATS_MAX_AGE_S = 3600      # a worker's outcome log older than this (a worker long gone) is not read


@dataclass
class ControllerResult:
    """What one check saw and did."""

    policies: dict[str, TrafficPolicy] = field(default_factory=dict)
    rolled_back: dict[str, dict[str, str]] = field(default_factory=dict)   # service -> {version: reason}


def read_outcomes(settings: Settings, s3, now: float) -> dict[str, list[VersionOutcome]]:
    """Every fresh worker outcome log, merged per service."""
    out: dict[str, list[VersionOutcome]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket_name, Prefix=STATS_PREFIX)
    for page in pages:
        for obj in page.get("Contents", []):
            if now - obj["LastModified"].timestamp() > STATS_MAX_AGE_S:
                continue
            try:
                doc = json.loads(s3.get_object(Bucket=settings.bucket_name, Key=obj["Key"])["Body"].read())
                for service, rows in (doc.get("services") or {}).items():
                    out.setdefault(service, []).extend(
                        VersionOutcome(int(r[0]), str(r[1]), bool(r[2]), float(r[3]), float(r[4])) for r in rows)
            except ClientError:
                continue                      # deleted between list and get
            except (ValueError, TypeError, IndexError, AttributeError) as exc:
                log.warning("version stats %s unreadable (%s); ignored", obj["Key"], exc)
    return out


class VersionController:
    """Each check: policies with canaries -> stats since their weights changed -> roll back breaches."""

    def __init__(self, settings: Settings, s3, metrics: MetricsPublisher | None = None, clock=time.time):
        self.settings = settings
        self.s3 = s3
        self.store = TrafficStore(settings, s3)
        self.metrics = metrics
        self.clock = clock
        self.outcomes: dict[str, list[VersionOutcome]] = {}
        self.policies: dict[str, TrafficPolicy] = {}

    def check(self) -> ControllerResult:
        """One pass; S3 errors propagate (the loop logs them and goes on)."""
        result = ControllerResult()
        services = self.store.stored_services()
        self.outcomes = read_outcomes(self.settings, self.s3, self.clock()) if services else {}
        for service in services:
            try:
                policy, _ = self.store.read(service)
            except Exception as exc:  # one bad traffic.json must not stop the others' rollbacks
                log.error("versions: traffic policy of %s unreadable: %s", service, exc)
                continue
            result.policies[service] = policy
            reasons = rollback_decision(policy, stats_since(self.outcomes.get(service, []), policy.since))
            if not reasons:
                continue
            now = int(self.clock() * 1000)
            weights = {**policy.weights, **{v: 0.0 for v in reasons}}
            rolled = {**policy.rolled_back, **{v: {"reason": r, "at": now, "by": "controller"} for v, r in reasons.items()}}
            policy = TrafficPolicy(**{**policy.__dict__, "weights": weights, "rolled_back": rolled, "since": now})
            self.store.write(policy)
            result.policies[service] = policy
            result.rolled_back[service] = reasons
            for version, reason in reasons.items():
                log.error("versions: %s@%s rolled back: %s", service, version, reason)
                if self.metrics is not None:
                    self.metrics.record("CanaryRollbacks", 1, Service=service, Version=version)
        self.policies = result.policies
        return result

    def seconds_per_request(self, estimates: dict[str, float], version_estimates: dict) -> dict[str, float]:
        """estimates with each versioned service priced by its versions' measured (or declared) times and shares."""
        out = dict(estimates)
        for service, policy in self.policies.items():
            default = estimates.get(service, self.settings.seconds_per_request)
            per_version = dict(version_estimates.get(service, {}))
            for version, times in _measured(self.outcomes.get(service, [])).items():
                per_version[version] = times
            out[service] = seconds_per_request(policy, per_version, default)
        return out


def declared_times(catalogue) -> dict[str, dict[str, float]]:
    """{service: {version: seconds_per_request}} from the entries (before anything was measured)."""
    packaged = getattr(catalogue, "packaged", catalogue)
    out: dict[str, dict[str, float]] = {}
    for service, versions in getattr(packaged, "versions", {}).items():
        base = catalogue.services.get(service) if service in catalogue else None
        out[service] = {v: spec.seconds_per_request for v, spec in versions.items() if spec.seconds_per_request}
        if base is not None and base.seconds_per_request:
            out[service]["v1"] = base.seconds_per_request
    return out


def _measured(outcomes: list[VersionOutcome], last: int = 200) -> dict[str, float]:
    """Seconds per request of each version: the mean cost of its last answered requests."""
    by: dict[str, list[float]] = {}
    for o in sorted(outcomes, key=lambda o: o.at):
        if o.ok and o.cost_ms > 0:
            by.setdefault(o.version, []).append(o.cost_ms)
    return {v: sum(c[-last:]) / len(c[-last:]) / 1000.0 for v, c in by.items()}
