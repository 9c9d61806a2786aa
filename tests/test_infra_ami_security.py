"""What the AMI bake installs: a pinned, signature-checked CloudWatch agent, no moto, logrotate as the service user."""
from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "ami", "scripts")
AGENT = os.path.join(SCRIPTS, "install-cloudwatch-agent.sh")


def _text(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def test_cloudwatch_agent_is_a_pinned_version_verified_against_the_pinned_key():
    text = _text(AGENT)
    assert "/latest/" not in text
    version = re.search(r'CW_AGENT_VERSION="\$\{CW_AGENT_VERSION:-([0-9][0-9.a-z]+)\}"', text)
    assert version, "no pinned default version"
    assert "ubuntu/amd64/$CW_AGENT_VERSION/amazon-cloudwatch-agent.deb.sig" in text
    assert 'CW_AGENT_KEY_FINGERPRINT="937616F3450B7D806CBD9725D58167303B789C72"' in text
    # dpkg runs only after the verification (set -e: a failed check stops the bake)
    assert text.index("--verify") < text.index("dpkg -i") and "set -euo pipefail" in text


def _fake_bin(tmp_path, gpg_validsig: str) -> dict:
    """curl that writes placeholder files, gpg that reports a key and a signature, dpkg that records."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\necho data > "$2"\n')
    (bin_dir / "gpg").write_text(
        "#!/bin/sh\n"
        'case "$*" in\n'
        '  *--fingerprint*) echo "fpr:::::::::937616F3450B7D806CBD9725D58167303B789C72:" ;;\n'
        f'  *--verify*) echo "[GNUPG:] VALIDSIG ABCDEF 2024-01-01 0 4 0 1 8 00 {gpg_validsig}" ;;\n'
        "esac\n")
    (bin_dir / "dpkg").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/dpkg.log"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.skipif(not os.path.exists("/bin/bash"), reason="needs bash")
def test_the_agent_is_installed_only_when_the_signature_is_by_the_pinned_key(tmp_path):
    if os.path.exists("/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl"):
        pytest.fail("a real CloudWatch agent is installed here; the script would exit early")
    bad = subprocess.run(["bash", AGENT], env=_fake_bin(tmp_path, "0000000000000000000000000000000000000000"),
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "does not verify" in bad.stderr
    assert not (tmp_path / "dpkg.log").exists()
    good_dir = tmp_path / "good"
    good_dir.mkdir()
    good = subprocess.run(["bash", AGENT], env=_fake_bin(good_dir, "937616F3450B7D806CBD9725D58167303B789C72"),
                          capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    assert "agent.deb" in (good_dir / "dpkg.log").read_text()


def test_moto_is_only_in_the_local_and_dev_extras_and_the_ami_installs_neither():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = cfg["options"]["install_requires"]
    assert "moto" not in required
    extras = cfg["options.extras_require"]
    assert "moto[server]" in extras["local"] and "moto[server]" in extras["dev"]
    installs = re.findall(r'pip" install[^\n]*', _text(os.path.join(SCRIPTS, "install.sh")))
    assert installs and not any("local" in line or "dev" in line for line in installs), installs
    assert "'.[dev,local]'" in _text(os.path.join(ROOT, "Makefile"))


def test_floors_are_past_known_cves():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    required = cfg["options"]["install_requires"]
    assert re.search(r"^pillow>=10\.3$", required, re.M | re.I)
    assert re.search(r"^gunicorn>=23$", required, re.M)


def test_logrotate_rotates_as_the_service_user(tmp_path):
    rule = re.search(r"cat > /etc/logrotate.d/classifycloud <<'ROTATE'\n(.*?)\nROTATE", _text(
        os.path.join(SCRIPTS, "install.sh")), re.S).group(1)
    assert re.search(r"^\s*su classifycloud classifycloud$", rule, re.M)
    logrotate = shutil.which("logrotate") or "/usr/sbin/logrotate"
    if os.access(logrotate, os.X_OK):  # the rule parses (debug mode changes nothing)
        conf = rule.replace("/var/log/classifycloud", "/nonexistent-classifycloud")
        path = tmp_path / "classifycloud"
        path.write_text(conf + "\n")
        r = subprocess.run([logrotate, "-d", path], capture_output=True, text=True)
        assert "error" not in (r.stdout + r.stderr).lower().replace("errors", ""), r.stderr
