"""Bulk: a batch of N items on the local stack (2 workers, loopback photo server), against one request at a time.

    .venv/bin/python bench/bulk.py [--items 1000] [--sequential 200] [--workers 2]

One LocalStack (moto server in process, gunicorn web, the batch driver, N worker processes), in order:

1. idle: interactive GET /classify of the chelsea photo, one at a time, on the idle stack (p50);
2. one at a time: the first `--sequential` batch items sent as GET /classify, one after another (images/s);
3. batch A: POST /batches with all items; while it runs, the same interactive probe (p50, same run);
   images/s from the batch's own created/finished stamps; its output is checked line by line;
4. batch B: the same items again, with a worker SIGKILLed mid-batch (a replacement started), the web
   and the batch driver SIGKILLed and restarted; its output is checked the same way.

Check of an output: exactly N lines, each index 0..N-1 once, each line's input = item[index], status ok,
chelsea lines a cat (281-285), coffee lines espresso (967). Results: bench/results/bulk.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from bench.load_test import device, versions  # noqa: E402
from classifycloud.local import LocalStack  # noqa: E402
from shared.aws import client  # noqa: E402
from shared.batches import io_prefix  # noqa: E402
from shared.config import Settings  # noqa: E402

log = logging.getLogger("bench.bulk")
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")
CATS = range(281, 286)
ESPRESSO = 967


def classify(stack, url: str) -> float | None:
    """One GET /classify; its latency in ms (None when it failed)."""
    t0 = time.perf_counter()
    try:
        r = requests.get(stack.base_url + "/classify", params={"url": url}, timeout=120)
    except requests.RequestException:
        return None
    return (time.perf_counter() - t0) * 1000 if r.status_code == 200 else None


def probe(stack, stop: threading.Event, out: list, every_s: float) -> None:
    """Interactive requests one at a time, every_s apart, until stop."""
    while not stop.is_set():
        ms = classify(stack, stack.sample_url("chelsea"))
        if ms is not None:
            out.append(ms)
        stop.wait(every_s)


def status(stack, bid: str) -> dict | None:
    try:
        r = requests.get(f"{stack.base_url}/batches/{bid}", timeout=10)
        return r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def wait_for(stack, bid: str, done: int | None = None, timeout: float = 1800) -> dict:
    """Poll until the batch is final (or has `done` items)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        b = status(stack, bid)
        if b and (b["state"] in ("succeeded", "failed", "cancelled") or (done is not None and b["done"] >= done)):
            return b
        time.sleep(0.5)
    raise TimeoutError(f"batch {bid} did not get there in {timeout:g} s")


def submit(stack, items: list[str], tag: str) -> str:
    out = f"s3://{stack.settings.bucket_name}/{io_prefix(None)}bench-{tag}/"
    r = requests.post(stack.base_url + "/batches", json={"service": "imagenet", "input": {"items": items},
                                                         "output": out}, timeout=60)
    r.raise_for_status()
    return r.json()["id"]


def check_output(stack, final: dict, items: list[str]) -> dict:
    """Count the output lines and check each against its input and the known photos' labels."""
    s3 = client("s3", stack.settings)
    lines = []
    for uri in final["shards"]:
        bucket, key = uri[5:].split("/", 1)
        lines += [json.loads(x) for x in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]
    indices = [x["index"] for x in lines]
    wrong = []
    for x in lines:
        photo = PHOTOS[x["index"] % len(PHOTOS)]
        top = x["results"][0]["index"] if x.get("results") else None
        if x["input"] != items[x["index"]] or x["status"] != "ok" or \
                (photo == "chelsea" and top not in CATS) or (photo == "coffee" and top != ESPRESSO):
            wrong.append(x["index"])
    return {"lines": len(lines), "distinct_inputs": len(set(x["input"] for x in lines)),
            "each_index_once": sorted(indices) == list(range(len(items))), "wrong": len(wrong),
            "failed": final["failed"]}


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write bench/results/bulk.json."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--items", type=int, default=1000)
    p.add_argument("--sequential", type=int, default=200, help="items sent one request at a time")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--idle-probes", type=int, default=40)
    p.add_argument("--probe-every", type=float, default=0.5, help="seconds between interactive probes")
    p.add_argument("--bulk-receive", type=int, default=Settings().bulk_receive, help="bulk items per worker batch")
    p.add_argument("--bulk-yield", type=float, default=Settings().bulk_yield_s)
    p.add_argument("--threads", type=int, default=0, help="OMP_NUM_THREADS of the workers (0: torch's default)")
    p.add_argument("--json", default=os.path.join(HERE, "results", "bulk.json"))
    args = p.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)      # inherited by the worker processes
    logging.basicConfig(level=logging.WARNING)
    settings = Settings.from_env({}, prefix="bk" + uuid.uuid4().hex[:8], metrics_enabled=False,
                                 services=("imagenet",), bulk_visibility_timeout_s=20, batch_tick_s=0.5,
                                 bulk_receive=args.bulk_receive, bulk_yield_s=args.bulk_yield)
    stack = LocalStack(settings, web_processes=2, workers=args.workers).start()
    res: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device(),
                 "versions": versions(), "items": args.items, "workers": args.workers,
                 "bulk_receive": args.bulk_receive, "bulk_yield_s": args.bulk_yield, "omp_threads": args.threads}
    try:
        stack.wait_ready(timeout=300, workers=True)
        items = [f"{stack.sample_url(PHOTOS[i % len(PHOTOS)])}?i={i}" for i in range(args.items)]
        for _ in range(8):                                     # warm both workers
            classify(stack, stack.sample_url("coffee"))
        res["load_before"] = os.getloadavg()
        idle = [ms for ms in (classify(stack, stack.sample_url("chelsea")) for _ in range(args.idle_probes)) if ms]
        t0 = time.perf_counter()
        ok = sum(classify(stack, u) is not None for u in items[:args.sequential])
        seq_s = time.perf_counter() - t0
        res["one_at_a_time"] = {"images": args.sequential, "ok": ok, "seconds": seq_s, "images_per_s": ok / seq_s}
        print(f"one at a time: {ok}/{args.sequential} in {seq_s:.1f} s = {ok / seq_s:.2f} images/s", flush=True)

        # batch A: throughput and interactive latency in the same run
        during: list[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(stack, stop, during, args.probe_every), daemon=True)
        bid = submit(stack, items, "a")
        prober.start()
        final = wait_for(stack, bid)
        stop.set()
        prober.join(130)
        res["load_during"] = os.getloadavg()
        took = (final["finished_at"] - final["created_at"]) / 1000
        res["batch"] = {"id": bid, "state": final["state"], "seconds": took, "images_per_s": args.items / took,
                        **check_output(stack, final, items)}
        res["interactive"] = {"idle_p50_ms": p50(idle), "during_p50_ms": p50(during), "idle_n": len(idle),
                              "during_n": len(during), "ratio": p50(during) / p50(idle)}
        print(f"batch: {args.items} in {took:.1f} s = {args.items / took:.2f} images/s; {res['batch']}", flush=True)
        print(f"interactive p50: idle {p50(idle):.0f} ms, during the batch {p50(during):.0f} ms", flush=True)

        # batch B: a worker SIGKILLed, the web and the driver restarted, mid-batch
        bid = submit(stack, items, "b")
        at = wait_for(stack, bid, done=args.items // 4)
        victim = stack.worker_procs[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        stack.start_worker(f"local-{len(stack.worker_procs) + 1}")
        mid = wait_for(stack, bid, done=args.items // 2)
        for proc in (stack.web_proc, stack.driver_proc):   # the whole process group: gunicorn's workers too
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        stack.start_web()
        stack.start_driver()
        stack.wait_ready(timeout=120)
        final = wait_for(stack, bid)
        res["disrupted"] = {"id": bid, "state": final["state"], "killed_worker_at_done": at["done"],
                            "restarted_web_and_driver_at_done": mid["done"],
                            "seconds": (final["finished_at"] - final["created_at"]) / 1000,
                            **check_output(stack, final, items)}
        print(f"disrupted batch: {res['disrupted']}", flush=True)
    finally:
        stack.stop()
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)
    b, d, i, s = res["batch"], res["disrupted"], res["interactive"], res["one_at_a_time"]
    print("\n| run | images | seconds | images/s | output lines | each input once | wrong labels |")
    print("|---|---|---|---|---|---|---|")
    print(f"| one request at a time | {s['images']} | {s['seconds']:.1f} | {s['images_per_s']:.2f} | - | - | - |")
    print(f"| batch | {args.items} | {b['seconds']:.1f} | {b['images_per_s']:.2f} | {b['lines']} "
          f"| {b['each_index_once']} | {b['wrong']} |")
    print(f"| batch, worker SIGKILLed + web and driver restarted | {args.items} | {d['seconds']:.1f} "
          f"| {args.items / d['seconds']:.2f} | {d['lines']} | {d['each_index_once']} | {d['wrong']} |")
    print(f"\ninteractive p50: idle {i['idle_p50_ms']:.0f} ms, during the batch {i['during_p50_ms']:.0f} ms "
          f"(x{i['ratio']:.2f}); load {res['load_before']} -> {res['load_during']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
