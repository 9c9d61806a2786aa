"""Request parameters a client may add: its service kind's (shared/kinds/), and `meta` (skin metadata)."""
from __future__ import annotations

import json

from flask import Request

from shared import kinds
from shared.catalogue import ServiceSpec
from shared.naming import GALLERY_CHARS, GALLERY_RE
from webserver.auth import current_tenant
from webserver.errors import ApiError
from webserver.inputs import parse_json_body


def field_value(req: Request, key: str):
    """A field from the JSON body, the form, or the query string (first found)."""
    if req.is_json:
        doc = parse_json_body(req)   # too deeply nested: 400, not a RecursionError
        if isinstance(doc, dict) and doc.get(key) is not None:
            return doc[key]
    if req.method != "GET" and req.form.get(key) not in (None, ""):
        return req.form.get(key)
    value = req.args.get(key)
    return value if value not in (None, "") else None


def check_gallery(value: object) -> str:
    """A gallery name, or 400 invalid_gallery."""
    if not isinstance(value, str) or not GALLERY_RE.match(value):
        raise ApiError(400, "invalid_gallery", f"gallery must be {GALLERY_CHARS}")
    return value


def request_params(req: Request, spec: ServiceSpec) -> dict | None:
    """The request message's `params` for this service, checked; None when the kind needs none."""
    try:
        params: dict = kinds.get(spec.kind).params(lambda key: field_value(req, key), spec, current_tenant())
    except kinds.ParamError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    meta = field_value(req, "meta")
    if meta is not None:
        if isinstance(meta, str):  # form or query: a JSON object as text
            try:
                meta = json.loads(meta)
            except ValueError:
                raise ApiError(400, "invalid_params", "meta must be a JSON object") from None
        if not isinstance(meta, dict) or len(json.dumps(meta)) > 1024:
            raise ApiError(400, "invalid_params", "meta must be a JSON object of at most 1 KiB")
        params["meta"] = meta
    return params or None
