"""POST /jobs's SageMaker-async options: an S3 input location, an output location, an invocation timeout.

Both locations must be the key's own data-bucket folder (batch-io/<key id>/) or a location the operator
granted to the key (shared/grants.py), the same rule as /batches: 403 forbidden_location otherwise.
Workers read no customer bucket, so the web turns a checked input location into a presigned GET link
that lives as long as the job may run (its TTL plus its invocation timeout); the batch driver checks the
output location again against the key's grants before it writes the answer there (autoscaler/notify.py).
"""
from __future__ import annotations

import re

from flask import Request, g

from shared.batches import BatchError, BatchStore, check_location
from shared.job_state import STATUSES
from webserver.auth import current_owner
from webserver.errors import ApiError
from webserver.inputs import ClassifyInput, ImageInput, classify_input_with, parse_classify, parse_json_body

FIELDS = ("input_location", "output_location", "invocation_timeout_s")


def _field(req: Request, name: str) -> object:
    """A field of the JSON body or the form (None when absent or empty)."""
    if req.is_json:
        doc = parse_json_body(req)
        value = doc.get(name) if isinstance(doc, dict) else None
    else:
        value = req.form.get(name)
    return None if value == "" else value


def _grants() -> tuple[str, ...]:
    key = g.get("api_key")
    return key.batch_grants if key is not None else ()


def checked_location(req: Request, name: str, settings) -> str | None:
    """The field's s3:// URI when this key may use it; 400 when malformed, 403 forbidden_location otherwise."""
    value = _field(req, name)
    if value is None:
        return None
    try:
        check_location(value, current_owner(), settings, name, _grants())
    except BatchError as exc:
        raise ApiError(403 if exc.code == "forbidden_location" else 400, exc.code, exc.message) from None
    return value


def invocation_timeout(req: Request, settings) -> int:
    """invocation_timeout_s: 1..job_invocation_timeout_max_s (default job_invocation_timeout_s)."""
    value, most = _field(req, "invocation_timeout_s"), settings.job_invocation_timeout_max_s
    if value is None:
        return settings.job_invocation_timeout_s
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, float) and value.is_integer():
        value = int(value)    # 60.0 is an integer in JSON (and in the document's JSON Schema)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
        raise ApiError(400, "invalid_invocation_timeout",
                       f"invocation_timeout_s must be an integer number of seconds in 1..{most}")
    return value


def job_input(req: Request, settings, s3, link_s: int) -> tuple[ClassifyInput, str | None]:
    """(the job's input, its input location or None): an image as for /classify, or input_location."""
    location = checked_location(req, "input_location", settings)
    if location is None or (not req.is_json and "image" in req.files):
        return parse_classify(req), None     # a form's file wins, as over a url (the location was checked)
    if req.is_json:
        doc = parse_json_body(req)
        given = [k for k in ("url", "image_base64") if isinstance(doc, dict) and doc.get(k) is not None]
    else:
        given = [k for k in ("url", "image_base64") if req.form.get(k)]
    if given:
        raise ApiError(400, "ambiguous_image", f"give either input_location or {given[0]}, not both")
    # a signature computed here (no AWS call); it dies with the web's signing credentials if they end first,
    # and a job's link is not signed again (a batch item's is, by the driver): docs/API.md
    link, _ = BatchStore(settings, s3).presign(location, link_s)
    doc = parse_json_body(req) if req.is_json else req.form
    doc = doc if isinstance(doc, dict) or hasattr(doc, "get") else {}
    return classify_input_with(req, ImageInput(url=link), doc.get("service"), doc.get("top_k")), location


# GET /jobs: a page holds at most this many jobs; each costs one or two S3 reads, made this many at a time
LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, LIST_THREADS = 20, 100, 8
_TOKEN = re.compile(r"[0-9]{13}_[A-Za-z0-9_-]{1,64}")


def parse_job_listing(args) -> tuple[str | None, int, str | None]:
    """(status or None, limit, next_token or None) of GET /jobs; 400 for anything else."""
    status = args.get("status")          # given, even empty, a value must be valid (the document says so)
    if status is not None and status not in STATUSES:
        raise ApiError(400, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
    raw = args.get("limit")
    if raw is None:
        limit = LIST_LIMIT_DEFAULT
    elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= LIST_LIMIT_MAX:
        limit = int(raw)
    else:
        raise ApiError(400, "invalid_limit", f"limit must be an integer in 1..{LIST_LIMIT_MAX}")
    token = args.get("next_token")
    if token is not None and not _TOKEN.fullmatch(token):
        raise ApiError(400, "invalid_token", "next_token must be a value a GET /jobs answered")
    return status, limit, token


def job_summary(job_id: str, marker: dict, status: str) -> dict:
    """A job as GET /jobs lists it (and GET /jobs/<id> while pending, DELETE when cancelled)."""
    out = {"id": job_id, "status": status}
    for name in ("service", "submitted_at", "expires_at", "invocation_timeout_s", "input_location",
                 "output_location", "cancelled_at"):
        if marker.get(name) is not None:
            out[name] = marker[name]
    return out
