"""The edge of the API: API keys, rate limits and quotas before a request, its usage counted after it.

install_edge(app, ctx) registers the hooks; each route declares whether it needs a key, is logged, or
shows a job only to its owner (webserver.routing). Keys come in
``Authorization: Bearer <key>`` or ``X-Api-Key: <key>``; missing, unknown or revoked
-> 401, over the rate -> 429 with Retry-After, over the monthly quota -> 403. With keys
on, GET /jobs/<id> answers only to the key that submitted the job (404 to others).
"""
from __future__ import annotations

import atexit
import hashlib
import hmac
import logging
import math
import re
import time

from flask import Flask, g, has_request_context, request

from shared.aws import client
from shared.messages import new_id, now_ms, valid_id
from shared.naming import DEFAULT_TENANT
from webserver.errors import ApiError
from webserver.keys import KeyStore, KeyStoreError, QuotaBlocks, QuotaExceeded, RateLimiter
from webserver.routing import rules_for
from webserver.usage import ANONYMOUS, Call, UsageLog
from webserver.usage_tags import tagged

log = logging.getLogger(__name__)

INVALID_SERVICE = "(invalid)"   # the usage service when the client named no possible service
# a service name or a pin, as webserver/openapi.yaml's ServiceName says (40 + 20 characters at most)
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}(@[a-z0-9][a-z0-9_-]{0,19})?")

def current_owner() -> str | None:
    """The key id of the request being served (None without keys or outside a request)."""
    if not has_request_context():
        return None
    key = g.get("api_key")
    return key.key_id if key is not None else None


def current_tenant() -> str:
    """Whose galleries this request may touch: the key id with keys on, else the one default tenant.

    Derived from the authenticated key only, never from anything the client sends."""
    return current_owner() or DEFAULT_TENANT


def _owner_tag(owner: str, base: str) -> str:
    return hashlib.sha256(f"{owner}:{base}".encode()).hexdigest()[:16]


def owned_id(owner: str | None) -> str:
    """A fresh request id; with keys on it ends in a digest of its owner's key id and itself.

    So GET /jobs/<id> can tell its owner without the job marker (a job accepted when the marker could
    not be written). The digest needs no secret: the check computes it from the key that asks, which
    the client cannot choose, so another key's digest never matches."""
    base = new_id()
    return base if owner is None else f"{base}_{_owner_tag(owner, base)}"


def owns(request_id: str, owner: str | None) -> bool:
    """Whether the id was made by owned_id for this owner."""
    base, sep, tag = request_id.rpartition("_")
    return bool(sep and owner) and hmac.compare_digest(tag, _owner_tag(owner, base))


def presented_key() -> str | None:
    """The key the client sent: Authorization: Bearer <key>, else X-Api-Key."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    value = request.headers.get("X-Api-Key", "").strip()
    return value or None


class Edge:
    """Per-process key store, rate limiter and usage writer."""

    def __init__(self, settings):
        self.settings = settings
        db = client("dynamodb", settings)
        self.keys = KeyStore(settings, db)
        self.quota = QuotaBlocks(self.keys, settings.quota_block_s, settings.quota_block_max)
        self.limiter = RateLimiter()
        self.usage = UsageLog(settings, db)

    def authenticate(self) -> None:
        """Raise the ApiError that refuses this request, or set g.api_key."""
        secret = presented_key()
        if secret is None:
            raise ApiError(401, "missing_api_key",
                           "this API needs a key: send 'Authorization: Bearer <key>' or 'X-Api-Key: <key>'")
        try:
            key = self.keys.verify(secret)
        except KeyStoreError:
            raise ApiError(503, "auth_unavailable", "API keys cannot be checked right now; try again") from None
        if key is None:
            raise ApiError(401, "invalid_api_key", "the API key is not valid")
        if not key.active:
            raise ApiError(401, "revoked_api_key", f"API key {key.key_id} has been revoked")
        g.api_key = key
        wait = self.limiter.acquire(key.key_id, key.rate_limit, key.burst)
        if wait > 0:
            g.retry_after = max(1, math.ceil(wait))
            raise ApiError(429, "rate_limited",
                           f"more than {key.rate_limit:g} requests/s (burst {key.burst}) for key {key.key_id}; "
                           f"retry after {g.retry_after} s")
        try:
            self.quota.take(key)
        except QuotaExceeded:
            raise ApiError(403, "quota_exceeded",
                           f"key {key.key_id} has used its monthly quota of {key.monthly_quota} calls") from None
        except KeyStoreError:
            raise ApiError(503, "auth_unavailable", "API keys cannot be checked right now; try again") from None

    def check_job_owner(self, ctx) -> None:
        """A job route with keys on: 404 unless the id (owned_id) or the job marker names this key."""
        job_id = (request.view_args or {}).get("job_id", "")
        if not valid_id(job_id):
            return  # the route answers 400
        if owns(job_id, current_owner()):
            return  # the id itself names this key (no marker needed: one may never have been written)
        marker = ctx.jobs.marker(job_id)
        if marker is None or marker.get("owner") != current_owner():
            raise ApiError(404, "unknown_job", f"no job with id {job_id!r}", job_id)

    def record(self, resp) -> None:
        """Count the request just answered in this process's usage aggregates (no AWS call)."""
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("edge_started", time.perf_counter())
        key = g.get("api_key")
        _, service = tagged()
        self.usage.start()
        self.usage.record(Call(
            key_id=key.key_id if key is not None else ANONYMOUS, route=rule, method=request.method,
            service=_service(service), status=resp.status_code,
            latency_ms=(time.perf_counter() - started) * 1000, bytes_in=request.content_length or 0,
            bytes_out=resp.calculate_content_length() or 0, at=now_ms()))

    def close(self) -> None:
        """Flush the usage log (process exit)."""
        self.usage.close()


def _service(tagged_service: str | None) -> str:
    """The service a call was for: the reply's, the route's, or what the client named (bounded: a name
    that no service could have is recorded as INVALID_SERVICE, never as the client's text)."""
    for value in (tagged_service, (request.view_args or {}).get("service"), request.args.get("service")):
        if isinstance(value, str) and value:
            return _bounded(value)
    # Only what the route already parsed: reading the body here would take in the very bodies the
    # in-flight budget refused (503 busy) and block on slow or vanished clients.
    form = request.__dict__.get("form")            # werkzeug caches the parsed form in the instance
    doc = getattr(request, "_cached_json", (None, None))[0]
    if form is not None:
        value = form.get("service")
    elif isinstance(doc, dict):
        value = doc.get("service")
    else:
        value = None
    return _bounded(value) if isinstance(value, str) and value else "-"


def _bounded(value: str) -> str:
    """A service name (name or name@version, as the catalogue allows) as is; anything else INVALID_SERVICE."""
    value = value.strip()
    return value if _SERVICE_NAME.fullmatch(value) else INVALID_SERVICE


def install_edge(app: Flask, ctx) -> Edge:
    """Register the key check and the usage count on the app, as each route's rules say."""
    settings = ctx.settings
    edge = Edge(settings)
    ctx.edge = edge
    atexit.register(edge.close)  # outside gunicorn (whose worker_exit calls ctx.close) records still land

    @app.before_request
    def _edge_check():
        g.edge_started = time.perf_counter()
        rules = rules_for(app, request.endpoint)
        if request.url_rule is None or rules.public or not settings.api_keys_enabled:
            return None
        edge.authenticate()
        if rules.owner_checked:
            edge.check_job_owner(ctx)
        return None

    @app.after_request
    def _edge_after(resp):
        retry = g.get("retry_after")
        if retry:
            resp.headers["Retry-After"] = str(retry)
        if resp.status_code == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="classifycloud"'
        if settings.usage_log and not rules_for(app, request.endpoint).unlogged:
            try:
                edge.record(resp)
            except Exception:  # the usage log must never fail the call it describes
                log.exception("usage of %s %s not counted", request.method, request.path)
        return resp

    return edge
