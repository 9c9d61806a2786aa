"""LocalFleet: worker processes on this machine (`python -m worker`), with an optional boot delay."""
from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

from autoscaler.fleet.base import Fleet, FleetCount
from shared.config import Settings

log = logging.getLogger(__name__)


@dataclass
class LocalWorker:
    """One local worker: pending until its boot delay is over, then a process."""

    id: str
    launched_at: float
    proc: subprocess.Popen | None = None
    timer: threading.Timer | None = None
    cancelled: bool = False
    exit_code: int | None = None
    log_path: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)


class LocalFleet(Fleet):
    """Worker subprocesses; count() reaps exited ones; stop_all() ends them at shutdown."""

    name = "local"

    def __init__(self, settings: Settings, env: dict | None = None, log_dir: str = "",
                 command: list[str] | None = None, boot_delay_s: float | None = None):
        self.settings = settings
        self.command = list(command) if command else [sys.executable, "-m", "worker"]
        self.boot_delay_s = settings.boot_delay_s if boot_delay_s is None else boot_delay_s
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="classifycloud-fleet-")
        self.env = dict(os.environ if env is None else env)
        self.env.update(settings.to_env())
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self._workers: dict[str, LocalWorker] = {}
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._tag = uuid.uuid4().hex[:4]
        self.exited: dict[str, int] = {}      # id -> exit code of reaped workers (0 = terminated on request)
        self.killed: set[str] = set()         # ids killed as hung (their -9 is not a crash)

    def count(self) -> FleetCount:
        """Running processes and workers still in their boot delay; reaps exited ones first."""
        self.maintain()
        with self._lock:
            workers = list(self._workers.values())
        running = [w.id for w in workers if w.proc is not None]
        pending = [w.id for w in workers if w.proc is None]
        return FleetCount(running=len(running), pending=len(pending), ids=tuple(running + pending))

    def launch(self, n: int) -> list[str]:
        """Start n workers (after the boot delay, when there is one)."""
        ids = []
        for _ in range(max(0, n)):
            wid = f"local-{self._tag}-{next(self._seq)}"
            w = LocalWorker(id=wid, launched_at=time.monotonic(),
                            log_path=os.path.join(self.log_dir, f"worker-{wid}.log"))
            with self._lock:
                self._workers[wid] = w
            if self.boot_delay_s > 0:
                w.timer = threading.Timer(self.boot_delay_s, self._spawn, args=(w,))
                w.timer.daemon = True
                w.timer.start()
            else:
                self._spawn(w)
            ids.append(wid)
        if ids:
            log.info("local fleet: launched %d worker(s) %s (boot delay %.0fs)", len(ids), ids, self.boot_delay_s)
        return ids

    def _spawn(self, w: LocalWorker) -> None:
        with w.lock:
            if w.cancelled or w.proc is not None:
                return
            env = dict(self.env, CLASSIFYCLOUD_INSTANCE_ID=w.id)
            with open(w.log_path, "ab") as logf:
                w.proc = subprocess.Popen(self.command, env=env, stdout=logf, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        log.info("local fleet: worker %s started, pid %d", w.id, w.proc.pid)

    def maintain(self) -> list[str]:
        """Reap workers whose process has exited; returns their ids."""
        reaped = []
        with self._lock:
            for wid, w in list(self._workers.items()):
                code = w.proc.poll() if w.proc is not None else (-1 if w.cancelled else None)
                if code is None:
                    continue
                del self._workers[wid]
                self.exited[wid] = code
                reaped.append(wid)
                if code == 0:
                    log.info("local fleet: worker %s exited (terminated on request)", wid)
                elif not w.cancelled:
                    log.warning("local fleet: worker %s exited with code %s; log %s", wid, code, w.log_path)
        return reaped

    def terminate(self, ids: list[str]) -> None:
        """SIGTERM these workers (a worker finishes its batch and releases what it holds)."""
        self._signal(ids, hard=False)

    def kill(self, ids: list[str]) -> None:
        """SIGKILL these workers (hung ones ignore SIGTERM); what they held comes back after the visibility timeout."""
        self._signal(ids, hard=True)

    def _signal(self, ids: list[str], hard: bool) -> None:
        for wid in ids:
            with self._lock:
                w = self._workers.get(wid)
            if w is None:
                continue
            with w.lock:
                w.cancelled = True
                if w.timer is not None:
                    w.timer.cancel()
                if hard:
                    self.killed.add(wid)
                if w.proc is None or w.proc.poll() is not None:
                    continue
                if hard:
                    w.proc.kill()
                    log.warning("local fleet: worker %s killed (pid %d)", wid, w.proc.pid)
                else:
                    w.proc.send_signal(signal.SIGTERM)

    def stop_all(self, timeout: float = 30.0) -> None:
        """Terminate every worker, wait up to timeout, then kill what is left."""
        with self._lock:
            workers = list(self._workers.values())
        self.terminate([w.id for w in workers])
        deadline = time.monotonic() + timeout
        for w in workers:
            if w.proc is None:
                continue
            try:
                w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("local fleet: worker %s did not stop in %.0fs; killing it", w.id, timeout)
                w.proc.kill()
                w.proc.wait()
        self.maintain()

    def pids(self) -> dict[str, int]:
        """Process ids of the running workers."""
        with self._lock:
            return {w.id: w.proc.pid for w in self._workers.values() if w.proc is not None}
