"""The pure pieces of service versions: hash split, shadow sampling, pins, policy JSON, the rollback rule, costs."""
from __future__ import annotations

import math
import uuid

import pytest

from shared.catalogue import CatalogueError, load_catalogue, split_versions
from shared.messages import MessageError, Reply, Request
from shared.versions import (
    Bounds,
    TrafficPolicy,
    VersionError,
    VersionOutcome,
    VersionStats,
    parse_pin,
    percentile,
    rollback_decision,
    seconds_per_request,
    stats_since,
)

N = 20000


def binomial_bounds(n: int, p: float, z: float = 3.29) -> tuple[float, float]:
    """The 99.9 % normal-approximation interval of a binomial count (z = 3.29, two-sided)."""
    sd = math.sqrt(n * p * (1 - p))
    return n * p - z * sd, n * p + z * sd


def test_hash_split_gives_each_version_its_weight_within_binomial_bounds():
    policy = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10})
    ids = [str(uuid.UUID(int=i)) for i in range(N)]
    v2 = sum(policy.choose(rid) == "v2" for rid in ids)
    lo, hi = binomial_bounds(N, 0.10)
    assert lo <= v2 <= hi, v2


def test_hash_split_is_sticky_per_request_id_and_the_same_in_every_process():
    policy = TrafficPolicy("imagenet", weights={"v1": 50, "v2": 50})
    rid = "3f1c2d9e-0000-4000-8000-000000000001"
    assert {policy.choose(rid) for _ in range(50)} == {policy.choose(rid)}
    # sha256, not Python's salted hash(): the value is fixed across processes and machines
    assert policy.choose(rid) == TrafficPolicy("imagenet", weights={"v2": 50, "v1": 50}).choose(rid)


def test_zero_weight_gets_nothing_and_a_policy_with_only_zeros_is_refused():
    policy = TrafficPolicy("imagenet", weights={"v1": 1, "v2": 0})
    assert {policy.choose(str(i)) for i in range(2000)} == {"v1"}
    with pytest.raises(VersionError) as err:
        policy.with_weights({"v1": 0}, 1)
    assert err.value.code == "invalid_weights"
    with pytest.raises(VersionError):
        TrafficPolicy.from_dict("imagenet", {"weights": {"v1": -1}})


def test_shadow_is_sampled_at_its_share_and_never_for_the_version_answering():
    policy = TrafficPolicy("imagenet", shadow="v2", shadow_share=0.25)
    sampled = sum(policy.shadow_for(str(i), "v1") == "v2" for i in range(N))
    lo, hi = binomial_bounds(N, 0.25)
    assert lo <= sampled <= hi
    assert all(policy.shadow_for(str(i), "v2") is None for i in range(500))
    assert TrafficPolicy("imagenet", shadow="v2", shadow_share=1.0).shadow_for("x", "v1") == "v2"


@pytest.mark.parametrize("value, expected", [("imagenet", ("imagenet", None)), ("imagenet@v2", ("imagenet", "v2")),
                                             (None, (None, None)), ("food@canary-1", ("food", "canary-1"))])
def test_pin_parsing_splits_service_and_version(value, expected):
    assert parse_pin(value) == expected


@pytest.mark.parametrize("value", ["imagenet@", "@v2", "imagenet@v2@v3", "imagenet@V2", "imagenet@v 2",
                                   "imagenet@" + "v" * 30])
def test_a_malformed_pin_is_refused_with_invalid_version(value):
    with pytest.raises(VersionError) as err:
        parse_pin(value)
    assert err.value.code == "invalid_version"


def test_policy_round_trips_through_json_and_refuses_unknown_keys():
    policy = TrafficPolicy("imagenet", weights={"v1": 9, "v2": 1}, shadow="v3", shadow_share=0.5, pinning=True,
                           bounds=Bounds(0.1, 800, 30), since=123)
    assert TrafficPolicy.from_json("imagenet", policy.to_json()) == policy
    with pytest.raises(VersionError):
        TrafficPolicy.from_dict("imagenet", {"weights": {"v1": 1}, "colour": "red"})
    with pytest.raises(VersionError):
        TrafficPolicy.from_json("imagenet", b"{not json")


def test_promote_makes_the_version_live_and_rollback_returns_to_the_previous_one():
    p = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10}).promote("v2", 5)
    assert (p.live, p.previous, p.serving(), p.since) == ("v2", "v1", [("v2", 1.0)], 5)
    back = p.rollback("worse on faces", 9)
    assert (back.live, back.serving()) == ("v1", [("v1", 1.0)])
    assert back.rolled_back["v2"]["reason"] == "worse on faces"
    with pytest.raises(VersionError) as err:
        back.rollback("again", 10)
    assert err.value.code == "nothing_to_roll_back"


def test_rollback_with_a_canary_takes_only_the_canary_s_traffic():
    p = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10}).rollback("manual", 7)
    assert p.live == "v1" and p.weights == {"v1": 90.0, "v2": 0.0} and p.rolled_back["v2"]["by"] == "operator"
    assert p.with_weights({"v2": 5}, 8).rolled_back == {}   # traffic again: no longer rolled back


def _outcomes(version: str, n: int, errors: int, ms: float, at: int = 1000) -> list[VersionOutcome]:
    return [VersionOutcome(at + i, version, i >= errors, ms, ms) for i in range(n)]


def test_rollback_decision_needs_min_requests_then_trips_on_error_rate():
    policy = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10}, bounds=Bounds(0.05, 1000, 20))
    assert rollback_decision(policy, stats_since(_outcomes("v2", 19, 19, 10), 0)) == {}
    reasons = rollback_decision(policy, stats_since(_outcomes("v2", 20, 2, 10), 0))
    assert list(reasons) == ["v2"] and "error rate 0.10 > 0.05" in reasons["v2"]
    assert rollback_decision(policy, stats_since(_outcomes("v2", 40, 2, 10), 0)) == {}   # 0.05: not past it


def test_rollback_decision_trips_on_p95_and_ignores_live_and_outcomes_before_the_change():
    policy = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10}, bounds=Bounds(0.5, 100, 10), since=5000)
    slow = _outcomes("v2", 30, 0, 250, at=6000) + _outcomes("v1", 30, 30, 10, at=6000)
    assert list(rollback_decision(policy, stats_since(slow, policy.since))) == ["v2"]
    assert "p95 model time 250 ms > 100 ms" in rollback_decision(policy, stats_since(slow, 0))["v2"]
    assert rollback_decision(policy, stats_since(_outcomes("v2", 30, 30, 10, at=100), policy.since)) == {}


def test_stats_and_percentile():
    assert percentile([], 95) is None
    assert percentile(range(1, 101), 95) == 95
    st = stats_since(_outcomes("v2", 10, 3, 7.0), 0)["v2"]
    assert st == VersionStats(10, 3, 7.0) and st.error_rate == pytest.approx(0.3)


def test_seconds_per_request_prices_each_version_by_its_share_and_adds_the_shadow():
    policy = TrafficPolicy("imagenet", weights={"v1": 90, "v2": 10})
    assert seconds_per_request(policy, {"v1": 0.1, "v2": 0.3}, 1.0) == pytest.approx(0.9 * 0.1 + 0.1 * 0.3)
    shadowed = TrafficPolicy("imagenet", shadow="v2", shadow_share=0.5)
    assert seconds_per_request(shadowed, {"v1": 0.1, "v2": 0.3}, 1.0) == pytest.approx(0.1 + 0.5 * 0.3)
    assert seconds_per_request(TrafficPolicy("x"), {}, 0.2) == pytest.approx(0.2)


def test_packaged_catalogue_has_imagenet_v2_on_lite2_inheriting_labels():
    c = load_catalogue()
    v2 = c.versions["imagenet"]["v2"]
    assert v2.name == "imagenet" and v2.architecture == "efficientnet_lite2"
    assert v2.preprocess.crop == 260 and v2.labels == c["imagenet"].labels and v2.num_classes == 1000
    assert "versions" not in c.services and c["imagenet"].architecture == "efficientnet_lite0"


def test_catalogue_refuses_a_v1_version_and_bad_names():
    base = {"architecture": "x", "num_classes": 2}
    with pytest.raises(CatalogueError):
        split_versions({"a": {**base, "versions": {"v1": {}}}}, "t")
    with pytest.raises(CatalogueError):
        split_versions({"a": {**base, "versions": {"V2!": {}}}}, "t")
    plain, versions = split_versions({"a": {**base, "versions": {"v2": {"num_classes": 3}}}}, "t")
    assert plain == {"a": base} and versions == {"a": {"v2": {"architecture": "x", "num_classes": 3}}}


def test_messages_carry_the_version_only_when_given():
    req = Request(id="r1", service="imagenet", image={"url": "http://x/y.jpg"}, reply_to=None)
    assert "version" not in req.to_json() and "shadow" not in req.to_json()
    routed = Request.from_json(Request(id="r1", service="imagenet", image={"url": "http://x/y.jpg"},
                                       reply_to=None, version="v2", shadow="v3").to_json())
    assert (routed.version, routed.shadow) == ("v2", "v3")
    with pytest.raises(MessageError):
        Request.from_json({**routed.__dict__, "version": "../x"})
    assert "version" not in Reply.ok("r1", "imagenet", []).to_dict()
    assert Reply.from_json(Reply.ok("r1", "imagenet", [], version="v2").to_json()).version == "v2"
