"""Which services this worker hosts, their loaded handlers, and why others are unavailable."""
from __future__ import annotations

import dataclasses
import logging

from shared.catalogue import Catalogue, ServiceSpec
from shared.config import Settings
from worker.models.handler import Handler, WeightsError, pick_device
from worker.models.kinds import handler_class

log = logging.getLogger(__name__)


def served_spec(spec: ServiceSpec, settings: Settings) -> ServiceSpec:
    """The entry as served here: a torch entry named in settings.backend_auto is served with backend auto."""
    if spec.name in settings.backend_auto and spec.backend == "torch" and spec.kind == "classifier":
        return dataclasses.replace(spec, backend="auto")
    return spec


class ModelRegistry:
    """Loads each hosted service's model once; remembers the reason a service failed to load."""

    def __init__(self, catalogue: Catalogue, settings: Settings):
        self.catalogue = catalogue
        self.settings = settings
        self.device = pick_device(settings.device)
        self.handlers: dict[str, Handler] = {}
        self.unavailable: dict[str, str] = {}
        self._bases: dict[str, Handler] = {}  # parents loaded only for their derived services
        self.versions: dict[str, Handler] = {}  # "<service>@<v>": other versions (worker/versions.py)
        self.packaged_versions: dict = dict(getattr(catalogue, "versions", {}))

    def wanted(self) -> list[str]:
        """Services named in settings.services, or every catalogue service."""
        names = list(self.settings.services) or self.catalogue.names()
        unknown = [n for n in names if n not in self.catalogue]
        if unknown:
            raise ValueError(f"unknown services {unknown}; catalogue has {self.catalogue.names()}")
        return names

    def load(self) -> "ModelRegistry":
        """Load every wanted service that is configured; record why the others are not."""
        # model services first, so a derived service finds its parent hosted rather than loading it again
        for name in sorted(self.wanted(), key=lambda n: bool(self.catalogue[n].derived_from)):
            spec = self.catalogue[name]
            reason = spec.unavailable_reason(self.settings.model_dir)
            if reason:
                self.unavailable[name] = reason
                log.warning("service %s unavailable: %s", name, reason)
                continue
            spec = served_spec(spec, self.settings)
            try:
                self.handlers[name] = self._build(spec)
            except (WeightsError, ValueError, OSError) as exc:  # ValueError: kinds.UnknownKind too
                self.unavailable[name] = str(exc)
                log.error("service %s failed to load: %s", name, exc)
            except Exception as exc:  # one broken service must not take the others down
                self.unavailable[name] = f"{type(exc).__name__}: {exc}"
                log.exception("service %s failed to load", name)
        return self

    def _build(self, spec: ServiceSpec):
        if spec.derived_from:
            from worker.models.derived import DerivedHandler
            return DerivedHandler(spec, self.settings, self._base(spec.derived_from))
        return handler_class(spec)(spec, self.settings, self.device).load()

    def _base(self, parent: str):
        """The parent's handler: the hosted one, else one loaded once for the derived services alone."""
        hosted = self.handlers.get(parent) or self._bases.get(parent)
        if hosted is not None:
            return hosted
        if parent not in self.catalogue:
            raise WeightsError(f"parent service {parent!r} is not in the catalogue")
        self._bases[parent] = self._build(self.catalogue[parent])
        return self._bases[parent]

    def backend_choices(self) -> dict[str, dict]:
        """Per hosted service, the backend it serves with (and, for backend: auto, what was measured)."""
        return {name: getattr(h, "backend_choice", None) or {"backend": getattr(getattr(h, "spec", None), "backend", "")}
                for name, h in self.handlers.items()}

    def get(self, name: str) -> Handler | None:
        """The loaded handler (a service, or a version as "<service>@<v>"), or None."""
        return self.handlers.get(name) or self.versions.get(name)

    def hosted(self) -> list[str]:
        """Names of the loaded services."""
        return list(self.handlers)

    # --- live changes (worker/live.py): build outside, then swap in one step -------------
    def wants(self, name: str) -> bool:
        """Whether this worker hosts the service when it exists (settings.services empty = every one)."""
        return not self.settings.services or name in self.settings.services

    def build_handler(self, spec: ServiceSpec):
        """A loaded handler for spec, through load() itself (same handler choice); raises WeightsError."""
        parent = {spec.derived_from: self.catalogue[spec.derived_from]} if spec.derived_from in self.catalogue else {}
        one = ModelRegistry(Catalogue({**parent, spec.name: spec}), self.settings.replace(services=(spec.name,)))
        one.device = self.device
        if spec.derived_from and spec.derived_from in self.handlers:
            one.handlers[spec.derived_from] = self.handlers[spec.derived_from]  # share the hosted model
        one.load()
        if spec.name not in one.handlers:
            raise WeightsError(one.unavailable.get(spec.name) or f"service {spec.name!r} did not load")
        return one.handlers[spec.name]

    def add(self, spec: ServiceSpec, handler) -> None:
        """Host a new service with its loaded handler."""
        self._adopt(spec, handler)
        log.info("service %s added (%s)", spec.name, handler.model_info.get("version", ""))

    def replace(self, spec: ServiceSpec, handler) -> None:
        """Swap a hosted service's handler; a batch already running keeps the old one until it ends."""
        self._adopt(spec, handler)
        log.info("service %s replaced (now %s)", spec.name, handler.model_info.get("version", ""))

    def remove(self, name: str) -> None:
        """Stop hosting a service (its model is freed once no batch holds it)."""
        self.handlers.pop(name, None)
        self.unavailable.pop(name, None)
        self.catalogue = Catalogue({n: s for n, s in self.catalogue.services.items() if n != name},
                                   self.catalogue.source)
        log.info("service %s removed", name)

    def _adopt(self, spec: ServiceSpec, handler) -> None:
        self.catalogue = Catalogue({**self.catalogue.services, spec.name: spec}, self.catalogue.source)
        self.handlers[spec.name] = handler  # one dict store: readers see the old or the new handler
        self.unavailable.pop(spec.name, None)
        for name, other in list(self.handlers.items()):  # derived services follow their parent's new model
            if getattr(other, "base", None) is not None and other.spec.derived_from == spec.name:
                self.handlers[name] = self._build(other.spec)

    def close(self) -> None:
        """Release every loaded model."""
        for handler in [*self.handlers.values(), *self._bases.values(), *self.versions.values()]:
            handler.close()
        self.handlers.clear()
        self.versions.clear()
        self._bases.clear()
