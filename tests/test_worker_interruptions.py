"""A real worker (real model, moto queues) on the fleet: spot notices from a loopback IMDS, self-removal from its group."""
from __future__ import annotations

import http.server
import json
import threading
import time
from contextlib import contextmanager

import pytest
from test_fetch import ImageServer
from test_worker_loop import Stack, in_thread, model  # noqa: F401  (the module-scoped model fixture)

from classifycloud.provision import ensure_all
from shared.aws import client
from shared.messages import Terminate
from worker.imds import Imds
from worker.spot import InterruptionWatch

TOKEN = "t0ken"


class _Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_PUT(self):
        if self.path != "/latest/api/token" or "X-aws-ec2-metadata-token-ttl-seconds" not in self.headers:
            self.send_response(400)
            self.end_headers()
            return
        self._send(200, TOKEN)

    def do_GET(self):
        if self.headers.get("X-aws-ec2-metadata-token") != TOKEN:   # IMDSv2 only, like the launch template
            self._send(401, "")
            return
        owner = self.server.owner
        owner.gets.append(self.path)
        body = owner.paths.get(self.path.removeprefix("/latest/meta-data/"))
        self._send(404, "Not Found") if body is None else self._send(200, body)

    def _send(self, code: int, body: str):
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class MetadataServer:
    """A real HTTP server on 127.0.0.1 answering the IMDSv2 token and the metadata paths set in .paths."""

    def __init__(self):
        self.paths: dict[str, str] = {}
        self.gets: list[str] = []
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def imds(monkeypatch):
    """The loopback metadata server, with the SDK variable pointing at it."""
    srv = MetadataServer()
    srv.thread.start()
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", srv.base)
    monkeypatch.delenv("AWS_EC2_METADATA_DISABLED", raising=False)
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@contextmanager
def asg_group(settings, lt: str, group: str, min_size: int, max_size: int, desired: int):
    """A launch template and an Auto Scaling group of it on moto; yields (ec2, autoscaling), deletes both."""
    ec2, asg = client("ec2", settings), client("autoscaling", settings)
    ec2.create_launch_template(LaunchTemplateName=lt, LaunchTemplateData={
        "ImageId": ec2.describe_images()["Images"][0]["ImageId"], "InstanceType": "g4dn.xlarge"})
    asg.create_auto_scaling_group(AutoScalingGroupName=group, MinSize=min_size, MaxSize=max_size,
                                  DesiredCapacity=desired,
                                  VPCZoneIdentifier=ec2.describe_subnets()["Subnets"][0]["SubnetId"],
                                  LaunchTemplate={"LaunchTemplateName": lt, "Version": "$Default"})
    try:
        yield ec2, asg
    finally:
        asg.delete_auto_scaling_group(AutoScalingGroupName=group, ForceDelete=True)
        ec2.delete_launch_template(LaunchTemplateName=lt)


def group_instances(asg, group: str) -> list[str]:
    """The instance ids of a group."""
    return [i["InstanceId"] for i in asg.describe_auto_scaling_groups(
        AutoScalingGroupNames=[group])["AutoScalingGroups"][0]["Instances"]]


@pytest.fixture
def stack(settings, catalogue):
    s = settings.replace(wait_time_s=1, fetch_allow_loopback=True, visibility_timeout_s=60, instance_id="w-spot",
                         heartbeat_interval_s=0.5, terminate_check_interval_s=0.3, max_batch_wait_ms=20,
                         max_batch_size=2, buffer_size=16, spot_poll_s=0.2)
    yield Stack(s, ensure_all(s, catalogue), catalogue)


def test_interruption_watch_reads_spot_action_and_rebalance_through_imdsv2(imds):
    watch = InterruptionWatch(Imds(imds.base), lambda reason: None)
    assert watch.check() is None
    imds.paths["events/recommendations/rebalance"] = json.dumps({"noticeTime": "2026-11-25T15:00:00Z"})
    assert watch.check() == "rebalance recommendation at 2026-11-25T15:00:00Z"
    imds.paths["spot/instance-action"] = json.dumps({"action": "terminate", "time": "2026-11-25T15:02:00Z"})
    assert watch.check() == "spot interruption notice: terminate at 2026-11-25T15:02:00Z"
    assert all(p.startswith("/latest/meta-data/") for p in imds.gets)


def test_a_spot_notice_makes_the_worker_release_what_it_holds_and_exit_with_nothing_lost(stack, model, imds):
    n = 48
    with ImageServer() as images:
        ids = [f"spot-{i}" for i in range(n)]
        for rid in ids:
            stack.request({"url": images.base + ("/chelsea.jpg" if len(rid) % 2 else "/coffee.jpg")}, rid)
        w = stack.worker(model)
        with in_thread(w) as t:
            answered = stack.replies(1, timeout=60)          # it works, and holds more than it answered
            assert answered
            noticed = time.monotonic()
            imds.paths["spot/instance-action"] = json.dumps({"action": "terminate", "time": "2026-11-25T15:02:00Z"})
            t.join(60)
            exited_in = time.monotonic() - noticed
            assert not t.is_alive()
        assert w.stop_reason.startswith("spot interruption notice")
        assert exited_in < 30                                  # well inside the two-minute warning
        answered.update(stack.replies(n, timeout=3))
        visible, in_flight = stack.counts()
        assert in_flight == 0                                  # nothing held invisibly: released, not abandoned
        assert visible > 0 and len(answered) < n               # it stopped before the queue was empty
        left: set[str] = set()
        while len(left) < visible:                             # what it released is there to take, at once
            resp = stack.sqs.receive_message(QueueUrl=stack.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            msgs = resp.get("Messages", [])
            if not msgs:
                break
            left |= {json.loads(m["Body"])["id"] for m in msgs}
        assert set(answered) | left == set(ids)                # nothing lost
        assert all(answered[r].status == "ok" for r in answered)


def test_a_worker_that_takes_a_terminate_removes_its_instance_and_lowers_desired_capacity(stack, model):
    s = stack.settings
    group = f"{s.prefix}-workers"
    with asg_group(s, f"{s.prefix}-worker", group, 0, 3, 2) as (ec2, asg):
        me, other = group_instances(asg, group)
        w = stack.worker(model, fleet="asg", instance_id=me, spot_poll_s=0)
        with in_thread(w) as t:
            assert w.ready.wait(60) and w.fleet_agent.group == group
            stack.sqs.send_message(QueueUrl=stack.terminate_queue, MessageBody=Terminate().to_json())
            t.join(30)
            assert not t.is_alive() and w.stop_reason == "terminate message"
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        assert g["DesiredCapacity"] == 1 and [i["InstanceId"] for i in g["Instances"]] == [other]   # not replaced
        state = ec2.describe_instances(InstanceIds=[me])["Reservations"][0]["Instances"][0]["State"]["Name"]
        assert state in ("shutting-down", "terminated")


def test_a_worker_warming_for_the_warm_pool_waits_until_its_instance_is_in_service(settings, imds):
    from worker.asg import FleetAgent
    group = f"{settings.prefix}-workers-warm"
    with asg_group(settings, f"{settings.prefix}-warm-lt", group, 1, 1, 1) as (_, asg):
        iid = group_instances(asg, group)[0]
        imds.paths["autoscaling/target-lifecycle-state"] = "Warmed:Stopped"
        agent = FleetAgent(settings.replace(fleet="asg", spot_poll_s=0), iid, lambda: 0, lambda r: None,
                           imds=Imds(imds.base))
        assert agent.group == group
        flip = threading.Timer(0.6, lambda: imds.paths.update({"autoscaling/target-lifecycle-state": "InService"}))
        flip.start()
        started = time.monotonic()
        assert agent.wait_in_service(poll_s=0.1) == "InService"
        assert time.monotonic() - started >= 0.5
        assert imds.gets.count("/latest/meta-data/autoscaling/target-lifecycle-state") >= 3


def test_a_spot_notice_takes_the_instance_out_of_its_group_which_replaces_it_at_once(settings, imds):
    from worker.asg import FleetAgent
    group = f"{settings.prefix}-workers"
    with asg_group(settings, f"{settings.prefix}-spot-lt", group, 1, 2, 1) as (_, asg):
        (iid,) = group_instances(asg, group)
        notices: list[str] = []
        agent = FleetAgent.start(settings.replace(fleet="asg", spot_poll_s=0.1, protection_poll_s=0.1), iid,
                                 lambda: 0, notices.append, imds=Imds(imds.base))
        imds.paths["spot/instance-action"] = json.dumps({"action": "terminate", "time": "2026-11-25T15:02:00Z"})
        end = time.monotonic() + 10
        while not notices and time.monotonic() < end:
            time.sleep(0.05)
        assert notices == ["spot interruption notice: terminate at 2026-11-25T15:02:00Z"]
        agent.close(notices[0])                      # what the worker's teardown does after its last batch
        g = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][0]
        assert agent.removed and g["DesiredCapacity"] == 1            # capacity kept ...
        assert [i["InstanceId"] for i in g["Instances"]] not in ([iid], [])   # ... by a new instance
