"""Behind the load balancer: client address and scheme from X-Forwarded-*, links never from a forged Host."""
from __future__ import annotations

from flask import Flask, request, url_for
from werkzeug.middleware.proxy_fix import ProxyFix

from shared.config import Settings


def install_proxy_fix(app: Flask, settings: Settings) -> None:
    """Trust X-Forwarded-For/-Proto from exactly proxy_hops proxies (the ALB); never X-Forwarded-Host."""
    if settings.proxy_hops > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops,
                                x_host=0, x_port=0, x_prefix=0)
    app.extensions["classifycloud_trusted_hosts"] = tuple(h.lower() for h in settings.trusted_hosts)


def external_url(endpoint: str, **values) -> str:
    """An absolute URL for clients: on a trusted host name, whatever Host header the request carried.

    With trusted_hosts set, a Host that is not one of them (forged, or the ALB health check's IP)
    is replaced by the first trusted name; without it (local runs) the request's own host is used.
    """
    from flask import current_app
    trusted = current_app.extensions.get("classifycloud_trusted_hosts") or ()
    if not trusted:
        return url_for(endpoint, _external=True, **values)
    host = request.host.lower()
    if host not in trusted:
        host = trusted[0]
    return f"{request.scheme}://{host}{url_for(endpoint, **values)}"


def status_url(request_id: str) -> str:
    """Where the client polls for a job's result (on a trusted host name)."""
    return external_url("api.get_job", job_id=request_id)
