"""Face galleries: POST /faces/<gallery> enrols a named face through the facesearch queue."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from webserver.usage_tags import tag_usage
from webserver.errors import ApiError
from webserver.inputs import parse_classify
from webserver.params import check_gallery, field_value
from webserver.routes import answer

bp = Blueprint("faces", __name__)

FACE_SERVICE = "facesearch"


@bp.route("/faces/<gallery>", methods=["POST"])
def enroll(gallery: str):
    """Enrol the most confident face of the image as `name`: 201 {gallery, name, box, faces, id}."""
    c = current_app.extensions["classifycloud"]
    gallery = check_gallery(gallery)
    name = field_value(request, "name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100 or not name.isprintable():
        raise ApiError(400, "invalid_name", "name (form, JSON or query field) must be 1-100 printable characters")
    parsed = parse_classify(request)
    if parsed.service not in (None, FACE_SERVICE):
        raise ApiError(400, "invalid_service", f"faces are enrolled by service {FACE_SERVICE!r}")
    outcome = c.submitter.classify(parsed.image, FACE_SERVICE, 1,
                                   params={"op": "enroll", "gallery": gallery, "name": name.strip()})
    if outcome.reply is None or outcome.reply.status == "error":
        answer(outcome)  # raises the mapped error: 504 with the job id, no_face 422, unavailable 503 ...
    entry = outcome.reply.results[0]
    tag_usage(outcome.request_id)
    resp = jsonify({"id": outcome.request_id, "gallery": gallery, "name": entry.get("label"),
                    "box": entry.get("box"), "faces": entry.get("faces"),
                    "latency_ms": round(outcome.latency_ms, 1)})
    resp.status_code = 201
    return resp
