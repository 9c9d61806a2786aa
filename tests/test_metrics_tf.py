"""infra/terraform/metrics.tf.json is generated from DEFINITIONS and must not go stale."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import hcl2

from shared.metrics import BY_NAME, DEFINITIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
GEN = os.path.join(ROOT, "tools", "gen_metrics_tf.py")


def test_the_committed_metrics_tf_json_matches_the_current_definitions():
    r = subprocess.run([sys.executable, GEN, "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_check_mode_fails_on_a_stale_file(tmp_path):
    stale = json.load(open(os.path.join(TF, "metrics.tf.json")))
    stale["locals"]["metric_definitions"][0]["unit"] = "Seconds"
    path = tmp_path / "metrics.tf.json"
    path.write_text(json.dumps(stale, indent=2) + "\n")
    r = subprocess.run([sys.executable, GEN, "--check", "--out", str(path)], capture_output=True, text=True)
    assert r.returncode == 1 and "stale" in r.stderr


def test_the_generated_locals_carry_every_definition_in_order():
    doc = json.load(open(os.path.join(TF, "metrics.tf.json")))
    defs = doc["locals"]["metric_definitions"]
    assert [d["name"] for d in defs] == [d.name for d in DEFINITIONS]
    for d in defs:
        m = BY_NAME[d["name"]]
        assert d == {"name": m.name, "unit": m.unit, "dimensions": list(m.dimensions), "component": m.component,
                     "stat": m.stat, "description": m.description}
    assert doc["locals"]["metric_namespace"] == "ClassifyCloud"


def test_monitoring_tf_uses_only_fields_and_metric_names_the_definitions_have():
    with open(os.path.join(TF, "monitoring.tf")) as fh:
        text = fh.read()
    used = set(re.findall(r"\bm\.(\w+)", text)) | set(re.findall(r"\.metric\.(\w+)", text))
    assert used and used <= {"name", "unit", "dimensions", "component", "stat", "description"}
    with open(os.path.join(TF, "variables.tf")) as fh:
        variables = {k.strip('"'): v for block in hcl2.load(fh)["variable"] for k, v in block.items()}
    alarms = {k.strip('"') for k in variables["metric_alarms"]["default"]}   # python-hcl2 keeps quotes
    assert alarms and alarms <= set(BY_NAME)
