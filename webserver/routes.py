"""The native JSON API: /classify, /jobs, /services, /healthz, /livez, /readyz."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from shared.messages import Reply, valid_id
from webserver.bulk import job_notify, queue_job_notice
from shared.versions import versioned_name
from webserver.usage_tags import tag_usage
from webserver.errors import ApiError, public_reason, status_for_reply_code
from webserver.inputs import parse_classify
from webserver.proxy import status_url
from webserver.params import request_params
from webserver.outcome import Outcome

bp = Blueprint("api", __name__)


def ctx():
    """This app's WebContext (clients, listener, submitter)."""
    return current_app.extensions["classifycloud"]


def ok_reply(outcome: Outcome) -> Reply:
    """The ok reply of an outcome; every other outcome raises its error, the same for every route:
    shutdown 503 and timeout 504 (both with the job id), an error reply as its mapped 4xx/5xx."""
    rid, reply = outcome.request_id, outcome.reply
    if reply is None and outcome.shutdown:
        raise ApiError(503, "shutting_down", "this server is stopping before the reply came; "
                       "the job continues, poll status_url", rid, status_url=status_url(rid))
    if reply is None:
        raise ApiError(504, "timeout", f"no reply within {ctx().settings.reply_timeout_s:g} s; "
                       "the job continues, poll status_url", rid, status_url=status_url(rid))
    if reply.status == "error":
        code = reply.error.get("code", "error")
        raise ApiError(status_for_reply_code(code), code, reply.error.get("message", ""), rid)
    return reply


def answer(outcome: Outcome):
    """200 with the reply; any other outcome as ok_reply raises it."""
    reply = ok_reply(outcome)
    body = reply.to_dict()
    tag_usage(reply.id, versioned_name(reply.service, reply.version or None))  # usage names the version
    body["latency_ms"] = round(outcome.latency_ms, 1)
    return jsonify(body)


@bp.route("/classify", methods=["GET", "POST"])
def classify():
    """Synchronous classification: waits for the worker's reply."""
    parsed = parse_classify(request)
    params = request_params(request, ctx().submitter.resolve_service(parsed.service))
    return answer(ctx().submitter.classify(parsed.image, parsed.service, parsed.top_k, params))


@bp.route("/jobs", methods=["POST"])
def submit_job():
    """Asynchronous classification: 202 with the id and where to poll."""
    parsed = parse_classify(request)
    params = request_params(request, ctx().submitter.resolve_service(parsed.service))
    notify = job_notify(request)    # checked before the job is sent: a bad notify sends nothing
    rid, service = ctx().submitter.submit_job(parsed.image, parsed.service, parsed.top_k, params)
    if notify:
        queue_job_notice(rid, notify)
    tag_usage(rid, service)
    resp = jsonify({"id": rid, "service": service, "status": "pending", "status_url": status_url(rid)})
    resp.status_code = 202
    resp.headers["Location"] = status_url(rid)
    return resp


@bp.route("/jobs/<job_id>", methods=["GET"])
def get_job(job_id: str):
    """200 with the result record, 202 while pending, 404 when unknown, 400 for a malformed id."""
    if not valid_id(job_id):
        raise ApiError(400, "invalid_id", "job id must be 1-64 characters of [A-Za-z0-9_-]")
    jobs = ctx().jobs
    record = jobs.result(job_id)
    if record is not None:
        version = record.get("version") if isinstance(record.get("version"), str) else None
        tag_usage(record.get("id"), versioned_name(record.get("service"), version) if record.get("service") else None)
        return jsonify(record)
    marker = jobs.marker(job_id)
    if marker is None:
        raise ApiError(404, "unknown_job", f"no job with id {job_id!r}", job_id)
    tag_usage(job_id, marker.get("service"))
    resp = jsonify({"id": job_id, "status": "pending", "service": marker.get("service"),
                    "submitted_at": marker.get("submitted_at")})
    resp.status_code = 202
    return resp


@bp.route("/services", methods=["GET"])
def services():
    """Every catalogue service, whether it can serve (weights configured), and the backends workers serve it with."""
    c = ctx()
    out = []
    services = c.catalogue.services  # one snapshot: a live refresh between two reads cannot split the list
    serving = serving_backends(c.heartbeats.ready_workers()[0])
    for name, spec in services.items():
        reason = public_reason(spec.unavailable_reason(c.settings.model_dir))
        entry = {"name": name, "kind": spec.kind, "description": spec.description,
                 "architecture": spec.architecture, "backend": spec.backend,
                 "num_classes": spec.num_classes, "top_k": spec.top_k,
                 "available": reason is None, "reason": reason}
        if spec.kind == "score":
            entry["threshold"] = spec.threshold
        if spec.labels_note:
            entry["labels_note"] = spec.labels_note
        versions = c.submitter.versions.describe(name) if not spec.derived_from else None
        if versions:  # weights, live, shadow, and why a canary was rolled back (docs/VERSIONS.md)
            entry["versions"] = versions
        if spec.derived_from:  # what it covers: these classes of its parent's model (docs/SERVICES.md)
            entry["derived_from"] = spec.derived_from
            entry["classes"] = list(spec.classes)
            entry["min_share"] = spec.min_share
        if name in serving:
            entry.update(serving[name])
        out.append(entry)
    for name, error in sorted(getattr(c.catalogue, "errors", {}).items()):  # refused S3 entries (why: the log)
        if name not in services:
            out.append({"name": name, "kind": None, "description": "", "architecture": None, "backend": None,
                        "num_classes": None, "top_k": None, "available": False,
                        "reason": "invalid S3 entry; its publisher finds the reason in the server log"})
    return jsonify({"services": out})


def serving_backends(workers: list[dict]) -> dict[str, dict]:
    """Per service, from fresh worker heartbeats: how many workers serve it with each backend, and (backend:
    auto) one worker's measurements of its candidates."""
    out: dict[str, dict] = {}
    for beat in workers:
        for name, choice in (beat.get("backends") or {}).items():
            entry = out.setdefault(name, {"serving_backends": {}})
            backend = str(choice.get("backend", ""))
            entry["serving_backends"][backend] = entry["serving_backends"].get(backend, 0) + 1
            if isinstance(choice.get("auto"), dict):
                entry["backend_choice"] = choice["auto"]
    return out


@bp.route("/healthz", methods=["GET"])
def healthz():
    """200 only with a fresh ready worker heartbeat and a live reply listener; else 503 with why."""
    c = ctx()
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
def livez():
    """Liveness: this process answers (restart it if not); says nothing about queues or workers."""
    return jsonify({"status": "ok"})


@bp.route("/readyz", methods=["GET"])
def readyz():
    """Readiness: the reply queue is polled and the queue endpoint answers, so work can be accepted; workers optional."""
    c = ctx()
    problem = None
    try:
        c.listener.start()
    except Exception as exc:  # a dead queue endpoint is a readiness fact, not a crash
        problem = f"reply queue cannot be created: {type(exc).__name__}"
    if problem is None:
        if c.listener.draining:
            problem = "this process is shutting down"
        elif not c.listener.alive:
            problem = "reply listener is not running"
        else:
            problem = c.listener.reachable()
    workers, _ = c.heartbeats.ready_workers()
    body = {"workers": len(workers), "listener": c.listener.alive, "reply_queue": c.listener.queue_name,
            "waiting": c.listener.waiting}
    return _probe_answer(body, problem, "not_ready")


def _probe_answer(body: dict, problem: str | None, code: str):
    """A probe's reply: 200 with status ok, or 503 with status unavailable and the problem as the error."""
    if problem:
        body.update(status="unavailable", error={"code": code, "message": problem})
        resp = jsonify(body)
        resp.status_code = 503
        return resp
    body["status"] = "ok"
    return jsonify(body)
