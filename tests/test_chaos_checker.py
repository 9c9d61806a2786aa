"""The chaos soak's invariant checker (bench/chaos_check.py) counts each kind of loss; no stack needed."""
from __future__ import annotations

import copy
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench"))

from chaos_check import check  # noqa: E402


def clean_log() -> dict:
    """A run where everything ended well: 3 sync answers (one via a polled 504), a job, a 3-item batch, notices."""
    ok_cat = {"id": "r2", "status": "ok", "results": [{"label": "tabby", "index": 281}]}
    return {
        "sync": [
            {"key": "s0", "photo": "chelsea", "status": 200, "answer_id": "a0", "label_index": 282, "label": "tiger cat"},
            {"key": "s1", "photo": "face", "status": 200, "answer_id": "a1", "label": "Eileen Collins"},
            {"key": "s2", "photo": "chelsea", "status": 504, "code": "timeout", "id": "r2", "final": ok_cat},
            {"key": "s3", "photo": "coffee", "status": 503, "code": "queue_unavailable", "id": None},
            {"key": "s4", "photo": "coffee", "status": None, "err": "ConnectionError: Connection refused"},
        ],
        "jobs": [{"key": "job5", "photo": "coffee", "status": 202, "id": "j5", "notify": True,
                  "final": {"id": "j5", "status": "ok", "results": [{"label": "espresso", "index": 967}]}}],
        "batches": [{"id": "b1", "key": "batch", "total": 3, "state": "succeeded", "notify": True,
                     "photos": {"0": "chelsea", "1": "coffee", "2": "coffee"},
                     "lines": [{"index": 0, "status": "ok", "label_index": 285},
                               {"index": 1, "status": "ok", "label_index": 967},
                               {"index": 2, "status": "error", "label_index": None}]}],
        "notices": {"j5": {"state": "delivered"}, "b1": {"state": "failed"}},
        "received": [{"key": "job5", "id": "j5", "event": "job.succeeded"}],
    }


def test_a_clean_run_has_no_violations_and_every_invariant_was_checked():
    verdict = check(clean_log())
    assert verdict["violations"] == 0, verdict
    assert all(v["checked"] > 0 for v in verdict["invariants"].values()), verdict["invariants"]
    assert verdict["other"]["sync refused (503, nothing accepted)"] == 1
    assert verdict["other"]["sync refused at the door"] == 1


def test_a_lost_synchronous_request_is_a_violation():
    log = clean_log()
    log["sync"].append({"key": "s9", "photo": "chelsea", "status": None, "err": "ReadTimeout: read timed out"})
    log["sync"].append({"key": "s10", "photo": "chelsea", "status": 504, "code": "timeout", "id": "r10", "final": None})
    log["sync"].append({"key": "s11", "photo": "coffee", "status": 503, "code": "internal", "id": None})
    verdict = check(log)
    assert verdict["invariants"]["sync_answered"]["violations"] == 3
    assert verdict["violations"] == 3


def test_a_workers_error_reply_is_an_answer_but_a_504_must_resolve():
    log = clean_log()
    log["sync"].append({"key": "s12", "photo": "chelsea", "status": 500, "code": "inference_failed", "id": "r12"})
    assert check(log)["violations"] == 0
    assert check(log)["other"]["sync answered with an error reply: 500 inference_failed"] == 1
    log["sync"].append({"key": "s13", "photo": "chelsea", "status": 503, "code": "shutting_down", "id": "r13"})
    assert check(log)["invariants"]["sync_answered"]["violations"] == 1


def test_a_job_or_batch_that_never_ends_is_a_violation():
    log = clean_log()
    log["jobs"][0]["final"] = None
    log["batches"][0]["state"] = "running"
    verdict = check(log)
    assert verdict["invariants"]["terminal"]["violations"] == 2


def test_a_batch_missing_a_line_or_holding_one_twice_is_a_violation():
    missing = clean_log()
    del missing["batches"][0]["lines"][1]
    assert check(missing)["invariants"]["batch_lines"]["violations"] == 1
    doubled = clean_log()
    doubled["batches"][0]["lines"].append({"index": 0, "status": "ok", "label_index": 285})
    assert check(doubled)["invariants"]["batch_lines"]["violations"] == 1
    assert "doubled [0]" in check(doubled)["invariants"]["batch_lines"]["examples"][0]


def test_a_reply_to_the_wrong_client_is_a_violation():
    wrong_label = clean_log()
    wrong_label["sync"][0]["label_index"] = 967              # the cat's client got an espresso answer
    assert check(wrong_label)["invariants"]["right_client"]["violations"] == 1
    wrong_id = clean_log()
    wrong_id["jobs"][0]["final"] = dict(wrong_id["jobs"][0]["final"], id="j6")   # polled j5, got j6's record
    assert check(wrong_id)["invariants"]["right_client"]["violations"] == 1
    shared = clean_log()
    shared["sync"][1]["answer_id"] = "a0"                    # two clients got the same reply
    assert check(shared)["invariants"]["right_client"]["violations"] == 1
    wrong_face = clean_log()
    wrong_face["sync"][1]["label"] = "Unknown"
    assert check(wrong_face)["invariants"]["right_client"]["violations"] == 1
    crossed_hook = clean_log()
    crossed_hook["received"].append({"key": "job5", "id": "b1", "event": "batch.succeeded"})
    assert check(crossed_hook)["invariants"]["right_client"]["violations"] == 1
    wrong_item = copy.deepcopy(clean_log())
    wrong_item["batches"][0]["lines"][0]["label_index"] = 967
    assert check(wrong_item)["invariants"]["right_client"]["violations"] == 1


def test_a_notice_neither_delivered_nor_recorded_failed_is_a_violation():
    log = clean_log()
    log["notices"]["j5"] = None
    log["notices"]["b1"] = {"state": "pending"}
    assert check(log)["invariants"]["notices"]["violations"] == 2
    unreceived = clean_log()
    unreceived["received"] = []                              # recorded delivered, never reached the receiver
    assert check(unreceived)["invariants"]["notices"]["violations"] == 1
