"""Fleets of workers: the interface is fleet/base.py; make_fleet(settings) builds the one Settings.fleet names."""
from __future__ import annotations

import importlib
import pkgutil

from autoscaler.fleet.base import FLEETS, Fleet, FleetCount
from shared.config import Settings

__all__ = ["FLEETS", "Fleet", "FleetCount", "fleet_names", "make_fleet"]


def fleet_names() -> list[str]:
    """Every fleet there is: this folder's modules (one per fleet, named as it) and any other one defined."""
    return sorted({m.name for m in pkgutil.iter_modules(__path__)} - {"base"} | set(FLEETS))


def make_fleet(settings: Settings, **kw) -> Fleet:
    """The fleet settings.fleet names, from FLEETS. A fleet of this folder is the module of its name,
    imported on first use (boto3 or process handling load only for the fleet in use)."""
    if settings.fleet not in FLEETS and settings.fleet in fleet_names():
        importlib.import_module(f"{__name__}.{settings.fleet}")
    if settings.fleet not in FLEETS:
        raise ValueError(f"unknown fleet {settings.fleet!r}; choose one of {', '.join(fleet_names())}")
    return FLEETS[settings.fleet](settings, **kw)
