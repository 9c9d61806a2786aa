"""End to end: a short load on the local stack lands in CloudWatch (moto), and `classifycloud metrics` reviews it."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from PIL import Image
from waiting import wait_for

from classifycloud import review
from classifycloud.local import LocalStack
from shared.aws import client
from shared.config import Settings
from shared.metrics import BY_NAME

pytestmark = pytest.mark.slow


def test_local_stack_metrics_have_the_defined_names_and_the_review_agrees_with_the_requests(
        moto_endpoint, tmp_path, capsys):
    settings = Settings.from_env({}, prefix="m" + uuid.uuid4().hex[:8], metrics_enabled=True,
                                 metrics_interval_s=1.0, metrics_namespace="M" + uuid.uuid4().hex[:8],
                                 min_workers=1, max_workers=1, tick_s=1.0, services=("imagenet",))
    stack = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, autoscale=True).start()
    try:
        stack.wait_ready(timeout=240, workers=True)
        good = [("url", stack.sample_url(n)) for n in ("chelsea", "coffee", "astronaut", "rocket")] * 2
        bad = [("bytes", b"this is not an image"), ("bytes", b"\xff\xd8\xff\xe0 truncated jpeg")]

        def ask(item):
            kind, value = item
            if kind == "url":
                return requests.get(stack.base_url + "/classify", params={"url": value}, timeout=120)
            return requests.post(stack.base_url + "/classify", files={"image": ("x.jpg", value)}, timeout=120)

        def submit(item):
            kind, value = item
            if kind == "url":
                return requests.post(stack.base_url + "/jobs", json={"url": value}, timeout=60)
            return requests.post(stack.base_url + "/jobs", files={"image": ("x.jpg", value)}, timeout=60)

        def record(job_id):
            r = requests.get(f"{stack.base_url}/jobs/{job_id}", timeout=30)
            return r.json() if r.status_code == 200 else None

        with ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(ask, good + bad))
            assert [r.status_code for r in answers] == [200] * 8 + [422] * 2
            # the review reads result records, which synchronous answers no longer leave (issue 31):
            # the same ten inputs as jobs leave ten records for it to agree with
            jobs = list(pool.map(submit, good + bad))
        assert [r.status_code for r in jobs] == [202] * 10, [r.text for r in jobs]
        done = [wait_for(lambda j=j: record(j.json()["id"]), timeout=120, what="a job's record") for j in jobs]
        assert [d["status"] for d in done] == ["ok"] * 8 + ["error"] * 2
        time.sleep(3)                                  # a few flush intervals
    finally:
        stack.stop()                                   # every publisher flushes on the way out

    cw = client("cloudwatch", settings)
    seen = {}
    for page in cw.get_paginator("list_metrics").paginate(Namespace=settings.metrics_namespace):
        for m in page["Metrics"]:
            seen.setdefault(m["MetricName"], set()).add(tuple(sorted(d["Name"] for d in m["Dimensions"])))
    assert set(seen) <= set(BY_NAME), f"undefined metric names: {set(seen) - set(BY_NAME)}"
    for name, dim_sets in seen.items():
        assert dim_sets == {tuple(sorted(BY_NAME[name].dimensions))}, name
    for name in ("Requests", "Latency", "TotalTime", "InferenceTime", "BatchSize", "Images", "Errors",
                 "FleetRunning", "QueueVisible", "ScalingDecision"):
        assert name in seen, f"{name} was not published"

    code = review.main(["--since", "15m", "--out", str(tmp_path), "--prefix", settings.prefix,
                        "--namespace", settings.metrics_namespace, "--period", "60", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    imagenet = summary["services"]["imagenet"]
    assert (imagenet["count"], imagenet["ok"], imagenet["errors"]) == (10, 8, 2)
    assert imagenet["errors_by_code"] == {"invalid_image": 2}
    assert imagenet["p50_ms"] <= imagenet["p95_ms"] <= imagenet["p99_ms"]
    assert any(line.startswith("imagenet ") and " 10 " in f" {line} " for line in out.splitlines())
    # moto matches metrics across namespaces by name and dimensions, so other tests may add to these
    images = {t["dimensions"]["Service"]: t["total"] for t in summary["cloudwatch_totals"]["Images"]}
    assert images.get("imagenet", 0) >= 8
    assert summary["fleet"]["running_max"] >= 1
    for png in ("timeline.png", "latency.png", "stages.png"):
        with Image.open(tmp_path / png) as im:
            im.verify()
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
