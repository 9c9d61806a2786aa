"""The deployment's docs and units say what infra/terraform deploys (health check path, fleet, tick)."""
from __future__ import annotations

import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")


def read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as fh:
        return fh.read()


def test_the_terraform_readme_names_the_health_check_path_web_tf_sets():
    path = re.search(r'health_check \{\s*path\s*=\s*"([^"]+)"', read("infra", "terraform", "web.tf")).group(1)
    readme = read("infra", "terraform", "README.md")
    assert path == "/readyz" and f"ALB (`{path}` health check)" in readme
    assert not re.search(r"ALB[^\n]*`/healthz`", readme)


def test_the_autoscaler_unit_names_the_fleet_terraform_deploys():
    # the fleet is var.autoscaler_fleet (asg or ec2): what Terraform deploys is its default
    var = re.search(r'CLASSIFYCLOUD_FLEET\s*=\s*var\.(\w+)', read("infra", "terraform", "autoscaler.tf")).group(1)
    fleet = re.search(r'variable "%s" \{[^}]*?default\s*=\s*"(\w+)"' % var,
                      read("infra", "terraform", "variables.tf"), re.S).group(1)
    description = re.search(r"Description=(.*)", read("ami", "systemd", "classifycloud-autoscaler.service")).group(1)
    assert fleet == "asg" and f"fleet = {fleet}" in description


def test_the_readme_gives_the_tick_terraform_deploys():
    tick = re.search(r'CLASSIFYCLOUD_TICK_S\s*=\s*"(\d+)"', read("infra", "terraform", "autoscaler.tf")).group(1)
    readme = read("README.md")
    assert f"{tick} s as deployed by Terraform" in readme
    assert "next 5 s tick" not in readme
