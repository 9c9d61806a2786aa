"""Hung and crash-looping workers are replaced (local processes and EC2 in moto); a leaving one is not."""
from __future__ import annotations

import json
import sys
import time

import pytest

from autoscaler.fleet.local import LocalFleet
from autoscaler.health import WorkerHealth
from autoscaler.loop import Autoscaler
from autoscaler.queues import Heartbeats
from shared import naming
from shared.aws import client
from shared.messages import now_ms
from shared.transport import Transport

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

HUNG = [sys.executable, "-c", "import time; time.sleep(120)"]        # runs, never beats: a hung worker
CRASHING = [sys.executable, "-c", "import sys; sys.exit(3)"]          # exits non-zero at once, every time


def beats(*records: dict) -> Heartbeats:
    return Heartbeats(idle=0, busy=0, stopping=0, ids=tuple(r["instance_id"] for r in records), records=records)


def test_a_running_worker_without_a_fresh_heartbeat_past_the_grace_is_stale(settings):
    t = [1000.0]
    health = WorkerHealth(settings.replace(worker_start_grace_s=60), clock=lambda: t[0])
    assert health.check(["a", "b"], beats({"instance_id": "a", "state": "ready", "started_at": 1})).replace == ()
    t[0] += 61
    report = health.check(["a", "b"], beats({"instance_id": "a", "state": "ready", "started_at": 1}))
    assert report.stale == ("b",)                         # a beats; b never did since it was first seen


def test_a_worker_seen_leaving_on_a_terminate_is_not_replaced_when_its_beat_goes(settings):
    t = [1000.0]
    health = WorkerHealth(settings.replace(worker_start_grace_s=60), clock=lambda: t[0])
    health.check(["a"], beats({"instance_id": "a", "state": "ready", "started_at": 1}))
    t[0] += 100
    health.check(["a"], beats({"instance_id": "a", "state": "stopping", "started_at": 1}))
    t[0] += 10
    assert health.check(["a"], beats()).replace == ()     # exiting after a terminate; the instance shuts down


def test_a_worker_restarting_again_and_again_is_a_crash_loop(settings):
    t = [1000.0]
    health = WorkerHealth(settings.replace(crash_loop_starts=3, crash_loop_window_s=600), clock=lambda: t[0])
    for started in (1, 2):
        assert health.check(["i-1"], beats({"instance_id": "i-1", "state": "ready", "started_at": started})
                            ).replace == ()
        t[0] += 30
    report = health.check(["i-1"], beats({"instance_id": "i-1", "state": "ready", "started_at": 3}))
    assert report.crash_looping == ("i-1",) and health.crash_loops == ["i-1"]


@pytest.fixture
def loop_for(settings, provisioned, tmp_path):
    made = []

    def make(fleet, **changes):
        s = settings.replace(**changes)
        loop = Autoscaler(s, fleet, transport=Transport(s))
        made.append(fleet)
        return loop
    yield make
    for f in made:
        stop_all = getattr(f, "stop_all", None)
        if stop_all:
            stop_all(timeout=10)


@pytest.mark.slow
def test_a_hung_local_worker_is_killed_and_replaced(settings, loop_for, tmp_path):
    s = settings.replace(min_workers=1, max_workers=2, worker_start_grace_s=1.0)
    fleet = LocalFleet(s, log_dir=str(tmp_path), command=HUNG)
    loop = loop_for(fleet, min_workers=1, max_workers=2, worker_start_grace_s=1.0)
    (first,) = fleet.launch(1)
    assert loop.tick() is not None        # first seen running
    time.sleep(1.5)
    result = loop.tick()
    assert loop.health.replaced == [first]
    assert result.fleet.running == 0                       # not counted as capacity ...
    assert result.decision.action == "launch"              # ... so the same tick launches its replacement
    (second,) = fleet.count().ids
    assert second != first
    deadline = time.monotonic() + 10
    while first not in fleet.exited and time.monotonic() < deadline:
        fleet.maintain()
        time.sleep(0.1)
    assert fleet.exited[first] == -9


@pytest.mark.slow
def test_a_crash_looping_local_worker_is_reported_and_never_counted(settings, loop_for, tmp_path, caplog):
    fleet = LocalFleet(settings, log_dir=str(tmp_path), command=CRASHING)
    loop = loop_for(fleet, min_workers=1, max_workers=2, crash_loop_starts=3)
    running = []
    for _ in range(8):
        r = loop.tick()
        running.append(r.fleet.running)
        time.sleep(0.4)
        if loop.health.crash_loops:
            break
    assert loop.health.crash_loops, running
    assert "crash loop" in caplog.text
    assert len([c for c in fleet.exited.values() if c == 3]) >= 3


@pytest.fixture
def ec2_fleet(settings):
    from autoscaler.fleet.ec2 import Ec2Fleet
    ec2 = client("ec2", settings)
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    name = f"{settings.prefix}-lt"
    ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={"ImageId": image,
                                                                             "InstanceType": "t3.micro"})
    s = settings.replace(fleet="ec2", launch_template=name, min_workers=1, max_workers=2)
    fleet = Ec2Fleet(s, ec2=ec2)
    yield s, fleet, ec2
    ids = list(fleet.count().ids)
    if ids:
        ec2.terminate_instances(InstanceIds=ids)


def _state(ec2, iid: str) -> str:
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]["State"]["Name"]


def test_an_ec2_instance_running_without_a_heartbeat_is_terminated_and_replaced(ec2_fleet, provisioned):
    s, fleet, ec2 = ec2_fleet
    loop = Autoscaler(s.replace(worker_start_grace_s=0.5), fleet, transport=Transport(s))
    (first,) = fleet.launch(1)
    loop.tick()
    time.sleep(1.0)
    loop.tick()
    assert loop.health.replaced == [first]
    assert _state(ec2, first) in ("shutting-down", "terminated")
    (second,) = fleet.count().ids
    assert second != first


def test_an_ec2_instance_whose_worker_keeps_restarting_is_replaced(ec2_fleet, provisioned):
    s, fleet, ec2 = ec2_fleet
    s3 = client("s3", s)
    loop = Autoscaler(s.replace(crash_loop_starts=3, worker_start_grace_s=600), fleet, transport=Transport(s))
    (iid,) = fleet.launch(1)
    for start in range(3):     # systemd restarts the crashing worker: each start writes a fresh heartbeat
        s3.put_object(Bucket=s.bucket_name, Key=naming.heartbeat_key(iid), Body=json.dumps(
            {"instance_id": iid, "state": "ready", "busy": 0, "started_at": now_ms() + start, "at": now_ms()}))
        loop.tick()
    assert loop.health.crash_loops == [iid]
    assert _state(ec2, iid) in ("shutting-down", "terminated")
    assert iid not in fleet.count().ids

