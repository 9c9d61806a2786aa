"""The kinds table: kind name -> its contract (file options, request parameters, result shape), one module each.

A kind is two modules: its contract (read by the catalogue, the S3 confinement, the OpenAPI document, the
web tier and the CLI) and its worker handler. Built-in kinds are a module here and one of the same name in
worker/models/kinds/. A plug-in kind is any importable contract module named in CLASSIFYCLOUD_KINDS
(Settings.kinds, comma-separated) whose KIND.handler says "module:Class" of its handler. Nothing else names a kind.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from typing import Any, Callable

# A kind's methods take the service's shared.catalogue.ServiceSpec (as `spec: Any`): the catalogue imports
# this table to check kind names, so nothing here imports the catalogue back, not even for typing.


class ParamError(ValueError):
    """A request's parameter for its service's kind is missing or invalid (the web answers 400 with code)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownKind(ValueError):
    """A name that is not one of the kinds in this table."""


class Kind:
    """One kind's contract; a module here sets KIND to an instance of its subclass."""

    name = ""
    handler = ""             # a plug-in's worker handler, "module:Class" (built-ins: worker/models/kinds/<name>.py)
    enrols_faces = False     # its services search galleries that POST /faces/<gallery> enrols into
    # options of an entry that name a file to load: an S3 entry's are confined to models/<service>/ like its
    # weights (shared/live_catalogue.py reads this, so a kind that forgets one cannot point outside)
    file_options: tuple[str, ...] = ()
    # the request fields params() reads: name -> {"schema": JSON schema, "description"}; the served OpenAPI
    # document lists them on /classify and /jobs (webserver/docs.py), so nothing is hand-written per kind
    request_params: dict[str, dict] = {}
    # one result's JSON schema: the items of a reply's `results` for this kind's services (the document's Result)
    result_schema: dict = {"type": "object"}

    def params(self, field: Callable[[str], Any], spec: Any, tenant: str) -> dict:
        """The request message's params this kind needs, from the request's fields (raises ParamError)."""
        return {}

    def describe(self, spec: Any) -> dict:
        """What GET /services shows of a service of this kind beyond the fields every service has."""
        return {}

    def xcloud(self, results: list[dict]) -> list[dict]:
        """The reply's results in XCloud's style (docs/API.md)."""
        raise NotImplementedError

    def summary(self, results: list[dict]) -> str:
        """One line for a reply's results (the CLI's tables)."""
        raise NotImplementedError


PLUGINS_VARIABLE = "CLASSIFYCLOUD_KINDS"   # Settings.kinds: read here, at import, before any Settings exist


def plugin_modules(environ=None) -> tuple[str, ...]:
    """The plug-in contract modules CLASSIFYCLOUD_KINDS names (comma-separated, as Settings parses tuples)."""
    raw = (os.environ if environ is None else environ).get(PLUGINS_VARIABLE, "")
    return tuple(m.strip() for m in raw.split(",") if m.strip())


def _discover(plugins: tuple[str, ...] = ()) -> dict[str, Kind]:
    table: dict[str, Kind] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        kind = importlib.import_module(f"{__name__}.{info.name}").KIND
        if kind.name != info.name:  # the file name is the kind's name, here and in worker/models/kinds/
            raise RuntimeError(f"shared/kinds/{info.name}.py declares kind {kind.name!r}")
        table[kind.name] = kind
    for module in plugins:
        kind = importlib.import_module(module).KIND
        if kind.name in table:
            raise RuntimeError(f"plug-in {module} declares kind {kind.name!r}, which exists already")
        if ":" not in kind.handler:   # the worker finds a plug-in's handler only through this reference
            raise RuntimeError(f"plug-in {module}: kind {kind.name!r} must name its handler as 'module:Class'")
        table[kind.name] = kind
    return table


KINDS: dict[str, Kind] = _discover(plugin_modules())


def reload(environ=None) -> dict[str, Kind]:
    """Rebuild the table in place (the built-ins and CLASSIFYCLOUD_KINDS' plug-ins): for tests and tools."""
    table = _discover(plugin_modules(environ))
    KINDS.clear()
    KINDS.update(table)
    return KINDS


def names() -> tuple[str, ...]:
    """Every kind's name (what a catalogue entry's `kind:` may say)."""
    return tuple(KINDS)


def file_options(name: object) -> tuple[str, ...]:
    """The options naming files for an entry of kind `name`; every kind's for a name that is none of them
    (the entry is refused later, but nothing in it is left unconfined meanwhile)."""
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is not None:
        return tuple(kind.file_options)
    return tuple(sorted({o for k in KINDS.values() for o in k.file_options}))


def get(name: str) -> Kind:
    """The kind's contract; UnknownKind naming the kinds there are."""
    try:
        return KINDS[name]
    except KeyError:
        raise UnknownKind(f"unknown kind {name!r}; kinds: {', '.join(KINDS)}") from None
