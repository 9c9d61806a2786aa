"""The review's tables, built once as rows and rendered as text (terminal) or HTML."""
from __future__ import annotations

import math
from dataclasses import dataclass

from classifycloud.report.stats import FleetSummary, ServiceSummary


@dataclass
class Table:
    """A titled table of strings."""

    title: str
    header: list[str]
    rows: list[list[str]]
    note: str = ""


def fmt(v: float, digits: int = 0) -> str:
    """A number for a table cell ('-' when there is none)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def service_table(summaries: dict[str, ServiceSummary]) -> Table:
    """Per service: count, errors, exact p50/p95/p99 latency, throughput, stage means."""
    rows = [[s.service, str(s.count), str(s.ok), str(s.errors), fmt(s.p50_ms, 1), fmt(s.p95_ms, 1), fmt(s.p99_ms, 1),
             fmt(s.max_ms, 1), fmt(s.throughput_rps, 2), fmt(s.mean_queue_ms), fmt(s.mean_fetch_ms),
             fmt(s.mean_inference_ms), str(s.workers)] for s in summaries.values()]
    return Table("Requests per service (from the result records in S3)",
                 ["service", "count", "ok", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "req/s",
                  "queue ms", "fetch ms", "infer ms", "workers"], rows,
                 "latency = timings_ms.total (submit to reply); percentiles exact, linear interpolation; "
                 "req/s over the active span (first submit to last reply)")


def error_table(summaries: dict[str, ServiceSummary], cw_errors: dict[tuple, float]) -> Table:
    """Errors by service and code: records and the worker's Errors metric side by side."""
    keys: dict[tuple[str, str], list] = {}
    for s in summaries.values():
        for code, n in s.errors_by_code.items():
            keys.setdefault((s.service, code), [0, 0.0])[0] = n
    for dims, total in cw_errors.items():
        d = dict(dims)
        keys.setdefault((d.get("Service", "?"), d.get("Code", "?")), [0, 0.0])[1] = total
    rows = [[svc, code, str(n), fmt(cw)] for (svc, code), (n, cw) in sorted(keys.items())]
    return Table("Errors by code", ["service", "code", "records", "Errors metric"], rows)


def fleet_table(f: FleetSummary, period_s: int) -> Table:
    """Fleet size and instance-minutes."""
    rows = [["running (max)", fmt(f.running_max)], ["pending (max)", fmt(f.pending_max)],
            ["desired (max)", fmt(f.desired_max)], ["running + pending (max)", fmt(f.size_max)],
            ["running + pending (mean)", fmt(f.size_mean, 2)],
            ["instance-minutes", fmt(f.instance_minutes, 1)], ["periods with data", str(f.periods)]]
    return Table("Fleet (autoscaler metrics)", ["", "value"], rows,
                 f"instance-minutes = sum over {period_s} s periods of (mean running + mean pending)")


def totals_table(title: str, dim_names: list[str], totals: dict[tuple, float]) -> Table:
    """Sums of one metric per dimension combination."""
    rows = [[dict(dims).get(n, "-") for n in dim_names] + [fmt(v)] for dims, v in totals.items()]
    return Table(title, dim_names + ["total"], rows)


def render_text(t: Table) -> str:
    """A table as aligned text for the terminal."""
    lines = [t.title, "-" * len(t.title)]
    if not t.rows:
        return "\n".join(lines + ["(no data)", ""])
    widths = [max(len(str(c)) for c in col) for col in zip(t.header, *t.rows)]
    def line(cells):
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    lines += [line(t.header)] + [line(r) for r in t.rows]
    if t.note:
        lines.append(f"({t.note})")
    return "\n".join(lines + [""])
