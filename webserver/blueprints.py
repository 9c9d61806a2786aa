"""Every blueprint of the API, registered on an app (create_app, and the OpenAPI document's route list)."""
from __future__ import annotations

from flask import Flask

from webserver.routing import route


def register_routes(app: Flask) -> Flask:
    """Register every blueprint of the API on the app, and declare Flask's static files a page."""
    # imported here: webserver.docs lists the routes through this function, and is itself one of them
    from webserver.bulk import bp as batches_bp
    from webserver.docs import bp as docs_bp
    from webserver.faces import bp as faces_bp
    from webserver.health import bp as health_bp
    from webserver.oip import bp as oip_bp
    from webserver.routes import bp as api_bp
    from webserver.xcloud import bp as xcloud_bp
    for bp in (api_bp, xcloud_bp, oip_bp, faces_bp, batches_bp, health_bp, docs_bp):
        app.register_blueprint(bp)
    static = app.view_functions.get("static")
    if static is not None:   # a bound method of the app: wrapped so it can carry its rules
        app.view_functions["static"] = route(public=True, unlogged=True)(lambda **kw: static(**kw))
    return app
