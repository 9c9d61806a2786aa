"""Chaos soak on the local stack: mixed load, a random fault every 15-30 s, an invariant check at the end.

Benchmark, not a test. One LocalStack (gunicorn web, two real workers hosting imagenet and facesearch, the batch
driver) runs behind an S3-failing proxy in front of moto (bench/chaos_parts.py). A load thread sends synchronous
URL and upload requests, async jobs with webhooks (a local receiver), face searches and one batch; a fault thread
draws a fault every 15-30 s; a supervisor restarts what the faults took down (what the autoscaler or systemd
does in a deployment). At the end every request, job, batch item and notice is settled and judged by
bench/chaos_check.py. --seed fixes the fault schedule and the load mix.

    python bench/chaos.py                                   # 20 minutes, >= 40 faults
    python bench/chaos.py --duration 420 --min-faults 12    # a short run
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from chaos_check import PENDING, TERMINAL_BATCH, check  # noqa: E402
from chaos_faults import FAULTS, SKIPPED, Injector  # noqa: E402
from chaos_parts import Receiver, S3Proxy  # noqa: E402
from faults import RESULTS, Moto, SlowPhotos, wait_workers  # noqa: E402

from classifycloud.local import LocalStack, samples_dir  # noqa: E402
from shared.config import Settings  # noqa: E402

log = logging.getLogger("chaos")
PHOTOS = ("chelsea", "coffee")
MIX = (("sync_url", 35), ("sync_upload", 25), ("job", 25), ("face", 15))


def schedules(seed: int, duration: float, min_faults: int, gap=(15.0, 30.0), load_every: float = 1.2):
    """The fault schedule [(t, kind, pick)] and the load [(t, kind, photo)], both from the seed alone."""
    rng = random.Random(seed)
    faults, t = [], 20.0
    order = list(FAULTS)
    rng.shuffle(order)                    # the first draws cover every kind once, then any kind
    while t < duration or len(faults) < min_faults:
        kind = order[len(faults)] if len(faults) < len(order) else rng.choice(FAULTS)
        faults.append((round(t, 1), kind, rng.random()))
        t += rng.uniform(*gap)
    load, t = [], 0.0
    kinds, weights = zip(*MIX)
    end = faults[-1][0] + 10
    while t < end:
        load.append((round(t, 2), rng.choices(kinds, weights)[0], rng.choice(PHOTOS)))
        t += rng.expovariate(1 / load_every)
    return faults, load, rng


def face_photos() -> dict[str, bytes]:
    """The astronaut (Eileen Collins) to enrol, and a mirrored crop of her to search with (as tests/test_e2e_tenancy)."""
    import io

    from PIL import Image, ImageOps
    from skimage import data

    def jpeg(img):
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=92)
        return buf.getvalue()
    astronaut = Image.fromarray(data.astronaut())
    return {"enrol": jpeg(astronaut),
            "probe": jpeg(ImageOps.mirror(astronaut.crop((100, 30, 400, 330)).resize((220, 220))))}


class Load:
    """Sends the load schedule and keeps one record per client request (bench/chaos_check.py's log)."""

    def __init__(self, stack: LocalStack, receiver: Receiver, clock):
        self.stack, self.receiver, self.clock = stack, receiver, clock
        self.lock = threading.Lock()
        self.sync: list[dict] = []
        self.jobs: list[dict] = []
        self.uploads = {p: open(os.path.join(samples_dir(), f"{p}.jpg"), "rb").read() for p in PHOTOS}
        self.faces = face_photos()

    def enrol(self) -> None:
        """The face every search should find, enrolled before any fault."""
        r = requests.post(self.stack.base_url + "/faces/chaos", files={"image": ("face.jpg", self.faces["enrol"])},
                          data={"name": "Eileen Collins"}, timeout=300)
        assert r.status_code == 201, r.text

    def _record(self, rec: dict, fn) -> None:
        rec["t0"] = self.clock()
        try:
            r = fn()
            rec["status"] = r.status_code
            try:
                body = r.json()
            except ValueError:
                body = {}
            rec["code"] = (body.get("error") or {}).get("code") if r.status_code >= 300 else None
            rec["id"] = body.get("id") or (body.get("error") or {}).get("id")
            rec["body"] = body
        except requests.RequestException as exc:
            rec["status"], rec["err"] = None, f"{type(exc).__name__}: {exc}"[:300]
        rec["t1"] = self.clock()

    def send(self, key: str, kind: str, photo: str) -> None:
        """One client request of the mix."""
        base = self.stack.base_url
        url = f"{self.stack.sample_url(photo)}?k={key}"
        if kind == "job":
            rec = {"key": key, "photo": photo, "notify": True}
            self._record(rec, lambda: requests.post(base + "/jobs", json={
                "url": url, "notify": {"webhook": self.receiver.url(key)}}, timeout=60))
            rec.pop("body", None)
            with self.lock:
                self.jobs.append(rec)
            return
        rec = {"key": key, "photo": "face" if kind == "face" else photo, "kind": kind}
        if kind == "sync_url":
            self._record(rec, lambda: requests.get(base + "/classify", params={"url": url}, timeout=150))
        elif kind == "sync_upload":
            self._record(rec, lambda: requests.post(base + "/classify", timeout=150,
                                                    files={"image": (f"{photo}.jpg", self.uploads[photo])}))
        else:
            self._record(rec, lambda: requests.post(base + "/classify", timeout=150, data={
                "service": "facesearch", "gallery": "chaos"}, files={"image": ("probe.jpg", self.faces["probe"])}))
        body = rec.pop("body", {})
        if rec["status"] == 200:
            top = (body.get("results") or [{}])[0]
            rec.update(answer_id=body.get("id"), label=top.get("label"), label_index=top.get("index"))
        with self.lock:
            self.sync.append(rec)

    def run(self, load: list, stop: threading.Event, pool: ThreadPoolExecutor) -> None:
        for i, (t, kind, photo) in enumerate(load):
            while self.clock() < t and not stop.is_set():
                time.sleep(0.05)
            if stop.is_set():
                return
            pool.submit(self.send, f"{kind[:4]}{i}", kind, photo)


def submit_batch(stack: LocalStack, receiver: Receiver, rng: random.Random, n: int, item_ms: int) -> dict:
    """One batch of n URL items (photos drawn by the seed, each sent over item_ms so the batch lasts through
    several faults); retried with one Idempotency-Key until accepted."""
    photos = {str(i): rng.choice(PHOTOS) for i in range(n)}
    slow = SlowPhotos()
    items = [slow.url(photos[str(i)], item_ms) for i in range(n)]
    body = {"service": "imagenet", "input": {"items": items}, "notify": {"webhook": receiver.url("batch")},
            "output": f"s3://{stack.settings.bucket_name}/batch-io/anonymous/chaos/"}
    idem = uuid.uuid4().hex
    for _ in range(60):
        try:
            r = requests.post(stack.base_url + "/batches", json=body, headers={"Idempotency-Key": idem}, timeout=60)
            if r.status_code == 202:
                return {"id": r.json()["id"], "key": "batch", "total": n, "photos": photos, "notify": True}
            log.warning("POST /batches: %s %s", r.status_code, r.text[:200])
        except requests.RequestException as exc:
            log.warning("POST /batches: %s", exc)
        time.sleep(2)
    raise RuntimeError("the batch was never accepted")


def _batch_lines(base: str, batch: dict) -> list[dict]:
    """The batch's output, one entry per line (index, status, top class)."""
    lines = []
    for shard in requests.get(f"{base}/batches/{batch['id']}/results", timeout=30).json().get("shards", []):
        url = base + shard["url"] if shard["url"].startswith("/") else shard["url"]
        for line in requests.get(url, timeout=60).text.splitlines():
            x = json.loads(line)
            lines.append({"index": x["index"], "status": x["status"],
                          "label_index": ((x.get("results") or [{}])[0]).get("index")})
    return lines


def _final(base: str, rid: str) -> dict | None:
    """The job's result record, once it has one."""
    try:
        r = requests.get(f"{base}/jobs/{rid}", timeout=10)
        body = r.json()
    except (requests.RequestException, ValueError):
        return None
    return body if r.status_code == 200 and body.get("status") in ("ok", "error") else None


def settle(stack: LocalStack, inj: Injector, load: Load, batch: dict, deadline_s: float) -> dict:
    """Poll every open id, the batch and the notices side by side until each has an end or the deadline passes."""
    base, deadline = stack.base_url, time.monotonic() + deadline_s
    open_ids = {r["id"]: r for r in load.sync if r.get("code") in PENDING and r.get("id")}
    open_ids.update({j["id"]: j for j in load.jobs if j.get("status") == 202})
    wanted = [j["id"] for j in load.jobs if j.get("status") == 202] + [batch["id"]]
    notices: dict = {}
    while time.monotonic() < deadline:
        for rid, rec in list(open_ids.items()):
            rec["final"] = _final(base, rid)
            if rec["final"] is not None:
                del open_ids[rid]
        if batch.get("state") not in TERMINAL_BATCH:
            try:
                batch["state"] = requests.get(f"{base}/batches/{batch['id']}", timeout=10).json().get("state")
            except (requests.RequestException, ValueError):
                pass
        notices.update({nid: inj.notice(("batch-" if nid == batch["id"] else "job-") + nid) for nid in wanted
                        if (notices.get(nid) or {}).get("state") not in ("delivered", "failed")})
        undelivered = [n for n in wanted if (notices.get(n) or {}).get("state") not in ("delivered", "failed")]
        log.info("settling: %d ids open, batch %s, %d notices open", len(open_ids), batch.get("state"),
                 len(undelivered))
        if not open_ids and batch.get("state") in TERMINAL_BATCH and not undelivered:
            break
        time.sleep(3)
    batch["lines"] = _batch_lines(base, batch) if batch.get("state") == "succeeded" else []
    return notices


def versions() -> dict:
    """The commit and the versions that matter to the numbers."""
    from importlib import metadata
    out = {}
    for dist in ("torch", "moto", "boto3", "gunicorn", "dlib-bin"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                       cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except OSError:
        out["commit"] = None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=1200.0, help="seconds of load and faults")
    p.add_argument("--min-faults", type=int, default=40)
    p.add_argument("--batch-items", type=int, default=300)
    p.add_argument("--batch-item-ms", type=int, default=2000, help="each batch photo is sent over this long")
    p.add_argument("--settle", type=float, default=420.0, help="seconds to wait for every end after the load")
    p.add_argument("--out", default=os.path.join(RESULTS, "chaos.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "botocore", "urllib3", "classifycloud", "autoscaler", "shared"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    fault_plan, load_plan, rng = schedules(args.seed, args.duration, args.min_faults)
    at_start = versions()                     # the commit that runs, not the one checked out at the end
    os.environ.update({"AWS_ACCESS_KEY_ID": "local", "AWS_SECRET_ACCESS_KEY": "local",
                       "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1")})
    moto = Moto().start()
    proxy = S3Proxy(moto.port)
    receiver = Receiver()
    settings = Settings.from_env(
        {}, prefix="c" + uuid.uuid4().hex[:8], metrics_enabled=False, services=("imagenet", "facesearch"),
        visibility_timeout_s=10, wait_time_s=2, heartbeat_interval_s=2.0, terminate_check_interval_s=1.0,
        reply_timeout_s=60.0, bulk_visibility_timeout_s=15, batch_tick_s=1.0, batch_lost_grace_s=15.0,
        notify_backoff_s=1.0, notify_max_attempts=6, notify_timeout_s=5.0, janitor_interval_s=20.0)
    stack = LocalStack(settings, endpoint=proxy.url, web_processes=1, workers=2).start()
    started, inj = time.monotonic(), None
    try:
        stack.wait_ready(timeout=600, workers=True)
        wait_workers(stack, 2, timeout=600)
        load = Load(stack, receiver, lambda: time.monotonic() - t0)
        load.enrol()
        t0 = time.monotonic()
        inj = Injector(stack, moto, proxy, receiver, lambda: time.monotonic() - t0)
        stop = threading.Event()
        threading.Thread(target=inj.supervise, args=(stop,), name="supervisor", daemon=True).start()
        pool = ThreadPoolExecutor(16)
        loader = threading.Thread(target=load.run, args=(load_plan, stop, pool), name="load")
        loader.start()
        time.sleep(10)
        batch = submit_batch(stack, receiver, rng, args.batch_items, args.batch_item_ms)
        inj.run(fault_plan, stop)             # blocks until the last fault of the plan was injected and restored
        stop.set()
        loader.join()
        pool.shutdown(wait=True)              # every in-flight request answered or timed out
        load_s = round(time.monotonic() - t0, 1)
        for rec in load.sync + load.jobs:     # requests inside the web when it was SIGKILLed
            rec["web_killed"] = any(rec["t0"] <= k <= rec["t1"] for k in inj.web_kills)
        notices = settle(stack, inj, load, batch, args.settle)
        run_log = {"sync": load.sync, "jobs": load.jobs, "batches": [batch], "notices": notices,
                   "received": receiver.got}
        verdict = check(run_log)
        with open(os.path.join(stack.log_dir, "chaos-log.json"), "w") as fh:   # for the investigation
            json.dump(run_log, fh, indent=1)
    finally:
        stack.stop()
        proxy.stop()
        receiver.stop()
        moto.stop()
    out = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seed": args.seed,
           "host": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "loadavg": os.getloadavg()},
           "versions": at_start, "duration_s": load_s, "wall_s": round(time.monotonic() - started, 1),
           "load": {"sync": len(load.sync), "jobs": len(load.jobs), "batch_items": args.batch_items,
                    "webhook_posts": len(receiver.got), "s3_503s": proxy.refused, "dropped_calls": proxy.dropped},
           "faults": inj.faults, "events": inj.events, "fault_kinds": sorted({f["kind"] for f in inj.faults}), "skipped_kinds": SKIPPED,
           "violations": verdict["violations"], "invariants": verdict["invariants"], "other": verdict["other"],
           "batch": {k: batch.get(k) for k in ("id", "total", "state")} | {"lines": len(batch["lines"])},
           "log_dir": stack.log_dir}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps({k: out[k] for k in ("duration_s", "load", "fault_kinds", "violations", "other")}, indent=1))
    for name, v in verdict["invariants"].items():
        print(f"{name:14s} checked {v['checked']:5d}  violations {v['violations']:3d}  {v['examples'][:3]}")
    return 1 if verdict["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())
