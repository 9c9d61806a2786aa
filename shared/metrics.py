"""Metric definitions (the one list) and a buffered CloudWatch publisher.

Every emitter, the review command and the Terraform dashboard read DEFINITIONS;
there is no second list. Publishing never happens on a request's hot path:
record() appends to an in-memory buffer and a background thread sends one
put_metric_data batch per interval. A failing endpoint loses metrics, never requests.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from shared.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricDef:
    """One metric: name, CloudWatch unit, dimension names, who emits it, how to aggregate it."""

    name: str
    unit: str
    dimensions: tuple[str, ...]
    component: str            # web | worker | autoscaler
    stat: str                 # the statistic that makes sense: Sum | Average | Maximum
    description: str


DEFINITIONS: tuple[MetricDef, ...] = (
    # web
    MetricDef("Requests", "Count", ("Route", "Status"), "web", "Sum", "HTTP requests by route and status"),
    MetricDef("Latency", "Milliseconds", ("Service",), "web", "Average", "end-to-end latency of answered requests"),
    MetricDef("Timeouts", "Count", ("Service",), "web", "Sum", "requests answered 504 (no reply in time)"),
    # worker
    MetricDef("QueueWait", "Milliseconds", ("Service",), "worker", "Average", "submit to receive"),
    MetricDef("FetchTime", "Milliseconds", ("Service",), "worker", "Average", "image download / S3 read"),
    MetricDef("InferenceTime", "Milliseconds", ("Service",), "worker", "Average", "model time per batch"),
    MetricDef("TotalTime", "Milliseconds", ("Service",), "worker", "Average", "submit to reply sent"),
    MetricDef("BatchSize", "Count", ("Service",), "worker", "Average", "images per inference batch"),
    MetricDef("Images", "Count", ("Service",), "worker", "Sum", "images classified (images/s = Sum / period)"),
    MetricDef("Errors", "Count", ("Service", "Code"), "worker", "Sum", "error replies by code"),
    # autoscaler
    MetricDef("QueueVisible", "Count", ("Service",), "autoscaler", "Maximum", "messages waiting"),
    MetricDef("QueueInFlight", "Count", ("Service",), "autoscaler", "Maximum", "messages being processed"),
    MetricDef("QueueDelayed", "Count", ("Service",), "autoscaler", "Maximum", "messages delayed"),
    MetricDef("FleetRunning", "Count", (), "autoscaler", "Maximum", "workers running"),
    MetricDef("FleetPending", "Count", (), "autoscaler", "Maximum", "workers starting"),
    MetricDef("FleetDesired", "Count", (), "autoscaler", "Maximum", "fleet size the policy wants"),
    MetricDef("ScalingDecision", "Count", ("Action",), "autoscaler", "Sum", "decisions by action (launch/terminate/hold)"),
)
BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}

_MAX_VALUES_PER_DATUM = 150      # CloudWatch limit for Values/Counts
_MAX_DATA_PER_CALL = 500         # stay under the 1 MB / 1000-datum limits
_MAX_BUFFERED_KEYS = 5000        # bound memory if the endpoint is down for long


class MetricsPublisher:
    """Buffered put_metric_data: record() is O(1) and never raises; a thread flushes."""

    def __init__(self, settings: Settings, component: str, client=None, static_dims: dict | None = None):
        self.settings = settings
        self.component = component
        self.enabled = settings.metrics_enabled
        self.namespace = settings.metrics_namespace
        self.interval = settings.metrics_interval_s
        self.static_dims = dict(static_dims or {})
        self._client = client
        self._lock = threading.Lock()
        self._buf: dict[tuple, dict[float, int]] = defaultdict(lambda: defaultdict(int))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.sent_calls = 0
        self.failed_calls = 0

    def record(self, name: str, value: float = 1.0, **dims: str) -> None:
        """Buffer one value (values are aggregated as Values/Counts)."""
        if not self.enabled:
            return
        try:
            d = BY_NAME[name]
            key = (name, tuple((k, str(dims.get(k, "none"))) for k in d.dimensions))
            with self._lock:
                if key not in self._buf and len(self._buf) >= _MAX_BUFFERED_KEYS:
                    self.dropped += 1
                    return
                self._buf[key][round(float(value), 3)] += 1
        except Exception:  # metrics must never fail the caller
            log.exception("metric %s not recorded", name)

    def start(self) -> "MetricsPublisher":
        """Start the background flusher (no-op when disabled)."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"metrics-{self.component}", daemon=True)
            self._thread.start()
        return self

    def close(self, flush: bool = True) -> None:
        """Stop the flusher; send what is buffered once more."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
        if flush:
            self.flush()

    def flush(self) -> int:
        """Send the buffer now; returns the number of data sent (0 on failure, which is logged)."""
        with self._lock:
            buf, self._buf = self._buf, defaultdict(lambda: defaultdict(int))
        data = list(self._datums(buf))
        if not data:
            return 0
        sent = 0
        try:
            cw = self._cw()
            for i in range(0, len(data), _MAX_DATA_PER_CALL):
                cw.put_metric_data(Namespace=self.namespace, MetricData=data[i:i + _MAX_DATA_PER_CALL])
                self.sent_calls += 1
                sent += len(data[i:i + _MAX_DATA_PER_CALL])
        except Exception as exc:
            self.failed_calls += 1
            self.dropped += len(data) - sent
            log.warning("metrics: put_metric_data failed, %d data dropped: %s", len(data) - sent, exc)
        return sent

    def _datums(self, buf: dict) -> Iterable[dict]:
        now = time.time()
        for (name, dims), hist in buf.items():
            d = BY_NAME[name]
            dimensions = [{"Name": k, "Value": v} for k, v in dims]
            dimensions += [{"Name": k, "Value": v} for k, v in self.static_dims.items()]
            items = list(hist.items())
            for i in range(0, len(items), _MAX_VALUES_PER_DATUM):
                chunk = items[i:i + _MAX_VALUES_PER_DATUM]
                yield {"MetricName": name, "Dimensions": dimensions, "Timestamp": now, "Unit": d.unit,
                       "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk]}

    def _cw(self):
        if self._client is None:
            from shared.aws import client
            # short timeouts and few retries: a dead endpoint must not hold the flusher for long
            self._client = client("cloudwatch", self.settings, connect_timeout=2, read_timeout=5)
        return self._client

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()


class NullMetrics(MetricsPublisher):
    """A publisher that records nothing (metrics disabled)."""

    def __init__(self):
        super().__init__(Settings(metrics_enabled=False), "null")
