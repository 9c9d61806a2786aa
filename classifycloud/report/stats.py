"""Exact statistics for the review: percentiles by linear interpolation, per-service summaries."""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """Exact q-th percentile (0..100) by linear interpolation between closest ranks.

    This is Hyndman & Fan's definition 7 (numpy's default 'linear'): with the n
    values sorted, the percentile sits at rank h = (n - 1) * q / 100 and is
    x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]).
    NaN for an empty input.
    """
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    xs = sorted(float(v) for v in values)
    if not xs:
        return math.nan
    h = (len(xs) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True)
class Record:
    """One result record (results/<id>.json), reduced to what the review needs."""

    id: str
    service: str
    status: str                 # ok | error
    code: str                   # error code, "" when ok
    at: float                   # completion time, epoch seconds (S3 LastModified)
    total_ms: float | None
    queue_ms: float | None
    fetch_ms: float | None
    inference_ms: float | None
    worker: str = ""


@dataclass
class ServiceSummary:
    """What the table shows for one service."""

    service: str
    count: int = 0
    ok: int = 0
    errors: int = 0
    errors_by_code: dict = field(default_factory=dict)
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    mean_ms: float = math.nan
    max_ms: float = math.nan
    mean_queue_ms: float = math.nan
    mean_fetch_ms: float = math.nan
    mean_inference_ms: float = math.nan
    span_s: float = 0.0
    throughput_rps: float = 0.0
    workers: int = 0


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def summarize_records(records: Iterable[Record]) -> dict[str, ServiceSummary]:
    """Per-service counts, exact latency percentiles (total_ms, every record) and throughput."""
    by_service: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_service[r.service].append(r)
    out = {}
    for service in sorted(by_service):
        rs = by_service[service]
        s = ServiceSummary(service)
        s.count = len(rs)
        s.ok = sum(1 for r in rs if r.status == "ok")
        s.errors = s.count - s.ok
        s.errors_by_code = dict(sorted(Counter(r.code or "unknown" for r in rs if r.status != "ok").items()))
        totals = [r.total_ms for r in rs if r.total_ms is not None]
        if totals:
            s.p50_ms, s.p95_ms, s.p99_ms = (percentile(totals, q) for q in (50, 95, 99))
            s.mean_ms, s.max_ms = _mean(totals), max(totals)
        s.mean_queue_ms = _mean([r.queue_ms for r in rs if r.queue_ms is not None])
        s.mean_fetch_ms = _mean([r.fetch_ms for r in rs if r.fetch_ms is not None])
        s.mean_inference_ms = _mean([r.inference_ms for r in rs if r.inference_ms is not None])
        # active span: from the first submission (completion - total) to the last completion
        first = min(r.at - (r.total_ms or 0.0) / 1000.0 for r in rs)
        last = max(r.at for r in rs)
        s.span_s = max(last - first, 1.0)   # S3 times have 1 s resolution
        s.throughput_rps = s.count / s.span_s
        s.workers = len({r.worker for r in rs if r.worker})
        out[service] = s
    return out


@dataclass
class FleetSummary:
    """Fleet size over the window, from the autoscaler's FleetRunning / FleetPending metrics."""

    periods: int = 0
    running_max: float = math.nan
    pending_max: float = math.nan
    desired_max: float = math.nan
    size_max: float = math.nan          # max over periods of (max running + max pending)
    size_mean: float = math.nan         # mean over periods of (avg running + avg pending)
    instance_minutes: float = 0.0       # sum over periods of (avg running + avg pending) * period


def summarize_fleet(series: dict, period_s: int) -> FleetSummary:
    """Fleet numbers from series keyed (metric, dims, stat) -> {epoch_s: value}."""
    def get(name: str, stat: str) -> dict:
        return series.get((name, (), stat), {})

    run_max, pend_max = get("FleetRunning", "Maximum"), get("FleetPending", "Maximum")
    run_avg, pend_avg = get("FleetRunning", "Average"), get("FleetPending", "Average")
    desired = get("FleetDesired", "Maximum")
    f = FleetSummary()
    stamps = sorted(set(run_avg) | set(pend_avg))
    f.periods = len(stamps)
    if run_max:
        f.running_max = max(run_max.values())
    if pend_max:
        f.pending_max = max(pend_max.values())
    if desired:
        f.desired_max = max(desired.values())
    if stamps:
        sizes_max = [run_max.get(t, 0.0) + pend_max.get(t, 0.0) for t in stamps]
        sizes_avg = [run_avg.get(t, 0.0) + pend_avg.get(t, 0.0) for t in stamps]
        f.size_max = max(sizes_max)
        f.size_mean = sum(sizes_avg) / len(sizes_avg)
        f.instance_minutes = sum(sizes_avg) * period_s / 60.0
    return f


def totals_by_dims(series: dict, name: str, stat: str = "Sum") -> dict[tuple, float]:
    """Sum of a metric's per-period values for each dimension combination."""
    out: dict[tuple, float] = {}
    for (metric, dims, st), points in series.items():
        if metric == name and st == stat:
            out[dims] = out.get(dims, 0.0) + sum(points.values())
    return dict(sorted(out.items()))


def bucket_percentiles(records: Iterable[Record], period_s: int, qs=(50, 95)) -> dict[str, dict[float, list]]:
    """Per service, per period start (epoch s): exact latency percentiles of records completed in it."""
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.total_ms is not None:
            groups[r.service][math.floor(r.at / period_s) * period_s].append(r.total_ms)
    return {svc: {t: [percentile(v, q) for q in qs] for t, v in sorted(b.items())} for svc, b in groups.items()}
