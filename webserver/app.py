"""The Flask app factory and the per-process context it carries (clients, reply listener, metrics)."""
from __future__ import annotations

import logging

from flask import Flask, request

from shared import logsafe
from shared.aws import client
from shared.catalogue import Catalogue, catalogue_for
from shared.config import Settings, get_settings
from shared.live_catalogue import LiveCatalogue
from shared.metrics import MetricsPublisher
from shared.transport import Transport
from shared.version_entries import VersionEntries
from webserver.auth import install_edge
from webserver.blueprints import register_routes
from webserver.docs import bp as docs_bp
from webserver.errors import install_error_handlers
from webserver.headers import install_security_headers
from webserver.health import HeartbeatMonitor
from webserver.idempotency import IdempotencyStore
from webserver.jobs import JobStore
from webserver.limits import body_limit, install_body_limits
from webserver.proxy import install_proxy_fix
from webserver.replies import ReplyListener
from webserver.routing import UPLOAD
from webserver.submit import Submitter

log = logging.getLogger(__name__)

EXTENSION = "classifycloud"


class WebContext:
    """Everything one web process holds; app.extensions['classifycloud']."""

    def __init__(self, settings: Settings, catalogue: Catalogue):
        self.settings = settings
        self.catalogue = catalogue
        self.transport = Transport(settings)
        self.s3 = client("s3", settings)
        self.metrics = MetricsPublisher(settings, "web")
        self.jobs = JobStore(settings, self.s3)
        self.listener = ReplyListener(settings, self.transport, record=self.jobs.record_result,
                                      records=self.jobs.reply)
        self.heartbeats = HeartbeatMonitor(settings, self.s3)
        self.idempotency = IdempotencyStore(settings, self.s3)
        # every version (packaged and S3) of every service: pins and /services check against them
        self.submitter = Submitter(settings, catalogue, self.transport, self.jobs, self.listener, self.metrics,
                                   VersionEntries(settings, self.s3))
        self._metrics_started = False

    def start(self) -> None:
        """Create this process's reply queue and start its listener and the metrics flusher (after fork)."""
        self.start_metrics()
        self.listener.start()

    def start_metrics(self) -> None:
        """Start the metrics flusher once per process."""
        if not self._metrics_started:
            self.metrics.start()
            self._metrics_started = True

    @property
    def waiting(self) -> int:
        """Requests waiting for a reply right now."""
        return self.listener.waiting

    def close(self) -> None:
        """Delete the reply queue, stop the listener, flush metrics."""
        self.listener.close()
        self.metrics.close()
        if getattr(self, "edge", None) is not None:
            self.edge.close()  # flush the usage log


def create_app(settings: Settings | None = None, catalogue: Catalogue | None = None,
               start: bool = False) -> Flask:
    """The web app; the reply queue is created on first use (or start=True), never before fork."""
    settings = settings or get_settings()
    logsafe.install()   # client strings (S3 keys, names) never start a forged log line
    catalogue = catalogue or LiveCatalogue(settings, catalogue_for(settings))  # + S3 entries, short TTL
    app = Flask(__name__)
    # the largest body any route takes; each route narrows it (webserver.limits)
    app.config["MAX_CONTENT_LENGTH"] = body_limit(settings, UPLOAD)
    app.config["MAX_FORM_MEMORY_SIZE"] = body_limit(settings, UPLOAD)  # base64 in form fields (XCloud)
    install_proxy_fix(app, settings)
    app.json.sort_keys = False
    ctx = WebContext(settings, catalogue)
    app.extensions[EXTENSION] = ctx

    register_routes(app)    # every blueprint: the API, XCloud, faces, batches, probes
    app.register_blueprint(docs_bp)   # the OpenAPI document of this app's routes, the docs and upload pages
    install_error_handlers(app)
    install_edge(app, ctx)  # API keys and the usage log, as each route declares (webserver/auth.py)
    install_body_limits(app, settings)
    install_security_headers(app)  # nosniff, CSP with frame-ancestors, HSTS behind TLS (webserver/headers.py)

    @app.before_request
    def _begin():
        ctx.start_metrics()

    @app.after_request
    def _count(resp):
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        ctx.metrics.record("Requests", 1, Route=route, Status=str(resp.status_code))
        return resp

    if start:
        ctx.start()
    return app
