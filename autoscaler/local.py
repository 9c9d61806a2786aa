"""The autoscaler on one machine: LocalFleet + the loop in a thread (used by `classifycloud up`)."""
from __future__ import annotations

import logging
import threading

from autoscaler.fleet.local import LocalFleet
from autoscaler.loop import Autoscaler
from shared.config import Settings
from shared.transport import Transport

log = logging.getLogger(__name__)


def start_local_autoscaler(settings: Settings, transport: Transport, stop_event: threading.Event,
                           env: dict | None = None, log_dir: str = "", command: list[str] | None = None
                           ) -> tuple[Autoscaler, LocalFleet, threading.Thread]:
    """Start min_workers local workers and the loop thread; returns (loop, fleet, thread).

    Stop: stop_event.set(); thread.join(); fleet.stop_all()  (or stop_local_autoscaler(...)).
    """
    settings = settings.replace(fleet="local")
    fleet = LocalFleet(settings, env=env, log_dir=log_dir, command=command)
    fleet.launch(settings.min_workers)       # the first tick would do it; start them now
    loop = Autoscaler(settings, fleet, transport=transport)
    thread = threading.Thread(target=loop.run, args=(stop_event,), name="autoscaler", daemon=True)
    thread.start()
    return loop, fleet, thread


def stop_local_autoscaler(started: tuple[Autoscaler, LocalFleet, threading.Thread], stop_event: threading.Event,
                          timeout: float = 30.0) -> None:
    """Stop the loop thread, then every worker it started."""
    loop, fleet, thread = started
    stop_event.set()
    thread.join(timeout=timeout)
    if thread.is_alive():
        log.warning("autoscaler thread did not stop within %.0fs", timeout)
    fleet.stop_all(timeout=timeout)
