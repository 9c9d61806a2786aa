"""ResultSink.deliver's failure branches against moto: a request is deleted only once recorded and answered."""
from __future__ import annotations

import pytest

from shared import naming
from shared.aws import client
from shared.messages import Reply, now_ms
from shared.transport import Transport
from worker.consumer import Held
from worker.results import DeliveryOutcome, ResultSink

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


@pytest.fixture
def sink_env(settings, provisioned):
    """A sink on the provisioned bucket, the imagenet request queue, a reply queue and a FIFO 'reply' queue."""
    sqs, s3 = client("sqs", settings), client("s3", settings)
    reply_q = sqs.create_queue(QueueName=naming.reply_queue(settings.prefix))["QueueUrl"]
    # a FIFO queue refuses messages without a group id: a real SQS error that is not "queue gone"
    fifo_q = sqs.create_queue(QueueName=f"{settings.prefix}-bad-reply.fifo",
                              Attributes={"FifoQueue": "true"})["QueueUrl"]
    sinks = []

    def make(**changes):
        s = settings.replace(**changes)
        sink = ResultSink(s, Transport(s, sqs=sqs), s3)
        sinks.append(sink)
        return sink

    yield {"settings": settings, "sqs": sqs, "s3": s3, "queue": provisioned["imagenet"], "reply": reply_q,
           "fifo": fifo_q, "make": make}
    for sink in sinks:
        sink.close()


def _hold(env, rid: str) -> Held:
    """Send a request message and receive it, as a worker holds it."""
    sqs = env["sqs"]
    sqs.send_message(QueueUrl=env["queue"], MessageBody=f'{{"id": "{rid}"}}')
    for _ in range(10):
        msgs = sqs.receive_message(QueueUrl=env["queue"], MaxNumberOfMessages=1, VisibilityTimeout=60,
                                   AttributeNames=["ApproximateReceiveCount"]).get("Messages", [])
        if msgs:
            m = msgs[0]
            return Held("imagenet", env["queue"], m["MessageId"], m["ReceiptHandle"], m["Body"], now_ms(), 1)
    raise AssertionError("request not received")


def _outcome(env, rid: str, reply_to: str | None) -> DeliveryOutcome:
    reply = Reply.ok(rid, "imagenet", [{"label": "tabby", "index": 281, "score": 0.5}], worker="t")
    return DeliveryOutcome(_hold(env, rid), reply, reply_to)


def _left(env) -> int:
    """Request messages still on the queue, visible or held."""
    a = env["sqs"].get_queue_attributes(QueueUrl=env["queue"], AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return int(a["ApproximateNumberOfMessages"]) + int(a["ApproximateNumberOfMessagesNotVisible"])


def _replies(env, url: str) -> list[str]:
    msgs = env["sqs"].receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
    return sorted(Reply.from_json(m["Body"]).id for m in msgs)


def test_a_request_whose_result_record_failed_is_not_deleted(sink_env):
    sink = sink_env["make"](bucket=f"{sink_env['settings'].prefix}-no-such-bucket")   # put_object: NoSuchBucket
    out = _outcome(sink_env, "rec-fails", sink_env["reply"])
    assert sink.deliver([out]) == []
    assert _left(sink_env) == 1                       # comes back, so the record gets written next time
    assert _replies(sink_env, sink_env["reply"]) == ["rec-fails"]   # the client was still answered


def test_a_request_whose_reply_failed_to_send_is_not_deleted(sink_env):
    sink = sink_env["make"]()
    out = _outcome(sink_env, "reply-fails", sink_env["fifo"])
    assert sink.deliver([out]) == []
    assert _left(sink_env) == 1
    assert sink.stored_reply("reply-fails") is not None   # recorded: a redelivery resends it without recomputing


def test_an_async_job_whose_record_failed_is_not_deleted(sink_env):
    sink = sink_env["make"](bucket=f"{sink_env['settings'].prefix}-no-such-bucket")
    assert sink.deliver([_outcome(sink_env, "job-rec-fails", None)]) == []
    assert _left(sink_env) == 1


def test_a_partial_batch_failure_deletes_exactly_the_answered_and_recorded(sink_env):
    sink = sink_env["make"]()
    good = [_outcome(sink_env, f"ok-{i}", sink_env["reply"]) for i in range(12)]   # two reply batches
    bad_reply = [_outcome(sink_env, f"noreply-{i}", sink_env["fifo"]) for i in range(2)]
    job = _outcome(sink_env, "job-ok", None)
    # an id that cannot be an S3 key (a lone surrogate does not encode): its record alone fails
    bad_record = DeliveryOutcome(_hold(sink_env, "bad-record"), Reply.ok("bad-\ud800", "imagenet", [], worker="t"),
                         sink_env["reply"])
    batch = [*good[:6], *bad_reply, bad_record, job, *good[6:]]
    deleted = sink.deliver(batch)
    assert sorted(h.message_id for h in deleted) == sorted(o.held.message_id for o in [*good, job])
    assert _left(sink_env) == 3                          # 2 unanswered + 1 unrecorded stay for redelivery
    for o in [*good, job]:
        assert sink.stored_reply(o.reply.id) is not None


def test_a_reply_queue_that_is_gone_counts_as_answered_once_recorded(sink_env):
    sink = sink_env["make"]()
    gone = sink_env["sqs"].create_queue(QueueName=naming.reply_queue(sink_env["settings"].prefix))["QueueUrl"]
    sink_env["sqs"].delete_queue(QueueUrl=gone)
    out = _outcome(sink_env, "asker-gone", gone)
    assert [h.message_id for h in sink.deliver([out])] == [out.held.message_id]
    assert _left(sink_env) == 0 and sink.stored_reply("asker-gone") is not None


def test_the_reply_is_sent_before_the_record_is_written_and_the_delete_comes_last(sink_env):
    sink = sink_env["make"]()
    order: list[str] = []
    hooks = [(sink_env["sqs"], "before-call.sqs"), (sink_env["s3"], "before-call.s3")]
    for c, event in hooks:
        c.meta.events.register(event, lambda model, **_: order.append(model.name), unique_id="order")
    try:
        out = [_outcome(sink_env, f"ordered-{i}", sink_env["reply"]) for i in range(3)]
        order.clear()
        assert len(sink.deliver(out)) == 3
    finally:
        for c, event in hooks:
            c.meta.events.unregister(event, unique_id="order")
    assert order[0] == "SendMessageBatch" and order[-1] == "DeleteMessageBatch", order
    assert order.count("PutObject") == 3 and order.index("PutObject") > order.index("SendMessageBatch")
    assert _replies(sink_env, sink_env["reply"]) == ["ordered-0", "ordered-1", "ordered-2"]


def test_a_delivered_reply_to_a_waiting_client_writes_no_record_and_is_deleted(sink_env):
    sink = sink_env["make"]()
    puts: list[str] = []
    sink_env["s3"].meta.events.register("before-call.s3.PutObject", lambda **_: puts.append("put"),
                                        unique_id="count-puts")
    try:
        out = _outcome(sink_env, "waiting-client", sink_env["reply"])
        out.record = False                     # what a synchronous request asks for (Request.record=False)
        assert [h.message_id for h in sink.deliver([out])] == [out.held.message_id]
    finally:
        sink_env["s3"].meta.events.unregister("before-call.s3.PutObject", unique_id="count-puts")
    assert puts == [] and sink.stored_reply("waiting-client") is None
    assert _left(sink_env) == 0 and _replies(sink_env, sink_env["reply"]) == ["waiting-client"]


def test_a_reply_whose_queue_is_gone_is_recorded_even_when_no_record_was_asked_for(sink_env):
    sink = sink_env["make"]()
    gone = sink_env["sqs"].create_queue(QueueName=naming.reply_queue(sink_env["settings"].prefix))["QueueUrl"]
    sink_env["sqs"].delete_queue(QueueUrl=gone)
    out = _outcome(sink_env, "homeless", gone)
    out.record = False
    assert [h.message_id for h in sink.deliver([out])] == [out.held.message_id]
    assert _left(sink_env) == 0 and sink.stored_reply("homeless") is not None
