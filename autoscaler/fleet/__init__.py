"""Fleets of workers: the interface is fleet/base.py; make_fleet(settings) builds the one Settings.fleet names."""
from __future__ import annotations

import importlib
import pkgutil

from autoscaler.fleet.base import FLEETS, Fleet, FleetCount
from shared.config import Settings

__all__ = ["FLEETS", "Fleet", "FleetCount", "make_fleet"]


def make_fleet(settings: Settings, **kw) -> Fleet:
    """The fleet settings.fleet names, from FLEETS. A fleet of this folder is the module of its name,
    imported on first use (boto3 or process handling load only for the fleet in use)."""
    here = {m.name for m in pkgutil.iter_modules(__path__)} - {"base"}
    if settings.fleet not in FLEETS and settings.fleet in here:
        importlib.import_module(f"{__name__}.{settings.fleet}")
    if settings.fleet not in FLEETS:
        raise ValueError(f"unknown fleet {settings.fleet!r}; choose one of {', '.join(sorted(here | set(FLEETS)))}")
    return FLEETS[settings.fleet](settings, **kw)
