"""The reply-queue janitor: orphan reply queues (owner silent past the grace period) go; live ones stay."""
from __future__ import annotations

import time

import pytest

from autoscaler.janitor import ReplyQueueJanitor
from shared import naming
from shared.aws import client
from shared.messages import now_ms
from shared.transport import Transport
from webserver.replies import ReplyListener

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


def _queue(sqs, settings, suffix: str, **tags) -> str:
    return sqs.create_queue(QueueName=naming.reply_queue_prefix(settings.prefix) + suffix, tags=tags)["QueueUrl"]


def _names(sqs, settings) -> set[str]:
    urls = sqs.list_queues(QueueNamePrefix=naming.reply_queue_prefix(settings.prefix)).get("QueueUrls", [])
    return {u.rsplit("-", 1)[-1] for u in urls}


@pytest.fixture
def sqs(settings, provisioned):
    return client("sqs", settings)


def test_janitor_deletes_silent_reply_queues_and_keeps_beating_and_foreign_ones(settings, sqs):
    s = settings.replace(reply_queue_grace_s=60)
    old, now = str(now_ms() - 120_000), str(now_ms())
    _queue(sqs, s, "h-1-dead", **{naming.REPLY_TAG_CREATED: old, naming.REPLY_TAG_BEAT: old})
    _queue(sqs, s, "h-2-alive", **{naming.REPLY_TAG_CREATED: old, naming.REPLY_TAG_BEAT: now})   # old but beating
    _queue(sqs, s, "h-3-young", **{naming.REPLY_TAG_CREATED: now})
    other = sqs.create_queue(QueueName=f"{s.prefix}-requests-zzz",
                             tags={naming.REPLY_TAG_BEAT: old})["QueueUrl"]   # not a reply queue: never touched
    janitor = ReplyQueueJanitor(s, Transport(s))
    deleted = janitor.sweep()
    assert [u.rsplit("-", 1)[-1] for u in deleted] == ["dead"]
    assert _names(sqs, s) == {"alive", "young"}
    assert sqs.get_queue_url(QueueName=f"{s.prefix}-requests-zzz")["QueueUrl"] == other


def test_untagged_reply_queue_is_judged_by_its_creation_time(settings, sqs):
    _queue(sqs, settings, "h-9-untagged")
    assert ReplyQueueJanitor(settings.replace(reply_queue_grace_s=3600), Transport(settings)).sweep() == []
    later = ReplyQueueJanitor(settings.replace(reply_queue_grace_s=1), Transport(settings),
                              clock=lambda: time.time() + 5)
    assert len(later.sweep()) == 1 and _names(sqs, settings) == set()


def test_a_live_web_listener_tags_and_beats_so_its_queue_survives_and_a_dead_ones_goes(settings, sqs):
    s = settings.replace(wait_time_s=1, reply_heartbeat_s=0.5, reply_queue_grace_s=3)
    live = ReplyListener(s, Transport(s))
    dead = ReplyListener(s, Transport(s))
    live.start()
    dead.start()
    try:
        tags = sqs.list_queue_tags(QueueUrl=live.queue_url)["Tags"]
        assert set(tags) >= {naming.REPLY_TAG_OWNER, naming.REPLY_TAG_CREATED, naming.REPLY_TAG_BEAT}
        dead._stop.set()        # the process "dies": its thread stops beating, its queue stays behind
        dead._thread.join(5)
        time.sleep(4.5)
        janitor = ReplyQueueJanitor(s, Transport(s))
        assert janitor.sweep() == [dead.queue_url]
        assert sqs.get_queue_url(QueueName=live.queue_name)["QueueUrl"] == live.queue_url
    finally:
        live.close()


def test_janitor_sweeps_at_most_every_interval_and_survives_errors(settings, sqs):
    t = [1000.0]
    janitor = ReplyQueueJanitor(settings.replace(janitor_interval_s=60, reply_queue_grace_s=1), Transport(settings),
                                clock=lambda: t[0])
    _queue(sqs, settings, "h-5-x", **{naming.REPLY_TAG_BEAT: "1000"})   # beat at epoch 1 s: long silent
    assert len(janitor.maybe_sweep()) == 1
    _queue(sqs, settings, "h-6-y", **{naming.REPLY_TAG_BEAT: "1000"})
    t[0] += 30
    assert janitor.maybe_sweep() == []          # not due yet
    t[0] += 31
    assert len(janitor.maybe_sweep()) == 1
    import boto3
    from botocore.config import Config

    from classifycloud.local import free_port
    janitor.transport = Transport(settings, sqs=boto3.session.Session().client(
        "sqs", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(retries={"max_attempts": 1}, connect_timeout=1)))
    t[0] += 61
    assert janitor.maybe_sweep() == []


def test_the_autoscaler_tick_runs_the_janitor(settings, sqs):
    from autoscaler.fleet.local import LocalFleet
    from autoscaler.loop import Autoscaler
    s = settings.replace(janitor_interval_s=1, reply_queue_grace_s=1, min_workers=0)
    _queue(sqs, s, "h-7-gone", **{naming.REPLY_TAG_BEAT: str(now_ms() - 10_000)})
    loop = Autoscaler(s, LocalFleet(s, command=["true"]), transport=Transport(s))
    assert loop.tick() is not None
    assert len(loop.janitor.deleted) == 1 and _names(sqs, s) == set()
