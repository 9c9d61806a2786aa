"""MetricsPublisher against a real moto server: names, units, dimensions; a dead endpoint never blocks record()."""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import pytest
from botocore.config import Config

from shared.metrics import BY_NAME, DEFINITIONS, MetricsPublisher, NullMetrics, emf_documents
from tests.conftest import free_port


@pytest.fixture
def metrics_settings(settings):
    """Settings with metrics on and a namespace of their own."""
    return settings.replace(metrics_enabled=True, metrics_namespace="T" + uuid.uuid4().hex[:10],
                            metrics_interval_s=0.2)


@pytest.fixture
def cw(moto_endpoint):
    """A CloudWatch client on the moto server."""
    return boto3.client("cloudwatch", region_name="us-east-1")


@pytest.fixture
def publisher(metrics_settings):
    """A started publisher; closed after the test."""
    pub = MetricsPublisher(metrics_settings, "test").start()
    yield pub
    pub.close(flush=False)


def stat(cw, ns, name, dims, statistic, unit=None):
    """One statistic over the last 10 minutes (one period), or None when no data matched."""
    now = datetime.now(timezone.utc)
    ms = {"Metric": {"Namespace": ns, "MetricName": name,
                     "Dimensions": [{"Name": k, "Value": v} for k, v in dims.items()]},
          "Period": 3600, "Stat": statistic}
    if unit:
        ms["Unit"] = unit
    res = cw.get_metric_data(MetricDataQueries=[{"Id": "m", "MetricStat": ms}],
                             StartTime=now - timedelta(minutes=10), EndTime=now + timedelta(minutes=1))
    values = res["MetricDataResults"][0]["Values"]
    return sum(values) if values else None


def test_published_values_land_in_cloudwatch_with_defined_names_units_and_dimensions(metrics_settings, cw):
    pub = MetricsPublisher(metrics_settings, "test")
    svc = "svc-" + uuid.uuid4().hex[:6]          # moto mixes namespaces when dimensions match: keep ours unique
    for v in (10.0, 20.0, 20.0, 50.0):
        pub.record("Latency", v, Service=svc)
    pub.record("Errors", Service=svc, Code="image_decode_error")
    pub.record("Errors", Service=svc, Code="image_decode_error")
    pub.record("Requests", Route="/classify", Status="200")
    pub.record("FleetRunning", 3)
    assert pub.flush() == 4
    ns = metrics_settings.metrics_namespace
    listed = {(m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
              for m in cw.list_metrics(Namespace=ns)["Metrics"]}
    assert listed == {("Latency", (("Service", svc),)),
                      ("Errors", (("Code", "image_decode_error"), ("Service", svc))),
                      ("Requests", (("Route", "/classify"), ("Status", "200"))),
                      ("FleetRunning", ())}
    assert stat(cw, ns, "Latency", {"Service": svc}, "SampleCount") == 4
    assert stat(cw, ns, "Latency", {"Service": svc}, "Sum") == 100.0
    assert stat(cw, ns, "Latency", {"Service": svc}, "Maximum") == 50.0
    assert stat(cw, ns, "Errors", {"Service": svc, "Code": "image_decode_error"}, "Sum") == 2.0
    # the unit is the defined one: a query by that unit finds the data, another unit does not
    assert stat(cw, ns, "Latency", {"Service": svc}, "Sum", unit=BY_NAME["Latency"].unit) == 100.0
    assert stat(cw, ns, "Latency", {"Service": svc}, "Sum", unit="Seconds") is None
    assert pub.sent_calls == 1 and pub.failed_calls == 0


def test_background_flusher_publishes_without_an_explicit_flush(publisher, metrics_settings, cw):
    svc = "svc-" + uuid.uuid4().hex[:6]
    publisher.record("Images", 4, Service=svc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and publisher.sent_calls == 0:
        time.sleep(0.05)
    assert stat(cw, metrics_settings.metrics_namespace, "Images", {"Service": svc}, "Sum") == 4.0


def test_missing_and_empty_dimensions_read_none_and_unknown_dimensions_are_ignored(metrics_settings, cw, caplog):
    pub = MetricsPublisher(metrics_settings, "test")
    with caplog.at_level(logging.WARNING, logger="shared.metrics"):
        pub.record("Errors", Code="", Bogus="x")
    pub.flush()
    [m] = cw.list_metrics(Namespace=metrics_settings.metrics_namespace)["Metrics"]
    assert sorted((d["Name"], d["Value"]) for d in m["Dimensions"]) == [("Code", "none"), ("Service", "none")]
    assert "Bogus" in caplog.text


def test_bad_values_and_unknown_names_are_dropped_with_a_warning_not_raised(metrics_settings, caplog):
    pub = MetricsPublisher(metrics_settings, "test")
    with caplog.at_level(logging.WARNING, logger="shared.metrics"):
        pub.record("NoSuchMetric", 1.0)
        pub.record("Latency", float("nan"), Service="a")
        pub.record("Latency", float("inf"), Service="a")
        pub.record("Latency", "not a number", Service="a")
        pub.record("Latency", 5.0, Service="a")
    assert pub.recorded == 1
    assert "NoSuchMetric" in caplog.text and "not finite" in caplog.text


def test_many_distinct_values_are_split_under_the_cloudwatch_limits(metrics_settings, cw):
    pub = MetricsPublisher(metrics_settings, "test")
    svc = "svc-" + uuid.uuid4().hex[:6]
    for i in range(1, 1001):
        pub.record("TotalTime", float(i), Service=svc)
    data = list(pub._datums(pub._buf))
    assert all(len(x["Values"]) <= 150 and len(x["Values"]) == len(x["Counts"]) for x in data)
    assert pub.flush() == len(data) == 7
    ns = metrics_settings.metrics_namespace
    assert stat(cw, ns, "TotalTime", {"Service": svc}, "SampleCount") == 1000
    assert stat(cw, ns, "TotalTime", {"Service": svc}, "Sum") == 500500.0


def test_a_closed_port_fails_the_flush_not_the_caller_and_the_batch_is_retried(metrics_settings, monkeypatch):
    port = free_port()                               # nothing listens here yet
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    pub = MetricsPublisher(metrics_settings, "test")
    svc = "svc-" + uuid.uuid4().hex[:6]
    for _ in range(1000):
        pub.record("Latency", 7.0, Service=svc)
    assert pub.flush() == 0
    assert pub.failed_calls == 1 and pub.dropped == 0   # kept for one retry
    pub.record("Latency", 9.0, Service=svc)             # recording goes on
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        assert pub.flush() == 2                          # the failed batch and the new one
        cw = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=f"http://127.0.0.1:{port}")
        assert stat(cw, metrics_settings.metrics_namespace, "Latency", {"Service": svc}, "SampleCount") == 1001
    finally:
        server.stop()


@pytest.fixture
def stuck_endpoint():
    """A TCP server that accepts connections and never answers, until the test releases it."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = threading.Event()
    conns = []

    def accept():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            accepted.set()
    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}", accepted
    srv.close()
    for c in conns:
        c.close()


@pytest.mark.timing
def test_record_never_blocks_while_the_flush_is_stuck_on_the_network(metrics_settings, stuck_endpoint):
    url, accepted = stuck_endpoint
    # a real client on an endpoint that never answers: the flush hangs until the fixture closes the socket
    stuck = boto3.client("cloudwatch", region_name="us-east-1", endpoint_url=url,
                         config=Config(read_timeout=300, retries={"max_attempts": 1}))
    pub = MetricsPublisher(metrics_settings.replace(metrics_interval_s=0.05), "test", client=stuck)
    pub.record("Latency", 1.0, Service="a")
    pub.start()
    assert accepted.wait(30), "the flusher never reached the endpoint"
    t0 = time.perf_counter()
    for i in range(20000):
        pub.record("Latency", float(i % 500), Service="a")
    elapsed = time.perf_counter() - t0
    # every record() returned while the flush was still stuck: they cannot have waited on the network
    assert pub.sent_calls == 0 and pub.failed_calls == 0
    assert pub.recorded == 20001
    print(f"record(): {elapsed / 20000 * 1e6:.1f} us per call while the flush is stuck")
    pub.close(flush=False, timeout=0.1)                 # close() does not wait behind the stuck flush either


def test_emf_sink_writes_embedded_metric_format_documents(metrics_settings, tmp_path):
    path = tmp_path / "emf.log"
    pub = MetricsPublisher(metrics_settings.replace(metrics_sink="emf", metrics_emf_path=str(path)), "test")
    for _ in range(150):
        pub.record("QueueWait", 12.0, Service="imagenet")
    pub.record("FleetRunning", 2)
    pub.flush()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    waits = [d for d in docs if "QueueWait" in d]
    assert [len(d["QueueWait"]) for d in waits] == [100, 50]      # EMF allows 100 values per document
    d = waits[0]
    directive = d["_aws"]["CloudWatchMetrics"][0]
    assert directive == {"Namespace": metrics_settings.metrics_namespace, "Dimensions": [["Service"]],
                         "Metrics": [{"Name": "QueueWait", "Unit": "Milliseconds"}]}
    assert d["Service"] == "imagenet" and isinstance(d["_aws"]["Timestamp"], int)
    [fleet] = [d for d in docs if "FleetRunning" in d]
    assert fleet["FleetRunning"] == [2.0] and fleet["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [[]]


def test_emf_documents_expand_counts():
    datum = {"MetricName": "Images", "Unit": "Count", "Timestamp": 1.5, "Dimensions": [],
             "Values": [1.0, 4.0], "Counts": [2.0, 1.0]}
    [doc] = emf_documents("NS", datum)
    assert doc["Images"] == [1.0, 1.0, 4.0] and doc["_aws"]["Timestamp"] == 1500


def test_a_disabled_publisher_records_nothing_and_starts_no_thread():
    pub = NullMetrics()
    pub.record("Latency", 1.0, Service="a")
    assert pub.start()._thread is None
    assert pub.flush() == 0 and pub.recorded == 0


def test_every_definition_has_a_valid_unit_stat_and_component():
    units = {"Count", "Milliseconds", "Seconds", "Percent", "Bytes", "None"}
    assert len(BY_NAME) == len(DEFINITIONS)
    for d in DEFINITIONS:
        assert d.unit in units and d.stat in {"Sum", "Average", "Maximum", "Minimum", "SampleCount"}
        assert d.component in {"web", "worker", "autoscaler"} and d.description
