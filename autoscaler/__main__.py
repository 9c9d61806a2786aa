"""`classifycloud autoscaler` (main) and `classifycloud simulate` (simulate_main)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from shared import logsafe
from shared.config import Settings


def main(argv: list[str] | None = None) -> int:
    """Run the autoscaler loop until SIGINT/SIGTERM (or one tick with --once)."""
    p = argparse.ArgumentParser(prog="classifycloud autoscaler", description=main.__doc__)
    p.add_argument("--policy", choices=["backlog", "xcloud-baseline", "classifycloud"], default=None,
                   help="classifycloud: the old name of xcloud-baseline")
    p.add_argument("--fleet", choices=["local", "asg", "ec2"], default=None)
    p.add_argument("--min-workers", type=int, default=None)
    p.add_argument("--max-workers", type=int, default=None)
    p.add_argument("--tick", type=float, default=None, help="seconds between decisions")
    p.add_argument("--once", action="store_true", help="one tick: print the decision and exit")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in (("policy", args.policy), ("fleet", args.fleet), ("min_workers", args.min_workers),
                                   ("max_workers", args.max_workers), ("tick_s", args.tick)) if v is not None}
    settings = Settings.from_env(**overrides)
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logsafe.install()   # client strings never start a forged log line
    from autoscaler.fleet import make_fleet
    from autoscaler.loop import Autoscaler
    from shared.transport import Transport
    try:
        fleet = make_fleet(settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loop = Autoscaler(settings, fleet, transport=Transport(settings))   # the process's one transport
    if args.once:
        result = loop.tick()
        if result is None:
            return 1
        d = result.decision
        print(f"{d.action} {d.count} (desired {d.desired}): {d.reason}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from autoscaler.batches import BatchDriver
    BatchDriver(settings, loop.catalogue, s3=loop.s3, transport=loop.transport).start_thread(stop)  # batches, notices
    try:
        loop.run(stop)
    finally:
        if hasattr(fleet, "stop_all"):      # local workers are ours to stop; EC2 instances stay
            fleet.stop_all()
    return 0


def simulate_main(argv: list[str] | None = None) -> int:
    """Compare the scaling policies on the simulated traces; print a table, write JSON and PNGs."""
    from dataclasses import replace

    from autoscaler.sim import CONTROLLERS, TRACES, SimConfig, table
    from autoscaler.sim.report import plot
    from autoscaler.sim.runner import average, run_all
    p = argparse.ArgumentParser(prog="classifycloud simulate", description=simulate_main.__doc__)
    p.add_argument("--traces", default=",".join(TRACES), help=f"comma-separated, of {','.join(TRACES)}")
    p.add_argument("--policies", default=",".join(CONTROLLERS), help=f"comma-separated, of {','.join(CONTROLLERS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default="", help="comma-separated seeds to average over (default: --seed alone)")
    p.add_argument("--jobs", type=int, default=1, help="simulations run in parallel processes")
    p.add_argument("--day-hours", type=float, default=24.0, help="length of the diurnal trace")
    p.add_argument("--mean-rate", type=float, default=12.0, help="diurnal mean requests per second")
    p.add_argument("--boot", default="40,90", help="boot delay range in seconds, 'lo,hi' (uniform)")
    p.add_argument("--idle-check", type=float, default=2.5,
                   help="idle workers' terminate_check_interval_s (capped at half the expiry, like the worker)")
    p.add_argument("--png-dir", default="", help="write one PNG per trace here (autoscaling-<trace>.png)")
    p.add_argument("--json", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    traces = [t for t in args.traces.split(",") if t]
    policies = [x for x in args.policies.split(",") if x]
    unknown = [t for t in traces if t not in TRACES] + [x for x in policies if x not in CONTROLLERS]
    if unknown:
        print(f"error: unknown trace/policy {unknown}", file=sys.stderr)
        return 2
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()] or [args.seed]
    lo, hi = (float(x) for x in args.boot.split(","))
    cfg = replace(SimConfig(), boot_s=(lo, hi), terminate_check_interval_s=args.idle_check)
    started = time.monotonic()
    per_seed, sims = run_all(traces, policies, seeds, cfg, args.day_hours, args.mean_rate, jobs=args.jobs,
                             keep_seed=seeds[0] if args.png_dir else None)
    results = average(per_seed) if len(seeds) > 1 else per_seed
    if args.png_dir:
        os.makedirs(args.png_dir, exist_ok=True)
        for name, by_policy in sims.items():
            plot(name, by_policy, os.path.join(args.png_dir, f"autoscaling-{name}.png"), cfg.latency_budget_s)
    print(table(results))
    pools = sorted({(r.trace, r.warm_pool) for r in results if r.fleet == "asg"})
    if pools:
        print("warm pool (asg, burst_workers of the expected burst): "
              + ", ".join(f"{t} {w:g}" for t, w in pools))
    print(f"\n(seeds {','.join(map(str, seeds))}{' averaged' if len(seeds) > 1 else ''}, boot {lo:g}-{hi:g} s, "
          f"{time.monotonic() - started:.0f} s to simulate)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"seeds": seeds, "boot_s": [lo, hi], "config": cfg.__dict__,
                       "results": [r.row() for r in results], "per_seed": [r.row() for r in per_seed]},
                      fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
