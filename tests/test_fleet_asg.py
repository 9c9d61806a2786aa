"""AsgFleet and the worker's scale-in protection against moto's Auto Scaling (groups, warm pool, mixed instances)."""
from __future__ import annotations

import uuid

import pytest

from autoscaler.fleet import make_fleet
from autoscaler.fleet.asg import AsgFleet, tally
from autoscaler.loop import Autoscaler
from autoscaler.policy import HOLD, LAUNCH
from shared.aws import client
from shared.messages import Request
from shared.transport import Transport
from worker.asg import FleetAgent, ScaleInProtection

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

GPU_TYPES = ("g4dn.xlarge", "g5.xlarge", "g6.xlarge")


@pytest.fixture
def groups(settings):
    """The two worker groups as Terraform builds them: warm (on-demand, warm pool) then spot (mixed instances)."""
    ec2 = client("ec2", settings)
    asg = client("autoscaling", settings)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    subnets = [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]][:3]
    lt = f"{settings.prefix}-worker"
    ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData={"ImageId": image,
                                                                          "InstanceType": "g4dn.xlarge"})
    warm, main = settings.asg_group_names
    asg.create_auto_scaling_group(AutoScalingGroupName=warm, MinSize=0, MaxSize=2, DesiredCapacity=0,
                                  LaunchTemplate={"LaunchTemplateName": lt, "Version": "$Default"},
                                  VPCZoneIdentifier=",".join(subnets))
    asg.put_warm_pool(AutoScalingGroupName=warm, MinSize=2, PoolState="Stopped",
                      InstanceReusePolicy={"ReuseOnScaleIn": True})
    asg.create_auto_scaling_group(
        AutoScalingGroupName=main, MinSize=1, MaxSize=5, DesiredCapacity=1, CapacityRebalance=True,
        VPCZoneIdentifier=",".join(subnets),
        MixedInstancesPolicy={
            "LaunchTemplate": {"LaunchTemplateSpecification": {"LaunchTemplateName": lt, "Version": "$Default"},
                               "Overrides": [{"InstanceType": t} for t in GPU_TYPES]},
            "InstancesDistribution": {"OnDemandBaseCapacity": 1, "OnDemandPercentageAboveBaseCapacity": 0,
                                      "SpotAllocationStrategy": "price-capacity-optimized"}})
    yield {"warm": warm, "main": main, "asg": asg}
    for name in (warm, main):
        asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
    ec2.delete_launch_template(LaunchTemplateName=lt)


def describe(asg, name) -> dict:
    return asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])["AutoScalingGroups"][0]


def instance_ids(asg, name) -> list[str]:
    return [i["InstanceId"] for i in describe(asg, name)["Instances"]]


def asg_settings(settings):
    return settings.replace(fleet="asg", policy="backlog", min_workers=1, max_workers=7, latency_budget_s=0.1,
                            scale_in_window_s=0.0, scale_in_step_s=0.0)


def test_make_fleet_picks_the_asg_fleet_for_fleet_asg(settings, groups):
    assert isinstance(make_fleet(asg_settings(settings)), AsgFleet)


def test_scale_out_sets_desired_capacity_warm_group_first_then_the_spot_group(settings, groups):
    fleet = AsgFleet(asg_settings(settings))
    assert fleet.count().running == 1                       # the spot group's on-demand base
    granted = fleet.launch(4)
    asg = groups["asg"]
    assert len(granted) == 4
    assert describe(asg, groups["warm"])["DesiredCapacity"] == 2       # the warm group first, up to its max
    assert describe(asg, groups["main"])["DesiredCapacity"] == 3       # the rest on spot
    count = fleet.count()
    assert count.running + count.pending == 5
    assert fleet.launch(10) and describe(asg, groups["main"])["DesiredCapacity"] == 5   # capped at MaxSize
    assert fleet.launch(1) == []                                                      # every group full


def test_desired_capacity_not_yet_launched_counts_as_pending():
    # describe_auto_scaling_groups as AWS answers it right after SetDesiredCapacity, before the launches
    groups = [{"AutoScalingGroupName": "warm", "DesiredCapacity": 2, "MaxSize": 2,
               "Instances": [{"InstanceId": "i-w", "LifecycleState": "Pending:Wait"}]},
              {"AutoScalingGroupName": "spot", "DesiredCapacity": 3, "MaxSize": 5,
               "Instances": [{"InstanceId": "i-1", "LifecycleState": "InService"},
                             {"InstanceId": "i-2", "LifecycleState": "Terminating"}]}]
    count = tally(groups)
    assert (count.running, count.pending) == (1, 1 + 1 + 2) and count.ids == ("i-1", "i-w")


def test_the_loop_scales_out_by_setting_desired_capacity(settings, provisioned, groups):
    s = asg_settings(settings)
    loop = Autoscaler(s, AsgFleet(s), transport=Transport(s))
    sqs = client("sqs", s)
    for _ in range(3):                           # 30 x 0.05 s / 0.1 s budget -> 15 -> max 7
        sqs.send_message_batch(QueueUrl=provisioned["imagenet"], Entries=[
            {"Id": str(i), "MessageBody": Request(id=str(uuid.uuid4()), service="imagenet",
                                                  image={"url": "http://example.com/x.jpg"}, reply_to=None).to_json()}
            for i in range(10)])
    first = loop.tick()
    assert (first.decision.action, first.decision.count, first.acted) == (LAUNCH, 6, 6)
    asg = groups["asg"]
    assert describe(asg, groups["warm"])["DesiredCapacity"] + describe(asg, groups["main"])["DesiredCapacity"] == 7
    second = loop.tick()
    assert second.decision.action == HOLD and second.fleet.running + second.fleet.pending == 7


def test_a_busy_worker_is_protected_and_an_idle_one_is_not_so_scale_in_takes_the_idle_one(settings, groups):
    asg = groups["asg"]
    asg.set_desired_capacity(AutoScalingGroupName=groups["main"], DesiredCapacity=3)
    busy_id, idle_id, other_id = instance_ids(asg, groups["main"])
    s = asg_settings(settings).replace(protection_idle_s=0.0)
    held = {busy_id: 3, idle_id: 0, other_id: 0}
    agents = {iid: FleetAgent(s.replace(instance_id=iid), iid, lambda iid=iid: held[iid], lambda reason: None,
                              imds=None) for iid in (busy_id, idle_id)}
    for agent in agents.values():
        assert agent.group == groups["main"]                  # found from the instance id
        agent.protection.sync()
    protected = {i["InstanceId"]: i["ProtectedFromScaleIn"] for i in describe(asg, groups["main"])["Instances"]}
    assert protected[busy_id] is True and protected[idle_id] is False
    # a desired-capacity decrease (or any scale-in by the group) must leave the busy worker alone
    asg.set_desired_capacity(AutoScalingGroupName=groups["main"], DesiredCapacity=1)
    assert instance_ids(asg, groups["main"]) == [busy_id]


def test_protection_is_set_at_once_and_cleared_only_after_the_idle_debounce():
    calls = []

    class Recorder:
        def set_instance_protection(self, **kw):
            calls.append(kw["ProtectedFromScaleIn"])

    now = [0.0]
    held = [0]
    p = ScaleInProtection(Recorder(), "g", "i-1", lambda: held[0], idle_s=30.0, clock=lambda: now[0])
    held[0] = 2
    p.sync()
    assert calls == [True]
    for t in range(1, 40):                 # a steady stream: held and idle alternate, protection stays
        now[0] = float(t)
        held[0] = t % 2
        p.sync()
    assert calls == [True]
    held[0] = 0
    now[0] = 100.0
    p.sync()                               # idle from now on
    now[0] = 129.0
    p.sync()
    assert calls == [True]                 # 29 s idle: still protected
    now[0] = 131.0
    p.sync()                               # 31 s idle -> cleared, once
    p.sync()
    assert calls == [True, False] and p.changes == 2


def test_removing_itself_terminates_the_instance_and_lowers_desired_capacity(settings, groups):
    asg = groups["asg"]
    asg.set_desired_capacity(AutoScalingGroupName=groups["main"], DesiredCapacity=2)
    leaving, staying = instance_ids(asg, groups["main"])
    s = asg_settings(settings)
    agent = FleetAgent(s, leaving, lambda: 0, lambda reason: None, imds=None)
    agent.protection.set(True)             # a worker that held work until its last batch
    agent.close("terminate message")
    g = describe(asg, groups["main"])
    assert agent.removed and g["DesiredCapacity"] == 1 and [i["InstanceId"] for i in g["Instances"]] == [staying]
    state = client("ec2", s).describe_instances(InstanceIds=[leaving])["Reservations"][0]["Instances"][0]["State"]
    assert state["Name"] in ("shutting-down", "terminated")


def test_a_worker_stopped_for_another_reason_keeps_its_instance_in_the_group(settings, groups):
    asg = groups["asg"]
    (iid,) = instance_ids(asg, groups["main"])
    agent = FleetAgent(asg_settings(settings), iid, lambda: 0, lambda reason: None, imds=None)
    agent.close("SIGTERM: finishing the current batch, releasing held messages")
    assert not agent.removed and instance_ids(asg, groups["main"]) == [iid]
    assert describe(asg, groups["main"])["Instances"][0]["ProtectedFromScaleIn"] is False

