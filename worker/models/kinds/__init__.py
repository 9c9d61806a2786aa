"""The worker's kinds table: kind name -> Handler class, one module per kind in this folder (its HANDLER),
and the handler each plug-in kind names (shared/kinds/: CLASSIFYCLOUD_KINDS)."""
from __future__ import annotations

import importlib
import pkgutil

from shared import kinds
from shared.catalogue import ServiceSpec
from worker.models.handler import Handler


class NoKindHandler(ValueError):
    """A service names a kind this worker has no handler for."""


def _plugin(name: str) -> type[Handler] | None:
    """The handler a plug-in kind's contract names ("module:Class"), imported on first use."""
    contract = kinds.KINDS.get(name)
    if contract is None or not contract.handler:
        return None
    module, _, attr = contract.handler.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    if not (isinstance(cls, type) and issubclass(cls, Handler)) or cls.kind != name:
        raise RuntimeError(f"kind {name!r}: {contract.handler} is not a Handler subclass with kind {name!r}")
    return cls


def _discover() -> dict[str, type[Handler]]:
    # Every module here is a kind: adding one is adding its file (and its contract in shared/kinds/).
    table: dict[str, type[Handler]] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        cls = importlib.import_module(f"{__name__}.{info.name}").HANDLER
        if cls.kind in table:
            raise RuntimeError(f"kind {cls.kind!r} has two handlers: {table[cls.kind].__name__}, {cls.__name__}")
        table[cls.kind] = cls
    for name in kinds.KINDS:
        if name not in table and kinds.KINDS[name].handler:
            table[name] = _plugin(name)
    return table


HANDLERS: dict[str, type[Handler]] = _discover()


def handler_class(spec: ServiceSpec) -> type[Handler]:
    """The class that serves a service: its kind's handler (or the variant the kind picks for the entry)."""
    cls = HANDLERS.get(spec.kind)
    if cls is None:
        cls = _plugin(spec.kind)   # a plug-in registered after this table was built (shared.kinds.reload)
    if cls is None:
        raise NoKindHandler(f"service {spec.name!r}: kind {spec.kind!r} has no handler on this worker "
                            f"(kinds: {', '.join(sorted(HANDLERS))})")
    return cls.for_spec(spec)
