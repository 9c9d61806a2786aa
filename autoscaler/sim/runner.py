"""Run controllers x traces x seeds (optionally in parallel processes) and average the results per seed."""
from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields

from autoscaler.sim.controllers import CONTROLLERS
from autoscaler.sim.engine import SimConfig, Simulation
from autoscaler.sim.report import Result, summarise
from autoscaler.sim.traces import TRACES, diurnal


def make_trace(name: str, seed: int, day_hours: float = 24.0, mean_rate: float = 12.0):
    """A trace by name (the diurnal one with its length and rate)."""
    if name == "diurnal":
        return diurnal(seed, mean_rate, day_hours * 3600)
    return TRACES[name](seed)


def _one(task) -> tuple[Result, Simulation | None]:
    name, policy, seed, cfg, day_hours, mean_rate, keep = task
    sim = Simulation(make_trace(name, seed, day_hours, mean_rate), CONTROLLERS[policy](), cfg, seed=seed).run()
    return summarise(sim, policy), (sim if keep else None)


def run_all(traces: list[str], policies: list[str], seeds: list[int], cfg: SimConfig | None = None,
            day_hours: float = 24.0, mean_rate: float = 12.0, jobs: int = 1, keep_seed: int | None = None):
    """Every (trace, policy, seed): (results in order, {trace: {policy: sim}} for keep_seed)."""
    cfg = cfg or SimConfig()
    tasks = [(t, p, s, cfg, day_hours, mean_rate, s == keep_seed) for t in traces for s in seeds for p in policies]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            out = list(pool.map(_one, tasks))
    else:
        out = [_one(task) for task in tasks]
    sims: dict[str, dict[str, Simulation]] = {}
    for (t, p, *_), (_, sim) in zip(tasks, out):
        if sim is not None:
            sims.setdefault(t, {})[p] = sim
    return [r for r, _ in out], sims


def average(results: list[Result]) -> list[Result]:
    """One Result per (trace, policy): the mean of every number over the seeds (peak fleet: the max)."""
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.trace, r.policy), []).append(r)
    out = []
    for rs in groups.values():
        kw = {}
        for f in fields(Result):
            values = [getattr(r, f.name) for r in rs]
            if f.name in ("trace", "policy", "fleet"):
                kw[f.name] = values[0]
            elif f.name == "peak_fleet":
                kw[f.name] = max(values)
            elif f.name == "reaction_s":
                seen = [v for v in values if v is not None]
                kw[f.name] = sum(seen) / len(seen) if seen else None
            elif f.name in ("busy_killed", "timeouts"):
                kw[f.name] = sum(values)          # totals: any one is a failure
            else:
                mean = sum(values) / len(values)
                kw[f.name] = round(mean) if f.type in ("int", int) and not math.isnan(mean) else mean
        out.append(Result(**kw))
    return out
