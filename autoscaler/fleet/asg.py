"""AsgFleet: the workers are EC2 Auto Scaling groups that Terraform owns; the autoscaler sets desired capacity.

Two groups, filled in order (settings.asg_group_names): `<prefix>-workers-warm`, on-demand with a
warm pool of stopped instances (scale-out in seconds; AWS allows a warm pool only on a group
without a mixed-instances policy or spot), sized to the policy's expected burst; then
`<prefix>-workers`, a mixed-instances group (on-demand base, spot above, several GPU types,
capacity rebalance). Scale-out raises desired capacity. Scale-in does not lower it: the
autoscaler sends terminate messages, and the idle worker that takes one removes its own
instance with TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=True)
(worker/asg.py), so no group replaces it or picks a busy instance itself. Health replacement,
AZ balancing, spot rebalancing and the warm pools are the groups'.
"""
from __future__ import annotations

import logging

from autoscaler.fleet.base import Fleet, FleetCount
from shared.aws import client
from shared.config import Settings

log = logging.getLogger(__name__)

# Lifecycle states of the groups' instances (describe_auto_scaling_groups). Instances in a warm
# pool ("Warmed:*") are listed by describe_warm_pool, not here: they are capacity only once they
# enter the group ("Pending").
IN_SERVICE = ("InService",)
PENDING = ("Pending", "Pending:Wait", "Pending:Proceed")


class AsgFleet(Fleet):
    """count() sums the groups; launch(n) raises desired capacity group by group; no maintain() of its own."""

    name = "asg"
    replaces_terminated = True   # terminate() keeps desired capacity: the groups launch the replacements

    def __init__(self, settings: Settings, autoscaling=None):
        self.settings = settings
        self.names = tuple(settings.asg_group_names)
        self.autoscaling = autoscaling or client("autoscaling", settings)

    def groups(self) -> list[dict]:
        """The groups that exist, in fill order (ValueError when none does: Terraform creates them)."""
        resp = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=list(self.names))
        by_name = {g["AutoScalingGroupName"]: g for g in resp.get("AutoScalingGroups", [])}
        found = [by_name[n] for n in self.names if n in by_name]
        if not found:
            raise ValueError(f"no auto scaling group of {list(self.names)} exists "
                             "(CLASSIFYCLOUD_ASG_NAMES; Terraform creates them)")
        return found

    def count(self) -> FleetCount:
        """InService = running; Pending* plus desired capacity not yet materialised = pending."""
        return tally(self.groups())

    def launch(self, n: int) -> list[str]:
        """Raise desired capacity by n, each group up to its MaxSize in order; one label per unit granted."""
        granted: list[str] = []
        left = n
        for g in self.groups():
            if left <= 0:
                break
            name = g["AutoScalingGroupName"]
            alive = sum(1 for i in g.get("Instances", []) if i.get("LifecycleState") in IN_SERVICE + PENDING)
            current = max(int(g.get("DesiredCapacity", 0)), alive)
            take = min(left, int(g.get("MaxSize", 0)) - current)
            if take <= 0:
                continue
            self.autoscaling.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=current + take,
                                                  HonorCooldown=False)
            log.info("asg fleet: %s desired capacity %d -> %d", name, current, current + take)
            # the group picks the instances (warm pool first); the loop counts capacity units, not ids
            granted += [f"{name}#{k}" for k in range(current + 1, current + take + 1)]
            left -= take
        if left > 0:
            log.warning("asg fleet: every group at MaxSize; %d of %d not launched", left, n)
        return granted

    def terminate(self, ids: list[str]) -> None:
        """Replace broken instances (the loop's health check): terminate them keeping desired capacity, so
        their groups launch the replacements. Never with a decrement: AWS refuses that at a group's minimum
        size, and a hung worker's instance would stay. Scale-in goes through workers, shutdown is destroy's."""
        for iid in ids:
            self._terminate(iid, decrement=False)

    def replace(self, ids: list[str]) -> list[str]:
        """Terminate these instances keeping desired capacity: their groups launch the replacements."""
        self.terminate(ids)
        return []

    def maintain(self) -> list[str]:
        """Nothing: the groups' EC2 health checks replace impaired instances and retry failed launches."""
        return []

    def _terminate(self, iid: str, decrement: bool) -> None:
        try:
            self.autoscaling.terminate_instance_in_auto_scaling_group(
                InstanceId=iid, ShouldDecrementDesiredCapacity=decrement)
            log.info("asg fleet: terminated %s (%s)", iid, "capacity lowered" if decrement else "group replaces it")
        except Exception as exc:  # gone already, or not in a group: nothing to do
            log.warning("asg fleet: could not terminate %s: %s", iid, exc)


def tally(groups: list[dict]) -> FleetCount:
    """FleetCount of describe_auto_scaling_groups entries: desired capacity the groups have not launched yet
    counts as pending (capacity already bought), so the next tick does not ask for it again."""
    running: list[str] = []
    pending: list[str] = []
    gap = 0
    for g in groups:
        insts = g.get("Instances", [])
        r = [i["InstanceId"] for i in insts if i.get("LifecycleState") in IN_SERVICE]
        p = [i["InstanceId"] for i in insts if i.get("LifecycleState") in PENDING]
        gap += max(0, int(g.get("DesiredCapacity", 0)) - len(r) - len(p))
        running += r
        pending += p
    return FleetCount(running=len(running), pending=len(pending) + gap, ids=tuple(running + pending))
