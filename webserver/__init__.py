"""ClassifyCloud's web front end: create_app() and serve().

create_app is loaded on first use, so importing one module of the package does not build the whole app.
"""
import importlib

from webserver.serve import gunicorn_command, serve

__all__ = ["create_app", "gunicorn_command", "serve"]


def __getattr__(name: str):
    """webserver.create_app, imported from webserver.app when first asked for."""
    if name == "create_app":
        return importlib.import_module("webserver.app").create_app
    raise AttributeError(f"module 'webserver' has no attribute {name!r}")
