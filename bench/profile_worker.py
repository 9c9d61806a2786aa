"""A py-spy profile of a running process tree (the worker; the web), split into model and everything else.

    py-spy record --pid P [--subprocesses] --duration D --format raw --nonblocking

Model = samples under handler.run_batch (the forward and its top-k). The top entries of the rest say where
the process's own CPU goes (fetch, decode, queue calls, records, metrics): by self time (the innermost
frame) and by inclusive time of this project's functions. py-spy leaves out threads it sees sleeping; on
a saturated core a thread just woken from a wait is runnable and still sampled, so samples whose innermost
frame is a known blocking wait (WAITS) are counted apart as waiting, not as CPU.
"""
from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys

MODEL_FRAME = "run_batch ("           # the handler's forward + top-k: the model's share
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")
_PROJECT = ("worker/", "shared/", "webserver/", "autoscaler/", "bench/")
WAITS = ("Condition.wait (", "Event.wait (", "_worker (concurrent/futures/thread.py)", "SocketIO.readinto (",
         "do_poll (", "select (", "_watch.<locals>.run (", "Thread.join (", "Queue.get (", "accept (",
         "_wait_for_tstate_lock (", "Waiter.wait (")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def py_spy() -> str | None:
    """The py-spy executable (the venv's bench extra), or None."""
    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.path.exists(here) else shutil.which("py-spy")


def record(pid: int, seconds: float, out_path: str, rate: int = 200, cpus: set[int] | None = None,
           subprocesses: bool = False) -> subprocess.Popen:
    """Start py-spy on pid (and its children) for `seconds`, never pausing it; returns the py-spy process."""
    exe = py_spy()
    if exe is None:
        raise RuntimeError("py-spy is not installed (pip install -e '.[bench]')")
    argv = [exe, "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))), "--rate", str(rate),
            "--format", "raw", "--nonblocking", "--output", out_path] + (["--subprocesses"] if subprocesses else [])
    pre = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pre)


def _name(frame: str) -> str:
    """'fn (path:line)' -> 'fn (short path)': the repository, site-packages and stdlib prefixes dropped."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    if path.startswith(ROOT + os.sep):
        path = path[len(ROOT) + 1:]
    for marker in ("/site-packages/", "/lib/python3.11/"):
        path = path.split(marker, 1)[-1]
    return f"{m.group('fn')} ({path})"


def summarise(raw_path: str, top: int = 12) -> dict:
    """{samples, model_share, self_top, project_inclusive_top} of a raw (collapsed) py-spy profile."""
    total = model = waiting = 0
    self_time: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    with open(raw_path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [_name(f) for f in stack.split(";")]
            if any(MODEL_FRAME in f for f in frames):
                model += n
                continue
            if any(w in frames[-1] for w in WAITS):
                waiting += n
                continue
            self_time[frames[-1]] += n
            for name in {f for f in frames if f.split(" (", 1)[-1].startswith(_PROJECT)}:
                inclusive[name] += n
    other = total - model - waiting

    def pct(c: collections.Counter) -> list[list]:
        return [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)] if total else []

    return {"samples": total, "model_pct": round(100.0 * model / total, 1) if total else 0.0,
            "other_pct": round(100.0 * other / total, 1) if total else 0.0,
            "waiting_pct": round(100.0 * waiting / total, 1) if total else 0.0,
            "self_top": pct(self_time), "project_inclusive_top": pct(inclusive)}


def markdown(summary: dict, title: str) -> str:
    """Two small tables (self, inclusive) as markdown."""
    lines = [f"{title}: {summary['samples']} samples; model (under run_batch) {summary['model_pct']} %, "
             f"everything else {summary['other_pct']} %, blocking waits {summary['waiting_pct']} % "
             "(percent of all samples)", "",
             "| non-model, self | % | | non-model, inclusive (project) | % |", "|---|---:|---|---|---:|"]
    a, b = summary["self_top"], summary["project_inclusive_top"]
    for i in range(max(len(a), len(b))):
        left = a[i] if i < len(a) else ["", ""]
        right = b[i] if i < len(b) else ["", ""]
        lines.append(f"| `{left[0]}` | {left[1]} | | `{right[0]}` | {right[1]} |")
    return "\n".join(lines)
