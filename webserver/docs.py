"""The API description: GET /openapi.json (from webserver/openapi.yaml) and GET /docs (renders it, no CDN)."""
from __future__ import annotations

import os
from functools import lru_cache

import yaml
from flask import Blueprint, current_app, jsonify

bp = Blueprint("docs", __name__)
SPEC_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml")


@lru_cache(maxsize=1)
def load_spec() -> dict:
    """The OpenAPI 3.1 document, read once per process."""
    with open(SPEC_PATH, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@bp.route("/openapi.json", methods=["GET"])
def openapi():
    """The OpenAPI 3.1 description of every route."""
    return jsonify(load_spec())


@bp.route("/docs", methods=["GET"])
def docs():
    """A page that renders /openapi.json (self-contained HTML and JS)."""
    return current_app.send_static_file("docs.html")
