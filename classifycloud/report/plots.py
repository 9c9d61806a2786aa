"""PNG plots for the review (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from classifycloud.report.stats import Record, ServiceSummary, bucket_percentiles  # noqa: E402


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def _line(ax, points: dict, label: str, **kw) -> bool:
    if not points:
        return False
    xs = sorted(points)
    ax.plot([_dt(t) for t in xs], [points[t] for t in xs], marker=".", label=label, **kw)
    return True


def _mid(points: dict, period_s: int) -> dict:
    """CloudWatch stamps a period by its start; plot it at its middle, like the record buckets."""
    return {t + period_s / 2: v for t, v in points.items()}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def timeline(series: dict, records: list[Record], period_s: int, path: str) -> str:
    """Queue depth, fleet size and latency over time, on one shared time axis."""
    fig, (q_ax, f_ax, l_ax) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    drew = False
    queues: dict[str, dict] = {}
    for (name, dims, stat), pts in sorted(series.items()):
        if name in ("QueueVisible", "QueueInFlight") and stat == "Maximum":
            queues.setdefault(dict(dims).get("Service", "?"), {})[name] = pts
    # services whose queue stayed empty would only crowd the legend: counted in the title, not drawn
    idle = sorted(svc for svc, m in queues.items() if not any(v for pts in m.values() for v in pts.values()))
    for svc in sorted(set(queues) - set(idle)):
        for name, what, style in (("QueueVisible", "waiting", "-"), ("QueueInFlight", "in flight", "--")):
            drew |= _line(q_ax, _mid(queues[svc].get(name, {}), period_s), f"{svc} {what}", linestyle=style)
    if not drew:
        _empty(q_ax, "every queue stayed empty" if queues else "no queue metrics in the window")
    q_ax.set_ylabel("messages")
    q_ax.set_title("Queue depth (autoscaler, max per period)"
                   + (f"; {len(idle)} idle queue(s) not drawn" if idle and drew else ""))

    drew = False
    for name, style in (("FleetRunning", "-"), ("FleetPending", ":"), ("FleetDesired", "--")):
        drew |= _line(f_ax, series.get((name, (), "Maximum"), {}), name[5:].lower(), linestyle=style,
                      drawstyle="steps-post")
    if not drew:
        _empty(f_ax, "no fleet metrics in the window")
    f_ax.set_ylabel("workers")
    f_ax.set_title("Fleet size (autoscaler, max per period)")

    drew = False
    for svc, buckets in sorted(bucket_percentiles(records, period_s, (50, 95)).items()):
        drew |= _line(l_ax, {t + period_s / 2: v[0] for t, v in buckets.items()}, f"{svc} p50 (records)")
        drew |= _line(l_ax, {t + period_s / 2: v[1] for t, v in buckets.items()}, f"{svc} p95 (records)",
                      linestyle="--")
    for (name, dims, stat), pts in sorted(series.items()):
        if name == "Latency" and stat == "Average":
            drew |= _line(l_ax, _mid(pts, period_s), f"{dict(dims).get('Service', '?')} web mean (CloudWatch)",
                          linestyle=":")
    if not drew:
        _empty(l_ax, "no latency data in the window")
    l_ax.set_ylabel("ms")
    l_ax.set_title(f"Latency, submit to reply (per {period_s} s)")

    for ax in (q_ax, f_ax, l_ax):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small", loc="upper left")
    l_ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=timezone.utc))
    l_ax.set_xlabel("time (UTC)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def latency_distribution(records: list[Record], summaries: dict[str, ServiceSummary], path: str) -> str:
    """Per service: histogram of total latency with the exact p50/p95/p99 marked."""
    services = [s for s in summaries if any(r.service == s and r.total_ms is not None for r in records)]
    n = max(1, len(services))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 3.6 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    if not services:
        _empty(flat[0], "no result records in the window")
    for ax, svc in zip(flat, services):
        values = [r.total_ms for r in records if r.service == svc and r.total_ms is not None]
        s = summaries[svc]
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="#4c72b0", alpha=0.8)
        for q, v, color in (("p50", s.p50_ms, "green"), ("p95", s.p95_ms, "orange"), ("p99", s.p99_ms, "red")):
            if not math.isnan(v):
                ax.axvline(v, color=color, linestyle="--", label=f"{q} {v:.0f} ms")
        ax.set_title(f"{svc}: {len(values)} requests")
        ax.set_xlabel("total latency (ms)")
        ax.set_ylabel("requests")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for ax in flat[len(services) or 1:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_breakdown(summaries: dict[str, ServiceSummary], path: str) -> str:
    """Per service: mean queue wait, fetch and inference time (stacked), from the records."""
    fig, ax = plt.subplots(figsize=(8, 0.8 + 0.6 * max(1, len(summaries))))
    names = list(summaries)
    left = [0.0] * len(names)
    for attr, label in (("mean_queue_ms", "queue wait"), ("mean_fetch_ms", "fetch"),
                        ("mean_inference_ms", "inference")):
        vals = [0.0 if math.isnan(getattr(summaries[n], attr)) else getattr(summaries[n], attr) for n in names]
        ax.barh(names, vals, left=left, label=label)
        left = [a + b for a, b in zip(left, vals)]
    if not names:
        _empty(ax, "no result records in the window")
    ax.set_xlabel("mean ms per request")
    ax.set_title("Where the time goes (worker timings)")
    if names:
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
