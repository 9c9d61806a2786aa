"""A fleet plug-in written as one file: workers are names in memory that boot at the next count."""
from __future__ import annotations

import itertools

from autoscaler.fleet.base import Fleet, FleetCount
from shared.config import Settings


class ToyFleet(Fleet):
    """count, launch and terminate only: every other part of the interface is Fleet's default."""

    name = "toy"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.running: list[str] = []
        self.booting: list[str] = []
        self.stopped: list[str] = []
        self._ids = itertools.count(1)

    def count(self) -> FleetCount:
        """Workers launched before this count have booted; ones launched since are pending."""
        running, pending = list(self.running), list(self.booting)
        self.running += self.booting
        self.booting = []
        return FleetCount(running=len(running), pending=len(pending), ids=tuple(running + pending))

    def launch(self, n: int) -> list[str]:
        ids = [f"toy-{next(self._ids)}" for _ in range(n)]
        self.booting += ids
        return ids

    def terminate(self, ids: list[str]) -> None:
        self.stopped += ids
        self.running = [i for i in self.running if i not in ids]
        self.booting = [i for i in self.booting if i not in ids]
