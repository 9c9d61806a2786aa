"""A SageMaker-style job on the local stack: an S3 input location in, the answer at the output location (issue 34)."""
from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from classifycloud.local import LocalStack
from shared.aws import client
from shared.batches import io_prefix
from shared.config import Settings

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(moto_endpoint):
    s = Settings.from_env({}, prefix="j" + uuid.uuid4().hex[:8], metrics_enabled=False, services=("imagenet",),
                          batch_tick_s=0.5, wait_time_s=2)
    st = LocalStack(s, endpoint=moto_endpoint, web_processes=1, workers=1).start()
    try:
        st.wait_ready(timeout=240, workers=True)
        yield st
    finally:
        st.stop()


def test_a_job_reads_its_s3_input_location_and_the_driver_writes_its_answer_to_the_output_location(
        stack, sample_bytes):
    s3, bucket = client("s3", stack.settings), stack.settings.bucket_name
    folder = io_prefix(None)        # keys off: the one tenant's own folder
    s3.put_object(Bucket=bucket, Key=f"{folder}in/chelsea.jpg", Body=sample_bytes["chelsea"])
    r = requests.post(f"{stack.base_url}/jobs", timeout=30, json={
        "input_location": f"s3://{bucket}/{folder}in/chelsea.jpg", "output_location": f"s3://{bucket}/{folder}out/",
        "invocation_timeout_s": 300})
    assert r.status_code == 202, r.text
    job = r.json()["id"]
    deadline = time.monotonic() + 240
    while (got := requests.get(f"{stack.base_url}/jobs/{job}", timeout=30)).status_code == 202:
        assert time.monotonic() < deadline, "no answer within 240 s"
        time.sleep(0.5)
    assert got.status_code == 200 and got.json()["status"] == "ok", got.text
    assert got.json()["results"][0]["label"] == "Egyptian cat"
    key = f"{folder}out/{job}.json"
    while not s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount"):
        assert time.monotonic() < deadline, "the driver wrote no output"
        time.sleep(0.5)
    written = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert written["id"] == job and written["results"][0]["label"] == "Egyptian cat"
    listed = requests.get(f"{stack.base_url}/jobs", params={"status": "succeeded"}, timeout=30).json()
    assert [j["id"] for j in listed["jobs"]] == [job]
