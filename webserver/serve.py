"""Serving with gunicorn: in this process (serve) or as a command line for a child process."""
from __future__ import annotations

import os
import sys

from shared.config import Settings

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_conf.py")


def gunicorn_command(settings: Settings, processes: int | None = None, host: str | None = None,
                     port: int | None = None, python: str = sys.executable) -> list[str]:
    """argv for a gunicorn child; run it with env = os.environ | settings.to_env()."""
    return [python, "-m", "gunicorn", "-c", CONF,
            "-w", str(processes or settings.web_processes),
            "-b", f"{host or settings.web_host}:{port or settings.web_port}",
            "webserver.wsgi:app"]


def serve(settings: Settings, processes: int | None = None, host: str | None = None,
          port: int | None = None) -> None:
    """Run gunicorn in this process until it is stopped (SIGINT/SIGTERM); blocks."""
    from gunicorn.app.base import BaseApplication

    from webserver import gunicorn_conf

    class _App(BaseApplication):
        def load_config(self):
            for key in ("worker_class", "threads", "timeout", "graceful_timeout", "keepalive",
                        "accesslog", "loglevel", "control_socket_disable", "post_worker_init", "worker_exit"):
                self.cfg.set(key, getattr(gunicorn_conf, key))
            self.cfg.set("preload_app", False)
            self.cfg.set("workers", processes or settings.web_processes)
            self.cfg.set("bind", [f"{host or settings.web_host}:{port or settings.web_port}"])

        def load(self):
            # called in each worker after fork, so each builds its own app and reply queue
            from webserver.app import create_app
            return create_app(settings)

    _App().run()
