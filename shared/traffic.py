"""The traffic policy of each service in S3 (models/<service>/traffic.json): read live, written by CLI and controller."""
from __future__ import annotations

import logging
import threading
import time

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings
from shared.versions import TrafficPolicy

log = logging.getLogger(__name__)

TRAFFIC_FILE = "traffic.json"
VERSIONS_DIR = "versions"
MAX_POLICY_BYTES = 64 * 1024
STATS_PREFIX = "version-stats/"   # version-stats/<worker>.json: a worker's recent outcomes per version


def stats_key(instance_id: str) -> str:
    """S3 key of one worker's recent version outcomes (read by the autoscaler's canary controller)."""
    return f"{STATS_PREFIX}{instance_id}.json"


def traffic_key(service: str) -> str:
    """S3 key of a service's traffic policy."""
    return naming.model_key(service, TRAFFIC_FILE)


def is_version_file(rest: str) -> bool:
    """True for keys under models/<service>/ that belong to versions, not to the service's own entry."""
    return rest == TRAFFIC_FILE or rest.startswith(VERSIONS_DIR + "/")


class TrafficStore:
    """Reads and writes traffic.json; a missing object is the default policy (all traffic to v1)."""

    def __init__(self, settings: Settings, s3=None):
        self.settings = settings
        self._s3 = s3

    @property
    def s3(self):
        """The S3 client (created on first use)."""
        if self._s3 is None:
            from shared.aws import client
            self._s3 = client("s3", self.settings)
        return self._s3

    def read(self, service: str) -> tuple[TrafficPolicy, bool]:
        """(policy, stored): the default policy with stored False when there is no traffic.json.

        Raises VersionError for an invalid document and ClientError when S3 cannot be read.
        """
        try:
            obj = self.s3.get_object(Bucket=self.settings.bucket_name, Key=traffic_key(service))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return TrafficPolicy(service=service), False
            raise
        return TrafficPolicy.from_json(service, obj["Body"].read(MAX_POLICY_BYTES + 1)), True

    def write(self, policy: TrafficPolicy) -> None:
        """Store the policy (the web picks it up within catalogue_ttl_s)."""
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=traffic_key(policy.service),
                           Body=policy.to_json().encode(), ContentType="application/json")
        log.info("traffic %s: weights %s, live %s, shadow %s (%.2f), pinning %s", policy.service, policy.weights,
                 policy.live, policy.shadow, policy.shadow_share, policy.pinning)

    def stored_services(self) -> list[str]:
        """Services that have a traffic.json."""
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket_name,
                                                                  Prefix=naming.models_prefix())
        for page in pages:
            for obj in page.get("Contents", []):
                service, _, rest = obj["Key"][len(naming.models_prefix()):].partition("/")
                if rest == TRAFFIC_FILE:
                    out.append(service)
        return out


class LiveTraffic:
    """Policies for the web, each re-read at most every ttl seconds; an unreadable one keeps the last good one."""

    def __init__(self, settings: Settings, s3=None, clock=time.monotonic):
        self.store = TrafficStore(settings, s3)
        self.ttl = settings.catalogue_ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, TrafficPolicy, bool, str | None]] = {}
        self._lock = threading.Lock()

    def get(self, service: str) -> tuple[TrafficPolicy, bool]:
        """(policy, stored) for the service, from the cache when fresh."""
        now = self.clock()
        cached = self._cache.get(service)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1], cached[2]
        with self._lock:
            cached = self._cache.get(service)   # again: threads that found it stale together read S3 once
            if cached is not None and now - cached[0] < self.ttl:
                return cached[1], cached[2]
            try:
                policy, stored = self.store.read(service)
                error = None
            except Exception as exc:  # VersionError, ClientError, an endpoint down: never fail a request over it
                # a bad or unreadable policy must not stop the service: keep the last good one (or v1 only)
                log.error("traffic %s: policy unreadable (%s); keeping the last good one", service, exc)
                policy, stored = (cached[1], cached[2]) if cached else (TrafficPolicy(service=service), False)
                error = str(exc)
            self._cache[service] = (now, policy, stored, error)
        return policy, stored

    def error(self, service: str) -> str | None:
        """Why the service's policy was last found unreadable (None when it was fine)."""
        cached = self._cache.get(service)
        return cached[3] if cached else None
