"""`classifycloud metrics` on a short load: result records in S3 + metrics through the real publisher."""
from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import uuid

import boto3
import numpy as np
import pytest
from PIL import Image

from classifycloud import review
from shared.config import Settings
from shared.messages import Reply
from shared.metrics import MetricsPublisher
from shared.naming import result_key
from tests.conftest import free_port

SERVICES = {"imagenet": 40, "food": 25}
ERRORS = {"imagenet": ["image_decode_error"] * 3 + ["fetch_failed"] * 2, "food": ["fetch_failed"]}


# moto's get_metric_data matches metrics by name and dimensions across namespaces, and its backends
# are shared by every moto server in this process: a route of this module's own keeps other tests'
# Requests metrics out of the totals.
ROUTE = f"/classify-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def own_moto():
    """A moto server for this module (moto's backends are process-wide: data stays distinct by name only)."""
    from moto.server import ThreadedMotoServer
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def stack(own_moto, monkeypatch):
    """Settings pointing at own_moto, with the bucket created."""
    for k, v in {"AWS_ENDPOINT_URL": own_moto, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env({}, prefix="t" + uuid.uuid4().hex[:10], metrics_namespace="T" + uuid.uuid4().hex[:8])
    boto3.client("s3").create_bucket(Bucket=s.bucket_name)
    return s


def short_load(settings: Settings) -> dict[str, list[float]]:
    """Write result records and publish the matching metrics; returns the total latencies sent per service."""
    rng = random.Random(7)
    s3 = boto3.client("s3")
    pub = MetricsPublisher(settings, "load")
    sent: dict[str, list[float]] = {}
    for service, n in SERVICES.items():
        errors = list(ERRORS[service])
        for i in range(n):
            queue, fetch, infer = rng.uniform(1, 400), rng.uniform(5, 80), rng.uniform(20, 60)
            total = round(queue + fetch + infer + rng.uniform(0, 5), 1)
            timings = {"queue": round(queue, 1), "fetch": round(fetch, 1), "inference": round(infer, 1),
                       "total": total}
            rid = f"{service}-{i}-{uuid.uuid4().hex[:6]}"
            if i % 7 == 3 and errors:
                code = errors.pop()
                reply = Reply.failure(rid, service, code, "synthetic failure", timings_ms=timings, worker="w1")
                pub.record("Errors", Service=service, Code=code)
                pub.record("Requests", Route=ROUTE, Status="422")
            else:
                reply = Reply.ok(rid, service, [{"label": "espresso", "index": 967, "score": 0.9}],
                                 timings_ms=timings, worker=f"w{i % 2}")
                pub.record("Images", Service=service)
                pub.record("Requests", Route=ROUTE, Status="200")
            s3.put_object(Bucket=settings.bucket_name, Key=result_key(rid), Body=reply.to_json().encode())
            for name, key in (("QueueWait", "queue"), ("FetchTime", "fetch"), ("InferenceTime", "inference"),
                              ("TotalTime", "total")):
                pub.record(name, timings[key], Service=service)
            pub.record("Latency", total, Service=service)
            sent.setdefault(service, []).append(total)
        assert not errors, "the load must send every planned error"
        pub.record("QueueVisible", 12, Service=service)
        pub.record("QueueInFlight", 4, Service=service)
    for running, pending in ((2, 1), (2, 1), (3, 0)):
        pub.record("FleetRunning", running)
        pub.record("FleetPending", pending)
    pub.record("FleetDesired", 3)
    pub.record("ScalingDecision", Action="launch")
    pub.record("Timeouts", Service="food")
    assert pub.flush() > 0 and pub.failed_calls == 0       # one flush: one timestamp, one period
    return sent


def run_review(settings, out, capsys, *extra):
    code = review.main(["--since", "10m", "--out", str(out), "--prefix", settings.prefix,
                        "--namespace", settings.metrics_namespace, "--period", "60", *extra])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_review_of_a_short_load_prints_the_table_and_numbers_agree_with_what_was_sent(stack, tmp_path, capsys):
    sent = short_load(stack)
    code, out, err = run_review(stack, tmp_path, capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["problems"] == []
    assert summary["records"] == sum(SERVICES.values())
    for service, totals in sent.items():
        s = summary["services"][service]
        assert s["count"] == SERVICES[service]
        assert s["errors"] == len(ERRORS[service]) and s["ok"] == SERVICES[service] - len(ERRORS[service])
        # exact percentiles: numpy's 'linear' method is the same definition, computed independently
        for q in (50, 95, 99):
            assert s[f"p{q}_ms"] == pytest.approx(float(np.percentile(totals, q)), abs=1e-9)
        row = next(line for line in out.splitlines() if line.startswith(service + " "))
        cells = row.split()
        assert cells[1] == str(SERVICES[service])
        assert cells[4:7] == [f"{s[f'p{q}_ms']:,.1f}" for q in (50, 95, 99)]
    assert summary["services"]["imagenet"]["errors_by_code"] == {"fetch_failed": 2, "image_decode_error": 3}
    fleet = summary["fleet"]
    assert fleet["running_max"] == 3 and fleet["pending_max"] == 1 and fleet["desired_max"] == 3
    assert fleet["periods"] == 1
    # one 60 s period with mean running 7/3 and mean pending 2/3: 3 instance-minutes
    assert fleet["instance_minutes"] == pytest.approx(3.0)
    totals = summary["cloudwatch_totals"]
    requests = {(t["dimensions"]["Route"], t["dimensions"]["Status"]): t["total"] for t in totals["Requests"]}
    n_err = sum(len(v) for v in ERRORS.values())
    assert requests == {(ROUTE, "200"): sum(SERVICES.values()) - n_err, (ROUTE, "422"): n_err}
    assert {t["dimensions"]["Service"]: t["total"] for t in totals["Timeouts"]} == {"food": 1}
    assert "cloudwatch: get_metric_data page 1" in err and "records: read 65/65" in err


def test_review_writes_decodable_pngs_and_a_standalone_html_report(stack, tmp_path, capsys):
    short_load(stack)
    code, out, _ = run_review(stack, tmp_path, capsys)
    assert code == 0
    for name in ("timeline.png", "latency.png", "stages.png"):
        with Image.open(tmp_path / name) as im:
            im.load()
            assert im.format == "PNG" and im.width >= 600 and im.height >= 200
            assert len(im.convert("RGB").getcolors(1 << 20)) > 20      # a drawn plot, not a blank canvas
    html = (tmp_path / "report.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == 3
    for data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as im:
            im.load()
    assert "src=\"http" not in html and "<link" not in html          # nothing external
    p99 = f"{json.loads((tmp_path / 'summary.json').read_text())['services']['imagenet']['p99_ms']:,.1f}"
    assert f"<td>imagenet</td><td>{SERVICES['imagenet']}</td>" in html and f"<td>{p99}</td>" in html
    assert str(tmp_path / "report.html") in out


def test_an_unreadable_record_is_reported_and_the_others_still_count(stack, tmp_path, capsys):
    short_load(stack)
    boto3.client("s3").put_object(Bucket=stack.bucket_name, Key=result_key("garbage"), Body=b"{not json")
    code, _, err = run_review(stack, tmp_path, capsys)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] == sum(SERVICES.values())
    assert len(summary["problems"]) == 1 and "results/garbage.json" in summary["problems"][0]
    assert "warning: unreadable result record results/garbage.json" in err


def test_a_missing_bucket_is_a_reported_problem_and_the_metrics_are_still_reviewed(stack, tmp_path, capsys):
    short_load(stack)
    code, out, err = run_review(stack, tmp_path, capsys, "--bucket", "no-such-bucket-" + uuid.uuid4().hex[:6])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["records"] == 0 and summary["fleet"]["running_max"] == 3
    assert "NoSuchBucket" in summary["problems"][0]
    assert "no-such-bucket" in (tmp_path / "report.html").read_text()
    assert os.path.exists(tmp_path / "timeline.png")


def test_no_reachable_source_exits_1(stack, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code, _, err = run_review(stack, tmp_path, capsys)
    assert code == 1 and "not read" in err


@pytest.mark.parametrize("args", [["--since", "yesterday"], ["--since", "1h", "--until", "2h"],
                                  ["--period", "-5"]])
def test_bad_arguments_exit_2_with_a_message(stack, tmp_path, capsys, args):
    code = review.main(args + ["--out", str(tmp_path)])
    assert code == 2 and "classifycloud metrics:" in capsys.readouterr().err
