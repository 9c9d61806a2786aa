"""AWS calls and dollars per request, counted at the endpoint (issue 31).

    .venv/bin/python bench/cost.py [--n 24] [--clients 4] [--idle 15]

One moto server (in this process) behind a counting reverse proxy: every AWS call of the web app and
the worker goes through the proxy, which names its API action (the signature's credential scope gives
the service; X-Amz-Target, the query `Action`, or the S3 method and path give the action) and, for
DynamoDB, the items written. In this process: one worker (real `imagenet` model, in a thread), the
Flask app (test client, keys off, then keys on with a monthly quota), the batch driver (for batch items)
and the loopback sample server. Metrics are on, as in a deployed stack.

Each scenario sends `--n` requests with `--clients` clients and counts the calls made meanwhile;
the idle rate of the same parts (measured first, `--idle` seconds) times the scenario's duration is
subtracted. Each scenario ends with one flush of the web's usage log (the counts since the last flush:
one DynamoDB item per key, service and minute), as a steady stream pays one flush per
usage_flush_interval_s. Idle worker: the calls of the worker alone, idle, per month (30 days).

Prices (us-east-1 list, per million): SQS requests $0.40; S3 PUT/COPY/POST/LIST $5.00, GET and
others $0.40, DELETE free; DynamoDB on demand, write request units $1.25 and read request units $0.25
(an item written = 1 WRU, a read = 1 RRU, an upper bound); CloudWatch PutMetricData $10.00
($0.01 per 1,000 requests), which is one flush per process per metrics_interval_s whatever the load:
it is left out of the per-request figures (a process's month of flushes every 10 s is 259,200
calls, $2.59). Results: bench/results/cost.json; a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.aws_counter import DDB_READS, CountingProxy, diff  # noqa: E402

PRICES_PER_MILLION = {   # us-east-1 list prices, December 2026
    "sqs": 0.40, "s3_put": 5.00, "s3_get": 0.40, "s3_delete": 0.0,
    "dynamodb_write": 1.25, "dynamodb_read": 0.25, "cloudwatch": 10.00}
MONTH_S = 30 * 86400


def price_class(service: str, action: str) -> str:
    """Which list price a call pays."""
    if service == "s3":
        if action in ("DeleteObject", "DeleteObjects", "DeleteBucket"):
            return "s3_delete"
        return "s3_put" if action in ("PutObject", "CopyObject", "ListObjectsV2", "ListObjects", "POSTObject",
                                      "POSTBucket", "CreateBucket") else "s3_get"
    if service == "dynamodb":
        return "dynamodb_read" if action in DDB_READS else "dynamodb_write"
    return "cloudwatch" if service == "monitoring" else "sqs" if service == "sqs" else "other"


def dollars(units: Counter) -> float:
    """List-price dollars of these billed units."""
    return sum(n * PRICES_PER_MILLION.get(price_class(s, a), 0.0) / 1e6 for (s, a), n in units.items())


def per_request(calls: Counter, units: Counter, idle_calls: Counter, idle_units: Counter, idle_s: float,
                seconds: float, n: int) -> dict:
    """Calls and dollars per request, the idle rate over `seconds` taken off."""
    scale = seconds / idle_s
    # PutMetricData is one flush per process per metrics_interval_s whatever the load: a monthly cost of
    # each process (reported apart), not a per-request one; in a few seconds' window it is only noise
    periodic = {k: v for k, v in calls.items() if k[0] == "monitoring"}
    calls = Counter({k: v for k, v in calls.items() if k not in periodic})
    units = Counter({k: v for k, v in units.items() if k not in periodic})
    net_calls = Counter({k: v - idle_calls.get(k, 0) * scale for k, v in calls.items()})
    net_units = Counter({k: v - idle_units.get(k, 0) * scale for k, v in units.items()})
    by_action = {f"{s}:{a}": round(v / n, 3) for (s, a), v in sorted(net_calls.items()) if abs(v / n) >= 0.005}
    return {"requests": n, "seconds": round(seconds, 2), "calls_per_request": round(sum(net_calls.values()) / n, 3),
            "dollars_per_million": round(dollars(net_units) / n * 1e6, 3), "by_action": by_action}


class Bench:
    """The parts under measurement, wired to the counting proxy."""

    def __init__(self, args):
        from classifycloud.local import SampleServer, aws_env, start_moto
        from classifycloud.provision import ensure_all
        from shared.catalogue import catalogue_for
        from shared.config import Settings
        self.args = args
        import boto3
        self.moto, moto_url = start_moto()
        self.proxy = CountingProxy(moto_url).start()
        os.environ.update(aws_env(self.proxy.url))
        self.direct_s3 = boto3.client("s3", endpoint_url=moto_url)   # the bench's own looks: not counted
        self.settings = Settings.from_env(
            {}, prefix="cost" + str(int(time.time()) % 100000), services=("imagenet",), device="cpu",
            metrics_enabled=True, metrics_namespace="ClassifyCloudCost", api_keys="off",
            fetch_allow_loopback=True, instance_id="w-cost", batch_tick_s=1.0)
        self.catalogue = catalogue_for(self.settings)
        ensure_all(self.settings, self.catalogue)
        self.samples = SampleServer().start()
        self.worker = None
        self.apps: list = []

    def url(self, photo: str = "coffee.jpg") -> str:
        return f"{self.samples.base_url}/{photo}"

    def start_worker(self):
        from worker.loop import Worker
        self.worker = Worker(self.settings)
        self.worker_thread = threading.Thread(target=self.worker.work, kwargs={"install_signals": False},
                                              daemon=True)
        self.worker_thread.start()
        if not self.worker.ready.wait(300):
            raise SystemExit("the worker did not start")

    def app(self, keys: bool):
        from classifycloud.keyadmin import create_key
        from webserver.app import create_app
        s = self.settings.replace(api_keys="on" if keys else "off")
        app = create_app(s, self.catalogue, start=True)
        self.apps.append(app)
        key = None
        if keys:   # a deployed stack's shape: a key with a monthly quota
            key, _ = create_key(s, "cost-bench", rate_limit=1000.0, burst=1000, monthly_quota=10_000_000)
        return app, key

    def measure(self, seconds: float) -> tuple[Counter, Counter]:
        before = self.proxy.counts.snapshot()
        time.sleep(seconds)
        after = self.proxy.counts.snapshot()
        return diff(after[0], before[0]), diff(after[1], before[1])

    def run(self, fn, n: int, app) -> tuple[Counter, Counter, float]:
        """n calls of fn(i) on the clients; the calls counted meanwhile and the seconds it took."""
        before = self.proxy.counts.snapshot()
        started = time.monotonic()
        with ThreadPoolExecutor(self.args.clients) as pool:
            results = list(pool.map(fn, range(n)))
        time.sleep(1.0)   # the last replies' deletes land in this window
        flush_usage(app)
        seconds = time.monotonic() - started
        after = self.proxy.counts.snapshot()
        bad = [r for r in results if r is not True]
        if bad:
            raise SystemExit(f"{len(bad)} of {n} requests failed: {bad[:3]}")
        return diff(after[0], before[0]), diff(after[1], before[1]), seconds

    def close(self) -> None:
        for app in self.apps:
            app.extensions["classifycloud"].close()
        if self.worker is not None:
            self.worker.stop("bench over")
            self.worker_thread.join(30)
        self.samples.stop()
        self.proxy.stop()
        self.moto.stop()


def flush_usage(app) -> None:
    """Write the usage log's counts now: each scenario pays one flush, as a steady stream pays one per
    usage_flush_interval_s (items per request = active (key, service) pairs / (requests/s x interval))."""
    edge = getattr(app.extensions["classifycloud"], "edge", None)
    if edge is not None:
        edge.usage.flush()


def scenarios(b: Bench, app, key: str | None) -> dict:
    """The four request kinds, each a function of the request's number: True when answered as expected."""
    import base64
    web = app.test_client()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    from classifycloud.local import samples_dir
    with open(os.path.join(samples_dir(), "coffee.jpg"), "rb") as fh:
        photo = fh.read()

    def sync_url(i):
        r = web.get("/classify", query_string={"url": b.url()}, headers=headers)
        return True if r.status_code == 200 and r.get_json()["results"][0]["index"] == 967 else r.status_code

    def upload(i):
        r = web.post("/classify", json={"image_base64": base64.b64encode(photo).decode()}, headers=headers)
        return True if r.status_code == 200 and r.get_json()["results"][0]["index"] == 967 else r.status_code

    def job(i):
        r = web.post("/jobs", json={"url": b.url()}, headers=headers)
        if r.status_code != 202:
            return r.status_code
        rid = r.get_json()["id"]
        end = time.monotonic() + 120
        while time.monotonic() < end:   # the client polls once the result is there: one GET /jobs/<id>
            try:   # a direct look at S3 (not through the proxy, not counted)
                b.direct_s3.head_object(Bucket=b.settings.bucket_name, Key=f"results/{rid}.json")
                break
            except Exception:
                time.sleep(0.2)
        done = web.get(f"/jobs/{rid}", headers=headers)
        return True if done.status_code == 200 else done.status_code

    return {"sync URL request": sync_url, "upload": upload, "async job": job}


def batch_items(b: Bench, app, key: str | None, n: int) -> tuple[Counter, Counter, float]:
    """One batch of n URL items, driven to its end by the batch driver (the autoscaler's part)."""
    from autoscaler.batches import BatchDriver
    from webserver.keys import key_id_of
    web = app.test_client()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    owner = key_id_of(key) if key else "anonymous"
    stop = threading.Event()
    s = app.extensions["classifycloud"].settings
    driver = BatchDriver(s, b.catalogue)
    before = b.proxy.counts.snapshot()
    started = time.monotonic()
    r = web.post("/batches", headers=headers, json={
        "service": "imagenet", "input": {"items": [b.url() for _ in range(n)]},
        "output": f"s3://{s.bucket_name}/batch-io/{owner}/out-{int(time.time() * 1000)}/", "top_k": 1})
    if r.status_code != 202:
        raise SystemExit(f"POST /batches answered {r.status_code}: {r.get_data(as_text=True)[:300]}")
    bid = r.get_json()["id"]
    thread = driver.start_thread(stop)
    end = time.monotonic() + 120
    state = ""
    while time.monotonic() < end and state not in ("succeeded", "failed", "cancelled"):
        time.sleep(0.5)
        state = web.get(f"/batches/{bid}", headers=headers).get_json().get("state", "")
    stop.set()
    thread.join(10)
    flush_usage(app)
    seconds = time.monotonic() - started
    after = b.proxy.counts.snapshot()
    if state != "succeeded":
        raise SystemExit(f"batch {bid} ended {state or 'not at all'}")
    return diff(after[0], before[0]), diff(after[1], before[1]), seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20, help="requests per scenario (and items in the batch)")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--idle", type=float, default=15.0, help="seconds of each idle measurement (a metric flush or two)")
    p.add_argument("--label", default="", help="names the run in the JSON (e.g. the commit)")
    p.add_argument("--only", default="", help="run only this request kind (e.g. 'sync URL request')")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "cost.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # moto's access log
    started = time.monotonic()
    b = Bench(args)
    out: dict = {"label": args.label, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "prices_per_million":
                 PRICES_PER_MILLION, "load": {"requests_per_scenario": args.n, "clients": args.clients,
                                              "idle_s": args.idle}, "keys_off": {}, "keys_on": {}}
    try:
        b.start_worker()
        time.sleep(2)   # the first heartbeat and consumer polls settle
        idle_calls, idle_units = b.measure(args.idle)
        out["idle_worker"] = {
            "calls_per_s": round(sum(idle_calls.values()) / args.idle, 3),
            "dollars_per_month": round(dollars(idle_units) / args.idle * MONTH_S, 2),
            "by_action_per_s": {f"{s}:{a}": round(v / args.idle, 3) for (s, a), v in sorted(idle_calls.items()) if v}}
        for label, keys in (("keys_off", False), ("keys_on", True)):
            app, key = b.app(keys)
            app.test_client().get("/services", headers={"Authorization": f"Bearer {key}"} if key else {})
            flush_usage(app)   # the warm-up call's counts are written before the idle window, not in it
            base_calls, base_units = b.measure(args.idle)   # worker + this web process, idle
            for name, fn in scenarios(b, app, key).items():
                if args.only and name != args.only:
                    continue
                fn(0)   # warm: first-use lookups are not per-request costs
                flush_usage(app)
                calls, units, seconds = b.run(fn, args.n, app)
                out[label][name] = per_request(calls, units, base_calls, base_units, args.idle, seconds, args.n)
                print(f"{label} {name}: {out[label][name]['calls_per_request']} calls, "
                      f"${out[label][name]['dollars_per_million']}/M", file=sys.stderr)
            if not args.only or args.only == "batch item":
                calls, units, seconds = batch_items(b, app, key, args.n)
                out[label]["batch item"] = per_request(calls, units, base_calls, base_units, args.idle, seconds,
                                                       args.n)
            app.extensions["classifycloud"].close()
            b.apps.remove(app)
    finally:
        b.close()
    out["wall_s"] = round(time.monotonic() - started, 1)
    print(render(out))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    runs = {}
    if os.path.exists(args.out):   # earlier labels are kept (a before/after pair)
        with open(args.out) as fh:
            runs = json.load(fh).get("runs", {})
    runs[args.label or out["date"]] = out
    with open(args.out, "w") as fh:
        json.dump({"runs": runs}, fh, indent=1)
    return 0


def render(out: dict) -> str:
    """The markdown table of a run."""
    lines = ["| request | keys | AWS calls per request | $ per million requests | calls by action (per request) |",
             "|---|---|---:|---:|---|"]
    for label in ("keys_off", "keys_on"):
        for name, row in out[label].items():
            top = ", ".join(f"{k} {v:g}" for k, v in sorted(row["by_action"].items(), key=lambda kv: -kv[1])
                            if v >= 0.05)
            lines.append(f"| {name} | {label[5:]} | {row['calls_per_request']:.2f} | "
                         f"{row['dollars_per_million']:.2f} | {top} |")
    idle = out["idle_worker"]
    lines.append(f"\nIdle worker: {idle['calls_per_s']:.2f} calls/s, ${idle['dollars_per_month']:.2f} a month "
                 f"({', '.join(f'{k} {v:g}/s' for k, v in idle['by_action_per_s'].items())}).")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
