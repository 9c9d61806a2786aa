"""The Open Inference Protocol (KServe v2 / Triton HTTP REST): health, metadata and inference under /v2.

A model is a classifier service; /v2/models/<m>/versions/<v>/... pins the service's version v (docs/VERSIONS.md).
Inference goes through Submitter.classify, as /classify does: the same queues, keys, quotas, usage and
versions. Errors answer {"error": message} (webserver.errors renders every /v2 error so).
"""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from importlib import metadata

from flask import Blueprint, Response, copy_current_request_context, current_app, g, jsonify, request

from shared.catalogue import ServiceSpec
from shared.versions import BASE_VERSION, versioned_name
from webserver.errors import ApiError, public_reason
from webserver.health import readiness_problem
from webserver.inputs import ImageInput
from webserver.keys import KeyStoreError, QuotaExceeded
from webserver.oip_pixels import pixel_size, pixels_to_png
from webserver.oip_tensors import HEADER, IMAGE_INPUT, OUTPUTS, PIXELS_INPUT, infer_response, parse_infer
from webserver.outcomes import SYNC_ANSWERS, RequestOutcome, ok_reply
from webserver.routing import UPLOAD, route
from webserver.usage_tags import tag_usage

log = logging.getLogger(__name__)

bp = Blueprint("oip", __name__)
EXTENSIONS = ["classification", "binary_tensor_data"]
PROBE = {"public": True, "unlogged": True}   # health probes: no key, not API calls
# the platform names of the protocol's model metadata ("<framework>_<format>"), by our backend
PLATFORMS = {"torch": "pytorch_torchvision", "onnx": "onnxruntime_onnx", "tensorrt": "tensorrt_plan",
             "keras": "tensorflow_keras", "dlib": "dlib_dat"}


def ctx():
    """This app's WebContext (catalogue, submitter, listener)."""
    return current_app.extensions["classifycloud"]


def _server_version() -> str:
    try:
        return metadata.version("classifycloud")
    except metadata.PackageNotFoundError:
        return "0.0.0"


@bp.route("/v2/health/live", methods=["GET"])
@route(**PROBE)
def live():
    """Liveness: 200 {"live": true} while this process answers."""
    return jsonify({"live": True})


@bp.route("/v2/health/ready", methods=["GET"])
@route(**PROBE, answers=(400,))
def ready():
    """Readiness as /readyz (reply queue polled, queue endpoint reachable): 200, else 400 (the protocol's 4xx)."""
    problem = readiness_problem(ctx())
    if problem:
        log.warning("OIP readiness: %s", problem)
        raise ApiError(400, "not_ready", "this server is not ready")
    return jsonify({"ready": True})


@bp.route("/v2", methods=["GET"])
@route(public=True)
def server_metadata():
    """The server's name, version and protocol extensions."""
    return jsonify({"name": "classifycloud", "version": _server_version(), "extensions": EXTENSIONS})


def model_spec(service: str) -> ServiceSpec:
    """A model: a classifier service of the catalogue (404 for any other name)."""
    spec = ctx().catalogue.services.get(service)
    if spec is None:
        raise ApiError(404, "unknown_model", f"no model named {service!r}")
    return classifier(spec)


def classifier(spec: ServiceSpec) -> ServiceSpec:
    """The spec of a classifier service; 404 for the other kinds (their answers are no label tensors)."""
    if spec.kind != "classifier":
        raise ApiError(404, "unknown_model", f"{spec.name!r} is a {spec.kind} service, not a classifier: the "
                                             "Open Inference Protocol serves classifiers (use /classify)")
    return spec


def known_versions(service: str) -> list[str]:
    """The versions a pin may name: the traffic policy's and the packaged catalogue's."""
    c = ctx()
    policy = c.submitter.versions.policy(service)
    known = set(policy.versions() if policy else [BASE_VERSION])
    packaged = getattr(c.catalogue, "packaged", c.catalogue)
    known |= set(getattr(packaged, "versions", {}).get(service, {}))
    return sorted(known)


def version_spec(base: ServiceSpec, version: str) -> ServiceSpec | None:
    """A version's catalogue entry where the web knows it (the base entry, or a packaged version)."""
    if version == BASE_VERSION:
        return base
    packaged = getattr(ctx().catalogue, "packaged", ctx().catalogue)
    return getattr(packaged, "versions", {}).get(base.name, {}).get(version)


def _live_version(service: str) -> str:
    policy = ctx().submitter.versions.policy(service)
    return policy.live if policy else BASE_VERSION


def _metadata(service: str, version: str | None):
    base = model_spec(service)
    versions = known_versions(service)
    if version is not None and version not in versions:
        raise ApiError(404, "unknown_version", f"model {service!r} has no version {version!r}", versions=versions)
    spec = version_spec(base, version or _live_version(service)) or base
    inputs = [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}]
    size = pixel_size(spec)
    if size is not None:
        inputs.append({"name": PIXELS_INPUT, "datatype": "FP32", "shape": [-1, 3, size, size]})
    return jsonify({"name": service, "versions": versions,
                    "platform": PLATFORMS.get(spec.backend, f"classifycloud_{spec.backend}"), "inputs": inputs,
                    "outputs": [{"name": n, "datatype": t, "shape": [-1, -1]} for n, t in OUTPUTS.items()]})


@bp.route("/v2/models/<service>", methods=["GET"])
@route(public=True, answers=(400, 404))
def model_metadata(service: str):
    """A model's versions, platform, inputs and outputs (the live version's input size)."""
    return _metadata(service, None)


@bp.route("/v2/models/<service>/versions/<version>", methods=["GET"])
@route(public=True, answers=(400, 404))
def version_metadata(service: str, version: str):
    """One version's metadata."""
    return _metadata(service, version)


def _ready(service: str, version: str | None):
    spec = model_spec(service)
    reason = public_reason(spec.unavailable_reason(ctx().settings.model_dir))
    if reason:
        raise ApiError(400, "service_unavailable", f"model {service!r} is not ready: {reason}")
    if version is not None:   # a pin of this version would be routed (403/404 otherwise, as a request gets)
        ctx().submitter.versions.route(service, "ready", version)
    return jsonify({"name": service, "ready": True})


@bp.route("/v2/models/<service>/ready", methods=["GET"])
@route(public=True, unlogged=True, answers=(400, 404))
def model_ready(service: str):
    """200 when the model can serve (weights configured), else 4xx with why."""
    return _ready(service, None)


@bp.route("/v2/models/<service>/versions/<version>/ready", methods=["GET"])
@route(public=True, unlogged=True, answers=(400, 403, 404))
def version_ready(service: str, version: str):
    """200 when a pin of this version is served."""
    return _ready(service, version)


@bp.route("/v2/models/<service>/infer", methods=["POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def infer(service: str):
    """Classify a BYTES tensor of encoded images (or FP32 pixels), JSON or binary, on the routed version."""
    return _infer(service, None)


@bp.route("/v2/models/<service>/versions/<version>/infer", methods=["POST"])
@route(body=UPLOAD, answers=SYNC_ANSWERS)
def version_infer(service: str, version: str):
    """Inference pinned to one version (as service=<m>@<v> on /classify)."""
    return _infer(service, version)


def _infer(service: str, version: str | None):
    name = versioned_name(service, version)
    spec = classifier(ctx().submitter.resolve_service(name))   # one catalogue read: the name, the pin, weights
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    if encoding not in ("", "identity"):   # a compressed body could inflate past the upload limit
        raise ApiError(415, "unsupported_media_type", f"Content-Encoding {encoding!r} is not accepted; "
                                                      "send the body uncompressed")
    parsed = parse_infer(request.get_data(), request.headers.get(HEADER))
    images = parsed.images
    if parsed.pixels is not None:
        images = [ImageInput(data=png) for png in pixels_to_png(parsed.pixels, _pixel_spec(spec, version),
                                                                 service)]
    charge_images(len(images))
    top_k = parsed.top_k or spec.top_k
    asked = max([top_k] + [o.classification for o in parsed.outputs])
    outcomes = classify_all(images, name, asked, spec)
    replies = [ok_reply(o) for o in outcomes]   # any failed image fails the call, with its code and id
    versions = [r.version or version or BASE_VERSION for r in replies]
    tag_usage(outcomes[0].request_id, versioned_name(replies[0].service, replies[0].version or None))
    head = {"model_name": service, "model_version": versions[0]}
    if parsed.id is not None:
        head["id"] = parsed.id
    head["parameters"] = {"request_ids": [o.request_id for o in outcomes], "versions": versions}
    body, header_length = infer_response(head, parsed.outputs, [r.results for r in replies], top_k)
    if header_length is None:
        return Response(body, status=200, mimetype="application/json")
    return Response(body, status=200, mimetype="application/octet-stream", headers={HEADER: str(header_length)})


def _pixel_spec(base: ServiceSpec, version: str | None) -> ServiceSpec:
    """The entry whose preprocessing FP32 pixels must match: the pinned version's, else every serving version's."""
    service = base.name
    if version is not None:
        names = [version]
    else:
        policy = ctx().submitter.versions.policy(service)
        names = [v for v in policy.versions() if policy.serves(v)] if policy else [BASE_VERSION]
    specs = [version_spec(base, v) for v in names]
    if any(s is None for s in specs):
        raise ApiError(400, "pixels_not_supported", f"model {service!r}: a version's preprocessing is not known "
                                                    "to the web; send the encoded image as BYTES input 'image'")
    if len({(pixel_size(s), s.preprocess.mean, s.preprocess.std) for s in specs}) > 1:
        raise ApiError(400, "pixels_not_supported",
                       f"model {service!r} serves versions {names} that take different pixels; pin one with "
                       f"/v2/models/{service}/versions/<version>/infer")
    return specs[0]


def charge_images(count: int) -> None:
    """The key's monthly quota counts images: the edge took one call, each further image takes one more."""
    key, edge = g.get("api_key"), getattr(ctx(), "edge", None)
    if key is None or edge is None:
        return
    try:
        for _ in range(count - 1):
            edge.quota.take(key)
    except QuotaExceeded:
        raise ApiError(403, "quota_exceeded", f"key {key.key_id} has not {count} calls left of its monthly "
                                              f"quota of {key.monthly_quota} (one per image)") from None
    except KeyStoreError:
        raise ApiError(503, "auth_unavailable", "API keys cannot be checked right now; try again") from None


def classify_all(images: list[ImageInput], name: str, top_k: int, spec: ServiceSpec) -> list[RequestOutcome]:
    """Each image through Submitter.classify (one queued request each), several at once for a batch."""
    submit = ctx().submitter.classify
    if len(images) == 1:
        return [submit(images[0], name, top_k, None, spec=spec)]
    key = g.get("api_key")

    def one(image: ImageInput) -> RequestOutcome:
        g.api_key = key   # this thread's app context: the ids name the caller's key (webserver.auth.owned_id)
        return submit(image, name, top_k, None, spec=spec)

    calls = [copy_current_request_context(partial(one, image)) for image in images]  # one context each
    with ThreadPoolExecutor(len(calls), thread_name_prefix="oip") as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]
