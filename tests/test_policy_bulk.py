"""The bulk budget in the pure policy: deadlines add workers, no deadline uses the fleet there is."""
from __future__ import annotations

from autoscaler.policy import (
    LAUNCH,
    FleetState,
    PolicyConfig,
    PolicyState,
    QueueStats,
    backlog,
    bulk_workers,
    xcloud_baseline,
)

CFG = PolicyConfig(min_workers=0, max_workers=10, latency_budget_s=10.0, seconds_per_request={"imagenet": 0.2},
                   bulk_margin_s=60.0)


def bulk(items: int, deadline_s: float | None = None) -> QueueStats:
    return QueueStats("imagenet", visible=items, bulk=True, deadline_s=deadline_s)


def test_a_batch_without_deadline_starts_one_worker_from_zero_and_no_more():
    d = backlog([bulk(100_000)], FleetState(running=0), CFG, 0.0, PolicyState())
    assert (d.action, d.count, d.desired) == (LAUNCH, 1, 1)
    held = backlog([bulk(100_000)], FleetState(running=1, idle=0), CFG, 0.0, PolicyState())
    assert held.desired == 1 and held.action == "hold"


def test_a_batch_without_deadline_adds_nothing_to_what_interactive_work_needs():
    interactive = QueueStats("imagenet", visible=150)       # 30 s of work: 3 workers in a 10 s budget
    alone = backlog([interactive], FleetState(running=0), CFG, 0.0, PolicyState())
    mixed = backlog([interactive, bulk(100_000)], FleetState(running=0), CFG, 0.0, PolicyState())
    assert alone.desired == mixed.desired == 3


def test_a_deadline_buys_the_workers_that_finish_the_items_before_it():
    # 3600 items x 0.2 s = 720 s of work; 460 s left minus the 60 s margin: 720 / 400 = 1.8 -> 2 workers
    assert bulk_workers([bulk(3600, deadline_s=460.0)], CFG) == 2
    interactive = QueueStats("imagenet", visible=150)
    d = backlog([interactive, bulk(3600, deadline_s=460.0)], FleetState(running=0), CFG, 0.0, PolicyState())
    assert d.desired == 3 + 2
    assert bulk_workers([bulk(3600, deadline_s=7260.0)], CFG) == 1      # a far deadline: one is enough


def test_a_missed_deadline_asks_for_every_worker_allowed_and_an_empty_queue_for_none():
    assert bulk_workers([bulk(10, deadline_s=30.0)], CFG) == CFG.max_workers
    assert bulk_workers([bulk(0, deadline_s=30.0)], CFG) == 0


def test_the_original_criterion_counts_only_the_interactive_queues():
    cfg = PolicyConfig(min_workers=1, max_workers=19, qos=0.9)
    d = xcloud_baseline([QueueStats("imagenet", visible=2), bulk(5000)], FleetState(running=1), cfg, 0.0, PolicyState())
    assert d.desired == 3
