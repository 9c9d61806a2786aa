"""The embedded local stack: moto server, queues, sample photos, web (gunicorn) and workers."""
from __future__ import annotations

import functools
import http.server
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources

import requests

from classifycloud.provision import ensure_all
from classifycloud.stackfile import LOCAL_CREDENTIALS
from shared.catalogue import catalogue_for
from shared.config import Settings
from shared.transport import Transport

log = logging.getLogger(__name__)
SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")


def free_port() -> int:
    """An unused TCP port on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples_dir() -> str:
    """Folder of the bundled sample photos."""
    return str(resources.files("classifycloud").joinpath("samples"))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep the terminal for the user
        log.debug("samples: " + fmt, *args)


class SampleServer:
    """Serves the sample photos over loopback (the only loopback URLs the local workers may fetch)."""

    def __init__(self, directory: str | None = None, port: int = 0):
        handler = functools.partial(_QuietHandler, directory=directory or samples_dir())
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="samples", daemon=True)

    @property
    def base_url(self) -> str:
        """http://127.0.0.1:<port>"""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> "SampleServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def start_moto() -> tuple[object, str]:
    """A moto server in this process, and the environment that points boto3 at it."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def aws_env(endpoint: str) -> dict[str, str]:
    """Variables that send every AWS SDK call of this process tree to a local endpoint."""
    return {"AWS_ENDPOINT_URL": endpoint, **LOCAL_CREDENTIALS,
            "AWS_REGION": os.environ.get("AWS_REGION", "us-east-1"),
            "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION", "us-east-1")}


@dataclass
class LocalStack:
    """Everything `classifycloud up` runs, startable piecewise (tests use the pieces)."""

    settings: Settings
    web_port: int = 0
    web_processes: int = 2
    workers: int = 1
    autoscale: bool = False
    endpoint: str | None = None             # reuse an AWS endpoint instead of starting moto
    log_dir: str = ""
    worker_procs: list = field(default_factory=list)
    web_proc: subprocess.Popen | None = None
    driver_proc: subprocess.Popen | None = None   # the batch driver (autoscaler/batches.py)
    samples: SampleServer | None = None
    _moto: object = None
    transport: Transport | None = None      # this process's one transport (autoscaler, housekeeping)
    _autoscaler: object = None
    _stop_autoscaler: threading.Event = field(default_factory=threading.Event)
    _housekeeping: threading.Thread | None = None

    def start(self) -> "LocalStack":
        """Start moto (unless given an endpoint), provision, serve samples, start web and workers."""
        self.log_dir = self.log_dir or tempfile.mkdtemp(prefix="classifycloud-logs-")
        if self.endpoint is None:
            self._moto, self.endpoint = start_moto()
        os.environ.update(aws_env(self.endpoint))
        # children end with this process (shared/lifeline.py); a quick drain keeps Ctrl-C quick
        # `classifycloud up` is the one place keys default to off: a stack on this machine, for its user
        api_keys = "off" if self.settings.api_keys.strip().lower() == "auto" else self.settings.api_keys
        self.settings = self.settings.replace(fetch_allow_loopback=True, parent_pid=os.getpid(), api_keys=api_keys,
                                              shutdown_drain_s=min(self.settings.shutdown_drain_s, 2.0))
        self.transport = Transport(self.settings)
        ensure_all(self.settings, catalogue_for(self.settings), self.transport)
        self.samples = SampleServer().start()
        self.web_port = self.web_port or free_port()
        self.start_web()
        self.start_driver()
        if self.autoscale:
            self._start_autoscaler()
        else:
            for _ in range(self.workers):
                self.start_worker()
            self._start_housekeeping()
        return self

    @property
    def base_url(self) -> str:
        """The web server's URL."""
        return f"http://127.0.0.1:{self.web_port}"

    def child_env(self, **extra: str) -> dict[str, str]:
        """The environment of a child process: ours, the settings, the local AWS endpoint."""
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env.update(aws_env(self.endpoint))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _spawn(self, name: str, argv: list[str], **extra_env: str) -> subprocess.Popen:
        logf = open(os.path.join(self.log_dir, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, env=self.child_env(**extra_env), stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
        logf.close()
        log.debug("started %s pid %d", name, proc.pid)
        return proc

    def start_web(self) -> subprocess.Popen:
        """The web server (gunicorn) on web_port; called again after a restart."""
        self.web_proc = self._spawn("web", [sys.executable, "-m", "classifycloud", "web",
                                            "--processes", str(self.web_processes),
                                            "--host", "127.0.0.1", "--port", str(self.web_port)])
        return self.web_proc

    def start_driver(self) -> subprocess.Popen:
        """The batch driver: its own small process, so it can be killed and restarted like the web."""
        self.driver_proc = self._spawn("batches", [sys.executable, "-m", "autoscaler.batches"])
        return self.driver_proc

    def start_worker(self, instance_id: str | None = None, **extra_env: str) -> subprocess.Popen:
        """One more local worker process."""
        instance_id = instance_id or f"local-{len(self.worker_procs) + 1}"
        proc = self._spawn(f"worker-{instance_id}", [sys.executable, "-m", "worker"],
                           CLASSIFYCLOUD_INSTANCE_ID=instance_id, **extra_env)
        self.worker_procs.append(proc)
        return proc

    def _start_housekeeping(self) -> None:
        """No autoscaler: its housekeeping (orphan reply queues, dead letters) runs in a thread of its own."""
        try:
            from autoscaler.housekeeping import start_housekeeping
        except ImportError:   # an install without the autoscaler package
            log.warning("no autoscaler package: orphan reply queues and dead letters are not swept")
            return
        self._housekeeping = start_housekeeping(self.settings, self.transport, self._stop_autoscaler)

    def _start_autoscaler(self) -> None:
        from autoscaler.local import start_local_autoscaler
        self._autoscaler = start_local_autoscaler(self.settings, self.transport, self._stop_autoscaler,
                                                  env=self.child_env(), log_dir=self.log_dir)

    @property
    def fleet(self):
        """The autoscaler's local fleet (None without autoscaling)."""
        return self._autoscaler[1] if self._autoscaler else None

    def wait_ready(self, timeout: float = 180.0, progress=None, workers: bool = False) -> None:
        """Block until /readyz answers 200 (can accept work; with workers=True, /healthz: a worker is ready)."""
        path = "/healthz" if workers else "/readyz"
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.web_proc is not None and self.web_proc.poll() is not None:
                raise RuntimeError(f"web server exited ({self.web_proc.returncode}):\n{self.log_tail('web')}")
            try:
                r = requests.get(self.base_url + path, timeout=2)
                if r.status_code == 200:
                    return
                reason = r.json().get("error", {}).get("message", r.text)[:120]
            except (requests.RequestException, ValueError) as exc:
                reason = type(exc).__name__
            if progress and reason != last:
                progress(f"waiting for the stack: {reason}")
                last = reason
            time.sleep(0.5)
        raise TimeoutError(f"stack not ready after {timeout:.0f}s; logs in {self.log_dir}\n{self.log_tail('web')}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of a child's log."""
        try:
            with open(os.path.join(self.log_dir, f"{name}.log"), "rb") as fh:
                return b"".join(fh.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def sample_url(self, name: str) -> str:
        """URL of a bundled sample photo on the loopback sample server."""
        return f"{self.samples.base_url}/{name}.jpg"

    def stop(self, timeout: float = 30.0) -> None:
        """Stop workers (SIGTERM: finish the batch, release messages), web, samples and moto."""
        # signal everything first, then wait: the parts stop side by side, so Ctrl-C takes seconds
        for proc in [*self.worker_procs, self.web_proc, self.driver_proc]:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        self._stop_autoscaler.set()
        if self._housekeeping is not None:
            self._housekeeping.join(timeout=timeout)
        if self._autoscaler:
            loop, fleet, thread = self._autoscaler
            fleet.terminate(list(fleet.pids()))
            thread.join(timeout=timeout)
            fleet.stop_all()
        for proc in [*self.worker_procs, self.web_proc, self.driver_proc]:
            if proc is None:
                continue
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.samples:
            self.samples.stop()
        if self._moto is not None:
            self._moto.stop()
