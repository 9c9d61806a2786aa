"""The loop's inputs: request-queue attributes, worker heartbeats, and service-time estimates."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from autoscaler.policy import QueueStats, ewma
from shared.catalogue import Catalogue
from shared.config import Settings
from shared.heartbeats import fresh_heartbeats
from shared.transport import QueueGone, Transport

log = logging.getLogger(__name__)


class QueueReader:
    """Reads visible / in-flight / delayed counts of every request queue in the catalogue."""

    def __init__(self, settings: Settings, catalogue: Catalogue, transport: Transport, create_missing: bool = False):
        self.settings = settings
        self.catalogue = catalogue    # a LiveCatalogue grows with S3 entries: read its names every tick
        self.transport = transport
        self.create_missing = create_missing

    @property
    def services(self) -> list[str]:
        """The services whose queues are read (the catalogue's, now)."""
        return self.catalogue.names()

    def url(self, service: str) -> str | None:
        """A request queue's URL (the transport caches it); None when the queue does not exist."""
        try:
            return self.transport.request_queue_url(service)
        except QueueGone:
            if not self.create_missing:
                log.warning("request queue for service %s does not exist; not counted", service)
                return None
        # a service added by an S3 entry alone: its queue is created here (IAM: the requests- prefix only)
        from shared.service_queues import ensure_request_queue
        url = ensure_request_queue(self.transport, self.settings, service)
        log.info("created the request queue of new service %s", service)
        return url

    def read(self) -> list[QueueStats]:
        """One QueueStats per existing request queue; AWS errors propagate (the loop skips the tick)."""
        out = []
        for service in self.services:
            url = self.url(service)
            if url is None:
                continue
            try:
                depth = self.transport.depth(url)
            except QueueGone:   # deleted since it was looked up: found (or created) again next tick
                log.warning("request queue for service %s is gone; not counted this tick", service)
                continue
            out.append(QueueStats(service=service, visible=depth.visible, in_flight=depth.in_flight,
                                  delayed=depth.delayed))
        return out


@dataclass(frozen=True)
class Heartbeats:
    """What the fresh heartbeats say about the workers."""

    idle: int
    busy: int
    stopping: int
    ids: tuple[str, ...]
    records: tuple[dict, ...] = ()      # the fresh heartbeat documents (worker health reads started_at)


class HeartbeatReader:
    """Reads heartbeats/<instance>.json from the bucket; only fresh ones count."""

    def __init__(self, settings: Settings, s3, clock=time.time):
        self.settings = settings
        self.s3 = s3
        self.clock = clock

    def read(self) -> Heartbeats:
        """Idle (ready, busy == 0), busy and stopping workers among fresh heartbeats."""
        beats = fresh_heartbeats(self.settings, self.s3, self.clock() * 1000)
        stopping = sum(hb.state == "stopping" for hb in beats)
        busy = sum(hb.state != "stopping" and hb.busy > 0 for hb in beats)
        return Heartbeats(idle=len(beats) - stopping - busy, busy=busy, stopping=stopping,
                          ids=tuple(hb.instance_id for hb in beats), records=tuple(hb.to_dict() for hb in beats))


class ServiceTimes:
    """seconds_per_request per service: catalogue estimate, refined by EWMA from worker metrics.

    Source: CloudWatch WorkTime, the worker's measured time per request (its batch's fetch, decode,
    inference, reply, record and delete over the batch size), Average over the last five minutes.
    The forward pass alone under-sizes the fleet for slow fetches. Any failure keeps the current estimate.
    """

    WINDOW_S = 300

    def __init__(self, settings: Settings, catalogue: Catalogue, cloudwatch=None, clock=time.time):
        self.settings = settings
        self.cw = cloudwatch
        self.clock = clock
        self.catalogue = catalogue
        self.estimates: dict[str, float] = {
            name: (spec.seconds_per_request or settings.seconds_per_request)
            for name, spec in catalogue.services.items()}
        self._refreshed_at: float | None = None

    def current(self) -> dict[str, float]:
        """The estimates, refreshed from metrics when due."""
        for name, spec in self.catalogue.services.items():  # services added live start from their entry's estimate
            self.estimates.setdefault(name, spec.seconds_per_request or self.settings.seconds_per_request)
        now = self.clock()
        if self.cw is not None and (self._refreshed_at is None
                                    or now - self._refreshed_at >= self.settings.service_time_refresh_s):
            self._refreshed_at = now
            for service in list(self.estimates):
                try:
                    observed = self._observe(service, now)
                except Exception as exc:     # metrics are advisory: never fail the loop over them
                    log.warning("service times: cannot read metrics for %s: %s", service, exc)
                    continue
                if observed is not None:
                    self.update(service, observed)
        return dict(self.estimates)

    def update(self, service: str, observed_s: float) -> None:
        """Fold one observed seconds-per-request into the estimate."""
        if observed_s > 0:
            self.estimates[service] = ewma(self.estimates.get(service), observed_s,
                                           self.settings.service_time_alpha)

    def _observe(self, service: str, now: float) -> float | None:
        work_ms = self._average("WorkTime", service, now)
        return None if work_ms is None else work_ms / 1000.0

    def _average(self, metric: str, service: str, now: float) -> float | None:
        end = datetime.fromtimestamp(now, tz=timezone.utc)
        resp = self.cw.get_metric_statistics(
            Namespace=self.settings.metrics_namespace, MetricName=metric,
            Dimensions=[{"Name": "Service", "Value": service}],
            StartTime=end - timedelta(seconds=self.WINDOW_S), EndTime=end + timedelta(seconds=60),
            Period=self.WINDOW_S + 60,
            Statistics=["Average", "SampleCount"])
        points = resp.get("Datapoints", [])
        total = sum(p["SampleCount"] for p in points)
        if not total:
            return None
        return sum(p["Average"] * p["SampleCount"] for p in points) / total
