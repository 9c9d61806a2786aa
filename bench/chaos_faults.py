"""The chaos soak's faults and the supervisor that restarts what they took down (bench/chaos.py).

Every fault is aimed from outside the stack: signals to its processes, moto stopped and started on its port
(bench/faults.py's Moto), the S3 proxy's and the receiver's flags, SQS calls straight to moto.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import boto3

from classifycloud.local import LocalStack
from shared import naming

log = logging.getLogger("chaos")
FAULTS = ("worker_sigkill", "worker_sigterm", "web_sigkill", "web_sigterm", "driver_sigkill", "driver_sigterm",
          "endpoint_down", "s3_failing", "reply_queue_deleted", "blackhole_worker", "trickling_webhook",
          "worker_sigstop", "bulk_purged")
SKIPPED = {
    "autoscaler_kill": "the local stack without --autoscale has no autoscaler process: its housekeeping is a thread "
                       "of the process that runs the stack (classifycloud up, here the bench), and with --autoscale "
                       "the loop is a thread of it too; killing it is killing the stack",
    "clock_skew": "a worker's clock 30 s off needs libfaketime or CAP_SYS_TIME; neither is on this host",
}
SOUND_WORKERS = 2
BLACKHOLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "chaos_blackhole.py")


class Injector:
    """Draws nothing itself: injects the seed's plan, keeps the stack's parts running, records what it did."""

    def __init__(self, stack: LocalStack, moto, proxy, receiver, clock):
        self.stack, self.moto, self.proxy, self.receiver, self.clock = stack, moto, proxy, receiver, clock
        self.faults: list[dict] = []
        self.events: list[dict] = []             # what followed a fault (a black-hole worker's exit)
        self.web_kills: list[float] = []
        self.blackholes: list[subprocess.Popen] = []
        self.stopped: set[int] = set()          # SIGSTOPped pids: alive, not to be replaced
        self.lock = threading.Lock()
        self.moto_up = True
        self.seq = 100
        kw = dict(endpoint_url=moto.url, region_name=os.environ.get("AWS_REGION", "us-east-1"),
                  aws_access_key_id="local", aws_secret_access_key="local")
        self.sqs, self.s3 = boto3.client("sqs", **kw), boto3.client("s3", **kw)

    # --- the supervisor: what the autoscaler / systemd does in a deployment
    def _sound(self) -> list[subprocess.Popen]:
        return [p for p in self.stack.worker_procs if p.poll() is None]

    def supervise(self, stop: threading.Event) -> None:
        """Restart the web, the driver and sound workers that exited (once a second)."""
        while not stop.wait(1.0):
            with self.lock:
                if not self.moto_up:
                    continue
                if self.stack.web_proc.poll() is not None:
                    log.info("supervisor: web exited (%s); starting it again", self.stack.web_proc.returncode)
                    self.stack.start_web()
                if self.stack.driver_proc.poll() is not None:
                    log.info("supervisor: driver exited (%s); starting it again", self.stack.driver_proc.returncode)
                    self.stack.start_driver()
                for _ in range(SOUND_WORKERS - len(self._sound())):
                    self.seq += 1
                    log.info("supervisor: starting worker local-%d", self.seq)
                    self.stack.start_worker(f"local-{self.seq}")

    # --- the plan
    def run(self, plan: list, stop: threading.Event) -> None:
        """Inject each fault of the plan at its time; returns once the last one is over."""
        for t, kind, pick in plan:
            while self.clock() < t:
                time.sleep(0.1)
            rec = {"t": round(self.clock(), 1), "kind": kind}
            try:
                rec.update(getattr(self, kind)(pick) or {})
            except Exception as exc:   # a fault that could not be aimed is recorded, never fatal
                rec["error"] = f"{type(exc).__name__}: {exc}"
            log.info("fault %d at %.0fs: %s", len(self.faults) + 1, rec["t"], rec)
            self.faults.append(rec)
        self.restore()

    def restore(self) -> None:
        """Everything healthy again before the settling: processes continued, S3 and the receiver normal."""
        for pid in list(self.stopped):
            self._cont(pid)
        self.proxy.s3_failing = False
        self.receiver.trickling = False

    def _worker(self, pick: float) -> subprocess.Popen:
        live = [p for p in self._sound() if p.pid not in self.stopped]
        if not live:
            raise RuntimeError("no live worker")
        return live[int(pick * len(live))]

    def _signal(self, proc: subprocess.Popen, sig: int, name: str) -> dict:
        proc.send_signal(sig)
        return {"target": f"{name} pid {proc.pid}", "signal": signal.Signals(sig).name}

    def worker_sigkill(self, pick):
        return self._signal(self._worker(pick), signal.SIGKILL, "worker")

    def worker_sigterm(self, pick):
        return self._signal(self._worker(pick), signal.SIGTERM, "worker")

    def web_sigkill(self, pick):
        pid = self.stack.web_proc.pid
        self.web_kills.append(self.clock())
        os.killpg(pid, signal.SIGKILL)          # gunicorn's master and its workers: the whole process group
        return {"target": f"web pid {pid} (process group)", "signal": "SIGKILL"}

    def web_sigterm(self, pick):
        return self._signal(self.stack.web_proc, signal.SIGTERM, "web")

    def driver_sigkill(self, pick):
        return self._signal(self.stack.driver_proc, signal.SIGKILL, "batch driver")

    def driver_sigterm(self, pick):
        return self._signal(self.stack.driver_proc, signal.SIGTERM, "batch driver")

    def endpoint_down(self, pick):
        down = round(5 + pick * 15, 1)
        with self.lock:
            self.moto_up = False
            self.moto.stop()
        time.sleep(down)
        with self.lock:
            self.moto.start()
            self.moto_up = True
        return {"target": f"moto :{self.moto.port}", "down_s": down}

    def s3_failing(self, pick):
        down = round(5 + pick * 15, 1)
        self.proxy.s3_failing = True
        time.sleep(down)
        self.proxy.s3_failing = False
        return {"target": "S3 via the proxy", "down_s": down}

    def reply_queue_deleted(self, pick):
        prefix = naming.reply_queue_prefix(self.stack.settings.prefix)
        urls = self.sqs.list_queues(QueueNamePrefix=prefix).get("QueueUrls", [])
        for url in urls:
            self.sqs.delete_queue(QueueUrl=url)
        return {"target": [u.rsplit("/", 1)[-1] for u in urls]}

    def blackhole_worker(self, pick):
        self.seq += 1
        wid = f"blackhole-{self.seq}"
        proc = self.stack._spawn(f"worker-{wid}", [sys.executable, BLACKHOLE], CLASSIFYCLOUD_INSTANCE_ID=wid,
                                 CLASSIFYCLOUD_SERVICES="imagenet")
        self.blackholes.append(proc)
        threading.Thread(target=self._await_blackhole, args=(proc, wid), daemon=True).start()
        return {"target": f"{wid} pid {proc.pid}"}

    def _await_blackhole(self, proc: subprocess.Popen, wid: str) -> None:
        try:
            code = proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            code = None
        self.events.append({"t": round(self.clock(), 1), "kind": "blackhole_exit", "target": wid, "exit_code": code})

    def trickling_webhook(self, pick):
        self.receiver.trickling = True
        threading.Timer(30.0, setattr, args=(self.receiver, "trickling", False)).start()
        return {"target": "webhook receiver", "for_s": 30}

    def worker_sigstop(self, pick):
        proc = self._worker(pick)
        self.stopped.add(proc.pid)
        os.kill(proc.pid, signal.SIGSTOP)
        threading.Timer(30.0, self._cont, args=(proc.pid,)).start()
        return {"target": f"worker pid {proc.pid}", "for_s": 30}

    def _cont(self, pid: int) -> None:
        if pid in self.stopped:
            self.stopped.discard(pid)
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def bulk_purged(self, pick):
        url = self.sqs.get_queue_url(QueueName=naming.bulk_queue(self.stack.settings.prefix, "imagenet"))["QueueUrl"]
        held = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        self.sqs.purge_queue(QueueUrl=url)
        return {"target": url.rsplit("/", 1)[-1], "messages": int(held["Attributes"]["ApproximateNumberOfMessages"])}

    def notice(self, nid: str) -> dict | None:
        """The notify/done record of a notice (job-<id>, batch-<id>: webserver/submit.py, autoscaler/batches.py), from moto."""
        try:
            body = self.s3.get_object(Bucket=self.stack.settings.bucket_name, Key=naming.notify_key("done", nid))
            return json.loads(body["Body"].read())
        except Exception:
            return None
