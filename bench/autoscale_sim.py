"""Benchmark: the autoscaling policies side by side on the simulated traces (see docs/AUTOSCALING.md).

    .venv/bin/python bench/autoscale_sim.py [--traces burst40,step,spike,diurnal] [--seeds 0,1,2,3,4] [--jobs 2]

Averages every number over the seeds (default five; timeouts and busy-killed are totals).

Prints the table, writes bench/results/autoscale_sim.json and docs/img/autoscaling-<trace>.png.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from autoscaler.__main__ import simulate_main  # noqa: E402

if __name__ == "__main__":
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    os.makedirs(os.path.join(root, "bench", "results"), exist_ok=True)
    defaults = ["--seeds", "0,1,2,3,4", "--jobs", "2", "--png-dir", os.path.join(root, "docs", "img"),
                "--json", os.path.join(root, "bench", "results", "autoscale_sim.json")]
    sys.exit(simulate_main(defaults + sys.argv[1:]))
