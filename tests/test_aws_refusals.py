"""Calls AWS refuses and moto answers: the refusals emulated around moto's clients, and the code that must cope.

- TerminateInstanceInAutoScalingGroup(ShouldDecrementDesiredCapacity=True) at a group's minimum size:
  AWS answers ValidationError; moto lowers the minimum's desired capacity anyway.
- SendMessage to the terminate queue by anyone but the autoscaler: the queue policy Terraform writes
  (queues.tf) denies it; moto applies no queue policy.
- A request queue created at run time gets the same queue policy as Terraform's request queues.
"""
from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

# the worker groups as Terraform builds them with min_workers = 1: warm (min 0), then the base group (min 1)
from test_fleet_asg import describe as group
from test_fleet_asg import groups  # noqa: F401  (a fixture)

from autoscaler.fleet.asg import AsgFleet
from shared.aws import client
from shared.messages import Terminate, now_ms
from shared.service_queues import ensure_request_queue
from shared.transport import Transport
from worker.asg import FleetAgent
from worker.terminate import TerminateWatch

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

MIN_SIZE_REFUSAL = ("Currently, desiredSize equals minSize ({size}). Terminating instance without replacement will "
                    "violate group's min size constraint. Either set shouldDecrementDesiredCapacity flag to false or "
                    "lower group's min size.")


class AutoScalingLikeAws:
    """moto's Auto Scaling client, refusing a decrement at a group's minimum size with AWS's error."""

    def __init__(self, autoscaling):
        self._autoscaling = autoscaling
        self.refused = 0

    def __getattr__(self, name):
        return getattr(self._autoscaling, name)

    def terminate_instance_in_auto_scaling_group(self, InstanceId, ShouldDecrementDesiredCapacity):  # noqa: N803
        if ShouldDecrementDesiredCapacity:
            found = self._autoscaling.describe_auto_scaling_instances(InstanceIds=[InstanceId])["AutoScalingInstances"]
            if found:
                g = self._autoscaling.describe_auto_scaling_groups(
                    AutoScalingGroupNames=[found[0]["AutoScalingGroupName"]])["AutoScalingGroups"][0]
                if g["DesiredCapacity"] <= g["MinSize"]:
                    self.refused += 1
                    raise ClientError({"Error": {"Code": "ValidationError",
                                                 "Message": MIN_SIZE_REFUSAL.format(size=g["MinSize"])}},
                                      "TerminateInstanceInAutoScalingGroup")
        return self._autoscaling.terminate_instance_in_auto_scaling_group(
            InstanceId=InstanceId, ShouldDecrementDesiredCapacity=ShouldDecrementDesiredCapacity)


class SqsLikeAws:
    """moto's SQS client as a worker's role sees the terminate queue: its policy denies every send."""

    def __init__(self, sqs, terminate_queue_url: str):
        self._sqs = sqs
        self.terminate_queue_url = terminate_queue_url

    def __getattr__(self, name):
        return getattr(self._sqs, name)

    def _deny(self, url: str, operation: str):
        if url == self.terminate_queue_url:
            name = url.rsplit("/", 1)[-1]
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": (
                "User: arn:aws:sts::123456789012:assumed-role/classifycloud-worker/i-0123456789abcdef0 is not "
                f"authorized to perform: sqs:sendmessage on resource: arn:aws:sqs:us-east-1:123456789012:{name} "
                "with an explicit deny in a resource-based policy")}}, operation)

    def send_message(self, **kw):
        self._deny(kw["QueueUrl"], "SendMessage")
        return self._sqs.send_message(**kw)

    def send_message_batch(self, **kw):
        self._deny(kw["QueueUrl"], "SendMessageBatch")
        return self._sqs.send_message_batch(**kw)


class RecordsQueueAttributes:
    """moto's SQS client, recording the attributes queues are created or set with (moto does not return them all)."""

    def __init__(self, sqs):
        self._sqs = sqs
        self.calls: list[tuple[str, dict]] = []
        self.sets = 0

    def __getattr__(self, name):
        return getattr(self._sqs, name)

    def create_queue(self, QueueName, Attributes=None):  # noqa: N803
        out = self._sqs.create_queue(QueueName=QueueName, Attributes=Attributes or {})
        self.calls.append((out["QueueUrl"], dict(Attributes or {})))
        return out

    def set_queue_attributes(self, QueueUrl, Attributes):  # noqa: N803
        self.calls.append((QueueUrl, dict(Attributes)))
        self.sets += 1
        return self._sqs.set_queue_attributes(QueueUrl=QueueUrl, Attributes=Attributes)


def in_service(asg, name) -> list[str]:
    return [i["InstanceId"] for i in group(asg, name)["Instances"] if i["LifecycleState"] == "InService"]


def asg_settings(settings):
    return settings.replace(fleet="asg", min_workers=1, max_workers=6)


def test_the_base_groups_idle_worker_at_its_minimum_leaves_the_terminate_to_the_warm_groups(settings, provisioned,
                                                                                            groups):
    asg, s = groups["asg"], asg_settings(settings)
    asg.set_desired_capacity(AutoScalingGroupName=groups["warm"], DesiredCapacity=1)
    (base_id,), (warm_id,) = in_service(asg, groups["main"]), in_service(asg, groups["warm"])
    aws = AutoScalingLikeAws(asg)
    sqs, url = client("sqs", s), provisioned["__terminate__"]
    sqs.send_message(QueueUrl=url, MessageBody=Terminate().to_json())    # the autoscaler: 2 workers -> 1
    at_floor = FleetAgent(s, base_id, lambda: 0, lambda reason: None, autoscaling=aws, imds=None)
    assert at_floor.may_leave() is False
    assert TerminateWatch(s, Transport(s, sqs=sqs), url, may_leave=at_floor.may_leave).check() is False
    above = FleetAgent(s, warm_id, lambda: 0, lambda reason: None, autoscaling=aws, imds=None)
    watch = TerminateWatch(s, Transport(s, sqs=sqs), url, may_leave=above.may_leave)
    assert watch.check() is True                    # the same message, visible again for the warm worker
    watch.confirm()
    above.close("terminate message")
    assert above.removed and aws.refused == 0
    assert group(asg, groups["warm"])["DesiredCapacity"] == 0 and in_service(asg, groups["main"]) == [base_id]


def test_a_worker_refused_its_decrement_at_the_minimum_leaves_its_instance_for_the_group_to_replace(settings,
                                                                                                    groups):
    # Two workers of one group at min + 1 may both take a terminate; the second one's decrement is refused.
    asg, s = groups["asg"], asg_settings(settings)
    (leaving,) = in_service(asg, groups["main"])
    aws = AutoScalingLikeAws(asg)
    agent = FleetAgent(s, leaving, lambda: 0, lambda reason: None, autoscaling=aws, imds=None)
    agent.close("terminate message")
    assert aws.refused >= 1 and agent.removed            # not left InService, billed, without a worker
    assert leaving not in in_service(asg, groups["main"])
    assert group(asg, groups["main"])["DesiredCapacity"] == 1       # the group launches its replacement


def test_health_replacement_at_the_minimum_terminates_the_hung_instance_and_its_group_replaces_it(settings, groups):
    asg, s = groups["asg"], asg_settings(settings)
    (hung,) = in_service(asg, groups["main"])
    aws = AutoScalingLikeAws(asg)
    fleet = AsgFleet(s, autoscaling=aws)
    fleet.terminate([hung])
    assert aws.refused == 0 and hung not in in_service(asg, groups["main"])
    assert group(asg, groups["main"])["DesiredCapacity"] == 1
    count = fleet.count()
    assert count.running + count.pending == 1             # the replacement: capacity the next tick must not re-buy


def test_a_terminate_given_back_under_the_queue_policy_is_visible_again_with_its_issue_time(settings, provisioned):
    raw, url = client("sqs", settings), provisioned["__terminate__"]
    issued = now_ms() - 1000
    raw.send_message(QueueUrl=url, MessageBody=Terminate(issued_at=issued).to_json())   # sent by the autoscaler
    watch = TerminateWatch(settings, Transport(settings, sqs=SqsLikeAws(raw, url)), url)   # a worker may not send here
    assert watch.check() is True
    watch.give_back()                                               # work arrived meanwhile
    msgs = raw.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    assert [Terminate.from_json(m["Body"]).issued_at for m in msgs] == [issued] and watch.passed_on == 1


def web_only_policy(queue_arn: str, web_role_arn: str) -> str:
    """The request queue policy of queues.tf (OnlyTheWebSendsRequests), as the provider writes it."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "OnlyTheWebSendsRequests", "Effect": "Deny", "Action": "sqs:SendMessage", "Resource": queue_arn,
        "Principal": {"AWS": "*"}, "Condition": {"ArnNotEquals": {"aws:PrincipalArn": web_role_arn}}}]})


def test_a_request_queue_created_at_run_time_gets_the_queue_policy_of_terraforms_request_queues(settings,
                                                                                                provisioned):
    sqs = client("sqs", settings)
    web_role = f"arn:aws:iam::123456789012:role/{settings.prefix}-web"
    for service, url in provisioned.items():     # the packaged services' queues, as Terraform leaves them
        if service != "__terminate__":
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": web_only_policy(arn, web_role)})
    recorded = RecordsQueueAttributes(sqs)
    url = ensure_request_queue(Transport(settings, sqs=recorded), settings, "published")   # published to S3 later
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    policy = json.loads(attrs.get("Policy", "{}"))
    assert policy.get("Statement"), "the run-time queue has no queue policy: anyone may send requests"
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "OnlyTheWebSendsRequests" and statement["Effect"] == "Deny"
    assert statement["Resource"] == attrs["QueueArn"]
    assert statement["Condition"] == {"ArnNotEquals": {"aws:PrincipalArn": web_role}}
    assert attrs["SqsManagedSseEnabled"] == "true"
    dlq = sqs.get_queue_url(QueueName=f"{settings.prefix}-requests-published-dlq")["QueueUrl"]
    dlq_attrs = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["All"])["Attributes"]
    assert dlq_attrs["SqsManagedSseEnabled"] == "true"
    # moto never returns RedriveAllowPolicy (tests/moto_terraform.py): the call itself is what can be checked
    allowed = [json.loads(a["RedriveAllowPolicy"]) for u, a in recorded.calls if u == dlq and "RedriveAllowPolicy" in a]
    assert allowed == [{"redrivePermission": "byQueue", "sourceQueueArns": [attrs["QueueArn"]]}]
    assert recorded.sets == 0   # given at creation: the autoscaler's role has CreateQueue, not SetQueueAttributes


def test_a_request_queue_created_where_terraforms_queues_have_no_policy_gets_none(settings, provisioned):
    sqs = client("sqs", settings)                   # the local stack: provisioned without Terraform
    url = ensure_request_queue(Transport(settings, sqs=sqs), settings, "published")
    assert "Policy" not in sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
