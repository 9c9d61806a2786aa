"""A mixed trace: steady interactive traffic plus one large batch on the bulk queue, under the real policy.

The simulated workers follow the worker's rule (worker/bulk.py): a free worker takes interactive work
first and a bulk batch (bulk_receive items) only when no interactive request waits. The policy sees
the bulk queue as QueueStats(bulk=True, deadline_s=...), as the loop's BulkReader reports it.
`python -m autoscaler.sim.mixed` prints the table in docs/AUTOSCALING.md and writes its JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
from dataclasses import dataclass, replace

import numpy as np

from autoscaler.policy import QueueStats
from autoscaler.sim.controllers import PolicyController
from autoscaler.sim.engine import SimConfig, Simulation
from autoscaler.sim.fleet import dollars
from autoscaler.sim.traces import GPU_SERVICES, ServiceModel, Trace

BULK = "bulk:imagenet"          # the bulk queue's items in the trace (the policy sees service imagenet, bulk)


def mixed_trace(seed: int = 0, rate: float = 8.0, duration_s: float = 3 * 3600.0, items: int = 100_000,
                batch_at_s: float = 600.0, bulk_receive: int = 8, as_interactive: bool = False) -> Trace:
    """Poisson interactive imagenet requests at `rate`/s, and `items` batch items queued at batch_at_s
    (as_interactive: the same items sent as ordinary requests, the way a client without /batches would)."""
    rng = random.Random(seed)
    arrivals, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        arrivals.append((t, "imagenet"))
    name = "imagenet" if as_interactive else BULK
    arrivals += [(batch_at_s + i * 1e-6, name) for i in range(items)]
    model = GPU_SERVICES["imagenet"]
    services = {"imagenet": model, BULK: ServiceModel(BULK, model.seconds_per_request, batch_max=bulk_receive,
                                                      batch_overhead_s=model.batch_overhead_s)}
    return Trace("mixed", f"{rate:g} req/s interactive + a {items}-item batch at {batch_at_s:g} s",
                 tuple(sorted(arrivals)), services, duration_s=duration_s)


class MixedSimulation(Simulation):
    """Interactive first; the bulk queue reported with its deadline."""

    def __init__(self, trace: Trace, controller, cfg: SimConfig, seed: int = 0, deadline_at: float | None = None):
        super().__init__(trace, controller, cfg, seed)
        self.deadline_at = deadline_at

    def _heads(self) -> list[tuple[int, str]]:
        """Interactive queues first; the bulk queue only when no interactive request waits (worker/bulk.py)."""
        heads = [(q[0], s) for s, q in self.queue.items() if q and s != BULK]
        if not heads and self.queue.get(BULK):
            heads = [(self.queue[BULK][0], BULK)]
        return heads

    def _snapshot(self, _=None) -> None:
        out = []
        for s in self.services:
            if s == BULK:
                left = None if self.deadline_at is None else self.deadline_at - self.now
                out.append(QueueStats("imagenet", visible=len(self.queue[s]), in_flight=self.held[s], bulk=True,
                                      deadline_s=left))
            else:
                out.append(QueueStats(s, visible=len(self.queue[s]), in_flight=self.held[s]))
        self.snapshot = out


@dataclass(frozen=True)
class Scenario:
    """One row: how the batch is sent and what deadline it has."""

    name: str
    deadline_s: float | None = None       # after the batch is queued
    as_interactive: bool = False
    items: int = 100_000


SCENARIOS = (
    Scenario("interactive only", items=0),
    Scenario("batch, no deadline (lowest cost)"),
    Scenario("batch, deadline 2 h", deadline_s=7200.0),
    Scenario("batch, deadline 1 h", deadline_s=3600.0),
    Scenario("batch, deadline 30 min", deadline_s=1800.0),
    Scenario("same items as interactive requests", as_interactive=True),
)


def run(scenario: Scenario, seed: int = 0, cfg: SimConfig | None = None) -> dict:
    """Simulate one scenario under the backlog policy; the row of the report."""
    cfg = cfg or replace(SimConfig(), max_workers=19, drain_s=4 * 3600.0)
    batch_at = 600.0
    trace = mixed_trace(seed, items=scenario.items, batch_at_s=batch_at, as_interactive=scenario.as_interactive)
    deadline_at = batch_at + scenario.deadline_s if scenario.deadline_s else None
    sim = MixedSimulation(trace, PolicyController("backlog"), cfg, seed, deadline_at).run()
    arrival, finish = np.asarray(sim.arrival), np.asarray(sim.finish)
    items = {batch_at + i * 1e-6 for i in range(scenario.items)}
    bulk = np.asarray([s == BULK or t in items for t, s in trace.arrivals])
    live = ~bulk
    lat = finish[live] - arrival[live]
    lat = lat[~np.isnan(lat)]
    done_at = float(np.nanmax(finish[bulk])) if bulk.any() and not np.isnan(finish[bulk]).any() else math.nan
    return {"scenario": scenario.name, "items": scenario.items, "deadline_s": scenario.deadline_s,
            "interactive": int(live.sum()), "p50_s": float(np.percentile(lat, 50)),
            "p95_s": float(np.percentile(lat, 95)), "p99_s": float(np.percentile(lat, 99)),
            "within_budget": float((lat <= cfg.latency_budget_s).mean()),
            "batch_done_s": done_at - batch_at if not math.isnan(done_at) else None,
            "deadline_met": None if not scenario.deadline_s or math.isnan(done_at)
            else bool(done_at - batch_at <= scenario.deadline_s),
            "instance_hours": sum(w.ended_at - w.launched_at for w in sim.workers) / 3600.0,
            "dollars": dollars(sim), "peak_fleet": max((r + p for _, _, _, r, p in sim.samples), default=0)}


def table(rows: list[dict]) -> str:
    """The markdown table of the report."""
    out = ["| scenario | interactive p50 s | p95 s | p99 s | within 10 s | batch done after | deadline met "
           "| instance-h | $ | peak fleet |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        done = "-" if r["batch_done_s"] is None else f"{r['batch_done_s'] / 60:.0f} min"
        met = "-" if r["deadline_met"] is None else ("yes" if r["deadline_met"] else "no")
        out.append(f"| {r['scenario']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} "
                   f"| {100 * r['within_budget']:.1f} % | {done} | {met} | {r['instance_hours']:.2f} "
                   f"| {r['dollars']:.2f} | {r['peak_fleet']} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Run every scenario; print the table, write the JSON."""
    p = argparse.ArgumentParser(prog="python -m autoscaler.sim.mixed", description=main.__doc__)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    rows = [run(s, args.seed) for s in SCENARIOS]
    print(table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"seed": args.seed, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
