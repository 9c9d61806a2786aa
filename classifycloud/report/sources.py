"""Where the review reads from: CloudWatch (list_metrics + get_metric_data) and S3 result records."""
from __future__ import annotations

import json
import math
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Callable

from classifycloud.report.stats import Record
from shared.metrics import BY_NAME, MetricDef
from shared.naming import result_key

_QUERIES_PER_CALL = 500          # get_metric_data limit
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SINCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """Progress lines go to stderr, so stdout stays the table."""
    print(message, file=sys.stderr, flush=True)


def parse_time(text: str, now: float | None = None) -> float:
    """Epoch seconds from '90s' / '30m' / '1h' / '2d' / '1w' (that long ago) or an ISO 8601 time."""
    now = time.time() if now is None else now
    m = _SINCE_RE.match(text or "")
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        t = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise ValueError(f"not a duration (90s, 30m, 1h, 2d, 1w) or an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t.timestamp()


def auto_period(start: float, end: float) -> int:
    """A CloudWatch period (multiple of 60 s) giving at most ~240 points over the window."""
    span = max(end - start, 60.0)
    return max(60, math.ceil(span / 240 / 60) * 60)


def stats_for(d: MetricDef) -> tuple[str, ...]:
    """Statistics fetched per metric: its own, plus Average for the fleet gauges (instance-minutes)."""
    if d.component == "autoscaler" and d.stat == "Maximum" and not d.dimensions:
        return ("Maximum", "Average")
    return (d.stat,)


def list_defined_metrics(cw, namespace: str, progress: Progress) -> list[tuple[str, tuple]]:
    """Every (name, dims) in the namespace that DEFINITIONS knows, found with list_metrics."""
    found: set[tuple[str, tuple]] = set()
    token, page = None, 0
    while True:
        kw = {"Namespace": namespace}
        if token:
            kw["NextToken"] = token
        resp = cw.list_metrics(**kw)
        page += 1
        for m in resp.get("Metrics", []):
            d = BY_NAME.get(m.get("MetricName"))
            if d is None:
                continue
            given = {x["Name"]: x["Value"] for x in m.get("Dimensions", [])}
            found.add((d.name, tuple((k, given[k]) for k in d.dimensions if k in given)))
        progress(f"cloudwatch: list_metrics page {page}, {len(found)} defined series so far")
        token = resp.get("NextToken")
        if not token:
            break
    return sorted(found)


def fetch_series(cw, namespace: str, start: float, end: float, period: int,
                 progress: Progress = stderr_progress) -> dict[tuple, dict[float, float]]:
    """(name, dims, stat) -> {period start epoch s: value}, read with get_metric_data (paginated)."""
    metrics = list_defined_metrics(cw, namespace, progress)
    queries, keys = [], {}
    for name, dims in metrics:
        for stat in stats_for(BY_NAME[name]):
            qid = f"q{len(queries)}"
            keys[qid] = (name, dims, stat)
            queries.append({"Id": qid, "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": name,
                           "Dimensions": [{"Name": k, "Value": v} for k, v in dims]},
                "Period": period, "Stat": stat}})
    series: dict[tuple, dict[float, float]] = {k: {} for k in keys.values()}
    pages = 0
    for i in range(0, len(queries), _QUERIES_PER_CALL):
        batch, token = queries[i:i + _QUERIES_PER_CALL], None
        while True:
            # whole seconds, end rounded up: endpoints drop sub-second parts and the end is exclusive
            kw = dict(MetricDataQueries=batch, StartTime=datetime.fromtimestamp(math.floor(start), timezone.utc),
                      EndTime=datetime.fromtimestamp(math.ceil(end) + 1, timezone.utc), ScanBy="TimestampAscending")
            if token:
                kw["NextToken"] = token
            resp = cw.get_metric_data(**kw)
            pages += 1
            points = 0
            for res in resp.get("MetricDataResults", []):
                key = keys.get(res["Id"])
                if key is None:
                    continue
                for ts, v in zip(res.get("Timestamps", []), res.get("Values", [])):
                    series[key][ts.timestamp()] = float(v)
                    points += 1
            progress(f"cloudwatch: get_metric_data page {pages} "
                     f"(queries {i + 1}-{i + len(batch)} of {len(queries)}), {points} points")
            token = resp.get("NextToken")
            if not token:
                break
    return series


def _num(timings: dict, key: str) -> float | None:
    v = timings.get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def parse_record(body: bytes, at: float) -> Record:
    """A Record from a result record's JSON (raises ValueError when it is not a reply)."""
    from shared.messages import MessageError, Reply
    from shared.versions import versioned_name
    try:
        reply = Reply.from_json(body)
    except MessageError as exc:
        raise ValueError(exc.message) from None
    t = reply.timings_ms if isinstance(reply.timings_ms, dict) else {}
    code = str(reply.error.get("code", "")) if reply.status == "error" and reply.error else ""
    # a versioned reply counts as its own row ("imagenet@v2"): latency and errors per version
    return Record(id=reply.id, service=versioned_name(reply.service, reply.version or None), status=reply.status,
                  code=code, at=at,
                  total_ms=_num(t, "total"), queue_ms=_num(t, "queue"), fetch_ms=_num(t, "fetch"),
                  inference_ms=_num(t, "inference"), worker=str(reply.worker or ""))


def read_records(s3, bucket: str, start: float, end: float, progress: Progress = stderr_progress,
                 threads: int = 8, prefix: str | None = None, parse=None) -> tuple[list, list[str]]:
    """Result records completed in [start, end] (S3 LastModified); returns (records, problems).

    prefix and parse read other records the same way (shadow/: classifycloud/report/versions.py).
    """
    prefix = prefix or result_key("x")[: -len("x.json")]     # "results/": the naming rule lives in shared.naming
    parse = parse or parse_record
    keys: list[tuple[str, float]] = []
    paginator = s3.get_paginator("list_objects_v2")
    for page_no, page in enumerate(paginator.paginate(Bucket=bucket, Prefix=prefix), 1):
        for obj in page.get("Contents", []):
            at = obj["LastModified"].timestamp()
            # S3 times are whole seconds: widen the lower bound by one so nothing on the edge is lost
            if start - 1 <= at <= end and obj["Key"].endswith(".json"):
                keys.append((obj["Key"], at))
        progress(f"records: listed page {page_no}, {len(keys)} in the window")
    records: list[Record] = []
    problems: list[str] = []

    def load(item: tuple[str, float]):
        key, at = item
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return parse(body, at), None
        except Exception as exc:   # one bad record is reported, the others still count
            return None, f"{key}: {exc}"

    step = max(1, len(keys) // 10)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for n, (rec, problem) in enumerate(pool.map(load, keys), 1):
            if rec is not None:
                records.append(rec)
            if problem:
                problems.append(problem)
            if n % step == 0 or n == len(keys):
                progress(f"records: read {n}/{len(keys)}")
    return records, problems


def dump_json(obj) -> str:
    """JSON with NaN written as null (the summary file stays standard JSON)."""
    def clean(x):
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x
    return json.dumps(clean(obj), indent=2, sort_keys=True)
