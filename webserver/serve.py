"""Serving with gunicorn: in this process (serve) or as a command line for a child process."""
from __future__ import annotations

import os
import sys

from shared.config import Settings

CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gunicorn_conf.py")


def gunicorn_command(settings: Settings, processes: int | None = None, host: str | None = None,
                     port: int | None = None, python: str = sys.executable, threads: int | None = None) -> list[str]:
    """argv for gunicorn (the one launch path: `classifycloud web`, the local stack, the systemd unit).

    Run it with env = os.environ | settings.to_env(); every other setting (worker class, timeouts,
    graceful timeout, limits) comes from gunicorn_conf.py alone.
    """
    argv = [python, "-m", "gunicorn", "-c", CONF,
            "-w", str(processes or settings.web_processes),
            "-b", f"{host or settings.web_host}:{port or settings.web_port}"]
    if threads:
        argv += ["--threads", str(threads)]
    return argv + ["webserver.wsgi:app"]


def serve(settings: Settings, processes: int | None = None, host: str | None = None,
          port: int | None = None) -> None:
    """Run gunicorn in this process until it is stopped (SIGINT/SIGTERM); blocks."""
    from gunicorn.app.base import BaseApplication

    from webserver import gunicorn_conf

    class _App(BaseApplication):
        def load_config(self):
            for key in self.cfg.settings:  # everything gunicorn_conf.py sets, as `gunicorn -c` would
                if hasattr(gunicorn_conf, key):
                    self.cfg.set(key, getattr(gunicorn_conf, key))
            self.cfg.set("preload_app", False)
            self.cfg.set("workers", processes or settings.web_processes)
            self.cfg.set("bind", [f"{host or settings.web_host}:{port or settings.web_port}"])

        def load(self):
            # called in each worker after fork, so each builds its own app and reply queue
            from webserver.app import create_app
            return create_app(settings)

    _App().run()
