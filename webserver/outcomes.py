"""What a synchronous request came to (RequestOutcome), and the one outcome->response function of every synchronous route."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import current_app, jsonify

from shared.messages import Reply
from shared.versions import versioned_name
from webserver.errors import ApiError, status_for_reply_code
from webserver.proxy import status_url
from webserver.usage_tags import tag_usage

# what an image route answers besides 200: the input (400, 413, 415), the service (403/404 pins and names,
# 503), the image as the worker saw it (422), and 500/502/504 from the worker, the store or the wait
SUBMIT_ANSWERS = (400, 403, 404, 413, 415, 422, 502, 503)
SYNC_ANSWERS = SUBMIT_ANSWERS + (409, 500, 504)


@dataclass(frozen=True)
class RequestOutcome:
    """What a synchronous request came to: a reply, or None when it timed out."""

    request_id: str
    service: str
    reply: Reply | None
    latency_ms: float
    shutdown: bool = False      # no reply because this web process is stopping (not a timeout)
    version: str | None = None  # the version the request was routed to (None: the service has one)


def ok_reply(outcome: RequestOutcome) -> Reply:
    """The ok reply of an outcome; every other outcome raises its error, the same for every route:
    shutdown 503 and timeout 504 (both with the job id), an error reply as its mapped 4xx/5xx."""
    rid, reply = outcome.request_id, outcome.reply
    if reply is None and outcome.shutdown:
        raise ApiError(503, "shutting_down", "this server is stopping before the reply came; "
                       "the job continues, poll status_url", rid, status_url=status_url(rid))
    if reply is None:
        timeout = current_app.extensions["classifycloud"].settings.reply_timeout_s
        raise ApiError(504, "timeout", f"no reply within {timeout:g} s; "
                       "the job continues, poll status_url", rid, status_url=status_url(rid))
    if reply.status == "error":
        code = reply.error.get("code", "error")
        raise ApiError(status_for_reply_code(code), code, reply.error.get("message", ""), rid)
    return reply


def native_body(reply: Reply, outcome: RequestOutcome) -> dict:
    """The native JSON body: the reply and the web-side latency."""
    body = reply.to_dict()
    body["latency_ms"] = round(outcome.latency_ms, 1)
    return body


def answer(outcome: RequestOutcome, render: Callable[[Reply, RequestOutcome], dict] = native_body, status: int = 200):
    """The response of a synchronous outcome: render(reply) with `status`, or the error ok_reply raises
    (each route's error handler writes it in that route's shape: native JSON or XCloud's envelope)."""
    reply = ok_reply(outcome)
    tag_usage(outcome.request_id, versioned_name(reply.service, reply.version or None))  # usage names the version
    resp = jsonify(render(reply, outcome))
    resp.status_code = status
    return resp
