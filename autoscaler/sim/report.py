"""Simulation results: one row per (trace, controller), a text table, JSON, and one PNG per trace."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from autoscaler.sim.fleet import dollars


@dataclass(frozen=True)
class Result:
    """What one controller achieved on one trace."""

    trace: str
    policy: str
    requests: int
    answered: int
    timeouts: int                    # answered after the client timeout, or never
    within_budget: float             # share answered within the latency budget
    mean_s: float
    p50_s: float
    p95_s: float
    p99_s: float
    instance_minutes: float
    peak_fleet: int
    reaction_s: float | None         # first backlog -> first newly launched worker busy
    terminates_sent: int
    terminates_stale: int
    dollars: float = 0.0             # running hours x price by kind + stopped warm-pool hours (sim/fleet.py)
    fleet: str = "ec2"               # the fleet model: ec2 (cold on-demand) or asg (warm pool + spot)
    warm_pool: int = 0
    warm_launches: int = 0
    interruptions: int = 0           # spot notices
    busy_killed: int = 0             # instances terminated while holding work

    def row(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def summarise(sim, policy: str) -> Result:
    """Result of a finished Simulation."""
    arrival = np.asarray(sim.arrival, dtype=float)
    finish = np.asarray(sim.finish, dtype=float)
    latency = finish - arrival
    answered = ~np.isnan(latency)
    lat = latency[answered]
    cfg = sim.cfg
    timeouts = int((lat > cfg.client_timeout_s).sum() + (~answered).sum())
    q = (lambda p: float(np.percentile(lat, p))) if lat.size else (lambda p: math.nan)
    minutes = sum((w.ended_at - w.launched_at) for w in sim.workers) / 60.0
    peak = max((r + p for _, _, _, r, p in sim.samples), default=0)
    reaction = (sim.first_new_busy - sim.first_backlog) if sim.first_new_busy is not None \
        and sim.first_backlog is not None else None
    return Result(trace=sim.trace.name, policy=policy, requests=int(arrival.size), answered=int(answered.sum()),
                  timeouts=timeouts,
                  within_budget=float((lat <= cfg.latency_budget_s).sum() / max(1, arrival.size)),
                  mean_s=float(lat.mean()) if lat.size else math.nan, p50_s=q(50), p95_s=q(95), p99_s=q(99),
                  instance_minutes=minutes, peak_fleet=int(peak), reaction_s=reaction,
                  terminates_sent=sim.terminates_sent, terminates_stale=sim.terminates_stale,
                  dollars=dollars(sim), fleet=sim.fleet_model.name, warm_pool=sim.fleet_model.warm_pool,
                  warm_launches=sim.warm_launches, interruptions=sim.interruptions, busy_killed=sim.busy_killed)


def table(results: list[Result]) -> str:
    """A fixed-width text table (markdown-compatible)."""
    head = ("| trace | policy | requests | timeouts | within budget | mean s | p50 s | p95 s | p99 s "
            "| instance-min | $ | peak fleet | reaction s | spot notices | busy killed |")
    lines = [head, "|" + "---|" * 15]
    for r in results:
        react = "-" if r.reaction_s is None else f"{r.reaction_s:.0f}"
        lines.append(f"| {r.trace} | {r.policy} | {r.requests} | {r.timeouts} | {100 * r.within_budget:.2f}% "
                     f"| {r.mean_s:.1f} | {r.p50_s:.1f} | {r.p95_s:.1f} | {r.p99_s:.1f} "
                     f"| {r.instance_minutes:.1f} | {r.dollars:.2f} | {r.peak_fleet} | {react} "
                     f"| {r.interruptions} | {r.busy_killed} |")
    return "\n".join(lines)


def plot(trace_name: str, sims: dict, path: str, budget_s: float) -> str:
    """Queue depth, fleet size and latency over time for every controller on one trace."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    long = max(s.trace.duration_s for s in sims.values()) > 4 * 3600
    unit, scale = ("h", 3600.0) if long else ("s", 1.0)
    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    for name, sim in sims.items():
        t = np.array([s[0] for s in sim.samples]) / scale
        depth = np.array([s[1] + s[2] for s in sim.samples])
        fleet = np.array([s[3] + s[4] for s in sim.samples])
        axes[0].plot(t, depth, lw=0.8, label=name)
        axes[1].step(t, fleet, where="post", lw=0.9, label=name)
        arrival = np.asarray(sim.arrival)
        lat = np.asarray(sim.finish) - arrival
        bins = max(1, int((sim.trace.duration_s + sim.cfg.drain_s) // (600 if long else 10)))
        idx = np.minimum((arrival / (sim.trace.duration_s + sim.cfg.drain_s) * bins).astype(int), bins - 1)
        p95 = [np.nanpercentile(lat[idx == b], 95) if np.any(idx == b) else np.nan for b in range(bins)]
        centres = (np.arange(bins) + 0.5) * (sim.trace.duration_s + sim.cfg.drain_s) / bins / scale
        axes[2].plot(centres, p95, lw=0.9, marker=".", ms=4, label=name)
    axes[0].set_ylabel("messages (visible + in flight)")
    axes[1].set_ylabel("instances (running + pending)")
    axes[2].set_ylabel("p95 latency, s (by arrival)")
    axes[2].axhline(budget_s, color="grey", ls="--", lw=0.8)
    axes[2].set_yscale("log")
    axes[2].set_xlabel(f"time, {unit}")
    axes[0].set_title(f"trace {trace_name}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
