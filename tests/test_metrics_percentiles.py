"""Exact percentiles (linear interpolation between closest ranks) and the review's summaries."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from classifycloud.report.sources import auto_period, parse_record, parse_time
from classifycloud.report.stats import (
    Record,
    bucket_percentiles,
    percentile,
    summarize_fleet,
    summarize_records,
    totals_by_dims,
)
from shared.messages import Reply


def test_percentiles_on_a_known_set_are_exact():
    xs = [15, 20, 35, 40, 50]
    assert percentile(xs, 0) == 15 and percentile(xs, 100) == 50
    assert percentile(xs, 50) == 35
    assert percentile(xs, 40) == pytest.approx(29.0)        # rank 1.6: 20 + 0.6 * (35 - 20)
    assert percentile(xs, 75) == 40
    hundred = list(range(1, 101))
    assert percentile(hundred, 50) == pytest.approx(50.5)
    assert percentile(hundred, 95) == pytest.approx(95.05)
    assert percentile(hundred, 99) == pytest.approx(99.01)


def test_percentiles_do_not_depend_on_input_order_and_match_numpy_linear():
    rng = random.Random(3)
    for n in (1, 2, 7, 100, 1001):
        xs = [rng.lognormvariate(4, 1) for _ in range(n)]
        shuffled = xs[:]
        rng.shuffle(shuffled)
        for q in (0, 1, 50, 90, 95, 99, 99.9, 100):
            assert percentile(shuffled, q) == pytest.approx(float(np.percentile(xs, q)), rel=1e-12)


def test_percentile_of_nothing_is_nan_and_a_bad_rank_is_an_error():
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile([1, 2], 101)


def rec(service, total, at, status="ok", code="", worker="w1"):
    return Record(id=f"{service}-{at}", service=service, status=status, code=code, at=at, total_ms=total,
                  queue_ms=total / 2, fetch_ms=total / 4, inference_ms=total / 4, worker=worker)


def test_record_summaries_count_errors_by_code_and_throughput_over_the_active_span():
    rs = [rec("a", 100.0 * i, 1000.0 + i) for i in range(1, 11)]
    rs += [rec("a", 50.0, 1005.0, "error", "fetch_failed", "w2"), rec("b", 10.0, 2000.0, "error", "")]
    s = summarize_records(rs)
    a = s["a"]
    assert (a.count, a.ok, a.errors, a.errors_by_code, a.workers) == (11, 10, 1, {"fetch_failed": 1}, 2)
    totals = [100.0 * i for i in range(1, 11)] + [50.0]
    assert a.p50_ms == percentile(totals, 50) and a.p99_ms == percentile(totals, 99) and a.max_ms == 1000.0
    # first submission: record 1 done at 1001 after 100 ms -> 1000.9; last reply at 1010
    assert a.span_s == pytest.approx(9.1) and a.throughput_rps == pytest.approx(11 / 9.1)
    assert s["b"].errors_by_code == {"unknown": 1}


def test_fleet_summary_gives_instance_minutes_from_average_running_plus_pending():
    series = {("FleetRunning", (), "Average"): {0.0: 2.0, 60.0: 4.0},
              ("FleetRunning", (), "Maximum"): {0.0: 3.0, 60.0: 4.0},
              ("FleetPending", (), "Average"): {0.0: 1.0},
              ("FleetPending", (), "Maximum"): {0.0: 2.0},
              ("FleetDesired", (), "Maximum"): {0.0: 5.0}}
    f = summarize_fleet(series, 60)
    assert (f.periods, f.running_max, f.pending_max, f.desired_max) == (2, 4.0, 2.0, 5.0)
    assert f.size_max == 5.0 and f.size_mean == 3.5 and f.instance_minutes == 7.0
    assert summarize_fleet({}, 60).instance_minutes == 0.0


def test_totals_and_bucketed_percentiles():
    series = {("Requests", (("Route", "/c"), ("Status", "200")), "Sum"): {0.0: 3.0, 60.0: 4.0},
              ("Requests", (("Route", "/c"), ("Status", "500")), "Sum"): {0.0: 1.0}}
    assert totals_by_dims(series, "Requests") == {(("Route", "/c"), ("Status", "200")): 7.0,
                                                  (("Route", "/c"), ("Status", "500")): 1.0}
    b = bucket_percentiles([rec("a", 10.0, 5.0), rec("a", 30.0, 59.0), rec("a", 99.0, 61.0)], 60, (50,))
    assert b == {"a": {0: [20.0], 60: [99.0]}}


def test_parse_record_reads_a_reply_and_rejects_anything_else():
    body = Reply.failure("r1", "imagenet", "image_decode_error", "bad jpeg",
                         timings_ms={"queue": 3, "fetch": 4.5, "total": 12}).to_json()
    r = parse_record(body.encode(), 7.0)
    assert (r.service, r.status, r.code, r.total_ms, r.inference_ms, r.at) == \
        ("imagenet", "error", "image_decode_error", 12.0, None, 7.0)
    with pytest.raises(ValueError):
        parse_record(b'{"v": 1, "id": "x"}', 0.0)


def test_since_accepts_durations_and_iso_times_and_periods_are_whole_minutes():
    assert parse_time("90s", now=1000.0) == 910.0 and parse_time("2h", now=10000.0) == 2800.0
    assert parse_time("2026-01-01T00:00:00Z") == parse_time("2026-01-01T00:00:00")
    with pytest.raises(ValueError):
        parse_time("last tuesday")
    assert auto_period(0, 600) == 60 and auto_period(0, 86400) == 360 and auto_period(0, 7 * 86400) % 60 == 0
