"""Bulk work and notifications: POST/GET/DELETE /batches, the webhook secret, and `notify` on jobs.

The web only checks and records (shared/batches.py); the batch driver (autoscaler/batches.py) expands
the input, queues the items and writes the output. Every batch belongs to the API key that made it.
"""
from __future__ import annotations

import json
import logging
import time
from datetime import datetime

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    jsonify,
    request,
    stream_with_context,
)

from shared.batches import (
    FINAL,
    BatchError,
    BatchStore,
    check_location,
    item_input,
    new_batch_id,
    summary_of,
    valid_batch_id,
)
from shared.messages import now_ms
from shared.notify import SIGNATURE_HEADER, NotifyError, WebhookSecrets, check_notify
from webserver import idempotency
from webserver.auth import current_owner
from webserver.errors import ApiError
from webserver.idempotency import Claim, IdempotencyStore
from webserver.inputs import check_url, parse_json_body, parse_top_k
from webserver.proxy import external_url
from webserver.routing import BATCH, route
from webserver.usage_tags import tag_usage

log = logging.getLogger(__name__)

bp = Blueprint("batches", __name__)
INPUT_KINDS = ("s3_prefix", "manifest", "items")


def _ctx():
    return current_app.extensions["classifycloud"]


def _store() -> BatchStore:
    c = _ctx()
    return BatchStore(c.settings, c.s3)


def _status_url(batch_id: str) -> str:
    return external_url("batches.get_batch", batch_id=batch_id)


def parse_deadline(value: object) -> int | None:
    """Epoch seconds from an RFC 3339 time ('2026-12-06T08:00:00Z') or a number of epoch seconds; 400 otherwise."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        at = int(value)
    elif isinstance(value, str):
        try:
            at = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise ApiError(400, "invalid_deadline", "deadline must be an RFC 3339 time or epoch seconds") from None
    else:
        raise ApiError(400, "invalid_deadline", "deadline must be an RFC 3339 time or epoch seconds")
    if at <= now_ms() // 1000:
        raise ApiError(400, "invalid_deadline", "deadline is in the past")
    return at


def _check_caps(owner: str | None, items: list[str] | None, settings) -> None:
    """A key's batches not yet final, and their unanswered items with this batch's inline ones, within the caps."""
    active, open_items = _store().open_work(owner)
    if active >= settings.batch_max_active_per_key:
        raise ApiError(429, "too_many_batches", f"this key has {active} batches running (at most "
                       f"{settings.batch_max_active_per_key}); wait for one to finish or cancel one")
    if items is not None and open_items + len(items) > settings.batch_max_open_items_per_key:
        raise ApiError(429, "too_many_items", f"this key's running batches have {open_items} items to go; "
                       f"{len(items)} more would pass {settings.batch_max_open_items_per_key}")


def _parse_time_limit(value: object, most: int) -> int | None:
    """`time_limit_s` of POST /batches: whole seconds in 1..batch_time_limit_max_s, or absent."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ApiError(400, "invalid_time_limit", f"time_limit_s must be an integer number of seconds in 1..{most}")
    return value


def parse_notify(value: object) -> dict | None:
    """The checked notify object (400 with the reason)."""
    key = g.get("api_key")
    try:
        return check_notify(value, _ctx().settings, key.sns_topics if key is not None else None)
    except NotifyError as exc:
        raise ApiError(400, exc.code, exc.message) from None


def _grants() -> tuple[str, ...]:
    """The batch locations the operator granted to this request's key (none without keys)."""
    key = g.get("api_key")
    return key.batch_grants if key is not None else ()


def _checked_input(spec: object, owner: str | None) -> tuple[dict, list[str] | None]:
    """(the input as recorded, the inline items or None); 400 for anything the driver could not expand."""
    settings = _ctx().settings
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in INPUT_KINDS:
        raise ApiError(400, "invalid_input", f"input must be an object with exactly one of {', '.join(INPUT_KINDS)}")
    kind, value = next(iter(spec.items()))
    try:
        if kind != "items":
            check_location(value, owner, settings, f"input.{kind}", _grants())
            return {kind: value}, None
        if not isinstance(value, list) or not 1 <= len(value) <= settings.batch_max_items:
            raise BatchError("invalid_input", f"input.items must be a list of 1 to {settings.batch_max_items} "
                             "items; use a manifest for more")
        items = [item_input(x) for x in value]
        for item in items:
            if item.startswith("s3://"):
                check_location(item, owner, settings, "an item", _grants())
            else:
                check_url(item)
        return {"items": len(items)}, items
    except BatchError as exc:
        raise ApiError(400, exc.code, exc.message) from None


@bp.route("/batches", methods=["POST"])
@route(body=BATCH, answers=(400, 403, 404, 409, 413, 429, 503))
def create_batch():
    """Accept a batch: 202 with its id and status URL; the driver runs it."""
    doc = parse_json_body(request)
    if not isinstance(doc, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    unknown = set(doc) - {"service", "input", "output", "top_k", "notify", "deadline", "time_limit_s"}
    if unknown:
        raise ApiError(400, "bad_request", f"unknown fields: {', '.join(sorted(unknown))}")
    c, owner = _ctx(), current_owner()
    spec = c.submitter.resolve_service(doc.get("service"))
    input_spec, items = _checked_input(doc.get("input"), owner)
    try:
        check_location(doc.get("output"), owner, c.settings, "output", _grants())
    except BatchError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    top_k = parse_top_k(doc.get("top_k")) or spec.top_k
    notify, deadline = parse_notify(doc.get("notify")), parse_deadline(doc.get("deadline"))
    time_limit = _parse_time_limit(doc.get("time_limit_s"), c.settings.batch_time_limit_max_s)
    _check_caps(owner, items, c.settings)
    bid, claim, store = new_batch_id(), None, None
    key = request.headers.get(idempotency.HEADER)
    if key is not None:   # the same key and body: the same batch, never a second one
        inputs = {"service": spec.name, "input": doc.get("input"), "output": doc["output"], "top_k": top_k,
                  "notify": notify, "deadline": doc.get("deadline"), "time_limit_s": time_limit}
        store = IdempotencyStore(c.settings, c.s3, area="batches")
        claim, send = claim_key(store, owner, key, inputs, bid)
        bid = claim.job_id
        if not send:
            log.info("batch %s: Idempotency-Key repeated; the same batch answered", bid)
            resp = _batch_accepted(bid, **claim.answer)
            resp.headers["Idempotent-Replayed"] = "true"
            return resp
    record = {"id": bid, "owner": owner, "service": spec.name, "top_k": top_k,
              "input": input_spec, "output": doc["output"], "notify": notify,
              "deadline": deadline, "state": "accepted", "created_at": now_ms(),
              "expires_at": int(time.time()) + time_limit if time_limit else None,
              "total": len(items) if items is not None else None, "enqueued": 0, "done": 0, "failed": 0}
    try:
        _store().create(record, items)
    except Exception as exc:   # S3 refused: nothing was accepted
        log.error("batch %s: not recorded: %s", bid, exc)
        if claim is not None:
            store.refused(owner, key, claim)   # a retry with the key records it at once, with the same id
        raise ApiError(503, "storage_unavailable", "could not record the batch; try again") from None
    log.info("batch %s: accepted for %s (%s)", bid, spec.name, next(iter(input_spec)))
    if claim is not None:
        store.accepted(owner, key, claim, {"service": spec.name, "total": record["total"]})
    return _batch_accepted(bid, spec.name, record["total"])


def _batch_accepted(bid: str, service: str, total: int | None):
    """202 with the batch's id, service, size (when known) and status URL (also the Location header)."""
    tag_usage(bid, service)
    resp = jsonify({"id": bid, "kind": "batch", "service": service, "state": "accepted",
                    "total": total, "status_url": _status_url(bid)})
    resp.status_code = 202
    resp.headers["Location"] = _status_url(bid)
    return resp


def _owned(batch_id: str) -> tuple[BatchStore, dict]:
    """The batch's store and record when this key owns it; 400 for a bad id, 404 for another key's or none."""
    if not valid_batch_id(batch_id):
        raise ApiError(400, "invalid_id", "batch id must be 'b' and 20 hex digits")
    store = _store()
    try:
        rec = store.record(batch_id)
    except Exception as exc:
        log.error("batch %s: record unreadable: %s", batch_id, exc)
        raise ApiError(503, "storage_unavailable", "could not read the batch; try again") from None
    if rec is None or rec.get("owner") != current_owner():
        raise ApiError(404, "unknown_batch", f"no batch with id {batch_id!r}")
    tag_usage(batch_id, rec.get("service"))
    return store, rec


@bp.route("/batches/<batch_id>", methods=["GET"])
@route(answers=(400, 404, 503))
def get_batch(batch_id: str):
    """Progress: total, done, failed, rate (items/s), ETA (s) and state; the shards once finished."""
    store, rec = _owned(batch_id)
    body = summary_of(rec)
    if body["state"] not in FINAL and store.cancelled(batch_id):
        body["state"] = "cancelling"
    return jsonify(body)


@bp.route("/batches/<batch_id>", methods=["DELETE"])
@bp.route("/batches/<batch_id>/cancel", methods=["POST"])
@route(answers=(400, 404, 409, 503))
def cancel_batch(batch_id: str):
    """The owner cancels: the driver stops queueing and writes the output (undone items say cancelled)."""
    store, rec = _owned(batch_id)
    if rec.get("state") in FINAL:
        raise ApiError(409, "batch_finished", f"batch {batch_id} is already {rec['state']}")
    store.cancel(batch_id)
    log.info("batch %s: cancel requested", batch_id)
    resp = jsonify({"id": batch_id, "kind": "batch", "state": "cancelling", "status_url": _status_url(batch_id)})
    resp.status_code = 202
    return resp


@bp.route("/batches/<batch_id>/results", methods=["GET"])
@route(answers=(400, 404, 409, 503))
def batch_results(batch_id: str):
    """A finished batch's output shards (owner only): each s3:// URI, and a download link for those in the
    data bucket (the web reads batch-io/ shards only; a customer bucket's shards are read from that bucket)."""
    store, rec = _owned(batch_id)
    if rec.get("state") not in FINAL:
        raise ApiError(409, "batch_not_finished", f"batch {batch_id} is {rec.get('state')}; its shards are "
                       "written when it ends")
    shards = []
    for part, uri in enumerate(rec.get("shards") or []):
        here = uri.startswith(f"s3://{store.bucket}/")
        shards.append({"part": part, "uri": uri, "url": external_url("batches.batch_shard", batch_id=batch_id,
                                                                     part=part) if here else None})
    return jsonify({"id": batch_id, "kind": "batch_results", "state": rec["state"], "shards": shards})


@bp.route("/batches/<batch_id>/results/<int:part>", methods=["GET"])
@route(answers=(400, 404, 503))
def batch_shard(batch_id: str, part: int):
    """One output shard of the owner's batch, streamed as JSON Lines (a shard in the data bucket only)."""
    store, rec = _owned(batch_id)
    shards = rec.get("shards") or []
    if not 0 <= part < len(shards):
        raise ApiError(404, "unknown_shard", f"batch {batch_id} has no shard {part}")
    try:
        chunks = store.shard_chunks(shards[part], rec.get("owner"))
    except BatchError as exc:
        raise ApiError(404, exc.code, exc.message) from None
    except Exception as exc:
        log.error("batch %s: shard %d unreadable: %s", batch_id, part, exc)
        raise ApiError(503, "storage_unavailable", "could not read the shard; try again") from None
    return Response(stream_with_context(chunks), mimetype="application/x-ndjson")


@bp.route("/webhooks/secret", methods=["GET"])
@route(answers=(503,))
def webhook_secret():
    """This key's webhook signing secret (made on first use)."""
    return _secret_answer(_secrets().get(current_owner()))


@bp.route("/webhooks/secret", methods=["POST"])
@route(answers=(503,))
def rotate_webhook_secret():
    """A new webhook secret for this key (the old one stops verifying)."""
    return _secret_answer(_secrets().rotate(current_owner()))


def _secrets() -> WebhookSecrets:
    c = _ctx()
    return WebhookSecrets(c.settings, c.s3)


def _secret_answer(secret: str):
    return jsonify({"secret": secret, "header": SIGNATURE_HEADER,
                    "signed": "HMAC-SHA256 over '<t>.<body>', hex, sent as 't=<t>,v1=<hex>'"})


def job_notify(req) -> dict | None:
    """The checked `notify` of a POST /jobs (JSON field, or a form field holding JSON); None without one."""
    doc = req.get_json(silent=True) if req.is_json else None
    value = doc.get("notify") if isinstance(doc, dict) else None
    if value is None and req.form.get("notify"):
        try:
            value = json.loads(req.form["notify"])
        except ValueError:
            raise ApiError(400, "invalid_notify", "the notify form field must be a JSON object") from None
    return parse_notify(value)


def job_ttl(req, settings) -> int:
    """The time-to-live of a POST /jobs in seconds: `ttl_s` of the JSON body or form (400 past job_ttl_max_s),
    else job_ttl_s."""
    doc = req.get_json(silent=True) if req.is_json else None
    body = doc.get("ttl_s") if isinstance(doc, dict) else req.form.get("ttl_s")
    ttl = _parse_ttl(body, settings.job_ttl_max_s)
    return settings.job_ttl_s if ttl is None else ttl


def _parse_ttl(value: object, most: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)    # 90.0 is an integer in JSON (and in the document's JSON Schema)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ApiError(400, "invalid_ttl", f"ttl_s must be an integer number of seconds in 1..{most}")
    return value


def claim_key(store: IdempotencyStore, owner: str | None, key: str, inputs: dict,
              new_id: str) -> tuple[Claim, bool]:
    """Claim an Idempotency-Key for new_id: (claim, True: create it) or (the accepted claim, False: replay it).

    400 for a malformed key; 409 when it named other inputs, or while its first request is being sent (a
    conflict with the key's state either way: schema-valid input is never refused as unprocessable)."""
    if not idempotency.KEY_RE.match(key):
        raise ApiError(400, "invalid_idempotency_key", "Idempotency-Key must be 1-255 printable ASCII characters")
    try:
        return store.claim(owner, key, idempotency.fingerprint(inputs), new_id)
    except idempotency.KeyReused as exc:
        raise ApiError(409, "idempotency_key_reused", "this Idempotency-Key was used with other inputs in the "
                       "last 24 h; use a new key for new work", str(exc)) from None
    except idempotency.KeyInProgress as exc:
        err = ApiError(409, "idempotency_key_in_progress", "a request with this Idempotency-Key is being "
                       "submitted right now; retry shortly", str(exc))
        err.retry_after = 1
        raise err from None
