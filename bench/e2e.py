"""End-to-end latency and throughput: the SQS floor, a direct Flask box, and the stack, side by side in one run.

    .venv/bin/python bench/e2e.py [--label before] [--sequential 40 --c4 120 --c16 240] [--pinned] [--profile 20]

Three systems on this machine, loopback only, one moto server (its own process) for both queue systems:

- floor: the bare SQS round trip, no model: a sender puts a request message on a queue (reply_to = its own
  reply queue), an echo process long-polls, answers with send_message_batch and deletes the request; the
  sender's listener thread long-polls the reply queue and wakes the waiting client. Any queue design pays this.
- direct: Flask + gunicorn (1 process, gthread) running the project's ImageClassifier for `imagenet`
  in the request thread (bench/e2e_direct.py): fetch by URL, decode, forward (one at a time, under a lock,
  unless --direct-unlocked), top-k. No queue. Same backend as the stack (--backend; auto by default).
- stack: classifycloud.local.LocalStack with 1 worker (web: gunicorn, its default processes).

The images are the bundled coffee photo by URL from the loopback sample server. Each cell (sequential, 4 and
16 concurrent clients) runs the three systems back to back, so machine load hits them alike; the report gives
p50/p99 latency, throughput, and the ratios (stack p50 - floor p50; stack / direct throughput).
Results: bench/results/e2e.json (the --label names the run in it; earlier labels are kept).

--pinned: moto (AWS's side, remote in production) and this driver (clients, sample photo server) run on one
core; the system under test (web + worker, the direct box, the floor's echo) on the other, so each side gets
the same silicon and moto's load cannot take the SUT's core. Children inherit the core at exec, so torch and
ONNX Runtime size their thread pools for one core.

Every cell records CPU time per request by component from /proc/<pid>/stat (bench/cpu_account.py): web,
worker (split into model, from the worker's model clock file, and everything else), moto, the direct box,
the echo and the driver. --profile S: afterwards, S seconds of 16-client load on the stack under py-spy
(bench/profile_worker.py), the worker's non-model time by function.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import requests  # noqa: E402

from bench import cpu_account, profile_worker  # noqa: E402
from bench.load_test import device, versions  # noqa: E402
from classifycloud.local import LocalStack, aws_env, free_port  # noqa: E402
from shared.aws import client, sqs_long_poll_client  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.messages import MessageError, Reply, Request, new_id  # noqa: E402
from worker.models.cpu_clock import read_stats  # noqa: E402

log = logging.getLogger("bench.e2e")
PHOTO = "coffee"
CELLS = (("sequential", 1), ("c4", 4), ("c16", 16))


# --- the floor: bare SQS echo -----------------------------------------------------------------------
def echo_serve(request_url: str) -> None:
    """The echo process: long-poll, reply to each request's reply_to (batched), delete (batched)."""
    settings = Settings.from_env(os.environ)
    poll, sqs = sqs_long_poll_client(settings), client("sqs", settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    while not stop.is_set():
        resp = poll.receive_message(QueueUrl=request_url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
        messages = resp.get("Messages", [])
        if not messages:
            continue
        by_queue: dict[str, list] = {}
        for m in messages:
            req = Request.from_json(m["Body"])
            by_queue.setdefault(req.reply_to, []).append(Reply.ok(req.id, req.service, []).to_json())
        for url, bodies in by_queue.items():
            sqs.send_message_batch(QueueUrl=url, Entries=[{"Id": str(i), "MessageBody": b}
                                                          for i, b in enumerate(bodies)])
        sqs.delete_message_batch(QueueUrl=request_url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])


class Floor:
    """The sender side of the SQS round trip: one reply listener thread, waiters by request id."""

    def __init__(self, settings: Settings, prefix: str, log_dir: str):
        self.sqs = client("sqs", settings)
        self.poll = sqs_long_poll_client(settings)
        self.request_url = self.sqs.create_queue(QueueName=f"{prefix}-echo-requests")["QueueUrl"]
        self.reply_url = self.sqs.create_queue(QueueName=f"{prefix}-echo-reply")["QueueUrl"]
        self.waiters: dict[str, list] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.listener = threading.Thread(target=self._listen, name="floor-listener", daemon=True)
        self.listener.start()
        with open(os.path.join(log_dir, "echo.log"), "ab") as logf:
            self.echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo", self.request_url],
                                         stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def _listen(self) -> None:
        while not self.stop_event.is_set():
            resp = self.poll.receive_message(QueueUrl=self.reply_url, MaxNumberOfMessages=10, WaitTimeSeconds=2)
            messages = resp.get("Messages", [])
            for m in messages:
                try:
                    reply = Reply.from_json(m["Body"])
                except MessageError:
                    continue
                with self.lock:
                    waiter = self.waiters.pop(reply.id, None)
                if waiter is not None:
                    waiter[1] = reply
                    waiter[0].set()
            if messages:
                self.sqs.delete_message_batch(QueueUrl=self.reply_url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)])

    def call(self, _session) -> dict | None:
        """One round trip; the reply as a dict, None on timeout."""
        rid = new_id()
        waiter = [threading.Event(), None]
        with self.lock:
            self.waiters[rid] = waiter
        self.sqs.send_message(QueueUrl=self.request_url, MessageBody=Request(
            id=rid, service="echo", image={"url": "http://127.0.0.1/none.jpg"}, reply_to=self.reply_url,
            record=False).to_json())   # as the web sends a synchronous request
        if not waiter[0].wait(30):
            with self.lock:
                self.waiters.pop(rid, None)
            return None
        return waiter[1].to_dict()

    def close(self) -> None:
        self.stop_event.set()
        self.echo.send_signal(signal.SIGTERM)
        try:
            self.echo.wait(10)
        except subprocess.TimeoutExpired:
            self.echo.kill()
        self.listener.join(5)


class Http:
    """GET /classify on a base URL; a 200 with results counts as done."""

    def __init__(self, base_url: str, image_url: str):
        self.url = f"{base_url}/classify"
        self.params = {"url": image_url, "service": "imagenet", "top_k": "5"}

    def call(self, session: requests.Session) -> dict | None:
        r = session.get(self.url, params=self.params, timeout=60)
        if r.status_code != 200:
            log.warning("HTTP %d from %s: %s", r.status_code, self.url, r.text[:200])
            return None
        body = r.json()
        return body if body.get("results") else None


# --- measuring ----------------------------------------------------------------------------------------
def run_cell(system, clients: int, total: int, until=None) -> dict:
    """`total` calls spread over `clients` threads (or until `until()` is true); latency, throughput, failures."""
    lat: list[float] = []
    timings: list[dict] = []
    failures = 0
    left = [total]
    lock = threading.Lock()

    def client_loop() -> None:
        nonlocal failures
        session = requests.Session()
        while True:
            with lock:
                if left[0] <= 0 or (until is not None and until()):
                    return
                left[0] -= 1
            t0 = time.perf_counter()
            try:
                body = system.call(session)
            except Exception as exc:  # a failed call is counted, not fatal
                log.warning("call failed: %s", exc)
                body = None
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                if body is None:
                    failures += 1
                else:
                    lat.append(dt)
                    if body.get("timings_ms"):
                        timings.append(body["timings_ms"])

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    lat.sort()
    out = {"clients": clients, "requests": total - left[0], "ok": len(lat), "failures": failures,
           "wall_s": round(wall, 2), "throughput_rps": round(len(lat) / wall, 2) if wall else 0.0,
           "p50_ms": round(pct(lat, 50), 1), "p99_ms": round(pct(lat, 99), 1),
           "mean_ms": round(statistics.fmean(lat), 1) if lat else None}
    if timings:
        keys = sorted({k for t in timings for k in t})
        out["reported_timings_p50_ms"] = {k: round(statistics.median(t[k] for t in timings if k in t), 1)
                                          for k in keys}
    return out


def pct(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (nan when empty)."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until GET url answers 200."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s")


def serving_backends(base_url: str, timeout: float = 30.0) -> dict | None:
    """imagenet's serving_backends from the stack's /services (each web process caches heartbeats a while)."""
    end = time.monotonic() + timeout
    while True:
        entry = [s for s in requests.get(base_url + "/services", timeout=10).json()["services"]
                 if s["name"] == "imagenet"][0]
        if entry.get("serving_backends") or time.monotonic() > end:
            return entry.get("serving_backends")
        time.sleep(0.5)


def start_moto(log_dir: str, cpus: set[int] | None = None) -> tuple[subprocess.Popen, str]:
    """A moto server in its own process (so the clients of this process do not share its GIL); on `cpus`."""
    port = free_port()
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    with open(os.path.join(log_dir, "moto.log"), "ab") as logf:
        proc = subprocess.Popen([sys.executable, "-c", "from moto.server import main; main()",
                                 "-H", "127.0.0.1", "-p", str(port)], preexec_fn=pre,
                                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    wait_http(endpoint + "/moto-api/", 60, proc)
    return proc, endpoint


def ratios(results: dict) -> dict:
    """stack p50 - floor p50, stack p50 - direct p50, stack / direct throughput, per cell."""
    out = {}
    for cell, _ in CELLS:
        f, d, s = (results[name][cell] for name in ("floor", "direct", "stack"))
        out[cell] = {"stack_minus_floor_p50_ms": round(s["p50_ms"] - f["p50_ms"], 1),
                     "stack_minus_direct_p50_ms": round(s["p50_ms"] - d["p50_ms"], 1),
                     "stack_over_direct_throughput": round(s["throughput_rps"] / d["throughput_rps"], 2)
                     if d["throughput_rps"] else None}
    return out


def table(run: dict) -> str:
    """A markdown table of one run."""
    lines = ["| cell | system | ok / n | p50 ms | p99 ms | req/s |", "|---|---|---:|---:|---:|---:|"]
    for cell, _ in CELLS:
        for name in ("floor", "direct", "stack"):
            r = run["results"][name][cell]
            lines.append(f"| {cell} | {name} | {r['ok']}/{r['requests']} | {r['p50_ms']} | {r['p99_ms']} "
                         f"| {r['throughput_rps']} |")
    lines += ["", "| cell | stack p50 − floor p50 (ms) | stack p50 − direct p50 (ms) | stack ÷ direct req/s |",
              "|---|---:|---:|---:|"]
    for cell, _ in CELLS:
        r = run["ratios"][cell]
        lines.append(f"| {cell} | {r['stack_minus_floor_p50_ms']} | {r['stack_minus_direct_p50_ms']} "
                     f"| {r['stack_over_direct_throughput']} |")
    return "\n".join(lines)


def cpu_table(run: dict) -> str:
    """CPU-ms per request by component, per cell (the stack's worker split into model and the rest)."""
    lines = ["| cell | stack: web | worker model | worker other | other ÷ model | moto | driver "
             "| direct box | floor: echo | floor: moto |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for cell, _ in CELLS:
        s, d, f = (run["results"][n][cell].get("cpu_ms_per_request", {}) for n in ("stack", "direct", "floor"))
        if not s:
            continue
        ratio = s.get("worker_other_over_model")
        lines.append(f"| {cell} | {s['web']} | {s['worker_model']} | {s['worker_other']} "
                     f"| {'' if ratio is None else f'{ratio:.0%}'} | {s['moto']} | {s['driver']} | {d['direct']} "
                     f"| {f['echo']} | {f['moto']} |")
    return "\n".join(lines)


def split_worker(cpu: dict, clock_before: dict | None, clock_after: dict | None, requests: int) -> dict:
    """Add worker_model (the forward passes' own thread CPU), the process CPU over their windows, and worker_other.

    The worker prepares the next batch and delivers the last one while the model runs (worker/pipeline.py),
    so the process CPU inside a forward pass's window holds that work too: the model's share is the
    forward thread's CPU, exact when the model runs in the calling thread (one core: one intra-op thread).
    """
    if not clock_before or not clock_after:
        return cpu
    n = max(1, requests)
    window = (clock_after["process_cpu_ns"] - clock_before["process_cpu_ns"]) / 1e6 / n
    thread = (clock_after["thread_cpu_ns"] - clock_before["thread_cpu_ns"]) / 1e6 / n
    model = thread
    batches = clock_after["batches"] - clock_before["batches"]
    images = clock_after["images"] - clock_before["images"]
    cpu.update(worker_model=round(model, 2), worker_model_window=round(window, 2),
               worker_other=round(cpu["worker"] - model, 2),
               worker_other_over_model=round((cpu["worker"] - model) / model, 3) if model > 0 else None,
               mean_batch=round(images / batches, 2) if batches else None)
    return cpu


def targets(run: dict) -> dict:
    """The issue's four targets, each with its measured value and met / missed."""
    res, rat = run["results"], run["ratios"]
    c16 = res["stack"]["c16"].get("cpu_ms_per_request", {})
    web = max(res["stack"][c].get("cpu_ms_per_request", {}).get("web", float("nan")) for c, _ in CELLS)
    other = c16.get("worker_other_over_model")
    seq_bound = res["floor"]["sequential"]["p50_ms"] + res["direct"]["sequential"]["p50_ms"] + 10
    # the system under test's core: the stack's own processes' CPU per second of the 16-client cell
    busy = round((c16.get("web", 0) + c16.get("worker", 0)) * res["stack"]["c16"]["throughput_rps"] / 1000, 3)
    out = {"web_cpu_ms_per_request_max_over_cells": {"value": web, "target": 3.0, "met": web <= 3.0},
           "worker_other_over_model_c16": {"value": other, "target": 0.30,
                                           "met": other is not None and other <= 0.30},
           "c16_stack_over_direct_throughput": {"value": rat["c16"]["stack_over_direct_throughput"],
                                                "target": 1.0,
                                                "met": (rat["c16"]["stack_over_direct_throughput"] or 0) >= 1.0},
           "c16_stack_core_busy": {"value": busy, "target": 0.9, "met": busy >= 0.9},
           "sequential_stack_p50_ms": {"value": res["stack"]["sequential"]["p50_ms"],
                                       "target": round(seq_bound, 1),
                                       "met": res["stack"]["sequential"]["p50_ms"] <= seq_bound}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--echo", metavar="REQUEST_QUEUE_URL", help=argparse.SUPPRESS)
    p.add_argument("--label", default="run")
    p.add_argument("--sequential", type=int, default=40, help="requests in the sequential cell")
    p.add_argument("--c4", type=int, default=120, help="requests in the 4-client cell")
    p.add_argument("--c16", type=int, default=240, help="requests in the 16-client cell")
    p.add_argument("--warmup", type=int, default=8)
    p.add_argument("--direct-threads", type=int, default=16)
    p.add_argument("--direct-unlocked", action="store_true",
                   help="let the direct box run forwards concurrently (default: one at a time, under a lock)")
    p.add_argument("--pinned", action="store_true",
                   help="moto + this driver on the first allowed core, the system under test on the second")
    p.add_argument("--profile", type=float, default=0.0, metavar="SECONDS",
                   help="after the cells, profile the worker with py-spy under 16-client load this long")
    p.add_argument("--backend", choices=("auto", "torch"), default="auto",
                   help="imagenet's backend in the stack and the direct box alike (auto: the fastest measured)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "e2e.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.echo:
        echo_serve(args.echo)
        return 0

    log_dir = tempfile.mkdtemp(prefix="classifycloud-e2e-")
    counts = {"sequential": args.sequential, "c4": args.c4, "c16": args.c16}
    moto_cpus = sut_cpus = None
    if args.pinned:
        cores = sorted(os.sched_getaffinity(0))
        if len(cores) < 2:
            p.error("--pinned needs two cores")
        moto_cpus, sut_cpus = {cores[0]}, {cores[1]}
    moto, endpoint = start_moto(log_dir, moto_cpus)
    os.environ.update(aws_env(endpoint))
    prefix = "e2e" + uuid.uuid4().hex[:6]
    clock_path = os.path.join(log_dir, "worker-model-cpu")
    auto = ("imagenet",) if args.backend == "auto" else ()
    os.environ["CLASSIFYCLOUD_BACKEND_AUTO"] = ",".join(auto)   # the direct box reads its settings from here
    settings = Settings.from_env({}, prefix=prefix, metrics_enabled=False, cpu_stats_path=clock_path,
                                 backend_auto=auto)
    stack = LocalStack(settings, workers=1, endpoint=endpoint, log_dir=log_dir)
    floor = direct_proc = None
    affinity: dict = {}
    served: dict = {}
    profile: dict | None = None
    try:
        if sut_cpus:  # children inherit the core at exec: their thread pools are sized for it
            os.sched_setaffinity(0, sut_cpus)
        stack.start()
        image_url = stack.sample_url(PHOTO)
        direct_port = free_port()
        from bench import e2e_direct
        direct_proc = e2e_direct.start(direct_port, args.direct_threads, os.path.join(log_dir, "direct.log"),
                                         lock=not args.direct_unlocked)
        floor = Floor(stack.settings, prefix, log_dir)
        if moto_cpus:  # this driver's threads (clients, sample server, floor listener) join moto's core
            cpu_account.pin_threads(os.getpid(), moto_cpus, descendants=False)
        stack.wait_ready(timeout=300, workers=True)
        wait_http(f"http://127.0.0.1:{direct_port}/healthz", 300, direct_proc)
        served = {"stack": serving_backends(stack.base_url),
                  "direct": requests.get(f"http://127.0.0.1:{direct_port}/healthz", timeout=10).json().get("backend")}
        log.info("imagenet backends: %s", served)
        components = {"web": stack.web_proc.pid, "worker": stack.worker_procs[0].pid, "moto": moto.pid,
                      "direct": direct_proc.pid, "echo": floor.echo.pid}
        if sut_cpus:  # threads started since (gunicorn's workers, pools) inherited it; make sure of all
            for name, pid in components.items():
                cpu_account.pin_threads(pid, moto_cpus if name == "moto" else sut_cpus)
        affinity = {name: cpu_account.affinity_of(pid) for name, pid in components.items()}
        affinity["driver"] = sorted(os.sched_getaffinity(0))
        log.info("cores: %s", affinity)
        systems = {"floor": floor, "direct": Http(f"http://127.0.0.1:{direct_port}", image_url),
                   "stack": Http(stack.base_url, image_url)}
        for name, system in systems.items():
            warm = run_cell(system, 4, args.warmup)
            log.info("warm-up %s: %d/%d ok", name, warm["ok"], args.warmup)
        results: dict = {name: {} for name in systems}
        for cell, clients in CELLS:  # the three systems back to back per cell: load drifts hit all alike
            for name, system in systems.items():
                before, clock0 = cpu_account.snapshot(components), read_stats(clock_path)
                results[name][cell] = r = run_cell(system, clients, counts[cell])
                after, clock1 = cpu_account.snapshot(components), read_stats(clock_path)
                cpu = cpu_account.per_request_ms(before, after, r["ok"])
                r["cpu_ms_per_request"] = split_worker(cpu, clock0, clock1, r["ok"]) if name == "stack" else cpu
                r["load_avg_after"] = os.getloadavg()
                log.info("%s %s: p50 %.1f ms p99 %.1f ms %.2f req/s (%d failures) cpu-ms/req %s", cell, name,
                         r["p50_ms"], r["p99_ms"], r["throughput_rps"], r["failures"], r["cpu_ms_per_request"])
        if args.profile > 0:
            profile = profile_stack(systems["stack"], {"worker": components["worker"], "web": components["web"]},
                                    args.profile, log_dir, moto_cpus)
    finally:
        if floor is not None:
            floor.close()
        if direct_proc is not None:
            direct_proc.send_signal(signal.SIGTERM)
            try:
                direct_proc.wait(30)
            except subprocess.TimeoutExpired:
                direct_proc.kill()
        stack.stop()
        moto.terminate()
        moto.wait(10)
    run = {"label": args.label, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "device": device(), "versions": versions(), "load_avg": os.getloadavg(),
           "config": {"photo": PHOTO, "service": "imagenet", "stack_workers": 1,
                      "stack_web_processes": stack.web_processes, "direct": f"gunicorn gthread 1 process x "
                      f"{args.direct_threads} threads, "
                      + ("forwards concurrent (no lock)" if args.direct_unlocked else "one forward at a time (lock)"),
                      "moto": "separate process", "cells": counts, "warmup": args.warmup,
                      "pinned": args.pinned, "cores": affinity, "backend": args.backend, "served": served},
           "results": results, "ratios": ratios(results)}
    run["targets"] = targets(run)
    if profile is not None:
        run["profile"] = profile
    print(table(run))
    print()
    print(cpu_table(run))
    print(json.dumps(run["targets"], indent=1))
    if profile is not None:
        for name in ("worker", "web"):
            print(profile_worker.markdown(profile[name], f"{name} profile (py-spy)"))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    runs = {}
    if os.path.exists(args.out):
        with open(args.out) as fh:
            runs = json.load(fh).get("runs", {})
    runs[args.label] = run
    with open(args.out, "w") as fh:
        json.dump({"runs": runs}, fh, indent=2)
    print(f"results in {args.out} (label {args.label!r}); logs in {log_dir}")
    return 0


def profile_stack(stack: Http, pids: dict[str, int], seconds: float, log_dir: str, cpus: set[int] | None) -> dict:
    """py-spy on the worker and the web (with its gunicorn workers) while 16 clients load the stack for
    `seconds`; per part the summary of its profile, and the load it ran under."""
    raws = {name: os.path.join(log_dir, f"{name}-profile.txt") for name in pids}
    spies = {name: profile_worker.record(pid, seconds, raws[name], cpus=cpus, subprocesses=name == "web")
             for name, pid in pids.items()}
    load = run_cell(stack, 16, 10 ** 9, until=lambda: all(s.poll() is not None for s in spies.values()))
    out: dict = {"load": {k: load[k] for k in ("ok", "throughput_rps", "p50_ms")}}
    for name, spy in spies.items():
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not os.path.exists(raws[name]):
            raise RuntimeError(f"py-spy on {name} failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
        out[name] = profile_worker.summarise(raws[name])
    return out


if __name__ == "__main__":
    sys.exit(main())
