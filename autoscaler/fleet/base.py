"""The fleet plug-in: a base class declaring all the autoscaler asks of a pool of workers, with defaults."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

# fleet name (Settings.fleet) -> its class; filled as each Fleet subclass with a name is defined
FLEETS: dict[str, type[Fleet]] = {}


@dataclass(frozen=True)
class FleetCount:
    """Instances of the pool that are running and starting (ids included, for logs and tests)."""

    running: int
    pending: int
    ids: tuple[str, ...] = field(default=())


class Fleet:
    """What the autoscaler needs from a pool of workers: count, launch and terminate are a fleet's own.

    Everything else has a default that is right for a cloud fleet, so a fleet overrides only what it
    does differently. A subclass with a `name` is listed in FLEETS, where make_fleet finds it.
    """

    name: ClassVar[str] = ""
    # an Auto Scaling group launches a replacement for a terminated instance itself (capacity still bought)
    replaces_terminated: ClassVar[bool] = False
    # id -> exit code of workers that ended on their own (local processes; a cloud fleet never sees one)
    exited: Mapping[str, int] = MappingProxyType({})
    # ids stopped by kill(): their exit is not a crash
    killed: frozenset[str] | set[str] = frozenset()

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if cls.name:
            FLEETS[cls.name] = cls

    def count(self) -> FleetCount:
        """Running and pending workers of the pool."""
        raise NotImplementedError

    def launch(self, n: int) -> list[str]:
        """Start n workers; returns their ids."""
        raise NotImplementedError

    def terminate(self, ids: list[str]) -> None:
        """Stop these workers now (replacement of broken ones, shutdown) — not the scale-in path."""
        raise NotImplementedError

    def maintain(self) -> list[str]:
        """Housekeeping once per tick (reap, replace broken ones); returns ids replaced or reaped."""
        return []

    def kill(self, ids: list[str]) -> None:
        """Stop hung workers that may ignore a polite stop; a cloud instance's terminate already is one."""
        self.terminate(ids)

    def stop_all(self, timeout: float = 30.0) -> None:
        """At the autoscaler's shutdown: workers it owns end with it; cloud instances stay (nothing here)."""
