"""The probes (/healthz, /livez, /readyz) and worker liveness from S3 heartbeats (heartbeats/<instance>.json)."""
from __future__ import annotations

import ipaddress
import logging
import threading
import time

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, current_app, jsonify, request

from shared import naming
from shared.config import Settings
from shared.messages import Heartbeat, MessageError, now_ms
from webserver.routing import route

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)
PROBE = {"public": True, "unlogged": True}   # load-balancer probes: no key, not API calls


class HeartbeatMonitor:
    """Lists fresh, ready workers; one S3 listing per cache period however many /healthz calls come."""

    def __init__(self, settings: Settings, s3, cache_s: float = 2.0):
        self.settings = settings
        self.cache_s = cache_s
        self._s3 = s3
        self._lock = threading.Lock()
        self._at = 0.0
        self._cached: tuple[list[dict], str | None] = ([], None)

    def ready_workers(self) -> tuple[list[dict], str | None]:
        """(fresh ready heartbeats, error reason when S3 could not be read)."""
        with self._lock:
            if time.monotonic() - self._at < self.cache_s:
                return self._cached
            self._cached = self._read()
            self._at = time.monotonic()
            return self._cached

    def _read(self) -> tuple[list[dict], str | None]:
        max_age_ms = self.settings.heartbeat_max_age_s * 1000
        now = now_ms()
        out = []
        try:
            pages = self._s3.get_paginator("list_objects_v2").paginate(
                Bucket=self.settings.bucket_name, Prefix=naming.heartbeat_prefix())
            for page in pages:
                for obj in page.get("Contents", []):
                    # skip objects not rewritten lately without fetching them
                    if now - obj["LastModified"].timestamp() * 1000 > max_age_ms + 5000:
                        continue
                    beat = self._get(obj["Key"])
                    if beat is not None and beat.state == "ready" and beat.is_fresh(self.settings.heartbeat_max_age_s, now):
                        out.append(beat.to_dict())
        except (ClientError, BotoCoreError) as exc:
            log.warning("heartbeats unreadable: %s", exc)
            return [], f"cannot read worker heartbeats: {exc}"
        return out, None

    def _get(self, key: str) -> Heartbeat | None:
        try:
            body = self._s3.get_object(Bucket=self.settings.bucket_name, Key=key)["Body"].read()
            return Heartbeat.from_json(body)
        except ClientError:
            return None  # deleted between listing and reading: a worker that just left
        except MessageError as exc:
            log.warning("heartbeat %s is malformed (%s); ignored", key, exc)
            return None


@bp.route("/healthz", methods=["GET"])
@route(**PROBE, answers=(503,))
def healthz():
    """200 only with a fresh ready worker heartbeat and a live reply listener; else 503 with why."""
    c = current_app.extensions["classifycloud"]
    try:
        c.listener.start()
    except Exception as exc:  # a dead queue endpoint is a health fact, not a crash
        current_app.logger.warning("reply listener cannot start: %s", exc)
    workers, problem = c.heartbeats.ready_workers()
    body = {"workers": len(workers),
            "services": sorted({s for w in workers for s in (w.get("services") or [])}),
            "listener": c.listener.alive, "reply_queue": c.listener.queue_name,
            "waiting": c.listener.waiting}
    if not c.listener.alive:
        problem = "reply listener is not running"
    elif problem is None and not workers:
        problem = (f"no worker heartbeat with state 'ready' in the last "
                   f"{c.settings.heartbeat_max_age_s:g} s")
    return _probe_answer(body, problem, "unhealthy")


@bp.route("/livez", methods=["GET"])
@route(**PROBE)
def livez():
    """Liveness: this process answers (restart it if not); says nothing about queues or workers."""
    return jsonify({"status": "ok"})


@bp.route("/readyz", methods=["GET"])
@route(**PROBE, answers=(503,))
def readyz():
    """Readiness: the reply queue is polled and the queue endpoint answers, so work can be accepted; workers optional."""
    c = current_app.extensions["classifycloud"]
    problem = readiness_problem(c)
    workers, _ = c.heartbeats.ready_workers()
    body = {"workers": len(workers), "listener": c.listener.alive, "reply_queue": c.listener.queue_name,
            "waiting": c.listener.waiting}
    return _probe_answer(body, problem, "not_ready")


def readiness_problem(c) -> str | None:
    """Why this process cannot accept work now (None when it can): its reply queue, listener and queue endpoint."""
    try:
        c.listener.start()
    except Exception as exc:  # a dead queue endpoint is a readiness fact, not a crash
        return f"reply queue cannot be created: {type(exc).__name__}"
    if c.listener.draining:
        return "this process is shutting down"
    if not c.listener.alive:
        return "reply listener is not running"
    return c.listener.reachable()


def _local_caller() -> bool:
    """Whether the probe comes from this host (an operator, the local stack, bench): only it sees details.

    Behind the ALB the peer is the load balancer, and ProxyFix takes the address the ALB appended, so
    a client cannot pass for the loopback address with its own X-Forwarded-For."""
    try:
        return ipaddress.ip_address((request.remote_addr or "").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _probe_answer(body: dict, problem: str | None, code: str):
    """A probe's reply: 200 with status ok, or 503 with status unavailable and the problem as the error.

    Callers from elsewhere (the public, the ALB) get the status and the error code only: queue names,
    worker counts and raw S3 or SQS errors are for the host itself."""
    if not _local_caller():
        if problem:
            body = {"status": "unavailable", "error": {"code": code, "message": f"this server is {code}"}}
            resp = jsonify(body)
            resp.status_code = 503
            return resp
        return jsonify({"status": "ok"})
    if problem:
        body.update(status="unavailable", error={"code": code, "message": problem})
        resp = jsonify(body)
        resp.status_code = 503
        return resp
    body["status"] = "ok"
    return jsonify(body)
