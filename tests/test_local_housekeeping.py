"""`classifycloud up --workers N` (no autoscaler) still sweeps orphan reply queues and dead letters."""
from __future__ import annotations

import json
import time

from classifycloud.cli import up_stack
from classifycloud.local import LocalStack
from shared import naming
from shared.aws import client
from shared.messages import Request, new_id, now_ms


def test_up_with_a_fixed_worker_count_starts_exactly_that_many_zero_included():
    for argv, n in ((["--workers", "0"], 0), (["--workers", "3"], 3)):
        _, stack = up_stack(argv + ["--port", "0"])
        assert stack.workers == n and not stack.autoscale
    _, stack = up_stack(["--port", "0"])
    assert stack.autoscale                                # no --workers: the autoscaler decides


def test_a_stack_with_fixed_workers_sweeps_orphan_reply_queues_and_settles_dead_letters(settings, moto_endpoint):
    s = settings.replace(janitor_interval_s=1, reply_queue_grace_s=1)
    stack = LocalStack(s, endpoint=moto_endpoint, web_processes=1, workers=0).start()
    sqs, s3 = client("sqs", s), client("s3", s)
    try:
        orphan = sqs.create_queue(QueueName=naming.reply_queue(s.prefix),
                                  tags={naming.REPLY_TAG_BEAT: str(now_ms() - 60_000)})["QueueUrl"]
        dlq = sqs.get_queue_url(QueueName=naming.dead_letter_queue(s.prefix, "imagenet"))["QueueUrl"]
        rid = new_id()
        sqs.send_message(QueueUrl=dlq, MessageBody=Request(id=rid, service="imagenet",
                                                           image={"url": "http://x/y.jpg"}, reply_to=None).to_json())
        end = time.monotonic() + 60
        record = None
        while time.monotonic() < end:
            names = sqs.list_queues(QueueNamePrefix=naming.reply_queue_prefix(s.prefix)).get("QueueUrls", [])
            try:
                record = json.loads(s3.get_object(Bucket=s.bucket_name, Key=naming.result_key(rid))["Body"].read())
            except s3.exceptions.NoSuchKey:
                record = None
            if orphan not in names and record is not None:
                break
            time.sleep(0.5)
        assert orphan not in names, "the orphan reply queue was never swept"
        assert record is not None and record["error"]["code"] == "dead_lettered"
        assert stack.worker_procs == []
    finally:
        stack.stop()
