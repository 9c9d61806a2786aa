"""Metric definitions (the one list) and a buffered CloudWatch publisher.

Every emitter, the review command and the Terraform dashboard read DEFINITIONS;
there is no second list. Publishing never happens on a request's hot path:
record() appends to an in-memory buffer and a background thread sends one
put_metric_data batch per interval (and/or writes embedded-metric-format log
lines, settings.metrics_sink). A failing endpoint loses metrics, never requests.
"""
from __future__ import annotations

import json
import logging
import math
import sys
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
    MetricDef("WorkTime", "Milliseconds", ("Service",), "worker", "Average",
              "worker time per request: its batch's fetch, decode, inference, reply, record, delete / batch size"),
    MetricDef("Images", "Count", ("Service",), "worker", "Sum", "images classified (images/s = Sum / period)"),
    MetricDef("Errors", "Count", ("Service", "Code"), "worker", "Sum", "error replies by code"),
    # worker, per service version (docs/VERSIONS.md); only for requests routed to a version
    MetricDef("VersionImages", "Count", ("Service", "Version"), "worker", "Sum", "images answered by a version"),
    MetricDef("VersionErrors", "Count", ("Service", "Version"), "worker", "Sum",
              "a version's failures (unavailable, failed to load, model error; shadow runs too)"),
    MetricDef("VersionInferenceTime", "Milliseconds", ("Service", "Version"), "worker", "Average",
              "a version's model time per batch (shadow runs too)"),
    MetricDef("ShadowAgreement", "None", ("Service", "Version"), "worker", "Average",
              "shadow runs whose top-1 equals the primary answer's (mean = agreement rate)"),
    MetricDef("ShadowScoreDiff", "None", ("Service", "Version"), "worker", "Average",
              "absolute difference of the shadow's and the primary's top-1 scores"),
    # autoscaler
    MetricDef("QueueVisible", "Count", ("Service",), "autoscaler", "Maximum", "messages waiting"),
    MetricDef("QueueInFlight", "Count", ("Service",), "autoscaler", "Maximum", "messages being processed"),
    MetricDef("QueueDelayed", "Count", ("Service",), "autoscaler", "Maximum", "messages delayed"),
    MetricDef("FleetRunning", "Count", (), "autoscaler", "Maximum", "workers running"),
    MetricDef("FleetPending", "Count", (), "autoscaler", "Maximum", "workers starting"),
    MetricDef("FleetDesired", "Count", (), "autoscaler", "Maximum", "fleet size the policy wants"),
    MetricDef("ScalingDecision", "Count", ("Action",), "autoscaler", "Sum", "decisions by action (launch/terminate/hold)"),
    MetricDef("CanaryRollbacks", "Count", ("Service", "Version"), "autoscaler", "Sum",
              "canaries whose traffic the controller took away (error rate or p95 past the bound)"),
)
BY_NAME: dict[str, MetricDef] = {d.name: d for d in DEFINITIONS}

SINKS = ("api", "emf", "both")
MISSING_DIM = "none"             # the value of a dimension the caller did not give

_MAX_VALUES_PER_DATUM = 150      # CloudWatch limit for Values/Counts
_MAX_DATA_PER_CALL = 500         # CloudWatch allows 1000 data per call ...
_MAX_VALUES_PER_CALL = 3000      # ... and 1 MB per request: bound the values too
_MAX_BUFFERED_KEYS = 5000        # bound memory if callers invent many dimension values
_MAX_BACKLOG = 2000              # data kept for one retry after a failed call
_MAX_DIM_LEN = 255               # CloudWatch allows 1024; shorter keeps dashboards readable
_EMF_MAX_VALUES = 100            # EMF allows at most 100 values per metric per document
_SIGNIFICANT = 4                 # values are kept to 4 significant digits (<= 0.05 % error)


def quantize(value: float) -> float:
    """Round to _SIGNIFICANT significant digits, so a busy interval has few distinct values."""
    if value == 0:
        return 0.0
    digits = _SIGNIFICANT - 1 - int(math.floor(math.log10(abs(value))))
    return round(value, digits)


def _dim_value(raw: object) -> str:
    text = str(raw) if raw is not None else ""
    return text[:_MAX_DIM_LEN] if text.strip() else MISSING_DIM


class MetricsPublisher:
    """Buffered put_metric_data: record() is O(1), never raises and never touches the network."""

    def __init__(self, settings: Settings, component: str, client=None, static_dims: dict | None = None):
        self.settings = settings
        self.component = component
        self.enabled = settings.metrics_enabled
        self.namespace = settings.metrics_namespace
        self.interval = max(0.05, float(settings.metrics_interval_s))
        sink = settings.metrics_sink if settings.metrics_sink in SINKS else "api"
        if sink != settings.metrics_sink:
            log.warning("metrics: unknown sink %r, using 'api' (one of %s)", settings.metrics_sink, SINKS)
        self.sink = sink
        self.static_dims = {k: _dim_value(v) for k, v in (static_dims or {}).items()}
        self._client = client
        if self.enabled and self.sink != "emf" and client is None:
            # created once, now: the endpoint this process was configured with, not whatever is set later
            self._client = self._cw()
        self._lock = threading.Lock()
        self._buf: dict[tuple, dict[float, int]] = defaultdict(lambda: defaultdict(int))
        self._backlog: list[dict] = []
        self._warned: set[tuple] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recorded = 0
        self.dropped = 0
        self.sent_calls = 0
        self.failed_calls = 0
        self.sent_values = 0

    # -- the hot path ------------------------------------------------------

    def record(self, name: str, value: float = 1.0, **dims: str) -> None:
        """Buffer one value under its defined dimensions (missing ones read 'none'); never raises."""
        if not self.enabled:
            return
        try:
            d = BY_NAME.get(name)
            if d is None:
                self._warn_once(("name", name), "metrics: %r is not in DEFINITIONS; not recorded", name)
                return
            value = float(value)
            if not math.isfinite(value):
                # one NaN would make CloudWatch reject the whole batch
                self._warn_once(("nan", name), "metrics: %s value %r is not finite; not recorded", name, value)
                return
            extra = set(dims) - set(d.dimensions)
            if extra:
                self._warn_once(("dims", name, tuple(sorted(extra))),
                                "metrics: %s has no dimension(s) %s; ignored", name, sorted(extra))
            key = (name, tuple((k, _dim_value(dims.get(k))) for k in d.dimensions))
            q = quantize(value)
            with self._lock:
                if key not in self._buf and len(self._buf) >= _MAX_BUFFERED_KEYS:
                    self.dropped += 1
                    return
                self._buf[key][q] += 1
                self.recorded += 1
        except Exception:  # metrics must never fail the caller
            log.exception("metrics: %s not recorded", name)

    def _warn_once(self, key: tuple, msg: str, *args) -> None:
        if key not in self._warned and len(self._warned) < 1000:
            self._warned.add(key)
            log.warning(msg, *args)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> "MetricsPublisher":
        """Start the background flusher (no-op when disabled or already started)."""
        if self.enabled and self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"metrics-{self.component}", daemon=True)
            self._thread.start()
        return self

    def close(self, flush: bool = True, timeout: float = 10.0) -> None:
        """Stop the flusher and send what is buffered once more (bounded by the client's timeouts)."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=timeout)
            if thread.is_alive():
                # the flusher is stuck on a dead endpoint: do not queue behind it
                log.warning("metrics: flusher still busy after %.0f s; final flush skipped", timeout)
                return
        if flush and self.enabled:
            self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.flush()
            except Exception:  # keep flushing whatever went wrong once
                log.exception("metrics: flush failed")

    # -- sending -----------------------------------------------------------

    def flush(self) -> int:
        """Send the buffer (and the last failed batch) now; returns the number of data sent."""
        with self._lock:
            buf, self._buf = self._buf, defaultdict(lambda: defaultdict(int))
            backlog, self._backlog = self._backlog, []
        fresh = list(self._datums(buf))
        if self.sink in ("emf", "both") and fresh:
            self._write_emf(fresh)
        if self.sink == "emf":
            return len(fresh)
        data = backlog + fresh
        if not data:
            return 0
        sent = 0
        try:
            cw = self._cw()
            for chunk in _calls(data):
                cw.put_metric_data(Namespace=self.namespace, MetricData=chunk)
                self.sent_calls += 1
                sent += len(chunk)
                self.sent_values += sum(len(x["Values"]) for x in chunk)
        except Exception as exc:
            self.failed_calls += 1
            # retry the fresh part once next interval; data that already failed once is dropped
            retry = data[max(sent, len(backlog)):][:_MAX_BACKLOG]
            lost = len(data) - sent - len(retry)
            with self._lock:
                self._backlog = retry + self._backlog
                self.dropped += lost
            log.warning("metrics: put_metric_data to %s failed (%d data kept for retry, %d dropped): %s",
                        self.namespace, len(retry), lost, exc)
        return sent

    def _datums(self, buf: dict) -> Iterable[dict]:
        now = time.time()
        for (name, dims), hist in buf.items():
            d = BY_NAME[name]
            dimensions = [{"Name": k, "Value": v} for k, v in dims]
            dimensions += [{"Name": k, "Value": v} for k, v in self.static_dims.items()]
            items = sorted(hist.items())
            for i in range(0, len(items), _MAX_VALUES_PER_DATUM):
                chunk = items[i:i + _MAX_VALUES_PER_DATUM]
                yield {"MetricName": name, "Dimensions": dimensions, "Timestamp": now, "Unit": d.unit,
                       "Values": [v for v, _ in chunk], "Counts": [float(c) for _, c in chunk]}

    def _cw(self):
        if self._client is None:
            from shared.aws import client
            # short timeouts and one retry: a dead endpoint must not hold the flusher for long
            self._client = client("cloudwatch", self.settings, retries={"mode": "standard", "max_attempts": 2},
                                  connect_timeout=2, read_timeout=5)
        return self._client

    def _write_emf(self, data: list[dict]) -> None:
        """Write embedded-metric-format documents (CloudWatch Logs extracts the metrics)."""
        try:
            lines = [json.dumps(doc, separators=(",", ":")) for x in data for doc in emf_documents(self.namespace, x)]
            text = "\n".join(lines) + "\n"
            if self.settings.metrics_emf_path:
                with open(self.settings.metrics_emf_path, "a", encoding="utf-8") as fh:
                    fh.write(text)
            else:
                sys.stdout.write(text)
                sys.stdout.flush()
        except Exception as exc:
            with self._lock:
                self.dropped += len(data)
            log.warning("metrics: EMF write failed, %d data dropped: %s", len(data), exc)


def _calls(data: list[dict]) -> Iterable[list[dict]]:
    """Split data into put_metric_data calls under the per-call data and size limits."""
    chunk: list[dict] = []
    values = 0
    for x in data:
        n = len(x["Values"])
        if chunk and (len(chunk) >= _MAX_DATA_PER_CALL or values + n > _MAX_VALUES_PER_CALL):
            yield chunk
            chunk, values = [], 0
        chunk.append(x)
        values += n
    if chunk:
        yield chunk


def emf_documents(namespace: str, datum: dict) -> Iterable[dict]:
    """One datum as EMF documents (EMF has no Counts: values repeat, at most 100 per document)."""
    expanded = [v for v, c in zip(datum["Values"], datum["Counts"]) for _ in range(int(c))]
    dims = {d["Name"]: d["Value"] for d in datum["Dimensions"]}
    for i in range(0, len(expanded), _EMF_MAX_VALUES):
        doc = {"_aws": {"Timestamp": int(datum["Timestamp"] * 1000),
                        "CloudWatchMetrics": [{"Namespace": namespace, "Dimensions": [list(dims)],
                                               "Metrics": [{"Name": datum["MetricName"], "Unit": datum["Unit"]}]}]}}
        doc.update(dims)
        doc[datum["MetricName"]] = expanded[i:i + _EMF_MAX_VALUES]
        yield doc


class NullMetrics(MetricsPublisher):
    """A publisher that records nothing (metrics disabled)."""

    def __init__(self):
        super().__init__(Settings(metrics_enabled=False), "null")
