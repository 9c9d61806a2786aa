"""`classifycloud usage --since 1d [--key K] [--csv FILE]`: per-key and per-service calls, errors, latency.

Read from the usage log's per-minute aggregates (webserver/usage.py); latency percentiles come from their
histograms (webserver/usage_hist.py: nearest rank, within 5.9 % of the exact value).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from shared.aws import client
from shared.config import Settings
from shared.messages import now_ms
from webserver.usage import MINUTE_MS, Aggregate, table_name

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CSV_FIELDS = ("minute", "key_id", "service", "calls", "errors_4xx", "errors_5xx", "statuses", "routes",
              "p50_ms", "p95_ms", "p99_ms", "bytes_in", "bytes_out")


def parse_since(text: str) -> float:
    """'90s', '15m', '6h', '1d', '2w' -> seconds."""
    m = _SPAN.match(text.strip())
    if not m:
        raise ValueError(f"--since {text!r}: use a number and one of s, m, h, d, w (e.g. 1d)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def fetch(settings: Settings, since_ms: int, until_ms: int | None = None, key_id: str | None = None,
          dynamodb=None) -> list[Aggregate]:
    """Every aggregate of a minute from since_ms's (to until_ms), one query per UTC day, optionally one key's."""
    db = dynamodb or client("dynamodb", settings)
    until_ms = until_ms or now_ms()
    since_ms = since_ms // MINUTE_MS * MINUTE_MS    # an item's sort key starts with its minute
    day = datetime.fromtimestamp(since_ms / 1000, tz=timezone.utc).date()
    last = datetime.fromtimestamp(until_ms / 1000, tz=timezone.utc).date()
    out: list[Aggregate] = []
    while day <= last:
        kwargs = {"TableName": table_name(settings),
                  "KeyConditionExpression": "#d = :day AND sk BETWEEN :lo AND :hi",
                  "ExpressionAttributeNames": {"#d": "day"},
                  "ExpressionAttributeValues": {":day": {"S": day.isoformat()},
                                                ":lo": {"S": f"{since_ms:013d}"}, ":hi": {"S": f"{until_ms:013d}~"}}}
        if key_id:
            kwargs["FilterExpression"] = "key_id = :k"
            kwargs["ExpressionAttributeValues"][":k"] = {"S": key_id}
        for page in db.get_paginator("query").paginate(**kwargs):
            out.extend(Aggregate.from_item(item) for item in page.get("Items", []))
        day += timedelta(days=1)
    return out


def merged(aggs: list[Aggregate], by_minute: bool = False) -> dict[tuple, Aggregate]:
    """The aggregates added up per (key, service), or per (key, service, minute); minute: the first one."""
    groups: dict[tuple, Aggregate] = {}
    for a in aggs:
        group = (a.key_id, a.service, a.minute) if by_minute else (a.key_id, a.service)
        if group not in groups:
            groups[group] = Aggregate(a.key_id, a.service, a.minute)
        groups[group].minute = min(groups[group].minute, a.minute)
        groups[group].merge(a)
    return groups


def summarize(aggs: list[Aggregate]) -> list[dict]:
    """Rows per (key, service): calls, 4xx, 5xx, p50/p95/p99 latency, bytes; sorted by key then service."""
    rows = []
    for (key, service), a in sorted(merged(aggs).items()):
        rows.append({"key_id": key, "service": service, "calls": a.calls,
                     "errors_4xx": a.errors(400), "errors_5xx": a.errors(500),
                     "p50_ms": a.percentile(50), "p95_ms": a.percentile(95), "p99_ms": a.percentile(99),
                     "bytes_in": a.bytes_in, "bytes_out": a.bytes_out})
    return rows


def render(rows: list[dict]) -> str:
    """The table `classifycloud usage` prints, with per-key totals."""
    lines = [f"{'key id':14s} {'service':16s} {'calls':>7s} {'4xx':>5s} {'5xx':>5s} {'p50 ms':>8s} "
             f"{'p95 ms':>8s} {'p99 ms':>8s} {'MB in':>7s}"]
    totals: dict[str, int] = defaultdict(int)
    for r in rows:
        totals[r["key_id"]] += r["calls"]
        lines.append(f"{r['key_id']:14s} {r['service'][:16]:16s} {r['calls']:7d} {r['errors_4xx']:5d} "
                     f"{r['errors_5xx']:5d} {r['p50_ms']:8.1f} {r['p95_ms']:8.1f} {r['p99_ms']:8.1f} "
                     f"{r['bytes_in'] / 1e6:7.2f}")
    lines.append("")
    for key, n in sorted(totals.items()):
        lines.append(f"{key:14s} {'(all services)':16s} {n:7d}")
    lines.append(f"{'total':14s} {'':16s} {sum(totals.values()):7d}")
    return "\n".join(lines)


def csv_cell(value: object) -> object:
    """A text cell a spreadsheet will not run: one starting with = + - @ or a tab/CR gets a leading '."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") and value != "-":
        return "'" + value
    return value


def write_csv(aggs: list[Aggregate], path: str) -> list[dict]:
    """One row per (key, service, minute), oldest first (processes and flushes added up); text cells
    escaped against formula injection. Returns the rows."""
    rows = []
    for (key, service, minute), a in sorted(merged(aggs, by_minute=True).items(),
                                                     key=lambda kv: (kv[0][2], kv[0][0], kv[0][1])):
        rows.append({"minute": datetime.fromtimestamp(minute / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
                     "key_id": key, "service": service, "calls": a.calls,
                     "errors_4xx": a.errors(400), "errors_5xx": a.errors(500),
                     "statuses": "; ".join(f"{s}={n}" for s, n in sorted(a.statuses.items())),
                     "routes": "; ".join(f"{r}={n}" for r, n in sorted(a.routes.items())),
                     "p50_ms": round(a.percentile(50), 3), "p95_ms": round(a.percentile(95), 3),
                     "p99_ms": round(a.percentile(99), 3), "bytes_in": a.bytes_in, "bytes_out": a.bytes_out})
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for row in rows:
            w.writerow({f: csv_cell(row[f]) for f in CSV_FIELDS})
    return rows


def main(argv: list[str]) -> int:
    """Entry point of `classifycloud usage`."""
    p = argparse.ArgumentParser(prog="classifycloud usage", description=__doc__)
    p.add_argument("--since", default="1d", help="how far back: 90s, 15m, 6h, 1d, 2w (default 1d)")
    p.add_argument("--key", default=None, help="one key id only")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write one row per key, service and minute to this CSV file")
    args = p.parse_args(argv)
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    aggs = fetch(settings, now_ms() - int(since * 1000), key_id=args.key)
    if not aggs:
        print(f"no calls in the last {args.since}" + (f" for key {args.key}" if args.key else ""))
    else:
        print(render(summarize(aggs)))
    if args.csv:
        rows = write_csv(aggs, args.csv)
        print(f"\n{len(rows)} rows (one per key, service and minute) written to {args.csv}")
    return 0
