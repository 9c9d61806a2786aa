"""Face galleries: POST /faces/<gallery> enrols a named face through a face service's queue; DELETE erases.

Every gallery belongs to the tenant of the API key that names it (webserver.auth.current_tenant). Face
embeddings are biometric data: an erasure removes every version and delete marker of them from the
versioned bucket, not only the current objects (docs/SECURITY.md).
"""
from __future__ import annotations

import logging

from botocore.exceptions import BotoCoreError, ClientError
from flask import Blueprint, current_app, jsonify, request

from shared import kinds
from shared.naming import face_prefix, gallery_prefix
from webserver.auth import current_tenant
from webserver.errors import ApiError
from webserver.failures import StorageUnavailable
from webserver.inputs import parse_classify
from webserver.outcomes import SYNC_ANSWERS, answer
from webserver.params import check_gallery, field_value
from webserver.routing import UPLOAD, route

log = logging.getLogger(__name__)

bp = Blueprint("faces", __name__)


def face_services() -> list[str]:
    """The catalogue's services whose kind enrols and searches face galleries (shared/kinds/)."""
    services = current_app.extensions["classifycloud"].catalogue.services  # one snapshot
    return [n for n, s in services.items() if kinds.get(s.kind).enrols_faces]


def face_service(asked: str | None) -> str:
    """The service to enrol with: the one asked for (when it enrols faces), else the catalogue's first."""
    services = face_services()
    if not services:
        raise ApiError(400, "invalid_service", "no service of this server enrols faces")
    if asked not in (None, *services):
        raise ApiError(400, "invalid_service", f"faces are enrolled by service {', '.join(map(repr, services))}")
    return asked or services[0]


@bp.route("/faces/<gallery>", methods=["POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def enroll(gallery: str):
    """Enrol the most confident face of the image as `name`: 201 {gallery, name, box, faces, id}."""
    c = current_app.extensions["classifycloud"]
    gallery = check_gallery(gallery)
    name = field_value(request, "name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > 100 or not name.isprintable():
        raise ApiError(400, "invalid_name", "name (form, JSON or query field) must be 1-100 printable characters")
    parsed = parse_classify(request)
    outcome = c.submitter.classify(parsed.image, face_service(parsed.service), 1,
                                   params={"op": "enroll", "gallery": gallery, "name": name.strip(),
                                           "tenant": current_tenant()})

    def enrolled(reply, outcome):
        entry = reply.results[0]
        return {"id": outcome.request_id, "gallery": gallery, "name": entry.get("label"), "box": entry.get("box"),
                "faces": entry.get("faces"), "latency_ms": round(outcome.latency_ms, 1)}
    if outcome.reply is not None and parsed.image.url is None:
        # answered: the photo was read, and only the embedding is kept (a 504 leaves it to the worker still
        # taking it, then to the uploads lifecycle rule)
        c.submitter.jobs.erase_upload(outcome.request_id)
    return answer(outcome, enrolled, 201)  # else the mapped error: 504 with the job id, no_face 422 ...


@bp.route("/faces/<gallery>", methods=["DELETE"])
@route(answers=(400, 404, 503))
def erase_gallery(gallery: str):
    """Erase every face of this tenant's gallery: 200 {gallery, erased}, 404 when it holds none."""
    gallery = check_gallery(gallery)
    erased = erase(gallery_prefix(current_tenant(), gallery))
    if not erased:
        raise ApiError(404, "unknown_face", f"gallery {gallery!r} holds no faces")
    return jsonify({"gallery": gallery, "erased": erased})


@bp.route("/faces/<gallery>/<name>", methods=["DELETE"])
@route(answers=(400, 404, 503))
def erase_name(gallery: str, name: str):
    """Erase every face enrolled as `name` in this tenant's gallery: 200 {gallery, name, erased}, or 404."""
    gallery = check_gallery(gallery)
    name = name.strip()
    erased = erase(face_prefix(current_tenant(), gallery, name)) if name else 0
    if not erased:
        raise ApiError(404, "unknown_face", f"gallery {gallery!r} holds no face named {name!r}")
    return jsonify({"gallery": gallery, "name": name, "erased": erased})


def erase(prefix: str) -> int:
    """Delete every version and delete marker under the prefix; returns how many faces (keys) it held."""
    c = current_app.extensions["classifycloud"]
    bucket = c.settings.bucket_name
    try:
        versions = []
        for page in c.s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            versions += [{"Key": v["Key"], "VersionId": v["VersionId"]}
                         for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for i in range(0, len(versions), 1000):   # DeleteObjects takes 1,000 at a time
            out = c.s3.delete_objects(Bucket=bucket, Delete={"Objects": versions[i:i + 1000], "Quiet": True})
            if out.get("Errors"):
                raise ClientError({"Error": out["Errors"][0]}, "DeleteObjects")
    except (BotoCoreError, ClientError) as exc:
        log.error("erasing s3://%s/%s failed: %s", bucket, prefix, exc)
        raise StorageUnavailable("the faces could not be erased; try again") from None
    faces = len({v["Key"] for v in versions})
    log.info("erased %d faces (%d versions) under s3://%s/%s", faces, len(versions), bucket, prefix)
    return faces
