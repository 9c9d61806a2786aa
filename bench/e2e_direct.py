"""The direct box for bench/e2e.py: Flask + gunicorn serving the project's own handler in-process, no queue.

    gunicorn -k gthread -w 1 --threads 16 --chdir bench 'e2e_direct:create_app()'

GET /classify?url=...&service=imagenet[&top_k=5] fetches the image with the worker's Fetcher (same SSRF
checks and byte cap), decodes it with the engine's decode_image, and runs ImageClassifier.classify. This is
the "one box with a GPU behind Flask" baseline the stack is compared with; it is a benchmark fixture,
not a served component.
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

log = logging.getLogger(__name__)


def create_app():
    """A Flask app with one loaded ImageClassifier (loaded here, once per gunicorn worker)."""
    from flask import Flask, jsonify, request

    from shared.catalogue import catalogue_for
    from shared.config import Settings
    from worker.fetch import Fetcher, FetchError
    from worker.models.engine import ImageDecodeError, decode_image
    from worker.models.kinds.classifier import ImageClassifier
    from worker.models.registry import served_spec

    settings = Settings.from_env(os.environ, fetch_allow_loopback=True, metrics_enabled=False)
    catalogue = catalogue_for(settings)
    service = os.environ.get("E2E_DIRECT_SERVICE", "imagenet")
    handler = ImageClassifier(served_spec(catalogue[service], settings), settings).load()  # backend_auto too
    fetcher = Fetcher(settings)
    # E2E_DIRECT_LOCK=1: one forward at a time. Unlocked, request threads run forwards side by side and
    # oversubscribe the cores (torch's intra-op threads per forward), which is slower on a small CPU box.
    lock = threading.Lock() if os.environ.get("E2E_DIRECT_LOCK", "1") == "1" else contextlib.nullcontext()
    app = Flask("e2e_direct")

    def error(status: int, code: str, message: str):
        return jsonify({"error": {"code": code, "message": message}}), status

    @app.get("/classify")
    def classify():
        started = time.perf_counter()
        if request.args.get("service", service) != service:
            return error(404, "unknown_service", f"this box serves only {service!r}")
        url = request.args.get("url")
        if not url:
            return error(400, "missing_image", "give ?url=")
        try:
            top_k = int(request.args.get("top_k", handler.spec.top_k))
        except ValueError:
            return error(400, "invalid_top_k", "top_k must be an integer")
        t0 = time.perf_counter()
        try:
            image = decode_image(fetcher.fetch({"url": url}))
        except FetchError as exc:
            return error(400, exc.code, str(exc))
        except ImageDecodeError as exc:
            return error(422, "not_an_image", str(exc))
        t1 = time.perf_counter()
        with lock:
            t2 = time.perf_counter()
            results = handler.classify([image], top_k)[0]
        t3 = time.perf_counter()
        ms = lambda a, b: round((b - a) * 1000, 1)  # noqa: E731
        return jsonify({"status": "ok", "service": service, "results": results,
                        "timings_ms": {"fetch": ms(t0, t1), "lock_wait": ms(t1, t2), "inference": ms(t2, t3),
                                       "total": ms(started, t3)}})

    @app.get("/healthz")
    def healthz():
        return jsonify({"status": "ok", "backend": handler.backend_choice})

    return app


def start(port: int, threads: int, log_path: str, lock: bool = True, env: dict | None = None) -> subprocess.Popen:
    """The direct box under gunicorn (1 process, gthread) as a child process; lock: one forward at a time."""
    argv = [sys.executable, "-m", "gunicorn", "-k", "gthread", "-w", "1", "--threads", str(threads),
            "-b", f"127.0.0.1:{port}", "--timeout", "120", "--chdir", HERE, "e2e_direct:create_app()"]
    child_env = dict(os.environ if env is None else env)
    child_env["E2E_DIRECT_LOCK"] = "1" if lock else "0"
    child_env["PYTHONPATH"] = ROOT + os.pathsep + child_env.get("PYTHONPATH", "")
    with open(log_path, "ab") as logf:
        return subprocess.Popen(argv, env=child_env, stdout=logf, stderr=subprocess.STDOUT,
                                start_new_session=True)
