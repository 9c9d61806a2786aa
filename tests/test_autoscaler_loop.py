"""The autoscaler loop against moto: EC2 launch template + pool tags, terminate messages, surviving AWS errors."""
from __future__ import annotations

import json
import threading
import time
import uuid

import boto3
import pytest
from botocore.config import Config

from autoscaler.fleet.ec2 import POOL_TAG_KEY, Ec2Fleet, find_broken
from autoscaler.loop import Autoscaler
from autoscaler.policy import HOLD, LAUNCH, TERMINATE
from autoscaler.queues import HeartbeatReader, ServiceTimes
from shared import naming
from shared.aws import client
from shared.messages import Request, Terminate, now_ms
from shared.transport import Transport
from tests.conftest import free_port
from worker.terminate import TerminateWatch

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def launch_template(settings):
    """A launch template in moto (image + instance type), named after the test's prefix."""
    ec2 = client("ec2", settings)
    image = ec2.describe_images()["Images"][0]["ImageId"]
    name = f"{settings.prefix}-worker"
    lt = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": image, "InstanceType": "g4dn.xlarge", "InstanceInitiatedShutdownBehavior": "terminate"})
    yield {"name": name, "id": lt["LaunchTemplate"]["LaunchTemplateId"], "image": image}
    ids = [i["InstanceId"] for r in ec2.describe_instances(Filters=[
        {"Name": f"tag:{POOL_TAG_KEY}", "Values": [settings.pool_tag_value]}])["Reservations"] for i in r["Instances"]]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
    ec2.delete_launch_template(LaunchTemplateName=name)


def enqueue(settings, urls, n, service="imagenet"):
    sqs = client("sqs", settings)
    for start in range(0, n, 10):
        sqs.send_message_batch(QueueUrl=urls[service], Entries=[
            {"Id": str(i), "MessageBody": Request(id=str(uuid.uuid4()), service=service,
                                                  image={"url": "http://example.com/x.jpg"}, reply_to=None).to_json()}
            for i in range(start, min(n, start + 10))])


def ec2_loop(settings, template_ref, **changes):
    s = settings.replace(fleet="ec2", launch_template=template_ref, policy="backlog", min_workers=1,
                         max_workers=3, latency_budget_s=0.1, scale_in_window_s=0.0, scale_in_step_s=0.0,
                         **changes)
    return Autoscaler(s, Ec2Fleet(s), transport=Transport(s))


@pytest.mark.parametrize("by", ["name", "id"])
def test_loop_launches_ec2_instances_from_the_launch_template_with_the_pool_tags(settings, provisioned,
                                                                               launch_template, by):
    loop = ec2_loop(settings, launch_template[by])
    enqueue(settings, provisioned, 30)                    # 30 x 0.05 s / 0.1 s budget -> 15 -> max 3
    first = loop.tick()
    assert (first.decision.action, first.decision.count, first.acted) == (LAUNCH, 3, 3)
    assert first.queues and {q.service for q in first.queues} >= {"imagenet"}
    assert next(q for q in first.queues if q.service == "imagenet").visible == 30

    insts = Ec2Fleet(loop.settings).instances()
    assert len(insts) == 3
    for inst in insts:
        tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
        assert tags[POOL_TAG_KEY] == settings.pool_tag_value
        assert inst["ImageId"] == launch_template["image"] and inst["InstanceType"] == "g4dn.xlarge"
    count = loop.fleet.count()
    assert count.running + count.pending == 3

    second = loop.tick()                                 # the fleet is counted: no second launch
    assert second.decision.action == HOLD and second.fleet.running + second.fleet.pending == 3


def test_ec2_fleet_counts_only_its_own_pool(settings, launch_template):
    fleet = Ec2Fleet(settings.replace(launch_template=launch_template["name"]))
    other = Ec2Fleet(settings.replace(launch_template=launch_template["name"], pool_tag=settings.prefix + "-other"))
    fleet.launch(2)
    other.launch(1)
    try:
        assert fleet.count().running + fleet.count().pending == 2
        assert other.count().running + other.count().pending == 1
    finally:
        other.terminate(list(other.count().ids))


def test_find_broken_picks_instances_pending_or_impaired_too_long():
    now = 10_000.0
    insts = [{"InstanceId": "i-new", "State": {"Name": "pending"}, "LaunchTime": now - 30},
             {"InstanceId": "i-stuck", "State": {"Name": "pending"}, "LaunchTime": now - 700},
             {"InstanceId": "i-sick", "State": {"Name": "running"}, "LaunchTime": now - 900},
             {"InstanceId": "i-flaky", "State": {"Name": "running"}, "LaunchTime": now - 900}]
    broken, since = find_broken(insts, {"i-sick", "i-flaky"}, {"i-sick": now - 400, "i-gone": now - 50},
                                now, pending_timeout_s=600, impaired_timeout_s=300)
    assert broken == ["i-stuck", "i-sick"]
    assert since == {"i-flaky": now}                     # first seen impaired now; i-gone forgotten


def test_ec2_fleet_maintain_keeps_healthy_instances_and_replace_swaps_them(settings, launch_template):
    fleet = Ec2Fleet(settings.replace(launch_template=launch_template["name"]))
    ids = fleet.launch(2)
    assert fleet.maintain() == []                        # moto reports status checks "ok"
    new = fleet.replace(ids[:1])
    count = fleet.count()
    assert len(new) == 1 and set(count.ids) == {ids[1], new[0]}
    with pytest.raises(ValueError, match="LAUNCH_TEMPLATE"):
        Ec2Fleet(settings.replace(launch_template=""))


def test_loop_sends_timestamped_terminate_messages_a_worker_honours(settings, provisioned, launch_template):
    # 30 s, not the 5 s default: on a loaded box the tick, the receive and the worker's check can take 5 s
    loop = ec2_loop(settings, launch_template["name"], terminate_expiry_s=30.0)
    s3 = client("s3", settings)
    for iid in loop.fleet.launch(3):                     # their workers report idle
        s3.put_object(Bucket=settings.bucket_name, Key=naming.heartbeat_key(iid), Body=json.dumps(
            {"instance_id": iid, "services": ["imagenet"], "state": "ready", "busy": 0, "at": now_ms()}).encode())
    before = now_ms()
    result = loop.tick()                                 # empty queues, 3 idle: scale in by at most half
    after = now_ms()
    assert (result.decision.action, result.decision.count, result.acted) == (TERMINATE, 1, 1)

    sqs = client("sqs", settings)
    msgs = sqs.receive_message(QueueUrl=provisioned["__terminate__"], MaxNumberOfMessages=10,
                               VisibilityTimeout=0).get("Messages", [])
    assert len(msgs) == 1
    body = json.loads(msgs[0]["Body"])
    assert body["v"] == 1 and body["kind"] == "terminate" and before <= body["issued_at"] <= after
    assert Terminate.from_json(msgs[0]["Body"]).is_fresh(loop.settings.terminate_expiry_s)

    watch = TerminateWatch(loop.settings, loop.transport, provisioned["__terminate__"])
    assert watch.check() is True                        # the worker's own check takes the fresh one


def test_terminates_not_yet_taken_count_as_stopping_so_ticks_never_ask_too_many(settings, provisioned,
                                                                                 launch_template):
    loop = ec2_loop(settings, launch_template["name"])
    s3 = client("s3", settings)
    for iid in loop.fleet.launch(3):                     # three idle workers that have not checked yet
        s3.put_object(Bucket=settings.bucket_name, Key=naming.heartbeat_key(iid), Body=json.dumps(
            {"instance_id": iid, "services": ["imagenet"], "state": "ready", "busy": 0, "at": now_ms()}).encode())
    sent = sum(loop.tick().acted for _ in range(6))
    assert sent == 3 - loop.settings.min_workers, "one terminate per worker above min, however many ticks"
    attrs = client("sqs", settings).get_queue_attributes(QueueUrl=provisioned["__terminate__"],
                                                         AttributeNames=["ApproximateNumberOfMessages"])
    assert int(attrs["Attributes"]["ApproximateNumberOfMessages"]) == sent


def test_no_terminate_is_sent_while_no_worker_reports_idle(settings, provisioned, launch_template):
    loop = ec2_loop(settings, launch_template["name"])
    loop.fleet.launch(3)                                 # no heartbeats yet: nobody is known idle
    result = loop.tick()
    assert (result.decision.action, result.acted) == (HOLD, 0)
    assert client("sqs", settings).receive_message(QueueUrl=provisioned["__terminate__"]).get("Messages", []) == []


def test_a_stale_terminate_message_is_ignored_by_the_worker(settings, provisioned):
    sqs = client("sqs", settings)
    sqs.send_message(QueueUrl=provisioned["__terminate__"],
                     MessageBody=Terminate(issued_at=now_ms() - int(settings.terminate_expiry_s * 1000) - 5000).to_json())
    watch = TerminateWatch(settings, Transport(settings), provisioned["__terminate__"])
    assert watch.check() is False and watch.stale_dropped == 1
    assert sqs.receive_message(QueueUrl=provisioned["__terminate__"]).get("Messages", []) == []


def test_an_aws_error_skips_the_tick_and_the_loop_goes_on(settings, provisioned, launch_template):
    loop = ec2_loop(settings, launch_template["name"], tick_s=0.05)
    dead = boto3.session.Session().client("sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
                                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    good = loop.transport
    loop.transport = loop.queues.transport = Transport(loop.settings, sqs=dead)
    assert loop.tick() is None and loop.errors == 1

    stop = threading.Event()
    thread = threading.Thread(target=loop.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while loop.errors < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.errors >= 3 and thread.is_alive()
        loop.transport = loop.queues.transport = good   # the endpoint comes back
        ticks = loop.ticks
        while (loop.last is None or loop.ticks <= ticks + 1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert loop.last is not None and loop.last.decision.action == LAUNCH   # min 1 worker launched
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_heartbeats_tell_idle_busy_and_stopping_workers(settings, provisioned):
    s3 = client("s3", settings)
    now = now_ms()
    beats = {"a": {"state": "ready", "busy": 0, "at": now}, "b": {"state": "ready", "busy": 3, "at": now},
             "c": {"state": "stopping", "busy": 0, "at": now},
             "d": {"state": "ready", "busy": 0, "at": now - int(settings.heartbeat_max_age_s * 1000) - 1000}}
    for iid, hb in beats.items():
        s3.put_object(Bucket=settings.bucket_name, Key=naming.heartbeat_key(iid),
                      Body=json.dumps({"instance_id": iid, "services": ["imagenet"], **hb}).encode())
    s3.put_object(Bucket=settings.bucket_name, Key=naming.heartbeat_key("junk"), Body=b"not json")
    hb = HeartbeatReader(settings, s3).read()
    assert (hb.idle, hb.busy, hb.stopping) == (1, 1, 1) and set(hb.ids) == {"a", "b", "c"}


def test_service_times_are_refined_from_worker_metrics_and_survive_failures(settings, catalogue):
    s = settings.replace(metrics_namespace="T" + settings.prefix, service_time_alpha=0.5, service_time_refresh_s=0)
    cw = client("cloudwatch", s)
    for _ in range(3):   # the worker's measured time per request (before issue 19: InferenceTime / BatchSize)
        cw.put_metric_data(Namespace=s.metrics_namespace, MetricData=[
            {"MetricName": "WorkTime", "Dimensions": [{"Name": "Service", "Value": "imagenet"}],
             "Value": 100.0, "Unit": "Milliseconds"}])
    times = ServiceTimes(s, catalogue, cw)
    start = times.estimates["imagenet"]
    assert start == catalogue["imagenet"].seconds_per_request
    assert times.current()["imagenet"] == pytest.approx(0.5 * 0.1 + 0.5 * start)

    dead = boto3.session.Session().client("cloudwatch", region_name="us-east-1",
                                          endpoint_url=f"http://127.0.0.1:{free_port()}",
                                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    broken = ServiceTimes(s, catalogue, dead)
    assert broken.current()["imagenet"] == start


def test_the_console_shows_decisions_that_change_something_and_a_status_line_when_it_changes(
        settings, provisioned, caplog):
    import logging

    from autoscaler.fleet.local import LocalFleet
    s = settings.replace(min_workers=0, max_workers=2, janitor_interval_s=0)
    loop = Autoscaler(s, LocalFleet(s, command=["true"]), transport=Transport(s))
    with caplog.at_level(logging.INFO, logger="autoscaler.loop"):
        for _ in range(3):
            assert loop.tick() is not None and loop.last.decision.action == HOLD
    lines = [r.getMessage() for r in caplog.records if r.name == "autoscaler.loop"]
    assert lines == ["status: 0 worker(s), 0 queued, 0 in flight"]   # no "hold" line every tick
    caplog.clear()
    enqueue(s, provisioned, 3)
    with caplog.at_level(logging.INFO, logger="autoscaler.loop"):
        assert loop.tick() is not None
    lines = [r.getMessage() for r in caplog.records if r.name == "autoscaler.loop"]
    assert any(line.startswith("autoscaler[backlog]: launch") for line in lines)
    assert "status: 0 worker(s), 3 queued, 0 in flight" in lines
    loop.fleet.stop_all(timeout=10)
