"""The simulator: deterministic per seed, calls the real policy functions, and judges them."""
from __future__ import annotations

import json

import pytest

from autoscaler import policy
from autoscaler.__main__ import simulate_main
from autoscaler.sim import TRACES, SimConfig, Simulation, simulate, summarise
from autoscaler.sim.controllers import PolicyController
from autoscaler.sim.traces import burst40, diurnal


def test_traces_are_deterministic_per_seed_and_differ_across_seeds():
    assert TRACES["spike"](3).arrivals == TRACES["spike"](3).arrivals
    assert TRACES["spike"](3).arrivals != TRACES["spike"](4).arrivals
    assert len(burst40().arrivals) == 40


def test_a_simulation_is_deterministic_with_a_seed():
    trace = TRACES["spike"](1)
    a, _ = simulate(trace, "backlog", seed=7)
    b, _ = simulate(trace, "backlog", seed=7)
    c, _ = simulate(trace, "backlog", seed=8)
    assert a == b
    assert a != c


def test_every_request_is_answered_on_the_burst_by_every_policy():
    trace = burst40()
    for name in ("classifycloud", "target-tracking", "backlog", "oracle"):
        r, _ = simulate(trace, name)
        assert r.answered == r.requests == 40, name


def test_the_simulator_calls_the_same_policy_functions_as_the_loop(monkeypatch):
    calls = []
    real = policy.backlog

    def spy(*args):
        calls.append(args[3])
        return real(*args)
    monkeypatch.setitem(policy.POLICIES, "backlog", spy)
    Simulation(burst40(), PolicyController("backlog"), SimConfig(drain_s=60)).run()
    assert len(calls) > 50 and calls == sorted(calls)


def test_backlog_beats_classifycloud_on_the_40_request_trace():
    trace = burst40()
    ours, _ = simulate(trace, "backlog")
    theirs, _ = simulate(trace, "classifycloud")
    oracle, _ = simulate(trace, "oracle")
    assert ours.timeouts == 0
    assert ours.instance_minutes < theirs.instance_minutes
    assert ours.peak_fleet < theirs.peak_fleet
    assert ours.instance_minutes <= 1.3 * oracle.instance_minutes


def test_backlog_answers_more_of_a_short_day_within_budget_than_target_tracking_for_less():
    trace = diurnal(seed=2, mean_rate=6.0, day_s=3 * 3600)
    cfg = SimConfig(drain_s=300)
    ours = summarise(Simulation(trace, PolicyController("backlog"), cfg).run(), "backlog")
    from autoscaler.sim.controllers import TargetTracking
    tt = summarise(Simulation(trace, TargetTracking(), cfg).run(), "target-tracking")
    assert ours.within_budget > tt.within_budget
    assert ours.instance_minutes < tt.instance_minutes


def test_backlog_scales_the_burst_fleet_back_to_min_workers():
    _, sim = simulate(burst40(), "backlog")
    running, pending = sim.samples[-1][3], sim.samples[-1][4]
    assert running + pending == SimConfig().min_workers
    assert max(s[3] + s[4] for s in sim.samples) > SimConfig().min_workers
    assert sim.terminates_taken >= 1


def test_simulate_main_prints_the_table_and_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "r.json"
    rc = simulate_main(["--traces", "burst40", "--policies", "backlog,oracle", "--png-dir", str(tmp_path),
                        "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| burst40 | backlog |" in text and "| burst40 | oracle |" in text
    data = json.loads(out.read_text())
    assert [r["policy"] for r in data["results"]] == ["backlog", "oracle"]
    png = tmp_path / "autoscaling-burst40.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_main_rejects_unknown_names(capsys):
    assert simulate_main(["--traces", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


# --- the Auto Scaling group fleet: warm pool, spot, dollars ------------------------------------------

def test_burst_workers_sizes_the_warm_pool_from_the_policy():
    cfg = policy.PolicyConfig(min_workers=1, max_workers=19, latency_budget_s=10.0)
    assert policy.burst_workers(80.0, cfg) == 7            # burst40: 40 x 2 s -> 8 workers, 1 already there
    assert policy.burst_workers(0.0, cfg) == 0
    assert policy.burst_workers(10_000.0, cfg) == 18       # capped at max_workers


def test_the_warm_pool_cuts_burst40_latency_below_0_6x_classifycloud_for_fewer_instance_minutes():
    from autoscaler.sim.runner import average, run_all
    results, _ = run_all(["burst40"], ["classifycloud", "asg"], seeds=[0, 1, 2])
    by = {r.policy: r for r in average(results)}
    ours, theirs = by["asg"], by["classifycloud"]
    assert ours.warm_pool == 7 and ours.warm_launches >= 7
    assert ours.mean_s <= 0.6 * theirs.mean_s
    assert ours.instance_minutes <= theirs.instance_minutes and ours.timeouts == 0


def test_spot_notices_drain_workers_without_killing_a_busy_one_or_losing_a_request():
    from autoscaler.sim.controllers import AsgController
    from autoscaler.sim.fleet import AsgModel
    trace = TRACES["step"](0)
    ctl = AsgController(warm_pool=2, model=AsgModel(spot_interrupt_per_h=30.0))   # a notice every 2 min per spot worker
    sim = Simulation(trace, ctl, SimConfig()).run()
    r = summarise(sim, "asg")
    assert r.interruptions >= 10 and r.busy_killed == 0
    assert r.answered == r.requests and r.timeouts == 0
    assert any(w.kind == "spot" and w.draining for w in sim.workers)   # some were busy at their notice


def test_dollars_price_running_hours_by_kind_and_stopped_warm_instances():
    from autoscaler.sim.controllers import AsgController
    from autoscaler.sim.fleet import ON_DEMAND_PRICE, STOPPED_PRICE, dollars
    quiet = burst40()
    quiet = type(quiet)("quiet", "no requests", (), quiet.services, duration_s=600.0)
    ec2 = Simulation(quiet, PolicyController("backlog"), SimConfig(drain_s=0)).run()
    assert dollars(ec2) == pytest.approx(600 / 3600 * ON_DEMAND_PRICE["g4dn.xlarge"])     # the min worker alone
    asg = Simulation(quiet, AsgController(warm_pool=5), SimConfig(drain_s=0)).run()
    assert dollars(asg) == pytest.approx(600 / 3600 * (ON_DEMAND_PRICE["g4dn.xlarge"] + 5 * STOPPED_PRICE))


class _TerminateEveryTick:
    """A controller that asks one worker to stop on every tick (nothing else): who takes it is the worker's rule."""

    def start(self, sim) -> None:
        pass

    def tick(self, sim, now: float) -> None:
        sim.send_terminates(1)


def _steady(rate_per_s: float, seconds: float, service_s: float):
    from autoscaler.sim.traces import ServiceModel, Trace
    arrivals = tuple((i / rate_per_s, "svc") for i in range(int(seconds * rate_per_s)))
    return Trace("steady", "steady work", arrivals, {"svc": ServiceModel("svc", service_s, jitter=0.0)}, seconds)


def test_a_simulated_worker_with_work_waiting_never_takes_a_terminate_like_the_real_one():
    # one worker, always a request waiting after each (3 req/s at 0.5 s each): the real worker never
    # looks at the terminate queue; the old model took one after every 5 requests
    sim = Simulation(_steady(3.0, 120, 0.5), _TerminateEveryTick(), SimConfig(min_workers=1, drain_s=0)).run()
    assert sim.terminates_sent > 20 and sim.terminates_taken == 0
    assert sim.workers[0].ended_at == sim.now                  # it worked to the end


def test_a_simulated_idle_worker_takes_a_fresh_terminate_within_its_check_interval():
    sim = Simulation(_steady(0.01, 60, 0.1), _TerminateEveryTick(), SimConfig(min_workers=1, drain_s=0)).run()
    # idle from the start; the first terminate (t = 5 s) is taken within 2.5 s + one 0.5 s wait
    assert sim.terminates_taken == 1 and sim.workers[0].ended_at <= 5.0 + 2.5 + 0.5


def test_the_simulator_and_the_worker_use_the_same_terminate_rule(monkeypatch, settings):
    from shared.messages import Terminate
    from shared.transport import Transport
    from worker.terminate import TerminateWatch
    calls = []
    real = Terminate.check_due

    def spy(idle, since, interval):
        calls.append(interval)
        return real(idle, since, interval)
    monkeypatch.setattr(Terminate, "check_due", staticmethod(spy))
    Simulation(_steady(0.01, 30, 0.1), _TerminateEveryTick(), SimConfig(min_workers=1, drain_s=0)).run()
    s = settings.replace(terminate_check_interval_s=20, terminate_expiry_s=5)
    watch = TerminateWatch(s, Transport(s), "q")
    watch.due(idle=True)
    assert calls and set(calls) == {2.5}    # both: 20 s capped at half the 5 s expiry, by the same function
