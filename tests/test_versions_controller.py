"""The canary controller and version entries against S3 (moto): rollback written with its reason, costs, S3 versions."""
from __future__ import annotations

import dataclasses
import json
import threading
import time

import pytest

from autoscaler.versions import VersionController
from shared.aws import client
from shared.catalogue import Catalogue, CatalogueError
from shared.live_catalogue import S3Entries
from shared.traffic import LiveTraffic, TrafficStore, stats_key
from shared.version_entries import VersionEntries, parse_version_entry, version_prefix
from shared.versions import Bounds, TrafficPolicy


def _stats(s3, settings, worker: str, rows: list) -> None:
    s3.put_object(Bucket=settings.bucket_name, Key=stats_key(worker),
                  Body=json.dumps({"instance_id": worker, "services": {"imagenet": rows}}).encode())


@pytest.fixture
def s3(settings, provisioned):
    return client("s3", settings)


def test_controller_rolls_back_a_failing_canary_and_records_why(settings, s3):
    store = TrafficStore(settings, s3)
    now = int(time.time() * 1000)
    store.write(TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10}, bounds=Bounds(0.1, 1000, 10), since=now - 60000))
    _stats(s3, settings, "w1", [[now - 1000 + i, "v2", 0, 0.0, 0.0] for i in range(6)])
    _stats(s3, settings, "w2", [[now - 1000 + i, "v2", int(i > 1), 50.0, 10.0] for i in range(6)]
           + [[now - 500, "v1", 1, 40.0, 8.0]])
    result = VersionController(settings, s3).check()
    assert list(result.rolled_back["imagenet"]) == ["v2"]
    stored, _ = store.read("imagenet")
    assert stored.weights == {"v1": 90.0, "v2": 0.0}
    assert stored.rolled_back["v2"]["by"] == "controller"
    assert "error rate 0.67 > 0.10 (8 of 12 requests)" == stored.rolled_back["v2"]["reason"]
    assert VersionController(settings, s3).check().rolled_back == {}   # done once: the canary has no traffic now


def test_controller_leaves_a_healthy_canary_and_prices_the_service_by_measured_version_costs(settings, s3):
    store = TrafficStore(settings, s3)
    now = int(time.time() * 1000)
    store.write(TrafficPolicy("imagenet", weights={"v1": 50, "v2": 50}, bounds=Bounds(0.1, 1000, 5), since=now - 60000))
    _stats(s3, settings, "w1", [[now - 900 + i, v, 1, 80.0, cost] for i in range(10)
                                for v, cost in (("v1", 100.0), ("v2", 300.0))])
    ctl = VersionController(settings, s3)
    assert ctl.check().rolled_back == {}
    spr = ctl.seconds_per_request({"imagenet": 9.0, "pdr": 0.01}, {})
    assert spr["imagenet"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.3) and spr["pdr"] == 0.01


def test_live_traffic_keeps_the_last_good_policy_when_the_object_turns_invalid(settings, s3):
    clock = [0.0]
    live = LiveTraffic(settings.replace(catalogue_ttl_s=1.0), s3, clock=lambda: clock[0])
    assert live.get("imagenet") == (TrafficPolicy("imagenet"), False)
    TrafficStore(settings, s3).write(TrafficPolicy("imagenet", weights={"v1": 1, "v2": 1}))
    assert live.get("imagenet")[1] is False          # cached within the TTL
    clock[0] = 2.0
    good, stored = live.get("imagenet")
    assert stored and good.weights == {"v1": 1.0, "v2": 1.0}
    s3.put_object(Bucket=settings.bucket_name, Key="models/imagenet/traffic.json", Body=b'{"weights": {"v1": -3}}')
    clock[0] = 4.0
    assert live.get("imagenet") == (good, True) and "weight" in live.error("imagenet")


def test_threads_that_find_the_policy_stale_together_read_it_once(settings, s3):
    clock = [0.0]
    live = LiveTraffic(settings.replace(catalogue_ttl_s=1.0), s3, clock=lambda: clock[0])
    read, reads = live.store.read, []

    def counted(service):
        reads.append(service)
        time.sleep(0.05)         # a slow S3: the other threads arrive while this read is in flight
        return read(service)
    live.store.read = counted
    live.get("imagenet")
    clock[0] = 2.0               # stale now, for every thread at once
    threads = [threading.Thread(target=live.get, args=("imagenet",)) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert reads == ["imagenet", "imagenet"]     # the first fill, then one refresh for twelve threads


def test_s3_versions_are_read_beside_their_entry_and_do_not_touch_the_service_entry(settings, s3, catalogue):
    prefix = version_prefix("imagenet", "v3")
    s3.put_object(Bucket=settings.bucket_name, Key=prefix + "model.pth", Body=b"weights")
    s3.put_object(Bucket=settings.bucket_name, Key=prefix + "entry.yaml",
                  Body=b"architecture: efficientnet_lite0\nnum_classes: 1000\nweights: model.pth\n")
    s3.put_object(Bucket=settings.bucket_name, Key=version_prefix("imagenet", "V!") + "entry.yaml", Body=b"{}")
    allowed = settings.replace(catalogue_s3_replaces_packaged=True)   # imagenet is packaged: the operator allows it
    versions = VersionEntries(allowed, s3).read(catalogue, "imagenet")["imagenet"]
    assert versions["v1"].spec == catalogue["imagenet"] and versions["v2"].origin == "packaged"
    assert versions["v3"].spec.weights == f"s3://{settings.bucket_name}/{prefix}model.pth"
    assert versions["V!"].spec is None and "must match" in versions["V!"].error
    TrafficStore(settings, s3).write(TrafficPolicy("imagenet"))
    assert S3Entries(settings, s3).read() == ({}, {})   # versions and traffic are not an S3 service entry
    with pytest.raises(CatalogueError):
        parse_version_entry("imagenet", "v3", b"architecture: x\nnum_classes: 2\nweights: ../../pdr/model.pth\n",
                            settings.bucket_name)


def test_s3_versions_of_a_packaged_service_are_refused_unless_the_operator_allows_them(settings, s3, catalogue):
    prefix = version_prefix("imagenet", "v3")
    s3.put_object(Bucket=settings.bucket_name, Key=prefix + "model.pth", Body=b"weights")
    s3.put_object(Bucket=settings.bucket_name, Key=prefix + "entry.yaml",
                  Body=b"architecture: efficientnet_lite0\nnum_classes: 1000\nweights: model.pth\n")
    TrafficStore(settings, s3).write(TrafficPolicy("imagenet", weights={"v1": 0, "v3": 1}, live="v3"))
    versions = VersionEntries(settings, s3).read(catalogue, "imagenet")["imagenet"]
    assert versions["v3"].spec is None and "packaged service 'imagenet'" in versions["v3"].error
    assert versions["v2"].spec is not None and versions["v2"].origin == "packaged"   # the operator's own versions
    # a service published in S3 (not packaged) may have S3 versions: the rule is about packaged ones only
    mine = dataclasses.replace(catalogue["imagenet"], name="mycats")
    s3.put_object(Bucket=settings.bucket_name, Key=version_prefix("mycats", "v2") + "entry.yaml",
                  Body=b"architecture: efficientnet_lite0\nnum_classes: 1000\nweights: model.pth\n")
    theirs = VersionEntries(settings, s3).read(Catalogue(services={"mycats": mine}), "mycats")["mycats"]
    assert theirs["v2"].spec is not None and theirs["v2"].error is None
