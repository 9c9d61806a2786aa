"""A stack applied before modules/service_queue re-plans with its request and bulk queues moved, none replaced.

The old layout (the queues as resources of queues.tf, recorded in tests/fixtures/terraform_before_service_queue)
is applied to its own moto server, the queues only (-target). The current tree then plans against that
state: every queue, dead-letter queue and queue policy must come out as a move (queues.tf's `moved`
blocks) with nothing to do, and after applying the moves the plan is empty.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from moto_terraform import MOTO_OVERRIDES, REDRIVE_ALLOW, REDRIVE_POLICY, write_overrides
from terraform_tools import ROOT, Terraform, scratch_copy
from test_deploy import REGION, aws_endpoint_env, port_open
from waiting import wait_for

from classifycloud.local import free_port

pytestmark = pytest.mark.slow

BEFORE = os.path.join(ROOT, "tests", "fixtures", "terraform_before_service_queue", "queues.tf.recorded")
# What the rest of the tree reads from the two module calls, given by a resource-free module over the
# old resources, so the old queues.tf is applied next to today's other files unchanged.
SHIM = {
    "request_queues": ("aws_sqs_queue.requests", "aws_sqs_queue.dlq"),
    "bulk_queues": ("aws_sqs_queue.bulk", "aws_sqs_queue.bulk_dlq"),
}
SHIM_MODULE = """
variable "queue_urls" { type = map(string) }
variable "dlq_urls" { type = map(string) }
variable "dlq_arns" { type = list(string) }
output "queue_urls" { value = var.queue_urls }
output "dlq_urls" { value = var.dlq_urls }
output "dlq_arns" { value = var.dlq_arns }
"""
# moto's gaps, written for the old layout's resource names (tests/moto_terraform.py says why)
OLD_OVERRIDES = {
    "moto_sqs_redrive_allow_override.tf": (
        REDRIVE_ALLOW, 'resource "aws_sqs_queue_redrive_allow_policy" "dlq" {\n  for_each = {}\n}\n\n'
                       'resource "aws_sqs_queue_redrive_allow_policy" "bulk_dlq" {\n  for_each = {}\n}\n'),
    "moto_sqs_redrive_policy_override.tf": (
        REDRIVE_POLICY, 'resource "aws_sqs_queue" "requests" {\n  lifecycle {\n    ignore_changes = [redrive_policy]\n'
                        '  }\n}\n\nresource "aws_sqs_queue" "bulk" {\n  lifecycle {\n'
                        '    ignore_changes = [redrive_policy]\n  }\n}\n'),
    **{name: why_hcl for name, why_hcl in MOTO_OVERRIDES.items() if not name.startswith("modules/")},
}
# the queues with what they need; every role, as a plan of the module call reaches the roles as one resource
OLD_TARGETS = ["aws_sqs_queue_policy.requests", "aws_sqs_queue_policy.bulk", "aws_sqs_queue.requests",
               "aws_sqs_queue.bulk", "aws_iam_role.component"]
NEW_TARGETS = ["module.request_queues", "module.bulk_queues"]
VARS = ["-var=ami_id=ami-12c6146b", "-var=min_workers=0", "-var=allow_plain_http=true"]


def old_layout(dest: str) -> str:
    """A scratch copy of infra/terraform with the queues laid out as before the module; returns its root."""
    module = scratch_copy(dest)
    shutil.rmtree(os.path.join(module, "modules", "service_queue"))
    shutil.copy(BEFORE, os.path.join(module, "queues.tf"))
    os.makedirs(os.path.join(module, "modules", "shim"))
    with open(os.path.join(module, "modules", "shim", "main.tf"), "w") as fh:
        fh.write(SHIM_MODULE)
    with open(os.path.join(module, "shim.tf"), "w") as fh:
        for name, (queue, dlq) in SHIM.items():
            fh.write(f'module "{name}" {{\n  source     = "./modules/shim"\n'
                     f'  queue_urls = {{ for s, q in {queue} : s => q.url }}\n'
                     f'  dlq_urls   = {{ for s, q in {dlq} : s => q.url }}\n'
                     f'  dlq_arns   = [for q in {dlq} : q.arn]\n}}\n\n')
    write_overrides(module, OLD_OVERRIDES)
    return module


@pytest.fixture
def moto_endpoint():
    """A moto server of its own (its own account), on a free port."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: server.poll() is None and port_open(port), 60, "the moved test's moto server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_stack_applied_with_the_old_queue_layout_replans_with_every_queue_moved_and_none_replaced(
        tmp_path, moto_endpoint):
    env = {**aws_endpoint_env(moto_endpoint), "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = Terraform(old_layout(str(tmp_path / "old")), env=env)
    old.init()
    old.run("apply", "-no-color", "-auto-approve", "-input=false", *VARS, *[f"-target={t}" for t in OLD_TARGETS])
    applied = set(old.run("state", "list").stdout.split())
    assert 'aws_sqs_queue.requests["imagenet"]' in applied and 'aws_sqs_queue_policy.bulk["imagenet"]' in applied

    new_root = scratch_copy(str(tmp_path / "new"))
    write_overrides(new_root)
    shutil.copy(os.path.join(old.workdir, "terraform.tfstate"), os.path.join(new_root, "terraform.tfstate"))
    new = Terraform(new_root, env=env)
    new.init()
    targets = [f"-target={t}" for t in NEW_TARGETS]
    # a targeted plan must also name the old addresses it moves (terraform refuses a move it would leave out)
    old_addresses = sorted({a.split("[")[0] for a in applied if a.startswith("aws_sqs_queue")} - {"aws_sqs_queue.terminate"})
    new.run("plan", "-no-color", "-input=false", "-out=tfplan", *VARS, *targets,
            *[f"-target={a}" for a in old_addresses])
    changes = json.loads(new.run("show", "-json", "tfplan").stdout)["resource_changes"]
    moved = {c["previous_address"]: c["address"] for c in changes if c.get("previous_address")}
    old_queues = {a for a in applied if a.startswith(("aws_sqs_queue.", "aws_sqs_queue_policy.", "aws_sqs_queue_redrive"))
                  and not a.startswith(("aws_sqs_queue.terminate", "aws_sqs_queue_policy.terminate"))}
    assert old_queues and set(moved) == old_queues, sorted(old_queues ^ set(moved))
    assert moved['aws_sqs_queue.bulk_dlq["imagenet"]'] == 'module.bulk_queues.aws_sqs_queue.dlq["imagenet"]'
    acting = {c["address"]: c["change"]["actions"] for c in changes
              if c["mode"] == "managed" and c["change"]["actions"] != ["no-op"]}
    assert acting == {}, f"the moved stack would change: {acting}"

    new.run("apply", "-no-color", "-auto-approve", "-input=false", "tfplan")
    replan = new.run("plan", "-no-color", "-input=false", "-detailed-exitcode", *VARS, *targets, ok=(0, 1, 2))
    assert replan.returncode == 0, f"the plan after the moves is not empty:\n{replan.stdout[-6000:]}"
