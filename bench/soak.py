"""Soak: the local stack under ~5 req/s of mixed traffic for a bounded time; errors and RSS growth per process.

Benchmark, not a test. Starts `classifycloud up`'s LocalStack (its own moto server, autoscaler, web, worker),
sends an open-loop mix of URL GETs, multipart uploads and async jobs (each job polled to its result),
samples the RSS of every process of the stack each minute, and reports growth after the warm-up.
Writes JSON to bench/results/soak.json.

    python bench/soak.py --minutes 10 --rate 5            # the documented run (docs/RELIABILITY.md)
    python bench/soak.py --minutes 1 --warmup 0.5         # a smoke run
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import random
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from classifycloud.local import SAMPLES, LocalStack, aws_env, free_port, samples_dir  # noqa: E402
from shared.config import Settings  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The AWS stand-in keeps every object and message in memory (in AWS that is S3's and SQS's storage, not
# a process of ours): it runs in its own process so its growth is reported apart and not judged.
MOTO = "moto server (AWS stand-in: keeps every object)"


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (None when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def tree(root: int) -> dict[int, str]:
    """pid -> short command of root and every live descendant."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    stat = fh.read()
                with open(f"/proc/{name}/cmdline", "rb") as fh:
                    cmd = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
            except OSError:
                continue
            table[int(name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    out, frontier = {root: "stack parent (autoscaler + load generator)"}, {root}
    while frontier:
        frontier = {p for p, (pp, _) in table.items() if pp in frontier and p not in out}
        for p in frontier:
            cmd = table[p][1]
            if "moto.server" in cmd:
                out[p] = MOTO
                continue
            out[p] = ("gunicorn " + ("master" if "classifycloud web" in cmd or "-c" in cmd and table[p][0] == root
                                     else "worker")) if "gunicorn" in cmd or "classifycloud web" in cmd else \
                ("classifycloud worker" if "worker" in cmd else cmd[:60])
    return out


class Load:
    """Open-loop traffic: every 1/rate seconds one request of the mix, counted by kind and outcome."""

    def __init__(self, stack: LocalStack, rate: float, seed: int = 1):
        self.stack = stack
        self.rate = rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: dict[str, dict[str, int]] = {k: {"sent": 0, "ok": 0, "error": 0} for k in ("url", "upload", "job")}
        self.errors: list[str] = []
        self.latency_ms: dict[str, list[float]] = {k: [] for k in self.counts}
        self.photos = {n: open(os.path.join(samples_dir(), f"{n}.jpg"), "rb").read() for n in SAMPLES}

    def _one(self, kind: str) -> None:
        s = self.stack
        name = self.rng.choice(SAMPLES)
        t0 = time.perf_counter()
        try:
            if kind == "url":
                r = requests.get(s.base_url + "/classify", params={"url": s.sample_url(name)}, timeout=150)
                ok = r.status_code == 200 and bool(r.json().get("results"))
            elif kind == "upload":
                r = requests.post(s.base_url + "/classify", files={"image": (f"{name}.jpg", self.photos[name])},
                                  timeout=150)
                ok = r.status_code == 200 and bool(r.json().get("results"))
            else:
                r = requests.post(s.base_url + "/jobs", json={"url": s.sample_url(name)}, timeout=30)
                ok = r.status_code == 202
                if ok:
                    url, deadline = r.json()["status_url"], time.monotonic() + 150
                    while True:
                        r = requests.get(url, timeout=30)
                        if r.status_code != 202 or time.monotonic() > deadline:
                            break
                        time.sleep(0.5)
                    ok = r.status_code == 200 and r.json().get("status") == "ok"
            detail = f"{kind} HTTP {r.status_code}: {r.text[:200]}"
        except (requests.RequestException, ValueError) as exc:
            ok, detail = False, f"{kind} {type(exc).__name__}: {exc}"
        with self.lock:
            self.counts[kind]["ok" if ok else "error"] += 1
            self.latency_ms[kind].append((time.perf_counter() - t0) * 1000)
            if not ok:
                self.errors.append(detail)

    def run(self, seconds: float) -> None:
        kinds = ["url"] * 4 + ["upload"] * 3 + ["job"] * 3
        with ThreadPoolExecutor(64) as pool:
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < seconds:
                kind = self.rng.choice(kinds)
                with self.lock:
                    self.counts[kind]["sent"] += 1
                pool.submit(self._one, kind)
                n += 1
                time.sleep(max(0.0, start + n / self.rate - time.monotonic()))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=5.0, help="requests per second")
    p.add_argument("--warmup", type=float, default=2.0, help="minutes before the RSS baseline")
    p.add_argument("--sample-s", type=float, default=60.0, help="RSS sampling period")
    p.add_argument("--out", default=os.path.join(RESULTS, "soak.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)   # the in-process moto server logs every call
    settings = Settings.from_env(prefix="soak" + uuid.uuid4().hex[:6], metrics_enabled=False,
                                 min_workers=1, max_workers=1)
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    os.environ.update(aws_env(endpoint))
    stack = LocalStack(settings, web_processes=2, autoscale=True, endpoint=endpoint).start()
    samples: list[dict] = []
    stop = threading.Event()

    def sampler():
        t0 = time.monotonic()
        while True:
            procs = tree(os.getpid())
            samples.append({"t_s": round(time.monotonic() - t0, 1),
                            "rss_kib": {f"{pid} {name}": rss_kib(pid) for pid, name in procs.items()}})
            if stop.wait(args.sample_s):
                procs = tree(os.getpid())
                samples.append({"t_s": round(time.monotonic() - t0, 1),
                                "rss_kib": {f"{pid} {name}": rss_kib(pid) for pid, name in procs.items()}})
                return

    try:
        stack.wait_ready(timeout=300, workers=True)
        load = Load(stack, args.rate)
        # warm-up includes the worst case: a burst that fills the largest batches, so the allocators'
        # high-water mark is reached before the baseline (else one late big batch reads as growth)
        burst = 2 * settings.max_batch_size
        load.counts["url"]["sent"] += burst          # counted like the rest: errors here fail the soak too
        with ThreadPoolExecutor(burst) as pool:
            list(pool.map(lambda _: load._one("url"), range(burst)))
        th = threading.Thread(target=sampler, daemon=True)
        th.start()
        load.run(args.minutes * 60)
        stop.set()
        th.join(30)
    finally:
        stack.stop()
        moto.terminate()
        moto.wait(30)
    warm_t = args.warmup * 60
    growth = {}
    for key in sorted({k for s in samples for k in s["rss_kib"]}):
        series = [(s["t_s"], s["rss_kib"].get(key)) for s in samples if s["rss_kib"].get(key)]
        base = next((v for t, v in series if t >= warm_t), None)
        if base is None or len(series) < 2:
            continue
        last = series[-1][1]
        peak = max(v for t, v in series if t >= warm_t)
        growth[key] = {"baseline_kib": base, "last_kib": last, "peak_kib": peak,
                       "growth_pct": round(100.0 * (last - base) / base, 2)}
    total = {k: sum(c[k] for c in load.counts.values()) for k in ("sent", "ok", "error")}
    out = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "minutes": args.minutes, "rate_per_s": args.rate, "warmup_min": args.warmup,
        "counts": load.counts, "total": total, "errors": load.errors[:50],
        "latency_ms": {k: {"p50": round(percentile(v, 0.5)), "p99": round(percentile(v, 0.99))}
                       for k, v in load.latency_ms.items()},
        "rss_growth_after_warmup": growth, "samples": samples,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"soak {args.minutes:g} min at {args.rate:g} req/s: sent {total['sent']}, ok {total['ok']}, "
          f"errors {total['error']}")
    for kind, c in load.counts.items():
        lat = out["latency_ms"][kind]
        print(f"  {kind:7s} sent {c['sent']:5d} ok {c['ok']:5d} errors {c['error']:3d}  p50 {lat['p50']} ms  "
              f"p99 {lat['p99']} ms")
    print(f"RSS after {args.warmup:g} min warm-up (KiB): baseline -> last (growth)")
    for key, g in growth.items():
        print(f"  {key[:70]:70s} {g['baseline_kib']:8d} -> {g['last_kib']:8d} ({g['growth_pct']:+.1f} %)")
    print(f"wrote {args.out}")
    ours = [g for k, g in growth.items() if MOTO not in k]
    return 0 if total["error"] == 0 and all(g["growth_pct"] < 10 for g in ours) else 1


if __name__ == "__main__":
    sys.exit(main())
