"""The fleet interface: count(), launch(n), terminate(ids), maintain(); make_fleet(settings) picks one."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from shared.config import Settings


@dataclass(frozen=True)
class FleetCount:
    """Instances of the pool that are running and starting (ids included, for logs and tests)."""

    running: int
    pending: int
    ids: tuple[str, ...] = field(default=())


@runtime_checkable
class Fleet(Protocol):
    """What the autoscaler needs from a pool of workers."""

    def count(self) -> FleetCount:
        """Running and pending workers of the pool."""

    def launch(self, n: int) -> list[str]:
        """Start n workers; returns their ids."""

    def terminate(self, ids: list[str]) -> None:
        """Stop these workers now (replacement of broken ones, shutdown) — not the scale-in path."""

    def maintain(self) -> list[str]:
        """Housekeeping once per tick (reap, replace broken ones); returns ids replaced or reaped."""


def make_fleet(settings: Settings, **kw) -> Fleet:
    """The fleet settings.fleet names: 'local' (processes here), 'asg' (AWS) or 'ec2' (run_instances)."""
    if settings.fleet == "local":
        from autoscaler.fleet.local import LocalFleet
        return LocalFleet(settings, **kw)
    if settings.fleet == "asg":
        from autoscaler.fleet.asg import AsgFleet
        return AsgFleet(settings, **kw)
    if settings.fleet == "ec2":
        from autoscaler.fleet.ec2 import Ec2Fleet
        return Ec2Fleet(settings, **kw)
    raise ValueError(f"unknown fleet {settings.fleet!r}; choose 'local', 'asg' or 'ec2'")
