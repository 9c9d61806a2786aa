"""Job and batch-item records in S3 against DynamoDB (on demand, TTL): calls, dollars and latency per record.

    .venv/bin/python bench/records.py [--n 200] [--items 200]

Issue 31 item 2. One moto server in this process; each store is exercised the way the stack uses its
records, side by side (the two stores alternate record by record, so both see the same machine load):

* async job, S3 (today): the web PUTs jobs/<id>.json (the marker), a poll while pending GETs
  results/<id>.json (404) and the marker, the worker PUTs results/<id>.json, the poll once done GETs it.
* async job, DynamoDB: one item per job: PutItem of the marker (with expires_at for TTL), GetItem
  while pending, UpdateItem adding the result, GetItem once done (eventually consistent reads).
* batch item, S3 (today): the worker PUTs results/<batch>-<n>.json, the driver lists the batch's
  results (1,000 keys a LIST) and GETs each.
* batch item, DynamoDB: PutItem per item (partition: the batch id, sort: the item number); the driver
  reads them with Query (1 MB a page).

Calls are counted at the endpoint (bench/aws_counter.py, one pass); latency is timed in a second pass
straight to moto (no proxy). Latency against moto is NOT AWS latency: moto is an in-process Python
server on this machine; it shows the client-side cost of each call, not S3's or DynamoDB's service time.
Dollars at us-east-1 list prices: S3 PUT/LIST $5.00 and GET $0.40 per million; DynamoDB on demand $1.25
per million write request units (1 KB of item each, rounded up per write) and $0.25 per million read
request units (4 KB each, rounded up; an eventually consistent read is half a unit). Item sizes are
computed by DynamoDB's rules (attribute names + values). Storage is left out (a record kept a day
costs well under a cent per million either way). Results: bench/results/records.json and a table.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.aws_counter import CountingProxy, diff  # noqa: E402

S3_PUT, S3_GET = 5.00, 0.40           # $ per million requests (LIST is priced as PUT)
WRU, RRU = 1.25, 0.25                 # $ per million request units
ITEM_LIMIT = 400 * 1024               # DynamoDB's item size limit


def reply_json(rid: str, top_k: int = 5) -> str:
    """A realistic worker reply (the imagenet service's shape, top_k results)."""
    from shared.messages import Reply
    results = [{"label": f"label number {i} of the imagenet classes", "index": 900 + i, "score": 0.5 / (i + 1)}
               for i in range(top_k)]
    return Reply.ok(rid, "imagenet", results, worker="i-0123456789abcdef0",
                    timings_ms={"queue": 10.5, "fetch": 1.4, "inference": 10.2, "total": 35.5},
                    model={"name": "efficientnet_lite0", "version": "1"}).to_json()


def marker_json(rid: str) -> str:
    """The job marker the web writes (webserver/jobs.py write_marker)."""
    return json.dumps({"id": rid, "service": "imagenet", "submitted_at": 1796690000000, "owner": "k0123456789ab",
                       "expires_at": 1796776400000})


def item_size(item: dict) -> int:
    """DynamoDB's size of an item (low-level format): names plus values (strings: UTF-8; numbers: ~digits/2+1)."""
    def value(v: dict) -> int:
        (kind, x), = v.items()
        if kind == "S":
            return len(x.encode())
        if kind == "N":
            return len(x.strip("-").lstrip("0").replace(".", "")) // 2 + 1
        if kind == "M":
            return 3 + sum(len(k.encode()) + value(w) + 1 for k, w in x.items())
        return len(str(x))
    return sum(len(k.encode()) + value(v) for k, v in item.items())


def job_items(rid: str) -> tuple[dict, dict]:
    """A job's DynamoDB item as the web writes it (the marker) and once the worker added the result."""
    marker = {"pk": {"S": f"job#{rid}"}, "sk": {"S": "-"}, "marker": {"S": marker_json(rid)},
              "expires_at": {"N": "1796776400"}}
    return marker, {**marker, "result": {"S": reply_json(rid)}}


def job_units(rid: str) -> dict:
    """Request units of one job: two writes (an update bills the larger of before/after) and two reads."""
    marker, full = job_items(rid)
    return {"write": wru(item_size(marker)) + wru(item_size(full)),
            "read": rru(item_size(marker)) + rru(item_size(full))}


def wru(size: int) -> int:
    return max(1, math.ceil(size / 1024))


def rru(size: int, consistent: bool = False) -> float:
    return max(1, math.ceil(size / 4096)) * (1.0 if consistent else 0.5)


class Stores:
    """The two record stores under one endpoint: a bucket, and a table on demand with TTL on expires_at."""

    def __init__(self, endpoint: str, prefix: str):
        import boto3
        kw = {"endpoint_url": endpoint, "region_name": "us-east-1"}
        self.s3 = boto3.client("s3", **kw)
        self.db = boto3.client("dynamodb", **kw)
        self.bucket, self.table = f"{prefix}-data", f"{prefix}-records"
        self.units: Counter = Counter()    # DynamoDB request units billed, by "write"/"read"

    def create(self) -> None:
        self.s3.create_bucket(Bucket=self.bucket)
        self.db.create_table(TableName=self.table, BillingMode="PAY_PER_REQUEST",
                             AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"},
                                                   {"AttributeName": "sk", "AttributeType": "S"}],
                             KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                                        {"AttributeName": "sk", "KeyType": "RANGE"}])
        self.db.update_time_to_live(TableName=self.table,
                                    TimeToLiveSpecification={"Enabled": True, "AttributeName": "expires_at"})

    # --- async job -----------------------------------------------------------------------------------
    def job_s3(self, rid: str, t: defaultdict) -> None:
        timed(t, "marker write", self.s3.put_object, Bucket=self.bucket, Key=f"jobs/{rid}.json",
              Body=marker_json(rid).encode(), ContentType="application/json")
        try:                                    # a poll while pending: no result yet, then the marker
            timed(t, "poll pending", self.s3.get_object, Bucket=self.bucket, Key=f"results/{rid}.json")
        except self.s3.exceptions.NoSuchKey:
            pass
        timed(t, "poll pending", lambda: self.s3.get_object(Bucket=self.bucket, Key=f"jobs/{rid}.json")["Body"].read())
        timed(t, "result write", self.s3.put_object, Bucket=self.bucket, Key=f"results/{rid}.json",
              Body=reply_json(rid).encode(), ContentType="application/json")
        timed(t, "poll done", lambda: self.s3.get_object(Bucket=self.bucket, Key=f"results/{rid}.json")["Body"].read())

    def job_ddb(self, rid: str, t: defaultdict) -> None:
        marker, full = job_items(rid)
        key = {"pk": marker["pk"], "sk": marker["sk"]}
        for unit, n in job_units(rid).items():
            self.units[unit] += n
        timed(t, "marker write", self.db.put_item, TableName=self.table, Item=marker)
        timed(t, "poll pending", self.db.get_item, TableName=self.table, Key=key)
        timed(t, "result write", self.db.update_item, TableName=self.table, Key=key,
              UpdateExpression="SET #r = :r", ExpressionAttributeNames={"#r": "result"},
              ExpressionAttributeValues={":r": full["result"]})
        timed(t, "poll done", self.db.get_item, TableName=self.table, Key=key)

    # --- batch items ---------------------------------------------------------------------------------
    def batch_s3(self, bid: str, n: int, t: defaultdict) -> None:
        for i in range(n):
            timed(t, "item write", self.s3.put_object, Bucket=self.bucket, Key=f"results/{bid}-{i}.json",
                  Body=reply_json(f"{bid}-{i}").encode(), ContentType="application/json")
        keys = []
        started = time.perf_counter()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"results/{bid}-"):
            keys += [o["Key"] for o in page.get("Contents", [])]
        t["driver list"].append((time.perf_counter() - started) * 1000)
        for k in keys:
            timed(t, "driver read", lambda k=k: self.s3.get_object(Bucket=self.bucket, Key=k)["Body"].read())
        assert len(keys) == n

    def batch_ddb(self, bid: str, n: int, t: defaultdict) -> None:
        read_bytes = 0
        for i in range(n):
            item = {"pk": {"S": f"batch#{bid}"}, "sk": {"S": f"{i:08d}"}, "result": {"S": reply_json(f"{bid}-{i}")},
                    "expires_at": {"N": "1796776400"}}
            self.units["write"] += wru(item_size(item))
            read_bytes += item_size(item)
            timed(t, "item write", self.db.put_item, TableName=self.table, Item=item)
        started = time.perf_counter()
        got = 0
        for page in self.db.get_paginator("query").paginate(
                TableName=self.table, KeyConditionExpression="pk = :b",
                ExpressionAttributeValues={":b": {"S": f"batch#{bid}"}}):
            got += len(page["Items"])
        t["driver query"].append((time.perf_counter() - started) * 1000)
        self.units["read"] += math.ceil(read_bytes / 4096) * 0.5   # a Query bills its bytes read, summed
        assert got == n


def timed(t: defaultdict, name: str, fn, *args, **kw):
    started = time.perf_counter()
    out = fn(*args, **kw)
    t[name].append((time.perf_counter() - started) * 1000)
    return out


def run_pass(endpoint: str, prefix: str, n: int, items: int) -> dict:
    """Both stores, jobs interleaved one by one and one batch each; {store: {phase: [ms, ...]}} and units."""
    stores = Stores(endpoint, prefix)
    stores.create()
    times = {k: defaultdict(list) for k in ("job_s3", "job_ddb", "batch_s3", "batch_ddb")}
    for _ in range(n):
        rid = uuid.uuid4().hex
        stores.job_s3(rid, times["job_s3"])
        stores.job_ddb(rid, times["job_ddb"])
    bid = uuid.uuid4().hex[:12]
    stores.batch_s3(bid, items, times["batch_s3"])
    stores.batch_ddb(bid, items, times["batch_ddb"])
    return {"times": times, "units": stores.units}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=200, help="async jobs per store")
    p.add_argument("--items", type=int, default=200, help="items in the one batch per store")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                 "records.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # moto's access log
    from classifycloud.local import start_moto
    moto, moto_url = start_moto()
    proxy = CountingProxy(moto_url).start()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    try:
        before = proxy.counts.snapshot()[0]
        counted = run_pass(proxy.url, "rc" + uuid.uuid4().hex[:6], args.n, args.items)
        calls = diff(proxy.counts.snapshot()[0], before)
        timed_pass = run_pass(moto_url, "rt" + uuid.uuid4().hex[:6], args.n, args.items)   # latency: no proxy
    finally:
        proxy.stop()
        moto.stop()
    out = summarize(args, calls, counted["units"], timed_pass["times"])
    print(render(out))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


def summarize(args, calls: Counter, units: Counter, times: dict) -> dict:
    """Per record: calls, dollars and latency (p50 / p95 of each phase; a record's total)."""
    s3 = {a: n for (svc, a), n in calls.items() if svc == "s3" and a != "CreateBucket"}
    ddb = {a: n for (svc, a), n in calls.items() if svc == "dynamodb" and a not in ("CreateTable", "UpdateTimeToLive")}
    n, m = args.n, args.items
    # counted: n jobs (2 PUTs, 3 GETs each) and one batch of m items (m PUTs, the LISTs, m GETs) in S3;
    # n jobs (PutItem, UpdateItem, 2 GetItem) and m items (PutItem, the Queries) in DynamoDB
    assert s3.get("PutObject", 0) == 2 * n + m and s3.get("GetObject", 0) == 3 * n + m, s3
    assert ddb.get("PutItem", 0) == n + m and ddb.get("UpdateItem", 0) == n and ddb.get("GetItem", 0) == 2 * n, ddb
    lists, queries = s3.get("ListObjectsV2", 0), ddb.get("Query", 0)
    per_job = job_units("0" * 32)
    per_item = {u: (units[u] - n * per_job[u]) / m for u in ("write", "read")}
    rows = {
        "async job, S3": {"calls": 5.0, "dollars_per_million": 2 * S3_PUT + 3 * S3_GET},
        "async job, DynamoDB": {"calls": 4.0, "units": per_job,
                                "dollars_per_million": per_job["write"] * WRU + per_job["read"] * RRU},
        "batch item, S3": {"calls": 2 + lists / m, "dollars_per_million": S3_PUT + S3_GET + lists / m * S3_PUT},
        "batch item, DynamoDB": {"calls": 1 + queries / m, "units": per_item,
                                 "dollars_per_million": per_item["write"] * WRU + per_item["read"] * RRU},
    }
    for row in rows.values():
        row["calls"] = round(row["calls"], 3)
        row["dollars_per_million"] = round(row["dollars_per_million"], 3)
    marker, full = job_items("0" * 32)
    sizes = {"marker_bytes": len(marker_json("0" * 32)), "result_bytes": len(reply_json("0" * 32)),
             "job_item_bytes": item_size(full), "top_k_at_400kb": top_k_limit()}
    lat = {}
    for store, phases in times.items():
        per_record = sum(sum(v) for v in phases.values()) / (n if store.startswith("job") else m)
        lat[store] = {"per_record_ms": round(per_record, 3)}
        lat[store].update({ph: {"p50_ms": round(statistics.median(v), 3),
                                "p95_ms": round(sorted(v)[int(0.95 * (len(v) - 1))], 3), "count": len(v)}
                           for ph, v in phases.items()})
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "jobs": n, "batch_items": m,
            "calls_counted": {"s3": s3, "dynamodb": ddb}, "per_record": rows, "sizes": sizes,
            "latency_moto_ms": lat, "versions": versions()}


def top_k_limit() -> int:
    """The largest top_k whose reply still fits in one DynamoDB item with its marker."""
    k = 5
    while len(reply_json("0" * 32, k * 2)) + 300 < ITEM_LIMIT:
        k *= 2
    while len(reply_json("0" * 32, k + 1)) + 300 < ITEM_LIMIT:
        k += max(1, k // 100)
    return k


def versions() -> dict:
    import boto3
    import moto
    return {"python": sys.version.split()[0], "moto": moto.__version__, "boto3": boto3.__version__}


def render(out: dict) -> str:
    """The markdown table of a run."""
    lines = ["| record | AWS calls per record | $ per million records | latency per record against moto, not AWS (phases: p50 ms per call) |",
             "|---|---:|---:|---|"]
    lat_key = {"async job, S3": "job_s3", "async job, DynamoDB": "job_ddb", "batch item, S3": "batch_s3",
               "batch item, DynamoDB": "batch_ddb"}
    for name, row in out["per_record"].items():
        lat = out["latency_moto_ms"][lat_key[name]]
        detail = ", ".join(f"{ph} {v['p50_ms']:.2f}" for ph, v in lat.items() if ph != "per_record_ms")
        lines.append(f"| {name} | {row['calls']:.2f} | {row['dollars_per_million']:.2f} | "
                     f"{lat['per_record_ms']:.1f} ms ({detail}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
