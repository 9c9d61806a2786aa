"""Check real responses against webserver/openapi.yaml (used by conftest's hook and the OpenAPI tests)."""
from __future__ import annotations

import json
import re
from functools import lru_cache
from urllib.parse import urlsplit

from flask import Flask
from jsonschema import Draft202012Validator

from webserver import docs
from webserver.blueprints import register_routes

CHECKED = {"count": 0}   # responses validated so far in this test process (tests assert it grows)


@lru_cache(maxsize=1)
def route_map() -> Flask:
    """Every blueprint on a bare app, as create_app registers them: the routes the document describes."""
    app = register_routes(Flask("webserver"))
    app.register_blueprint(docs.bp)
    return app


def load_spec(api_keys: bool = False) -> dict:
    """The document webserver.docs serves for the app's routes (no app needs to run)."""
    return docs.load_spec(api_keys, route_map())


def flask_rule_to_path(rule: str) -> str:
    """'/jobs/<job_id>' -> '/jobs/{job_id}'; converters ('<path:filename>') are dropped."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@lru_cache(maxsize=1)
def _templates() -> list[tuple[re.Pattern, str]]:
    out = []
    for path in load_spec()["paths"]:
        regex = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"
        out.append((re.compile(regex), path))
    # literal paths first: /cv/mcloud/skin before /cv/{service}
    return sorted(out, key=lambda t: t[1].count("{"))


def operation_for(method: str, path: str) -> dict | None:
    """The spec's operation for a concrete request path, or None when undescribed."""
    for regex, template in _templates():
        if regex.match(path):
            return load_spec()["paths"][template].get(method.lower())
    return None


def _deref(obj: dict) -> dict:
    spec = load_spec()
    while isinstance(obj, dict) and "$ref" in obj and obj["$ref"].startswith("#/"):
        node = spec
        for part in obj["$ref"][2:].split("/"):
            node = node[part]
        obj = node
    return obj


def response_problems(method: str, path: str, status: int, content_type: str, body: bytes) -> list[str]:
    """Why a response does not match the spec ([] when it does or the route/method is not described)."""
    op = operation_for(method, path)
    if op is None:
        return []
    responses = op.get("responses", {})
    spec_resp = responses.get(str(status)) or responses.get(f"{str(status)[0]}XX") or responses.get("default")
    if spec_resp is None:
        return [f"{method} {path}: status {status} is not described"]
    spec_resp = _deref(spec_resp)
    content = spec_resp.get("content") or {}
    mime = (content_type or "").split(";")[0].strip().lower()
    if "*/*" in content:
        return []
    if mime not in content:
        return [f"{method} {path} {status}: content type {mime!r} is not one of {sorted(content)}"]
    schema = content[mime].get("schema")
    if schema is None or mime != "application/json":
        return []
    try:
        doc = json.loads(body)
    except ValueError:
        return [f"{method} {path} {status}: body is not JSON"]
    validator = Draft202012Validator({**schema, "components": load_spec()["components"]})
    return [f"{method} {path} {status}: {e.message} at {list(e.absolute_path)}" for e in validator.iter_errors(doc)]


def check_requests_response(resp) -> None:
    """Validate a `requests` response from our web server (gunicorn) against the spec; raise on mismatch."""
    if not resp.headers.get("Server", "").startswith("gunicorn"):
        return   # moto, the sample server, gunicorn's own HTTP-level errors: not our API
    method = resp.request.method
    path = urlsplit(resp.request.url).path
    problems = response_problems(method, path, resp.status_code, resp.headers.get("Content-Type", ""),
                                 resp.content)
    CHECKED["count"] += 1
    assert not problems, "response does not match webserver/openapi.yaml: " + "; ".join(problems)


def check_flask_response(method: str, path: str, resp) -> None:
    """Validate a Flask test-client response against the spec; raise on mismatch."""
    problems = response_problems(method, path, resp.status_code, resp.content_type or "", resp.get_data())
    CHECKED["count"] += 1
    assert not problems, "response does not match webserver/openapi.yaml: " + "; ".join(problems)
