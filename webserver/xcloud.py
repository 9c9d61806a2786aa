"""XCloud-compatible route: POST /cv/<service>, form field `image`, XCloud's {code, msg, results, elapse}."""
from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from webserver.errors import ApiError, status_for_reply_code
from webserver.inputs import parse_top_k, parse_xcloud_image
from webserver.params import request_params

bp = Blueprint("xcloud", __name__)

# XCloud's envelope codes: 0 success; it used 1-3 for bad images, URLs and requests. We keep
# those meanings and add codes for what XCloud could not fail with (queues, timeouts).
CODE_OK = 0
CODE_INVALID_IMAGE = 1
CODE_INVALID_URL = 2
CODE_BAD_REQUEST = 3
CODE_SERVICE = 4
CODE_TIMEOUT = 5
CODE_INTERNAL = 6

_BY_ERROR = {
    "invalid_image": CODE_INVALID_IMAGE, "invalid_base64": CODE_INVALID_IMAGE,
    "empty_image": CODE_INVALID_IMAGE, "image_too_large": CODE_INVALID_IMAGE, "image_not_found": CODE_INVALID_IMAGE, "too_large": CODE_INVALID_IMAGE,
    "invalid_url": CODE_INVALID_URL, "unsupported_scheme": CODE_INVALID_URL,
    "forbidden_address": CODE_INVALID_URL, "too_many_redirects": CODE_INVALID_URL,
    "missing_image": CODE_BAD_REQUEST, "ambiguous_image": CODE_BAD_REQUEST, "missing_gallery": CODE_BAD_REQUEST, "invalid_gallery": CODE_BAD_REQUEST,
    "invalid_params": CODE_BAD_REQUEST, "no_face": CODE_INVALID_IMAGE, "method_not_allowed": CODE_BAD_REQUEST, "invalid_top_k": CODE_BAD_REQUEST,
    "bad_request": CODE_BAD_REQUEST, "not_found": CODE_BAD_REQUEST,
    "unknown_service": CODE_SERVICE, "gallery_unavailable": CODE_SERVICE, "service_unavailable": CODE_SERVICE, "queue_unavailable": CODE_SERVICE,
    "timeout": CODE_TIMEOUT,
}


def xcloud_code(error_code: str) -> int:
    """The envelope's non-zero code for one of our error codes."""
    if error_code in _BY_ERROR:
        return _BY_ERROR[error_code]
    if error_code.startswith(("fetch_", "http_", "download_")):
        return CODE_INVALID_URL
    return CODE_INTERNAL


def xcloud_results(results: list[dict], kind: str = "classifier") -> list[dict]:
    """Our results in XCloud's style, by service kind (docs/API.md).

    classifier: [{name, category_id, prob}] (1-based ids; Unknown is -1); score: the same plus
    {verdict, threshold} (a regression: [{name, score}]); embedding: per face {name, distance, box, matches}."""
    if kind == "embedding":
        return [{"name": r.get("label"), "distance": r.get("distance"), "box": r.get("box"),
                 "matches": r.get("matches", [])} for r in results]
    if kind == "score" and results and "verdict" not in results[0]:
        return [{"name": r.get("label"), "score": round(float(r.get("score", 0.0)), 4)} for r in results]
    out = []
    for r in results:
        index = r.get("index", -1)
        out.append({"name": r.get("label"),
                    "category_id": index + 1 if isinstance(index, int) and index >= 0 else -1,
                    "prob": round(float(r.get("score", 0.0)), 4)})
        if kind == "score":
            out[-1].update(verdict=r.get("verdict"), threshold=r.get("threshold"))
    return out


def envelope_for_error(err: ApiError, elapse: float = 0.0) -> dict:
    """XCloud's envelope for a failure (results null, as XCloud answered)."""
    out = {"code": xcloud_code(err.code), "msg": err.message, "results": None,
           "elapse": round(elapse, 2), "error": err.code}
    if err.request_id:
        out["id"] = err.request_id
    if err.extra.get("status_url"):
        out["status_url"] = err.extra["status_url"]
    if err.extra.get("services"):
        out["services"] = err.extra["services"]
    return out


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
    rid, reply = outcome.request_id, outcome.reply
    if reply is None:
        from webserver.routes import status_url
        raise ApiError(504, "timeout", f"no reply within {c.settings.reply_timeout_s:g} s",
                       rid, status_url=status_url(rid))
    if reply.status == "error":
        code = reply.error.get("code", "error")
        raise ApiError(status_for_reply_code(code), code, reply.error.get("message", ""), rid)
    return jsonify({"code": CODE_OK, "msg": "success", "results": xcloud_results(reply.results, reply.kind),
                    "elapse": round(time.monotonic() - started, 2), "id": rid})
