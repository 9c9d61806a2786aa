"""`classifycloud metrics`: review a run from CloudWatch metrics and the S3 result records.

Prints a summary table (per service: count, exact p50/p95/p99 latency, throughput,
errors by code; fleet size and instance-minutes), writes PNG plots, summary.json
and a standalone report.html. The same command works against AWS and against the
local stack (AWS_ENDPOINT_URL). Progress goes to stderr.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone

from classifycloud.report import html as html_report
from classifycloud.report import plots, tables
from classifycloud.report.sources import auto_period, dump_json, fetch_series, parse_time, read_records, stderr_progress
from classifycloud.report.stats import summarize_fleet, summarize_records, totals_by_dims
from classifycloud.report.versions import SHADOW_PREFIX, parse_shadow, shadow_table
from shared.config import Settings

log = logging.getLogger(__name__)


def _parser(settings: Settings) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="classifycloud metrics", description=__doc__.splitlines()[0])
    p.add_argument("--since", default="1h", help="start: a duration ago (90s, 30m, 1h, 2d) or ISO time [1h]")
    p.add_argument("--until", default="", help="end: a duration ago or ISO time [now]")
    p.add_argument("--out", default="metrics-report", help="folder for the PNGs, summary.json, report.html")
    p.add_argument("--prefix", default=settings.prefix, help="stack prefix (selects the bucket) [%(default)s]")
    p.add_argument("--bucket", default=settings.bucket, help="results bucket [<prefix>-data]")
    p.add_argument("--namespace", default=settings.metrics_namespace, help="CloudWatch namespace [%(default)s]")
    p.add_argument("--period", type=int, default=0,
                   help="seconds per point (CloudWatch: 60s multiples, or 1/5/10/30 for high resolution) [auto]")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def main(argv: list[str] | None = None) -> int:
    """Run the review; 0 when at least one source was read, 1 when none could be, 2 on bad arguments."""
    base = Settings.from_env()
    args = _parser(base).parse_args(argv)
    now = time.time()
    try:
        start = parse_time(args.since, now)
        end = parse_time(args.until, now) if args.until else now
    except ValueError as exc:
        print(f"classifycloud metrics: {exc}", file=sys.stderr)
        return 2
    if start >= end:
        print(f"classifycloud metrics: --since ({_utc(start)}) must be before --until ({_utc(end)})", file=sys.stderr)
        return 2
    if args.period < 0:
        print("classifycloud metrics: --period must be positive", file=sys.stderr)
        return 2
    settings = base.replace(prefix=args.prefix, bucket=args.bucket, metrics_namespace=args.namespace)
    period = args.period or auto_period(start, end)
    progress = (lambda _msg: None) if args.quiet else stderr_progress

    from shared.aws import client
    problems: list[str] = []
    series: dict = {}
    records: list = []
    read_any = False
    try:
        series = fetch_series(client("cloudwatch", settings), settings.metrics_namespace, start, end, period,
                              progress)
        read_any = True
    except Exception as exc:   # one source down still leaves the other to review
        problems.append(f"CloudWatch namespace {settings.metrics_namespace!r} not read: {exc}")
    try:
        records, bad = read_records(client("s3", settings), settings.bucket_name, start, end, progress)
        problems += [f"unreadable result record {b}" for b in bad]
        read_any = True
    except Exception as exc:
        problems.append(f"result records in s3://{settings.bucket_name}/results/ not read: {exc}")
    shadows: list = []
    try:
        shadows, bad = read_records(client("s3", settings), settings.bucket_name, start, end, progress,
                                    prefix=SHADOW_PREFIX, parse=parse_shadow)
        problems += [f"unreadable shadow record {b}" for b in bad]
    except Exception as exc:
        problems.append(f"shadow records in s3://{settings.bucket_name}/{SHADOW_PREFIX} not read: {exc}")
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)

    summaries = summarize_records(records)
    fleet = summarize_fleet(series, period)
    totals = {name: totals_by_dims(series, name) for name in
              ("Requests", "Timeouts", "Images", "Errors", "ScalingDecision", "VersionImages", "VersionErrors",
               "CanaryRollbacks")}
    facts = [("window", f"{_utc(start)} .. {_utc(end)} ({(end - start) / 60:.1f} min)"),
             ("CloudWatch", f"namespace {settings.metrics_namespace}, {period} s periods, "
                            f"{sum(1 for v in series.values() if v)} series with data"),
             ("result records", f"s3://{settings.bucket_name}/results/: {len(records)} in the window"),
             ("endpoint", os.environ.get("AWS_ENDPOINT_URL") or "AWS")]
    report_tables = [
        tables.service_table(summaries),
        tables.error_table(summaries, totals["Errors"]),
        tables.fleet_table(fleet, period),
        tables.totals_table("Web requests by route and status (Requests metric)", ["Route", "Status"],
                            totals["Requests"]),
        tables.totals_table("Timeouts (504) by service", ["Service"], totals["Timeouts"]),
        tables.totals_table("Images classified (Images metric)", ["Service"], totals["Images"]),
        tables.totals_table("Scaling decisions by action", ["Action"], totals["ScalingDecision"]),
        shadow_table(shadows),
        tables.totals_table("Answers per service version (VersionImages metric)", ["Service", "Version"],
                            totals["VersionImages"]),
        tables.totals_table("Failures per service version (VersionErrors metric)", ["Service", "Version"],
                            totals["VersionErrors"]),
        tables.totals_table("Canary rollbacks by the controller (CanaryRollbacks metric)", ["Service", "Version"],
                            totals["CanaryRollbacks"]),
    ]
    print("\n".join(f"{k}: {v}" for k, v in facts) + "\n")
    for t in report_tables:
        print(tables.render_text(t))

    os.makedirs(args.out, exist_ok=True)
    out = lambda name: os.path.join(args.out, name)  # noqa: E731
    images = [(plots.timeline(series, records, period, out("timeline.png")),
               "Queue depth, fleet size and latency over time"),
              (plots.latency_distribution(records, summaries, out("latency.png")),
               "Latency distribution per service"),
              (plots.stage_breakdown(summaries, out("stages.png")), "Where the time goes")]
    summary = {"window": {"start": start, "end": end, "period_s": period},
               "namespace": settings.metrics_namespace, "bucket": settings.bucket_name,
               "records": len(records), "services": {k: asdict(v) for k, v in summaries.items()},
               "fleet": asdict(fleet), "shadows": [asdict(r) for r in shadows],
               "cloudwatch_totals": {name: [{"dimensions": dict(d), "total": v} for d, v in tot.items()]
                                     for name, tot in totals.items()},
               "problems": problems}
    with open(out("summary.json"), "w", encoding="utf-8") as fh:
        fh.write(dump_json(summary))
    html_report.write(out("report.html"), html_report.render(
        f"ClassifyCloud review: {settings.prefix}", facts, report_tables, images, problems))
    print(f"wrote {out('report.html')}, {', '.join(os.path.basename(p) for p, _ in images)}, summary.json")
    return 0 if read_any else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
