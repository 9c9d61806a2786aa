"""ClassifyCloud's web front end: create_app() and serve()."""
from webserver.app import create_app
from webserver.serve import gunicorn_command, serve

__all__ = ["create_app", "gunicorn_command", "serve"]
