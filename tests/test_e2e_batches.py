"""A batch on the local stack: 2 worker processes, a worker SIGKILLed and the web and driver restarted mid-batch."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from classifycloud.local import LocalStack
from shared.aws import client
from shared.batches import io_prefix
from shared.config import Settings

pytestmark = pytest.mark.slow
CATS = range(281, 286)
ESPRESSO = 967
PHOTOS = ("chelsea", "coffee", "rocket", "astronaut")


@pytest.fixture
def stack(moto_endpoint):
    s = Settings.from_env({}, prefix="e" + uuid.uuid4().hex[:8], metrics_enabled=False, services=("imagenet",),
                          bulk_visibility_timeout_s=10, batch_tick_s=0.5, bulk_yield_s=0.3, wait_time_s=2)
    st = LocalStack(s, endpoint=moto_endpoint, web_processes=1, workers=2).start()
    try:
        st.wait_ready(timeout=240, workers=True)
        yield st
    finally:
        st.stop()


def cli(stack, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "classifycloud", "batch", "--url", stack.base_url, *args],
                          capture_output=True, text=True, timeout=timeout, env=stack.child_env())


def progress(stack, bid) -> dict:
    for _ in range(60):
        try:
            r = requests.get(f"{stack.base_url}/batches/{bid}", timeout=10)
            if r.status_code == 200:
                return r.json()
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise AssertionError("GET /batches/<id> did not answer")


def test_a_batch_survives_a_killed_worker_and_restarted_web_and_driver_with_one_line_per_input(stack, tmp_path):
    n = 60
    items = [f"{stack.sample_url(PHOTOS[i % 4])}?i={i}" for i in range(n)]
    (tmp_path / "items.txt").write_text("\n".join(items))
    out = f"s3://{stack.settings.bucket_name}/{io_prefix(None)}e2e/"
    sub = cli(stack, "--items-file", str(tmp_path / "items.txt"), "--output", out, "--no-wait")
    assert sub.returncode == 0, sub.stderr
    bid = sub.stdout.split()[1]
    end = time.monotonic() + 240
    while progress(stack, bid)["done"] < 8:
        assert time.monotonic() < end, "the batch did not start"
        time.sleep(0.2)
    assert progress(stack, bid)["done"] < n // 2          # mid-batch: most items are still to do
    victim = stack.worker_procs[0]
    victim.send_signal(signal.SIGKILL)                  # mid-batch: what it held comes back after 10 s
    victim.wait(30)
    stack.start_worker("local-3")
    for proc in (stack.web_proc, stack.driver_proc):       # the whole process group: gunicorn's workers too
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    stack.start_web()
    stack.start_driver()
    followed = cli(stack, "--follow", bid, "--interval", "0.5", timeout=400)
    assert followed.returncode == 0, followed.stdout[-2000:] + followed.stderr[-2000:]
    shards = [line for line in followed.stdout.splitlines() if line.startswith("s3://")]
    assert shards and "succeeded" in followed.stdout
    s3 = client("s3", stack.settings)
    lines = []
    for uri in shards:
        bucket, key = uri[5:].split("/", 1)
        lines += [json.loads(x) for x in s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode().splitlines()]
    assert len(lines) == n
    assert sorted(x["index"] for x in lines) == list(range(n))
    assert sorted(x["input"] for x in lines) == sorted(items)
    for x in lines:
        assert x["status"] == "ok" and x["input"] == items[x["index"]], x
        photo = PHOTOS[x["index"] % 4]
        if photo == "chelsea":
            assert x["results"][0]["index"] in CATS
        elif photo == "coffee":
            assert x["results"][0]["index"] == ESPRESSO
    final = progress(stack, bid)
    assert final["state"] == "succeeded" and final["done"] == n and final["failed"] == 0
