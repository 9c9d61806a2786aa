"""Black-hole guard: a worker whose model fails batch after batch checks itself on a bundled photo.

A worker that answers every request `inference_failed` keeps making progress, so neither the watchdog
nor the heartbeat sees anything wrong, while it drains the queues with errors. After
selfcheck_after_failures model failures in a row (a whole batch's forward raising; a bad image fails
only its own item and does not count) the worker runs its model on a photo known to be good. If that
answers, the failures were the inputs' (one poison message redelivered): the count starts again. If it
fails too, the model is broken: the worker stops taking work, gives back what it holds and exits with
EXIT_BROKEN, so its fleet replaces it.
"""
from __future__ import annotations

import logging
import threading
from importlib import resources

from shared.config import Settings

log = logging.getLogger(__name__)

EXIT_BROKEN = 4
SELFCHECK_PHOTO = "chelsea.jpg"   # scikit-image's cat: every image kind must answer it without raising


def selfcheck_photo(settings: Settings) -> bytes:
    """The bytes of the self-check photo: the first backend probe image when set, else the bundled cat."""
    if settings.backend_probe_images:
        path = settings.backend_probe_images[0]
    else:   # package data of classifycloud (no code imported from there)
        path = str(resources.files("classifycloud").joinpath("samples").joinpath(SELFCHECK_PHOTO))
    with open(path, "rb") as fh:
        return fh.read()


class ModelHealth:
    """Counts model failures in a row; past the limit, the self-check decides: the inputs, or the model."""

    def __init__(self, settings: Settings, engine):
        self.settings = settings
        self.engine = engine
        self._lock = threading.Lock()
        self.failures = 0          # whole-batch model failures since the last success
        self.checks = 0            # self-checks run (and passed or not)
        self.broken: str | None = None

    def succeeded(self) -> None:
        """A forward pass answered: the count starts again."""
        with self._lock:
            self.failures = 0

    def failed(self, service: str) -> str | None:
        """A forward pass of `service` raised; the reason the worker is broken, or None while it is not."""
        limit = self.settings.selfcheck_after_failures
        with self._lock:
            self.failures += 1
            if self.broken or limit <= 0 or self.failures < limit:
                return self.broken
            failures = self.failures
        reason = self.check(service)
        with self._lock:
            self.checks += 1
            if reason is None:
                log.warning("%d model failures in a row on %s, but the self-check photo is answered: "
                            "the inputs were bad, not the model", failures, service)
                self.failures = 0
            else:
                self.broken = f"{service}: {failures} model failures in a row and the self-check failed: {reason}"
                log.error("model broken: %s; this worker stops taking work", self.broken)
            return self.broken

    def check(self, service: str) -> str | None:
        """Run the service's model on the self-check photo; None when it answers, else why not."""
        try:
            result = self.engine.run(service, [selfcheck_photo(self.settings)], [1], [None])
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"[:300]
        answer = result.results[0] if result.results else None
        if answer is None:
            return "no answer"
        if isinstance(answer, Exception) and not getattr(answer, "code", None):
            return f"{type(answer).__name__}: {answer}"[:300]
        return None   # an answer, or an input-level refusal (a kind that finds no face): the model runs
