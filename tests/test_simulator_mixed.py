"""The mixed trace in the simulator: the bulk budget meets deadlines and interactive work keeps its latency."""
from __future__ import annotations

from dataclasses import replace

from autoscaler.sim.engine import SimConfig
from autoscaler.sim.mixed import Scenario, run

CFG = replace(SimConfig(), max_workers=19, drain_s=2 * 3600.0)


def test_a_batch_without_deadline_runs_on_the_minimum_fleet_at_no_extra_cost():
    alone = run(Scenario("interactive only", items=0), cfg=CFG)
    batch = run(Scenario("no deadline", items=20_000), cfg=CFG)
    assert batch["peak_fleet"] == alone["peak_fleet"] == 1
    assert batch["batch_done_s"] is not None and abs(batch["dollars"] - alone["dollars"]) < 0.01
    assert batch["within_budget"] == 1.0 and batch["p95_s"] < 2.0


def test_a_deadline_adds_workers_and_is_met_and_sending_items_as_interactive_hurts_the_tail():
    late = run(Scenario("deadline 15 min", items=20_000, deadline_s=900.0), cfg=CFG)
    assert late["deadline_met"] and late["peak_fleet"] > 1 and late["within_budget"] == 1.0
    naive = run(Scenario("as interactive", items=20_000, as_interactive=True), cfg=CFG)
    assert naive["p99_s"] > 10 * late["p99_s"]
