"""`classifycloud usage --since 1d [--key K] [--csv FILE]`: per-key and per-service calls, errors, latency."""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone

from shared.aws import client
from shared.config import Settings
from shared.messages import now_ms
from webserver.usage import UsageRecord, table_name

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
CSV_FIELDS = ("at", "key_id", "route", "method", "service", "status", "latency_ms", "bytes_in", "bytes_out",
              "request_id")


def parse_since(text: str) -> float:
    """'90s', '15m', '6h', '1d', '2w' -> seconds."""
    m = _SPAN.match(text.strip())
    if not m:
        raise ValueError(f"--since {text!r}: use a number and one of s, m, h, d, w (e.g. 1d)")
    return float(m.group(1)) * _SECONDS[m.group(2)]


def fetch(settings: Settings, since_ms: int, until_ms: int | None = None, key_id: str | None = None,
          dynamodb=None) -> list[UsageRecord]:
    """Every record from since_ms (to until_ms), one query per UTC day, optionally one key's only."""
    db = dynamodb or client("dynamodb", settings)
    until_ms = until_ms or now_ms()
    day = datetime.fromtimestamp(since_ms / 1000, tz=timezone.utc).date()
    last = datetime.fromtimestamp(until_ms / 1000, tz=timezone.utc).date()
    out: list[UsageRecord] = []
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
            out.extend(UsageRecord.from_item(item) for item in page.get("Items", []))
        day += timedelta(days=1)
    return out


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def summarize(records: list[UsageRecord]) -> list[dict]:
    """Rows per (key, service): calls, 4xx, 5xx, p50/p95/p99 latency, bytes; sorted by key then service."""
    groups: dict[tuple[str, str], list[UsageRecord]] = defaultdict(list)
    for r in records:
        groups[(r.key_id, r.service)].append(r)
    rows = []
    for (key, service), recs in sorted(groups.items()):
        lat = [r.latency_ms for r in recs]
        rows.append({"key_id": key, "service": service, "calls": len(recs),
                     "errors_4xx": sum(400 <= r.status < 500 for r in recs),
                     "errors_5xx": sum(r.status >= 500 for r in recs),
                     "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95), "p99_ms": percentile(lat, 99),
                     "bytes_in": sum(r.bytes_in for r in recs), "bytes_out": sum(r.bytes_out for r in recs)})
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


def write_csv(records: list[UsageRecord], path: str) -> None:
    """Every record, one row each, oldest first; text cells escaped against formula injection."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        w.writeheader()
        for r in sorted(records, key=lambda r: r.at):
            w.writerow({f: csv_cell(getattr(r, f)) for f in CSV_FIELDS})


def main(argv: list[str]) -> int:
    """Entry point of `classifycloud usage`."""
    p = argparse.ArgumentParser(prog="classifycloud usage", description=__doc__)
    p.add_argument("--since", default="1d", help="how far back: 90s, 15m, 6h, 1d, 2w (default 1d)")
    p.add_argument("--key", default=None, help="one key id only")
    p.add_argument("--csv", default=None, metavar="FILE", help="also write every record to this CSV file")
    args = p.parse_args(argv)
    try:
        since = parse_since(args.since)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    records = fetch(settings, now_ms() - int(since * 1000), key_id=args.key)
    if not records:
        print(f"no calls in the last {args.since}" + (f" for key {args.key}" if args.key else ""))
    else:
        print(render(summarize(records)))
    if args.csv:
        write_csv(records, args.csv)
        print(f"\n{len(records)} records written to {args.csv}")
    return 0
