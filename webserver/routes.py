"""The native JSON API: /classify, /jobs, /services (the probes are in webserver/health.py)."""
from __future__ import annotations

import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, current_app, jsonify, request

from shared import kinds
from shared.job_state import CANCELLED, PENDING, job_state
from shared.messages import now_ms, valid_id
from shared.versions import versioned_name
from webserver import idempotency
from webserver.auth import current_owner, owned_id
from webserver.bulk import claim_key, job_notify, job_ttl
from webserver.errors import ApiError, public_reason
from webserver.inputs import parse_classify, parse_json_body
from webserver.job_options import (
    LIST_THREADS,
    checked_location,
    invocation_timeout,
    job_input,
    job_summary,
    parse_job_listing,
)
from webserver.outcomes import SUBMIT_ANSWERS, SYNC_ANSWERS, answer
from webserver.params import request_params
from webserver.proxy import status_url
from webserver.routing import UPLOAD, route
from webserver.usage_tags import tag_usage

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)



def ctx():
    """This app's WebContext (clients, listener, submitter)."""
    return current_app.extensions["classifycloud"]


@bp.route("/classify", methods=["GET", "POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def classify():
    """Synchronous classification: waits for the worker's reply."""
    parsed = parse_classify(request)
    spec = ctx().submitter.resolve_service(parsed.service)   # once: params and the message use one entry
    params = request_params(request, spec)
    return answer(ctx().submitter.classify(parsed.image, parsed.service, parsed.top_k, params, spec=spec))


@bp.route("/jobs", methods=["POST"])
@route(body=UPLOAD, answers=SUBMIT_ANSWERS + (409,))
def submit_job():
    """Asynchronous classification: 202 with the id and where to poll (the same job again for a repeated
    Idempotency-Key)."""
    settings = ctx().settings
    if request.is_json:
        parse_json_body(request)     # a body nested too deeply is 400 here, before any option reads it
    ttl_s = job_ttl(request, settings)
    invocation_s = invocation_timeout(request, settings)
    parsed, input_location = job_input(request, settings, ctx().jobs.s3, ttl_s + invocation_s)
    output_location = checked_location(request, "output_location", settings)
    spec = ctx().submitter.resolve_service(parsed.service)
    params = request_params(request, spec)
    notify = job_notify(request)    # checked before the job is sent: a bad notify sends nothing
    options = {"ttl_s": ttl_s, "notify": notify, "invocation_timeout_s": invocation_s,
               "input_location": input_location, "output_location": output_location}
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        job = ctx().submitter.submit_job(parsed.image, parsed.service, parsed.top_k, params, spec=spec, **options)
        return _accepted(job.id, job.service, job.expires_at)
    image = {"s3": input_location} if input_location else {"url": parsed.image.url} if parsed.image.url is not None \
        else {"sha256": hashlib.sha256(parsed.image.data).hexdigest()}   # a link is signed anew on each request
    inputs = {"image": image, "service": parsed.service, "top_k": parsed.top_k, "params": params, **options}
    for name in ("input_location", "output_location", "invocation_timeout_s"):   # keys claimed before these
        if inputs[name] is None or (name == "invocation_timeout_s" and inputs[name] == settings.job_invocation_timeout_s):
            del inputs[name]                                                   # existed keep their fingerprint
    store, owner = ctx().idempotency, current_owner()
    claim, send = claim_key(store, owner, key, inputs, owned_id(owner))
    if not send:
        log.info("job %s: Idempotency-Key repeated; the same job answered", claim.job_id)
        resp = _accepted(claim.job_id, **claim.answer)
        resp.headers["Idempotent-Replayed"] = "true"
        return resp
    try:
        job = ctx().submitter.submit_job(parsed.image, parsed.service, parsed.top_k, params, spec=spec,
                                         rid=claim.job_id, **options)
    except Exception:
        store.refused(owner, key, claim)    # a retry with the key sends at once, with the same job id
        raise
    store.accepted(owner, key, claim, {"service": job.service, "expires_at": job.expires_at})
    return _accepted(job.id, job.service, job.expires_at)


def _accepted(rid: str, service: str, expires_at: int):
    """202 with the job's id, service, status URL (also the Location header) and deadline."""
    tag_usage(rid, service)
    resp = jsonify({"id": rid, "service": service, "status": "pending", "status_url": status_url(rid),
                    "expires_at": expires_at})
    resp.status_code = 202
    resp.headers["Location"] = status_url(rid)
    return resp


@bp.route("/jobs/<job_id>", methods=["GET"])
@route(owner_checked=True, answers=(400, 404, 502, 503))
def get_job(job_id: str):
    """200 with the result record, 202 while pending, 404 when unknown, 400 for a malformed id."""
    if not valid_id(job_id):
        raise ApiError(400, "invalid_id", "job id must be 1-64 characters of [A-Za-z0-9_-]")
    jobs = ctx().jobs
    # the marker first: a cancel (or an invocation timeout) outranks a result a worker wrote later
    marker = jobs.marker(job_id)
    if marker is not None and marker.get("cancelled_at"):
        tag_usage(job_id, marker.get("service"))
        return jsonify(job_summary(job_id, marker, CANCELLED))
    state, record = job_state(job_id, marker, jobs.result(job_id), now_ms())
    if record is not None:
        version = record.get("version") if isinstance(record.get("version"), str) else None
        tag_usage(job_id, versioned_name(record.get("service"), version) if record.get("service") else None)
        return jsonify(record)
    if marker is None:
        raise ApiError(404, "unknown_job", f"no job with id {job_id!r}", job_id)
    tag_usage(job_id, marker.get("service"))
    resp = jsonify(job_summary(job_id, marker, state))
    resp.status_code = 202
    return resp


@bp.route("/jobs/<job_id>", methods=["DELETE"])
@route(owner_checked=True, answers=(400, 404, 409, 502, 503))
def cancel_job(job_id: str):
    """Cancel a pending job: 200 cancelled (again for a cancelled one), 409 when it has its answer already."""
    if not valid_id(job_id):
        raise ApiError(400, "invalid_id", "job id must be 1-64 characters of [A-Za-z0-9_-]")
    jobs = ctx().jobs
    marker = jobs.marker(job_id)
    if marker is None:      # a /classify request's id, or another key's job (the edge answered that already)
        raise ApiError(404, "unknown_job", f"no job with id {job_id!r}", job_id)
    tag_usage(job_id, marker.get("service"))
    if not marker.get("cancelled_at"):
        state, _ = job_state(job_id, marker, jobs.result(job_id), now_ms())
        if state != PENDING:
            raise ApiError(409, "job_finished", f"job {job_id!r} has its answer ({state}); it cannot be cancelled",
                           job_id)
        marker = {**marker, "cancelled_at": now_ms()}
        jobs.put_marker(job_id, marker)
        log.info("job %s: cancelled", job_id)
    return jsonify(job_summary(job_id, marker, CANCELLED))


@bp.route("/jobs", methods=["GET"])
@route(answers=(400, 502, 503))
def list_jobs():
    """This key's own jobs, oldest first, a page at a time; ?status= keeps those in one state."""
    status, limit, token = parse_job_listing(request.args)
    jobs = ctx().jobs
    ids, next_token = jobs.list_page(current_owner(), token, limit)
    now = now_ms()

    def state_of(job_id: str) -> dict | None:
        marker = jobs.marker(job_id)
        if marker is None:
            return None
        if marker.get("cancelled_at"):
            return job_summary(job_id, marker, CANCELLED)
        return job_summary(job_id, marker, job_state(job_id, marker, jobs.result(job_id), now)[0])

    with ThreadPoolExecutor(max_workers=LIST_THREADS) as pool:   # 1-2 S3 reads per job, side by side
        listed = [j for j in pool.map(state_of, ids) if j is not None and (status is None or j["status"] == status)]
    return jsonify({"jobs": listed, "next_token": next_token})


@bp.route("/services", methods=["GET"])
@route(public=True)
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
        entry.update(kinds.get(spec.kind).describe(spec))   # what the kind adds (score: its threshold)
        if spec.labels_note:
            entry["labels_note"] = spec.labels_note
        if not spec.derived_from:  # every version, weights, live, shadow, why a canary was rolled back
            entry["versions"] = c.submitter.versions.describe(name)
        if spec.derived_from:  # what it covers: these classes of its parent's model (docs/SERVICES.md)
            entry["derived_from"] = spec.derived_from
            entry["classes"] = list(spec.classes)
            entry["min_share"] = spec.min_share
        if name in serving:
            entry.update(serving[name])
        out.append(entry)
    for name in sorted(getattr(c.catalogue, "errors", {})):  # refused S3 entries (why: the log)
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
