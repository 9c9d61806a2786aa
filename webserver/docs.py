"""The API description and the pages: GET /openapi.json, GET /docs (renders it, no CDN) and the upload page.

The served document is webserver/openapi.yaml (shapes, bodies, descriptions) completed from the running
app's URL map and its route declarations (webserver.routing): which operations need a key, and the error
statuses each answers; and from the kinds table (shared/kinds/): each kind's request parameters and result
shape. """
from __future__ import annotations

import copy
import os
import re
from functools import lru_cache

import yaml
from flask import Blueprint, Flask, current_app, has_app_context, jsonify

from shared import kinds
from webserver.errors import is_oip_path
from webserver.inputs import BASE64_PATTERN, IMAGE_URL_PATTERN
from webserver.routing import BATCH, UPLOAD, RouteRules, route, rules_for

bp = Blueprint("docs", __name__)
SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml")
KEY_SECURITY = [{"bearerKey": []}, {"headerKey": []}]
IGNORED_METHODS = {"HEAD", "OPTIONS"}
# what the edge answers, by rule: a refused key (webserver.auth) and a refused body (webserver.limits)
KEY_ANSWERS = (401, 403, 429, 503)    # missing/invalid key, quota, rate, key store down
BODY_ANSWERS = (413, 503)             # larger than the route's limit, the in-flight budget is full


def openapi_path(rule: str) -> str:
    """'/jobs/<job_id>' -> '/jobs/{job_id}'; converters ('<path:filename>') are dropped."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@lru_cache(maxsize=1)
def _written() -> dict:
    with open(SPEC_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def load_spec(api_keys: bool = False, app: Flask | None = None) -> dict:
    """The OpenAPI 3.1 document of an app's routes (`app`, else the running one) with API keys on or off
    (built once per app and setting)."""
    if app is None:
        if not has_app_context():
            raise RuntimeError("load_spec reads an app's URL map: pass the app, or call it in an app context")
        app = current_app._get_current_object()
    return _spec_for(app, api_keys)


@lru_cache(maxsize=8)
def _spec_for(routes: Flask, api_keys: bool) -> dict:
    spec = copy.deepcopy(_written())
    url = spec["components"]["schemas"]["ImageUrl"]
    url["pattern"] = r"^\s*" + IMAGE_URL_PATTERN[1:-1] + r"\s*$"   # what check_url applies (after strip)
    spec["components"]["schemas"]["ImageBase64"]["pattern"] = BASE64_PATTERN   # what decode_base64 takes
    add_kinds(spec, kinds.KINDS)
    for rule in routes.url_map.iter_rules():
        path = openapi_path(rule.rule)
        for method in sorted(rule.methods - IGNORED_METHODS):
            op = spec["paths"].get(path, {}).get(method.lower())
            if op is None:
                raise ValueError(f"{method} {rule.rule} is not described in {SPEC_PATH}")
            _complete(op, rules_for(routes, rule.endpoint), api_keys, error_response(path))
    return spec


# the operations whose requests carry a kind's parameters (webserver.params reads them from any of these)
KIND_QUERY_OPERATIONS = (("/classify", "get"),)
KIND_BODIES = ("ClassifyInput", "JobInput")


def add_kinds(spec: dict, table: dict[str, kinds.Kind]) -> None:
    """Each kind's result schema (Result_<kind>, Result is any of them) and request parameters, from the table."""
    schemas = spec["components"]["schemas"]
    for name, kind in table.items():
        schemas[f"Result_{name}"] = copy.deepcopy(kind.result_schema)
    schemas["Result"] = {"description": schemas.get("Result", {}).get("description", ""),
                         "anyOf": [{"$ref": f"#/components/schemas/Result_{n}"} for n in table]}
    params: dict[str, dict] = {}   # one entry per name, whichever kinds read it
    for name, kind in table.items():
        for field, decl in kind.request_params.items():
            entry = params.setdefault(field, {"schema": copy.deepcopy(decl["schema"]), "kinds": []})
            entry["kinds"].append(f"{name}: {decl.get('description', '')}".strip())
    for field, entry in params.items():
        # A kind's parameter is checked only by that kind: a service of another kind ignores it, whatever its
        # value. So the document declares the kind's schema as x-kind-schema and takes any value in the
        # parameter's own schema; a value a schema refused but the server accepts would make it untrue.
        text = ("for services of kind " + "; ".join(entry["kinds"]) + " (x-kind-schema; services of other kinds "
                "ignore it)")
        declared = entry["schema"]
        for path, method in KIND_QUERY_OPERATIONS:
            op = spec["paths"][path][method]
            if any(p.get("name") == field for p in op.get("parameters", [])):
                # a kind may not redefine a field every request has (service, top_k, url)
                raise ValueError(f"kind parameter {field!r} is already a parameter of {method.upper()} {path}")
            op.setdefault("parameters", []).append({"name": field, "in": "query", "required": False,
                                                     "schema": {"type": "string"}, "description": text,
                                                     "x-kind-schema": copy.deepcopy(declared)})
        for body in KIND_BODIES:
            for mime, content in spec["components"]["requestBodies"][body]["content"].items():
                shown = {} if mime == "application/json" else {"type": "string"}   # forms carry text
                content["schema"].setdefault("properties", {})[field] = {
                    **shown, "description": text, "x-kind-schema": copy.deepcopy(declared)}


def error_response(path: str) -> str:
    """The error response a path's operations answer in: XCloud's envelope, the OIP's body, or ours."""
    if path.startswith("/cv/"):
        return "XCloudError"
    return "OipError" if is_oip_path(path) else "Error"


def _complete(op: dict, rules: RouteRules, api_keys: bool, error_name: str) -> None:
    """Set an operation's security and error responses from its route's rules."""
    keyed = api_keys and not rules.public
    op["security"] = KEY_SECURITY if keyed else []
    statuses = set(rules.answers)
    if keyed:
        statuses.update(KEY_ANSWERS)
    if rules.body in (UPLOAD, BATCH):
        statuses.update(BODY_ANSWERS)
    error = {"$ref": f"#/components/responses/{error_name}"}
    responses = op.setdefault("responses", {})
    for status in sorted(statuses):
        responses.setdefault(str(status), dict(error))


@bp.route("/openapi.json", methods=["GET"])
@route(public=True, unlogged=True)
def openapi():
    """The OpenAPI 3.1 description of every route, security as this server applies it."""
    return jsonify(load_spec(current_app.extensions["classifycloud"].settings.api_keys_enabled))


@bp.route("/docs", methods=["GET"])
@route(public=True, unlogged=True)
def docs():
    """A page that renders /openapi.json (self-contained HTML and JS)."""
    return current_app.send_static_file("docs.html")


@bp.route("/", methods=["GET"])
@route(public=True, unlogged=True)
def index():
    """A small upload page for people; the API is JSON."""
    return current_app.send_static_file("index.html")
