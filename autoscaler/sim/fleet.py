"""The simulated fleet: where a launched worker comes from (warm pool, spot, on-demand), what it costs, spot reclaims.

Two models. `Ec2Model`: every launch is a cold on-demand boot (run_instances, today's Ec2Fleet).
`AsgModel`: the Auto Scaling groups of infra/terraform/workers.tf — a launch takes a stopped
instance from the warm pool first (resume, tens of seconds), the rest are cold spot boots; spot
workers get interruption notices; a worker leaving the warm group returns to its pool.

Prices (us-east-1, Linux, per instance-hour): on-demand from the AWS EC2 On-Demand price list
(g4dn.xlarge $0.526, g5.xlarge $1.006, g6.xlarge $0.8048; as listed in 2025). Spot prices move
every few minutes and were not reachable from here: SPOT_PRICE assumes 60 % below on-demand,
about the savings the Spot Instance Advisor shows for these types — an assumption, not a quote.
A stopped warm-pool instance pays its 100 GB gp3 root volume only ($0.08 per GB-month).
"""
from __future__ import annotations

from dataclasses import dataclass

ON_DEMAND_PRICE = {"g4dn.xlarge": 0.526, "g5.xlarge": 1.006, "g6.xlarge": 0.8048}     # $/h, us-east-1
SPOT_DISCOUNT = 0.60                                                                # assumed, see above
SPOT_PRICE = {t: round(p * (1 - SPOT_DISCOUNT), 4) for t, p in ON_DEMAND_PRICE.items()}
STOPPED_PRICE = 100 * 0.08 / 730                                                    # $/h: 100 GB gp3 at rest
BASE_TYPE = "g4dn.xlarge"                                                           # worker_instance_type


@dataclass(frozen=True)
class Ec2Model:
    """Cold on-demand boots only (the run_instances fleet)."""

    name: str = "ec2"
    warm_pool: int = 0
    spot_interrupt_per_h: float = 0.0

    def price(self, kind: str) -> float:
        """$/h of a running worker of this kind."""
        return SPOT_PRICE_MEAN if kind == "spot" else ON_DEMAND_PRICE[BASE_TYPE]

    def cold_kind(self) -> str:
        """What a launch beyond the warm pool is."""
        return "on-demand"


@dataclass(frozen=True)
class AsgModel(Ec2Model):
    """The two groups: warm pool (on-demand, resume) first, then spot cold boots with interruptions."""

    name: str = "asg"
    warm_pool: int = 7
    resume_s: tuple[float, float] = (10.0, 20.0)      # stopped warm instance -> worker ready
    refill_s: float = 60.0                            # a leaving warm instance is stopped and ready again
    spot_interrupt_per_h: float = 0.05                # a stress value: far above the Advisor's "<5 % a month"

    def cold_kind(self) -> str:
        return "spot"


# the spot group's mixed-instances policy spreads over its types; price-capacity-optimized
# picks among them by price and capacity: their mean is the assumed price of a spot hour
SPOT_PRICE_MEAN = sum(SPOT_PRICE.values()) / len(SPOT_PRICE)


def dollars(sim) -> float:
    """What a finished simulation cost: running hours by kind, plus stopped warm-pool hours."""
    model = sim.fleet_model
    running = sum((w.ended_at - w.launched_at) / 3600 * model.price(w.kind) for w in sim.workers)
    total_h = sim.now / 3600
    warm_used_h = sum((w.ended_at - w.launched_at) / 3600 for w in sim.workers if w.kind == "warm")
    stopped_h = max(0.0, model.warm_pool * total_h - warm_used_h)
    return running + stopped_h * STOPPED_PRICE
