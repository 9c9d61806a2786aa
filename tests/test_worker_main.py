"""`python -m worker`'s main(argv): arguments, settings from the environment, exit codes."""
from __future__ import annotations

import json

import pytest

from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.messages import Request
from worker.__main__ import main


@pytest.fixture
def env_for(monkeypatch):
    """Put settings into CLASSIFYCLOUD_* variables, as a parent process would."""
    def apply(settings):
        for k, v in settings.to_env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("CLASSIFYCLOUD_DEVICE", "cpu")
    return apply


def test_worker_main_exits_2_for_an_unknown_service(settings, env_for):
    env_for(settings)
    assert main(["--services", "no-such-service"]) == 2


def test_worker_main_exits_2_when_its_queues_do_not_exist(settings, env_for):
    env_for(settings.replace(instance_id="w-main"))
    assert main(["--services", "imagenet"]) == 2


def test_worker_main_burst_answers_what_is_queued_and_exits_zero(settings, catalogue, env_for, sample_bytes):
    s = settings.replace(wait_time_s=1, instance_id="w-main", services=("imagenet",))
    ensure_all(s, catalogue)
    sqs, s3 = client("sqs", s), client("s3", s)
    s3.put_object(Bucket=s.bucket_name, Key="uploads/m1", Body=sample_bytes["coffee"])
    queue = sqs.get_queue_url(QueueName=naming.request_queue(s.prefix, "imagenet"))["QueueUrl"]
    sqs.send_message(QueueUrl=queue, MessageBody=Request(
        id="m1", service="imagenet", image={"s3": f"s3://{s.bucket_name}/uploads/m1"}, reply_to=None).to_json())
    env_for(s)
    assert main(["--burst", "--log-level", "DEBUG"]) == 0
    record = json.loads(s3.get_object(Bucket=s.bucket_name, Key=naming.result_key("m1"))["Body"].read())
    assert record["results"][0]["index"] == 967 and record["worker"] == "w-main"
