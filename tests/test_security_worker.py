"""A worker facing hostile requests: a drip-feeding image in a batch, forged S3 references, EPS/PSD uploads."""
from __future__ import annotations

import threading
import time

import pytest
from test_security_fetch import _eps, _psd
from test_worker_loop import CATS, ESPRESSO, Stack, images, model, run_burst, stack  # noqa: F401  (fixtures; ImageServer serves /drip/* too)

DEADLINE_S = 6.0
BATCH_WAIT_S = 1.0


def _collect(stack, n: int, timeout: float, box: dict) -> None:
    """Receive replies as they come, stamping each with its arrival time."""
    end = time.monotonic() + timeout
    while len(box) < n and time.monotonic() < end:
        for rid, reply in stack.replies(1, timeout=1).items():
            box[rid] = (time.monotonic(), reply)


@pytest.mark.slow
def test_a_drip_fed_image_times_out_cleanly_while_the_rest_of_its_batch_is_answered_on_time(
        stack, model, images, sample_bytes):
    stack.request({"url": images.base + "/drip/body?token=SECRET"}, "drip")
    stack.request({"url": images.base + "/chelsea.jpg"}, "cat")
    stack.request(stack.upload("uploads/coffee", sample_bytes["coffee"]), "coffee")
    box: dict = {}
    collector = threading.Thread(target=_collect, args=(stack, 3, 120, box))
    collector.start()
    worker = stack.worker(model, fetch_deadline_s=DEADLINE_S, fetch_batch_wait_s=BATCH_WAIT_S,
                          fetch_read_timeout_s=2.0, max_batch_wait_ms=500)
    t0 = time.monotonic()
    assert run_burst(worker) == 0
    burst_s = time.monotonic() - t0
    collector.join(30)
    assert set(box) == {"drip", "cat", "coffee"}
    drip_at, drip = box["drip"]
    assert drip.status == "error" and drip.error["code"] == "fetch_timeout"
    assert "SECRET" not in drip.to_json() and "?" not in drip.error["message"]
    assert drip.timings_ms["fetch"] <= (DEADLINE_S + 1.5) * 1000
    assert burst_s < DEADLINE_S + 30  # the worker was never stuck on the drip (before: 100000 bytes x 0.3 s)
    cat_at, cat = box["cat"]
    coffee_at, coffee = box["coffee"]
    assert cat.status == "ok" and cat.results[0]["index"] in CATS
    assert coffee.status == "ok" and coffee.results[0]["index"] == ESPRESSO
    # the good images of the batch did not wait for the drip's deadline
    assert cat.timings_ms["fetch"] < DEADLINE_S * 1000 / 2
    assert cat_at < drip_at and coffee_at < drip_at
    assert drip_at - max(cat_at, coffee_at) > DEADLINE_S / 3
    assert stack.counts() == (0, 0)
    assert stack.record("drip")["error"]["code"] == "fetch_timeout"


def test_a_forged_request_naming_results_or_models_is_refused(stack, model, sample_bytes):
    bucket = stack.settings.bucket_name
    stack.s3.put_object(Bucket=bucket, Key="results/someone-else.json", Body=b"{}")
    stack.upload("uploads/victim", sample_bytes["coffee"])
    stack.request({"s3": f"s3://{bucket}/results/someone-else.json"}, "forged-results")
    stack.request({"s3": f"s3://{bucket}/uploads/victim"}, "forged-upload")
    stack.request({"s3": f"s3://{bucket}/models/imagenet/weights.pt"}, "forged-models")
    stack.request(stack.upload("uploads/honest", sample_bytes["coffee"]), "honest")
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(4)
    for rid in ("forged-results", "forged-upload", "forged-models"):
        assert got[rid].status == "error" and got[rid].error["code"] == "forbidden_address", rid
    assert got["honest"].status == "ok" and got["honest"].results[0]["index"] == ESPRESSO
    assert stack.counts() == (0, 0)


def test_eps_and_psd_uploads_get_an_unsupported_format_reply(stack, model):
    stack.request(stack.upload("uploads/eps", _eps()), "eps")
    stack.request(stack.upload("uploads/psd", _psd()), "psd")
    assert run_burst(stack.worker(model)) == 0
    got = stack.replies(2)
    assert {rid: r.error["code"] for rid, r in got.items()} == {"eps": "unsupported_format",
                                                                "psd": "unsupported_format"}


def test_a_batch_extends_the_visibility_of_messages_that_waited_in_the_buffer(stack, model, images):
    from shared.messages import now_ms
    from shared.metrics import MetricsPublisher
    from worker.batch import BatchProcessor
    from worker.consumer import Held
    from worker.fetch import Fetcher
    from worker.results import ResultSink
    registry, engine = model
    s = stack.settings.replace(visibility_timeout_s=6)
    stack.request({"url": images.base + "/chelsea.jpg"}, "waited")
    got = stack.sqs.receive_message(QueueUrl=stack.queue, VisibilityTimeout=3, WaitTimeSeconds=2)["Messages"][0]
    received = time.monotonic()
    # as if it had waited 4 s in the buffer: more than half of the 6 s visibility timeout is gone
    held = Held("imagenet", stack.queue, got["MessageId"], got["ReceiptHandle"], got["Body"], now_ms() - 4000, 1)
    processor = BatchProcessor(s, registry, engine, Fetcher(s, stack.s3), ResultSink(s, stack.transport, stack.s3),
                               MetricsPublisher(s, "worker"), "w-test")
    try:
        result = processor.process([held])
    finally:
        processor.close()
    assert result.outcomes[0].reply.status == "ok"
    time.sleep(max(0.0, received + 4.0 - time.monotonic()))  # past the 3 s it was received with
    again = stack.sqs.receive_message(QueueUrl=stack.queue, WaitTimeSeconds=0).get("Messages", [])
    assert again == []  # still ours: no second worker got it while this one worked on it
