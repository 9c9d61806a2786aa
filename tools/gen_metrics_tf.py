#!/usr/bin/env python3
"""Generate infra/terraform/metrics.tf.json from shared/metrics.py DEFINITIONS (the one metric list).

    python tools/gen_metrics_tf.py           # write the file
    python tools/gen_metrics_tf.py --check   # exit 1 when the committed file is stale

Terraform reads it as local.metric_definitions (name, unit, dimensions, component,
stat, description) and local.metric_namespace; monitoring.tf builds the dashboard
and the alarms from them.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict, fields

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from shared.config import Settings  # noqa: E402
from shared.metrics import DEFINITIONS, MetricDef  # noqa: E402

TARGET = os.path.join(ROOT, "infra", "terraform", "metrics.tf.json")
NOTE = "GENERATED from shared/metrics.py DEFINITIONS (the one metric list); do not edit by hand."


def document() -> dict:
    """The Terraform JSON document: locals.metric_definitions and locals.metric_namespace."""
    order = [f.name for f in fields(MetricDef)]
    defs = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(asdict(d).items(),
                                                                             key=lambda kv: order.index(kv[0]))}
            for d in DEFINITIONS]
    return {"//": NOTE + " Regenerate: python tools/gen_metrics_tf.py",
            "locals": {"metric_definitions": defs, "metric_namespace": Settings().metrics_namespace}}


def render() -> str:
    """The file's exact text."""
    import json
    return json.dumps(document(), indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or --check) the generated file."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when the file is stale")
    p.add_argument("--out", default=TARGET)
    args = p.parse_args(argv)
    text = render()
    current = open(args.out, encoding="utf-8").read() if os.path.exists(args.out) else None
    if args.check:
        if current != text:
            print(f"{args.out} is stale: run python tools/gen_metrics_tf.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text)
        print(f"wrote {args.out} ({len(DEFINITIONS)} metrics)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
