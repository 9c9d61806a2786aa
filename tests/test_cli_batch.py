"""`classifycloud batch` without a server: the request it builds, the progress line, its refusals."""
from __future__ import annotations

import argparse

import pytest

from classifycloud.batch import build_request, main, progress_line


def test_the_progress_line_shows_done_total_failed_rate_and_eta():
    line = progress_line({"total": 1000, "done": 500, "failed": 3, "rate": 25.04, "eta_s": 19.6, "state": "running"},
                         width=10)
    assert line.startswith("[#####.....]") and "500/1000 (3 failed)" in line
    assert "25.0 items/s" in line and "ETA 20 s" in line and line.endswith("running")
    assert "?" in progress_line({"total": None, "done": 0, "state": "accepted"})


def test_the_request_carries_the_source_output_notify_and_deadline(tmp_path):
    f = tmp_path / "items.txt"
    f.write_text("https://e.com/a.jpg\n\ns3://b/k.jpg\n")
    args = argparse.Namespace(prefix=None, manifest=None, items=["https://e.com/z.jpg"], items_file=str(f),
                              service="imagenet", output="s3://b/out/", webhook="https://h.example/x",
                              success_topic=None, error_topic="arn:aws:sns:us-east-1:123456789012:e",
                              deadline="1999999999", top_k=3)
    doc = build_request(args)
    assert doc["input"] == {"items": ["https://e.com/z.jpg", "https://e.com/a.jpg", "s3://b/k.jpg"]}
    assert doc["notify"] == {"webhook": "https://h.example/x", "error_topic": "arn:aws:sns:us-east-1:123456789012:e"}
    assert doc["deadline"] == 1999999999 and doc["top_k"] == 3 and doc["output"] == "s3://b/out/"


def test_two_sources_or_no_output_are_refused_before_any_call(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--prefix", "s3://b/in/", "--manifest", "s3://b/m.jsonl", "--output", "s3://b/out/"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["https://e.com/a.jpg"])
    assert "exactly one of" in capsys.readouterr().err


def test_an_unreachable_server_is_an_error_message_not_a_traceback(capsys):
    assert main(["--url", "http://127.0.0.1:9", "--cancel", "b" + "0" * 20]) == 1
    assert capsys.readouterr().err.startswith("error: DELETE /batches/")
