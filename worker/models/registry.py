"""Which services this worker hosts, their loaded handlers, and why others are unavailable."""
from __future__ import annotations

import logging

from shared.catalogue import Catalogue, ServiceSpec
from shared.config import Settings
from worker.models.handler import ImageClassifier, WeightsError, pick_device

log = logging.getLogger(__name__)


def handler_class(spec: ServiceSpec) -> type:
    """The handler for a service's kind (and, for classifiers run by Keras, its backend)."""
    if spec.kind == "score":
        from worker.models.score import ScoreHandler
        return ScoreHandler
    if spec.kind == "embedding":
        from worker.models.facesearch import FaceSearch
        return FaceSearch
    if spec.backend == "keras":
        from worker.models.keras_classifier import KerasClassifier
        return KerasClassifier
    return ImageClassifier


class ModelRegistry:
    """Loads each hosted service's model once; remembers the reason a service failed to load."""

    def __init__(self, catalogue: Catalogue, settings: Settings):
        self.catalogue = catalogue
        self.settings = settings
        self.device = pick_device(settings.device)
        self.handlers: dict[str, ImageClassifier] = {}
        self.unavailable: dict[str, str] = {}

    def wanted(self) -> list[str]:
        """Services named in settings.services, or every catalogue service."""
        names = list(self.settings.services) or self.catalogue.names()
        unknown = [n for n in names if n not in self.catalogue]
        if unknown:
            raise ValueError(f"unknown services {unknown}; catalogue has {self.catalogue.names()}")
        return names

    def load(self) -> "ModelRegistry":
        """Load every wanted service that is configured; record why the others are not."""
        for name in self.wanted():
            spec = self.catalogue[name]
            reason = spec.unavailable_reason(self.settings.model_dir)
            if reason:
                self.unavailable[name] = reason
                log.warning("service %s unavailable: %s", name, reason)
                continue
            try:
                self.handlers[name] = handler_class(spec)(spec, self.settings, self.device).load()
            except (WeightsError, ValueError, OSError) as exc:
                self.unavailable[name] = str(exc)
                log.error("service %s failed to load: %s", name, exc)
            except Exception as exc:  # one broken service must not take the others down
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
                log.exception("service %s failed to load", name)
        return self

    def get(self, name: str) -> ImageClassifier | None:
        """The loaded handler, or None."""
        return self.handlers.get(name)

    def hosted(self) -> list[str]:
        """Names of the loaded services."""
        return list(self.handlers)

    def close(self) -> None:
        """Release every loaded model."""
        for handler in self.handlers.values():
            handler.close()
        self.handlers.clear()
