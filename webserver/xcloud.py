"""XCloud-compatible route: POST /cv/<service>, form field `image`, XCloud's {code, msg, results, elapse}."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from shared import kinds
from webserver.usage_tags import tag_usage
from webserver.errors import XCLOUD_OK
from webserver.inputs import parse_top_k, parse_xcloud_image
from webserver.params import request_params
from webserver.routes import ok_reply

bp = Blueprint("xcloud", __name__)

def xcloud_results(results: list[dict], kind: str = "classifier") -> list[dict]:
    """Our results in XCloud's style, by service kind (each kind's shape: shared/kinds/; docs/API.md)."""
    return kinds.get(kind).xcloud(results)


# XCloud's table routes skin under its mcloud (medical) group; the service is ours 'skin'.
XCLOUD_ALIASES = {"mcloud/skin": "skin"}


@bp.route("/cv/mcloud/skin", methods=["POST"])
def classify_mcloud_skin():
    """XCloud's POST /cv/mcloud/skin, served by the service 'skin'."""
    return classify(XCLOUD_ALIASES["mcloud/skin"])


@bp.route("/cv/<service>", methods=["POST"])
def classify(service: str):
    """XCloud's POST /cv/<service> (and /cv/mcloud/skin): imgraw | imgurl | image; optional top_k."""
    started = time.monotonic()
    c = current_app.extensions["classifycloud"]
    image = parse_xcloud_image(request)
    top_k = parse_top_k(request.form.get("top_k"))
    params = request_params(request, c.submitter.resolve_service(service))
    outcome = c.submitter.classify(image, service, top_k, params)
    rid, reply = outcome.request_id, ok_reply(outcome)   # shutdown, timeout, errors: as on every route
    tag_usage(rid)
    return jsonify({"code": XCLOUD_OK, "msg": "success", "results": xcloud_results(reply.results, reply.kind),
                    "elapse": round(time.monotonic() - started, 2), "id": rid})
