"""XCloud-compatible route: POST /cv/<service>, form field `image`, XCloud's {code, msg, results, elapse}."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, request

from shared import kinds
from webserver.errors import XCLOUD_OK
from webserver.inputs import parse_top_k, parse_xcloud_image
from webserver.outcomes import SYNC_ANSWERS, answer
from webserver.params import request_params
from webserver.routing import UPLOAD, route

bp = Blueprint("xcloud", __name__)

def xcloud_results(results: list[dict], kind: str = "classifier") -> list[dict]:
    """Our results in XCloud's style, by service kind (each kind's shape: shared/kinds/; docs/API.md)."""
    return kinds.get(kind).xcloud(results)


# XCloud's table routes skin under its mcloud (medical) group; the service is ours 'skin'.
XCLOUD_ALIASES = {"mcloud/skin": "skin"}


@bp.route("/cv/mcloud/skin", methods=["POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def classify_mcloud_skin():
    """XCloud's POST /cv/mcloud/skin, served by the service 'skin'."""
    return classify(XCLOUD_ALIASES["mcloud/skin"])


@bp.route("/cv/<service>", methods=["POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def classify(service: str):
    """XCloud's POST /cv/<service> (and /cv/mcloud/skin): imgraw | imgurl | image; optional top_k."""
    started = time.monotonic()
    c = current_app.extensions["classifycloud"]
    image = parse_xcloud_image(request)
    top_k = parse_top_k(request.form.get("top_k"))
    spec = c.submitter.resolve_service(service)   # once: params and the message use one entry
    params = request_params(request, spec)

    def envelope(reply, outcome):
        return {"code": XCLOUD_OK, "msg": "success", "results": xcloud_results(reply.results, reply.kind),
                "elapse": round(time.monotonic() - started, 2), "id": outcome.request_id}
    # shutdown, timeout and error replies: as on every route, in XCloud's envelope (webserver.errors)
    return answer(c.submitter.classify(image, service, top_k, params, spec=spec), envelope)
