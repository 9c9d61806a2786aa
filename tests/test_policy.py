"""Table-driven tests of the scaling policies (pure functions)."""
from __future__ import annotations

import math

import pytest

from autoscaler.policy import (
    HOLD,
    LAUNCH,
    TERMINATE,
    FleetState,
    PolicyConfig,
    PolicyState,
    QueueStats,
    backlog,
    get_policy,
    xcloud_baseline,
)

PAPER = PolicyConfig(min_workers=1, max_workers=19, qos=0.9, scaling_factor=1.0)
CFG = PolicyConfig(min_workers=1, max_workers=10, latency_budget_s=10.0, seconds_per_request={"imagenet": 1.0},
                   scale_in_window_s=60.0, scale_in_fraction=0.5, scale_in_step_s=10.0, target_utilization=0.75)


def q(visible=0, in_flight=0, service="imagenet"):
    return QueueStats(service=service, visible=visible, in_flight=in_flight)


def paper_formula(messages, workers, qos=0.9, sf=1.0, mx=19, mn=1):
    """The paper's decideScaling, transcribed."""
    desired = math.ceil(messages / qos)
    feasible = min(mx, desired)
    spawn = math.ceil((feasible - workers) * sf)
    if spawn > 0:
        return LAUNCH, spawn
    if spawn < 0 and -spawn - mn > 0:
        return TERMINATE, -spawn - mn
    return HOLD, 0


@pytest.mark.parametrize("messages,workers,expected", [
    (0, 1, (HOLD, 0)),            # idle at MIN: -spawn-MIN = 0
    (1, 1, (LAUNCH, 1)),          # ceil(1/0.9) = 2 workers wanted
    (9, 1, (LAUNCH, 9)),          # ceil(9/0.9) = 10
    (40, 1, (LAUNCH, 18)),        # the paper's experiment: capped at MAX 19
    (40, 19, (HOLD, 0)),
    (10, 19, (TERMINATE, 6)),     # desired 12: spawn -7, minus MIN
    (0, 19, (TERMINATE, 18)),     # no messages: all but MIN
    (0, 2, (TERMINATE, 1)),
    (5, 6, (HOLD, 0)),            # ceil(5/0.9)=6
])
def test_classifycloud_reproduces_the_papers_formula_on_its_constants(messages, workers, expected):
    d = xcloud_baseline([q(visible=messages)], FleetState(running=workers), PAPER, 0.0, PolicyState())
    assert (d.action, d.count) == expected == paper_formula(messages, workers)


def test_classifycloud_counts_visible_messages_and_running_workers_only():
    # the original read ApproximateNumberOfMessages and running instances: in-flight and pending are invisible
    d = xcloud_baseline([q(visible=0, in_flight=30)], FleetState(running=1, pending=18), PAPER, 0.0, PolicyState())
    assert (d.action, d.count) == (HOLD, 0)
    d = xcloud_baseline([q(visible=40)], FleetState(running=1, pending=18), PAPER, 5.0, PolicyState())
    assert (d.action, d.count) == (LAUNCH, 18)


def test_classifycloud_scaling_factor_and_qos_are_applied():
    cfg = PolicyConfig(min_workers=1, max_workers=19, qos=2.0, scaling_factor=0.5)
    d = xcloud_baseline([q(visible=20)], FleetState(running=1), cfg, 0.0, PolicyState())
    assert (d.action, d.count) == (LAUNCH, math.ceil((10 - 1) * 0.5))


@pytest.mark.parametrize("min_workers,fleet,messages,expected_launch", [
    (0, FleetState(), 1, 1),                                   # from zero on the first message
    (0, FleetState(), 3, 1),                                   # 3 s of work fits one worker's budget
    (1, FleetState(running=1, idle=1), 25, 2),                 # 25 s of work -> 3 workers
    (1, FleetState(running=1, idle=0), 400, 9),                # a burst: straight to max in one step
    (1, FleetState(running=1, pending=2, idle=0), 25, 0),      # pending instances count as capacity
])
def test_backlog_launches_what_the_work_needs_in_one_tick(min_workers, fleet, messages, expected_launch):
    cfg = PolicyConfig(**{**CFG.__dict__, "min_workers": min_workers})
    d = backlog([q(visible=messages)], fleet, cfg, 0.0, PolicyState())
    assert d.count == expected_launch
    assert d.action == (LAUNCH if expected_launch else HOLD)


def test_backlog_sums_work_across_services_with_their_own_service_times():
    cfg = PolicyConfig(**{**CFG.__dict__, "seconds_per_request": {"fast": 0.1, "slow": 2.0}})
    d = backlog([q(visible=100, service="fast"), q(visible=20, in_flight=5, service="slow")],
                FleetState(running=1, idle=0), cfg, 0.0, PolicyState())
    assert d.desired == math.ceil((100 * 0.1 + 25 * 2.0) / 10.0) == 6
    assert (d.action, d.count) == (LAUNCH, 5)


def test_backlog_uses_the_default_service_time_for_unknown_services():
    cfg = PolicyConfig(**{**CFG.__dict__, "default_seconds_per_request": 0.5})
    d = backlog([q(visible=60, service="other")], FleetState(running=1, idle=1), cfg, 0.0, PolicyState())
    assert d.desired == 3


def test_backlog_steady_load_does_not_flap_over_many_ticks():
    # required wobbles between 3 and 4 around a fleet of 4 busy-ish workers: never terminates, never launches
    state, fleet, actions = PolicyState(), FleetState(running=4, idle=2), []
    for t in range(200):
        messages = 35 if t % 3 else 31           # 3.5 s -> 4 workers, 3.1 -> 4; 2.x -> 3 below
        messages = 25 if t % 7 == 0 else messages
        d = backlog([q(visible=messages // 2, in_flight=messages - messages // 2)], fleet,
                    CFG, t * 5.0, state)
        state = d.state
        actions.append(d.action)
    assert set(actions) == {HOLD}


def test_backlog_scales_in_only_after_the_window():
    fleet = FleetState(running=8, idle=8)
    state = PolicyState()
    for t in range(0, 60, 5):
        d = backlog([q()], fleet, CFG, float(t), state)
        assert d.action == HOLD, (t, d.reason)
        state = d.state
    d = backlog([q()], fleet, CFG, 60.0, state)
    assert (d.action, d.count) == (TERMINATE, 4)          # at most half the fleet per step


def test_backlog_window_restarts_when_load_returns():
    state = backlog([q()], FleetState(running=4, idle=4), CFG, 0.0, PolicyState()).state
    state = backlog([q(visible=40)], FleetState(running=4, idle=0), CFG, 50.0, state).state
    d = backlog([q()], FleetState(running=4, idle=4), CFG, 65.0, state)
    assert d.action == HOLD and state.below_since is None


@pytest.mark.parametrize("fleet,expected", [
    (FleetState(running=4, pending=4, idle=1), 1),         # never more terminates than idle workers
    (FleetState(running=4, pending=4, idle=0), 0),
    (FleetState(running=8, idle=2), 0),                    # 6 busy need 8 at 75% utilisation
    (FleetState(running=2, idle=2), 1),                    # never below min (1)
    (FleetState(running=1, idle=1), 0),
    (FleetState(running=6, idle=6, stopping=2), 2),        # stopping workers are already leaving
    (FleetState(running=10, idle=None), 5),                # no heartbeats, empty queues: all idle
])
def test_backlog_scale_in_respects_idle_workers_and_min(fleet, expected):
    state = PolicyState(below_since=0.0)
    d = backlog([q()], fleet, CFG, 100.0, state)
    assert d.count == expected
    assert d.action == (TERMINATE if expected else HOLD)
    assert fleet.running - fleet.stopping - d.count >= CFG.min_workers


def test_backlog_without_heartbeats_assumes_no_idle_worker_while_messages_are_held():
    d = backlog([q(in_flight=1)], FleetState(running=5, idle=None), CFG, 100.0, PolicyState(below_since=0.0))
    assert (d.action, d.count) == (HOLD, 0)


def test_backlog_scale_in_steps_are_spaced():
    fleet = FleetState(running=10, idle=10)
    d1 = backlog([q()], fleet, CFG, 100.0, PolicyState(below_since=0.0))
    assert d1.action == TERMINATE
    d2 = backlog([q()], FleetState(running=10, idle=10), CFG, 105.0, d1.state)
    assert d2.action == HOLD
    d3 = backlog([q()], FleetState(running=5, idle=5), CFG, 110.0, d2.state)
    assert (d3.action, d3.count) == (TERMINATE, 2)


def test_backlog_keeps_capacity_for_busy_workers_under_a_steady_stream():
    # the queue is drained but 6 of 8 workers are busy: 6/0.75 = 8 workers stay
    d = backlog([q(in_flight=6)], FleetState(running=8, idle=2), CFG, 500.0, PolicyState(below_since=0.0))
    assert d.action == HOLD


def test_backlog_never_exceeds_max_workers():
    d = backlog([q(visible=10_000)], FleetState(running=3, pending=7, idle=0), CFG, 0.0, PolicyState())
    assert (d.action, d.count) == (HOLD, 0) and d.desired == CFG.max_workers


@pytest.mark.parametrize("running, pending, stopping, expected", [
    (10, 0, 1, (HOLD, 0)),        # one is stopping but still running: no replacement beyond max
    (9, 0, 2, (LAUNCH, 1)),       # room for one more instance, not for two
    (4, 2, 1, (LAUNCH, 4)),
])
def test_backlog_counts_stopping_workers_against_max_workers(running, pending, stopping, expected):
    fleet = FleetState(running=running, pending=pending, idle=0, stopping=stopping)
    d = backlog([q(visible=10_000)], fleet, CFG, 0.0, PolicyState())
    assert (d.action, d.count) == expected
    assert running + pending + d.count <= CFG.max_workers


def test_policies_are_selected_by_name():
    assert get_policy("backlog") is backlog and get_policy("xcloud-baseline") is xcloud_baseline
    assert get_policy("classifycloud") is xcloud_baseline      # the old name stays an alias
    with pytest.raises(ValueError, match="backlog"):
        get_policy("nope")


def test_config_from_settings_takes_every_field(settings):
    cfg = PolicyConfig.from_settings(settings.replace(min_workers=2, max_workers=7, qos=0.5), {"imagenet": 0.3})
    assert (cfg.min_workers, cfg.max_workers, cfg.qos, cfg.spr("imagenet")) == (2, 7, 0.5, 0.3)
    assert cfg.spr("unknown") == settings.seconds_per_request


def test_the_policy_and_the_simulator_default_to_the_settings_defaults():
    from dataclasses import fields

    from autoscaler.sim.engine import FROM_SETTINGS, SimConfig
    from shared.config import Settings
    defaults = Settings()
    assert PolicyConfig() == PolicyConfig.from_settings(defaults)     # scale_in_step_s was 10 here, 0 in Settings
    sim = SimConfig()
    assert SimConfig.from_settings(defaults, max_workers=sim.max_workers) == sim   # max_workers: the paper's 19
    shared = {f.name for f in fields(PolicyConfig)} & set(FROM_SETTINGS)
    assert {name: getattr(sim, name) for name in shared if name != "max_workers"} == {
        name: getattr(PolicyConfig(), name) for name in shared if name != "max_workers"}
    assert "scale_in_step_s" in shared and SimConfig().scale_in_step_s == PolicyConfig().scale_in_step_s == 0.0


def test_the_policy_and_the_simulator_are_built_from_the_settings_given():
    from autoscaler.sim.engine import SimConfig
    from shared.config import Settings
    s = Settings(scale_in_step_s=7.0, tick_s=2.0, max_workers=4, reply_timeout_s=30.0)
    cfg, sim = PolicyConfig.from_settings(s), SimConfig.from_settings(s, drain_s=0.0)
    assert cfg.scale_in_step_s == sim.scale_in_step_s == 7.0 and cfg.max_workers == sim.max_workers == 4
    assert sim.tick_s == 2.0 and sim.client_timeout_s == 30.0 and sim.drain_s == 0.0
