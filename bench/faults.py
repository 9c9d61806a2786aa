"""Fault injection on the local stack (loopback only, bounded): what is sent, answered, lost, duplicated.

Benchmark, not a test. One moto server (restartable on the same port) backs every scenario; each
scenario starts its own LocalStack (web under gunicorn, real workers with the real model), injects one
fault, and accounts for every request by id:

  answered   the client got its result: 200, or a 503/504 carrying a job id that later polled to 200
  refused    the client got a clean 503 (queue_unavailable, storage_unavailable) at submit: nothing accepted
  lost       accepted but never answered (must be 0)
  duplicated handled by workers more than once (at-least-once redelivery; from the workers' logs)

    python bench/faults.py                       # every scenario; JSON to bench/results/faults.json
    python bench/faults.py --only worker-sigkill
"""
from __future__ import annotations

import argparse
import collections
import datetime
import glob
import http.server
import json
import logging
import os
import platform
import re
import signal
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from classifycloud.local import LocalStack, free_port, samples_dir  # noqa: E402
from shared import naming  # noqa: E402
from shared.aws import client  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.messages import Terminate  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
log = logging.getLogger("faults")
REFUSED = ("queue_unavailable", "storage_unavailable")   # clean 503s at submit time: nothing was accepted


_DRIP_GAP_S = 0.5   # well inside the fetcher's per-read timeout: a slow origin, not a drip-feed attack


class _SlowPhotos(http.server.BaseHTTPRequestHandler):
    """GET /<ms>/<name>.jpg: a real sample photo sent over ms milliseconds (a slow origin keeps a batch busy).

    Headers go at once and the body follows in pieces every 0.5 s, so each read is prompt and the whole
    fetch stays inside the fetch deadline: the worker is busy, and no fetch rule cuts the photo.
    """

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):  # noqa: N802
        try:
            ms, name = self.path.strip("/").split("/", 1)
            spread_s = int(ms) / 1000
            data = open(os.path.join(samples_dir(), name), "rb").read()
        except (ValueError, OSError):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        pieces = max(1, int(spread_s / _DRIP_GAP_S))
        size = -(-len(data) // pieces)
        try:
            for i in range(pieces):
                time.sleep(spread_s / pieces)
                self.wfile.write(data[i * size:(i + 1) * size])
                self.wfile.flush()
        except OSError:   # the worker gave up on it (its deadline): nothing to send to
            pass


class SlowPhotos:
    def __init__(self):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowPhotos)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str = "chelsea", ms: int = 0) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{ms}/{name}.jpg"


class Moto:
    """The AWS endpoint, stoppable and restartable on the same port (state lives in this process)."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = None

    def start(self) -> "Moto":
        from moto.server import ThreadedMotoServer
        for _ in range(50):
            try:
                self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
                self.server.start()
                break
            except OSError:
                time.sleep(0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                requests.get(self.url, timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("moto did not come back")

    def stop(self) -> None:
        self.server.stop()


class Ledger:
    """Every request by id (or by a client-side key until the server gave an id) and how it ended."""

    def __init__(self, stack: LocalStack):
        self.stack = stack
        self.lock = threading.Lock()
        self.sent = 0
        self.answered: set[str] = set()
        self.refused = 0
        self.pending: set[str] = set()        # accepted (job id known), answer still to be fetched
        self.unanswered_keys: list[str] = []  # no id and no clean refusal: lost at the door
        self.codes = collections.Counter()

    def classify(self, url: str, timeout: float = 150) -> None:
        """A synchronous request; a 503/504 with an id is polled later."""
        with self.lock:
            self.sent += 1
        try:
            r = requests.get(self.stack.base_url + "/classify", params={"url": url}, timeout=timeout)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            with self.lock:
                self.codes[type(exc).__name__] += 1
                self.unanswered_keys.append(f"sync {type(exc).__name__}")
            return
        with self.lock:
            code = (body.get("error") or {}).get("code") if r.status_code != 200 else "ok"
            self.codes[f"{r.status_code} {code}"] += 1
            if r.status_code == 200:
                self.answered.add(body["id"])
            elif code in REFUSED:                 # nothing was enqueued: the client knows to retry
                self.refused += 1
            elif body.get("id"):
                self.pending.add(body["id"])
            else:
                self.unanswered_keys.append(f"sync {r.status_code} {code}")

    def submit_job(self, url: str) -> None:
        """An async job: accepted (202 + id) or refused."""
        with self.lock:
            self.sent += 1
        try:
            r = requests.post(self.stack.base_url + "/jobs", json={"url": url}, timeout=60)
            body = r.json()
        except (requests.RequestException, ValueError) as exc:
            with self.lock:
                self.unanswered_keys.append(f"job {type(exc).__name__}")
            return
        with self.lock:
            self.codes[f"{r.status_code} job"] += 1
            if r.status_code == 202:
                self.pending.add(body["id"])
            elif (body.get("error") or {}).get("code") in REFUSED:
                self.refused += 1
            else:
                self.unanswered_keys.append(f"job {r.status_code}")

    def settle(self, timeout: float = 150) -> None:
        """Poll every accepted-but-unanswered id until it has a result record."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            for rid in list(self.pending):
                try:
                    r = requests.get(f"{self.stack.base_url}/jobs/{rid}", timeout=10)
                except requests.RequestException:
                    continue
                if r.status_code == 200 and r.json().get("status") == "ok":
                    self.pending.discard(rid)
                    self.answered.add(rid)
            time.sleep(0.5)

    def report(self, name: str, note: str = "", **extra) -> dict:
        handled = collections.Counter()
        for path in glob.glob(os.path.join(self.stack.log_dir, "worker-*.log")):
            for line in open(path, errors="replace"):
                m = re.search(r" request ([A-Za-z0-9_-]+) \w[\w-]*: ", line)
                if m:
                    handled[m.group(1)] += 1
        lost = len(self.pending) + len(self.unanswered_keys)
        return {"scenario": name, "log_dir": self.stack.log_dir, "sent": self.sent, "answered": len(self.answered), "refused_503": self.refused,
                "lost": lost, "duplicated": sum(1 for c in handled.values() if c > 1),
                "http": dict(self.codes), "note": note, **extra}


def stack_for(moto: Moto, **settings_kw) -> LocalStack:
    workers = settings_kw.pop("workers", 1)
    autoscale = settings_kw.pop("autoscale", False)
    web_processes = settings_kw.pop("web_processes", 1)
    base = dict(prefix="f" + uuid.uuid4().hex[:8], metrics_enabled=False, visibility_timeout_s=10,
                wait_time_s=2, terminate_check_interval_s=1.0, heartbeat_interval_s=2.0)
    base.update(settings_kw)
    stack = LocalStack(Settings.from_env({}, **base), endpoint=moto.url, web_processes=web_processes,
                       workers=workers, autoscale=autoscale).start()
    stack.wait_ready(timeout=300, workers=workers > 0)
    return stack


def wait_workers(stack: LocalStack, n: int, timeout: float = 300) -> None:
    """Until n workers beat 'ready' (the web's /healthz counts them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(stack.base_url + "/healthz", timeout=5).json().get("workers", 0) >= n:
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{n} workers not ready")


def held_by(stack: LocalStack, instance_id: str) -> int:
    """Messages a worker holds, from its heartbeat."""
    s3 = client("s3", stack.settings)
    try:
        body = s3.get_object(Bucket=stack.settings.bucket_name, Key=naming.heartbeat_key(instance_id))["Body"].read()
        return int(json.loads(body).get("busy") or 0)
    except Exception:
        return 0


def _worker_fault(moto: Moto, photos: SlowPhotos, sig: int, name: str) -> dict:
    stack = stack_for(moto, workers=2, max_batch_size=4, buffer_size=8)
    try:
        wait_workers(stack, 2)
        ledger = Ledger(stack)
        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(ledger.classify, photos.url("chelsea" if i % 2 else "coffee", 1500))
                       for i in range(20)]
            deadline = time.monotonic() + 30
            victim = stack.worker_procs[0]
            while held_by(stack, "local-1") == 0 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)                           # mid-batch: fetching the slow photos
            held = held_by(stack, "local-1")
            victim.send_signal(sig)
            t0 = time.monotonic()
            victim.wait(60)
            exit_s = time.monotonic() - t0
            for f in futures:
                f.result()
        ledger.settle()
        return ledger.report(name, held_at_fault=held, victim_exit_code=victim.returncode,
                             victim_exit_s=round(exit_s, 1))
    finally:
        stack.stop()


def scenario_worker_sigkill(moto, photos):
    """A worker is SIGKILLed holding a batch: its messages come back after the visibility timeout (10 s)."""
    return _worker_fault(moto, photos, signal.SIGKILL, "worker SIGKILL mid-batch")


def scenario_worker_sigterm(moto, photos):
    """A worker is SIGTERMed holding a batch: it finishes the batch, releases the rest, exits 0."""
    return _worker_fault(moto, photos, signal.SIGTERM, "worker SIGTERM mid-batch")


def scenario_web_sigterm(moto, photos):
    """The web gets SIGTERM with 20 requests waiting: each answered in the drain, or 503 + job id, polled later."""
    stack = stack_for(moto, workers=1, max_batch_size=2, buffer_size=2)
    try:
        wait_workers(stack, 1)
        ledger = Ledger(stack)
        sqs = client("sqs", stack.settings)
        prefix = naming.reply_queue_prefix(stack.settings.prefix)
        with ThreadPoolExecutor(20) as pool:
            futures = [pool.submit(ledger.classify, photos.url("coffee", 700)) for _ in range(20)]
            time.sleep(2.0)
            waiting = requests.get(stack.base_url + "/readyz", timeout=5).json().get("waiting")
            web = stack.web_proc
            web.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            web.wait(60)
            stop_s = time.monotonic() - t0
            for f in futures:
                f.result()
        queues_after = sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
        # a new web process on the same port answers the 503'd jobs from their records
        stack.web_proc = stack._spawn("web2", [sys.executable, "-m", "classifycloud", "web", "--processes", "1",
                                               "--host", "127.0.0.1", "--port", str(stack.web_port)])
        stack.wait_ready(timeout=60)
        ledger.settle()
        return ledger.report("web SIGTERM with 20 requests waiting", waiting_at_sigterm=waiting,
                             web_exit_code=web.returncode, web_stop_s=round(stop_s, 1),
                             reply_queues_left_by_old_web=len(queues_after))
    finally:
        stack.stop()


def scenario_endpoint_outage(moto, photos):
    """The AWS endpoint stops for 15 s and comes back on the same port, under steady traffic."""
    stack = stack_for(moto, autoscale=True, min_workers=1, max_workers=2, tick_s=2.0)
    try:
        wait_workers(stack, 1)
        ledger = Ledger(stack)
        loop = stack._autoscaler[0]
        stop_at = threading.Event()
        timeline = []

        def traffic():
            i = 0
            with ThreadPoolExecutor(32) as pool:
                while not stop_at.is_set():
                    fn = ledger.classify if i % 2 == 0 else ledger.submit_job
                    pool.submit(fn, photos.url("chelsea", 0))
                    i += 1
                    time.sleep(0.5)

        t = threading.Thread(target=traffic)
        t.start()
        time.sleep(8)
        errors_before = loop.errors
        moto.stop()
        down_at = time.monotonic()
        time.sleep(15)
        moto.start()
        timeline.append(round(time.monotonic() - down_at, 1))
        ticks_at_restart = loop.ticks
        time.sleep(20)
        stop_at.set()
        t.join()
        ledger.settle(timeout=180)
        recovered = requests.get(stack.base_url + "/classify", params={"url": photos.url("coffee", 0)},
                                 timeout=120).status_code
        return ledger.report("AWS endpoint down 15 s, restarted on the same port",
                             outage_s=timeline[0], autoscaler_ticks_skipped=loop.errors - errors_before,
                             autoscaler_ticks_after_restart=loop.ticks - ticks_at_restart,
                             request_after_recovery=recovered)
    finally:
        stack.stop()


def scenario_terminate_storm(moto, photos):
    """10 terminate messages at 3 workers, 2 of them busy: only the idle one leaves; nothing is released."""
    # visibility 60 s: longer than a busy worker holds a message (two photos, ~6 s), so nothing is redelivered
    stack = stack_for(moto, workers=0, max_batch_size=1, buffer_size=2, visibility_timeout_s=60)
    try:
        # the idle worker hosts another service, so it is up before the storm yet never takes the photos
        for wid, service in (("local-1", "imagenet"), ("local-2", "imagenet"), ("local-3", "nsfw")):
            stack.start_worker(wid, CLASSIFYCLOUD_SERVICES=service)
        idle = stack.worker_procs[2]
        wait_workers(stack, 3)
        ledger = Ledger(stack)
        with ThreadPoolExecutor(8) as pool:
            # 8 photos of 3 s each (sent in pieces, each read prompt; far inside the 15 s fetch deadline even
            # on a loaded host), one at a time, buffer 2: each busy worker holds 2 and has 4 to do, busy >= 12 s
            # with work always waiting, so it never looks at the terminate queue; a terminate is fresh for 5 s
            futures = [pool.submit(ledger.classify, photos.url("chelsea", 3000)) for _ in range(8)]
            deadline = time.monotonic() + 30
            while (held_by(stack, "local-1") < 2 or held_by(stack, "local-2") < 2) and time.monotonic() < deadline:
                time.sleep(0.2)
            sqs = client("sqs", stack.settings)
            url = sqs.get_queue_url(QueueName=naming.terminate_queue(stack.settings.prefix))["QueueUrl"]
            busy_at_storm = [held_by(stack, "local-1"), held_by(stack, "local-2")]
            sqs.send_message_batch(QueueUrl=url, Entries=[       # the storm: ten at once
                {"Id": str(i), "MessageBody": Terminate().to_json()} for i in range(10)])
            idle.wait(30)
            for f in futures:
                f.result()
        alive = [p.poll() is None for p in stack.worker_procs]
        ledger.settle()
        rep = ledger.report("terminate storm: 10 terminates, 3 workers, 2 busy",
                            workers_left=sum(alive), idle_worker_exit_code=idle.poll(),
                            busy_held_at_storm=busy_at_storm, busy_workers_alive=alive[:2])
        if busy_at_storm != [2, 2] or alive != [True, True, False]:
            rep["failed"] = "the busy workers were not both busy at the storm, or a busy one left / the idle one stayed"
        return rep
    finally:
        stack.stop()


SCENARIOS = {
    "worker-sigkill": scenario_worker_sigkill,
    "worker-sigterm": scenario_worker_sigterm,
    "web-sigterm": scenario_web_sigterm,
    "endpoint-outage": scenario_endpoint_outage,
    "terminate-storm": scenario_terminate_storm,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated scenario names: " + ", ".join(SCENARIOS))
    p.add_argument("--out", default=os.path.join(RESULTS, "faults.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    names = args.only.split(",") if args.only else list(SCENARIOS)
    moto = Moto().start()
    os.environ.update({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")})
    photos = SlowPhotos()
    rows = []
    try:
        for name in names:
            t0 = time.monotonic()
            row = SCENARIOS[name](moto, photos)
            row["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        moto.stop()
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "host": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version()}, "scenarios": rows}
    if args.only is None:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=1)
    print(f"\n{'scenario':52s} {'sent':>5s} {'answered':>8s} {'refused':>7s} {'lost':>4s} {'dup':>4s}")
    for r in rows:
        print(f"{r['scenario'][:52]:52s} {r['sent']:5d} {r['answered']:8d} {r['refused_503']:7d} {r['lost']:4d} "
              f"{r['duplicated']:4d}")
    bad = [f"{r['scenario']}: {r['lost']} lost" if r["lost"] else f"{r['scenario']}: {r['failed']}"
           for r in rows if r["lost"] or r.get("failed")]
    for line in bad:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
