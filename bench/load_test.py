"""Bounded headless locust run against the local stack (loopback only); prints a table, writes JSON.

    .venv/bin/python bench/load_test.py --users 10 --duration 60 [--workers 1] [--web-processes 2]

Starts moto, the web tier (gunicorn) with API keys on, workers and the sample server,
creates a key, runs bench/locustfile.py for --duration seconds and reports RPS, p50/p95
and failures per request type; results in bench/results/load_test.json.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from classifycloud.keyadmin import create_key  # noqa: E402
from classifycloud.local import LocalStack  # noqa: E402
from shared.config import Settings  # noqa: E402


def versions() -> dict:
    """Versions that matter for the numbers."""
    from importlib.metadata import version
    out = {"python": platform.python_version()}
    for pkg in ("torch", "flask", "gunicorn", "boto3", "moto", "locust"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # a missing package is reported, not fatal
            out[pkg] = "missing"
    return out


def device() -> str:
    """CPU model and core count of this machine."""
    model = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model or 'cpu'} x{os.cpu_count()} (CPU inference)"


def read_stats(prefix: str) -> list[dict]:
    """locust's <prefix>_stats.csv as dicts."""
    with open(prefix + "_stats.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=10)
    p.add_argument("--spawn-rate", type=float, default=5.0)
    p.add_argument("--duration", type=int, default=60, help="seconds of load")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--web-processes", type=int, default=2)
    p.add_argument("--out", default=os.path.join(HERE, "results", "load_test.json"))
    args = p.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the in-process moto server logs every call

    settings = Settings.from_env({}, prefix="lt" + uuid.uuid4().hex[:6], metrics_enabled=False, api_keys="on",
                                 api_key_rate_limit=1000, api_key_burst=1000)
    stack = LocalStack(settings, web_processes=args.web_processes, workers=args.workers)
    tmp = tempfile.mkdtemp(prefix="classifycloud-locust-")
    try:
        stack.start()
        stack.wait_ready(timeout=300)
        secret, _ = create_key(stack.settings, "load-test")
        env = dict(os.environ, CC_SAMPLES_URL=stack.samples.base_url, CC_API_KEY=secret)
        cmd = [sys.executable, "-m", "locust", "-f", os.path.join(HERE, "locustfile.py"), "--headless",
               "-u", str(args.users), "-r", str(args.spawn_rate), "-t", f"{args.duration}s",
               "--host", stack.base_url, "--csv", os.path.join(tmp, "run"), "--only-summary",
               "--stop-timeout", "30", "--exit-code-on-error", "0"]
        started = time.monotonic()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.duration + 180)
        wall = time.monotonic() - started
        if run.returncode != 0:
            print(run.stdout[-3000:], run.stderr[-3000:], file=sys.stderr)
            return 1
        rows = read_stats(os.path.join(tmp, "run"))
    finally:
        stack.stop()

    table = [{"name": r["Name"], "type": r["Type"], "requests": int(r["Request Count"]),
              "failures": int(r["Failure Count"]), "rps": float(r["Requests/s"]),
              "p50_ms": float(r["50%"] or 0), "p95_ms": float(r["95%"] or 0), "max_ms": float(r["Max Response Time"])}
             for r in rows]
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "device": device(),
              "versions": versions(), "users": args.users, "duration_s": args.duration, "wall_s": round(wall, 1),
              "workers": args.workers, "web_processes": args.web_processes, "api_keys": True, "rows": table}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"{'request':32s} {'count':>6s} {'fail':>5s} {'rps':>6s} {'p50 ms':>7s} {'p95 ms':>7s}")
    for r in table:
        print(f"{r['name'][:32]:32s} {r['requests']:6d} {r['failures']:5d} {r['rps']:6.2f} {r['p50_ms']:7.0f} "
              f"{r['p95_ms']:7.0f}")
    print(f"\n{result['device']}; {result['versions']}; {result['date']}; written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
