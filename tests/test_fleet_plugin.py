"""A fleet is one plug-in: a file with a Fleet subclass is found by its name and driven by the real loop."""
from __future__ import annotations

import uuid

import pytest
from toy_fleet import ToyFleet

from autoscaler.fleet import FLEETS, Fleet, make_fleet
from autoscaler.loop import Autoscaler
from autoscaler.policy import LAUNCH
from shared.aws import client
from shared.messages import Request
from shared.transport import Transport


def test_the_packaged_fleets_are_found_by_name_and_an_unknown_one_is_refused_with_the_choices(settings):
    with pytest.raises(ValueError, match=r"unknown fleet 'nope'; choose one of .*asg, ec2, local"):
        make_fleet(settings.replace(fleet="nope"))
    assert type(make_fleet(settings.replace(fleet="local"))).__name__ == "LocalFleet"
    assert FLEETS["local"].name == "local" and issubclass(FLEETS["local"], Fleet)


def test_a_fleet_added_as_one_file_gets_every_default_of_the_interface(settings):
    fleet = make_fleet(settings.replace(fleet="toy"))
    assert isinstance(fleet, ToyFleet) and FLEETS["toy"] is ToyFleet
    assert fleet.maintain() == [] and dict(fleet.exited) == {} and not fleet.killed
    assert fleet.replaces_terminated is False
    [wid] = fleet.launch(1)
    fleet.kill([wid])                  # the default kill is terminate
    assert fleet.stopped == [wid] and fleet.count().running == 0
    fleet.stop_all()                   # the default: nothing of a cloud fleet's is stopped at shutdown


def test_the_autoscaler_loop_scales_a_toy_fleet_out_for_a_backlog(settings, provisioned):
    s = settings.replace(fleet="toy", policy="backlog", min_workers=0, max_workers=3, janitor_interval_s=0)
    fleet = make_fleet(s)
    loop = Autoscaler(s, fleet, transport=Transport(s))
    sqs = client("sqs", s)
    for _ in range(5):
        sqs.send_message(QueueUrl=provisioned["imagenet"], MessageBody=Request(
            id=str(uuid.uuid4()), service="imagenet", image={"url": "http://example.com/x.jpg"},
            reply_to=None).to_json())
    result = loop.tick()
    assert result is not None and result.decision.action == LAUNCH and result.decision.count >= 1
    launched = list(fleet.booting)
    assert len(launched) == result.decision.count
    assert loop.tick() is not None and fleet.running[:len(launched)] == launched   # booted, counted by the loop
