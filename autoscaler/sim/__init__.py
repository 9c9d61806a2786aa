"""The autoscaling simulator: traces, a discrete-event engine, controllers, and the report."""
from __future__ import annotations

from autoscaler.sim.controllers import CONTROLLERS
from autoscaler.sim.engine import SimConfig, Simulation
from autoscaler.sim.report import Result, summarise, table
from autoscaler.sim.traces import TRACES, Trace


def simulate(trace: Trace, policy: str, cfg: SimConfig | None = None, seed: int = 0) -> tuple[Result, Simulation]:
    """Run one controller on one trace; (summary, finished simulation)."""
    sim = Simulation(trace, CONTROLLERS[policy](), cfg or SimConfig(), seed=seed).run()
    return summarise(sim, policy), sim


__all__ = ["CONTROLLERS", "TRACES", "SimConfig", "Simulation", "Result", "Trace", "simulate", "summarise", "table"]
