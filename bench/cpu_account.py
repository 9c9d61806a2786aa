"""CPU time by component for bench/e2e.py: /proc/<pid>/stat of process trees, pinning, the worker's model clock.

A component is a process and its descendants (gunicorn's master and workers count as one web). Its CPU
time is the sum over the live members of utime + stime + cutime + cstime (reaped children count once,
in their parent's c-fields), in clock ticks. Snapshots before and after a cell give CPU-ms per request.
"""
from __future__ import annotations

import os

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after its last ')'
    return data[data.rindex(")") + 2:].split()


def children_map() -> dict[int, list[int]]:
    """ppid -> child pids, for every process now."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def tree(pid: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """pid and all its descendants."""
    children = children_map() if children is None else children
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int, children: dict[int, list[int]] | None = None) -> float:
    """CPU seconds of pid's tree so far (user + system, reaped children included)."""
    total = 0
    for p in tree(pid, children):
        f = _stat_fields(p)
        if f:  # fields after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total * TICK_S


def snapshot(components: dict[str, int]) -> dict[str, float]:
    """CPU seconds per named component (name -> root pid), one /proc scan for all; "driver" is this
    process alone (the load generator: client threads, the sample photo server, the floor's sender)."""
    children = children_map()
    out = {name: cpu_seconds(pid, children) for name, pid in components.items()}
    t = os.times()
    out["driver"] = t.user + t.system
    return out


def per_request_ms(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU-ms per request of each component between two snapshots."""
    n = max(1, requests)
    return {name: round((after[name] - before[name]) * 1000 / n, 2) for name in before}


def pin_threads(pid: int, cpus: set[int], descendants: bool = True) -> None:
    """Set the affinity of every thread of pid (and of its descendants): threads keep their own masks."""
    for p in (tree(pid) if descendants else [pid]):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:  # the thread ended meanwhile
                pass


def affinity_of(pid: int) -> list[int]:
    """The CPUs that any thread of pid's tree may run on (sorted)."""
    cpus: set[int] = set()
    for p in tree(pid):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                cpus |= os.sched_getaffinity(int(tid))
        except OSError:
            continue
    return sorted(cpus)
