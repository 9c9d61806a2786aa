"""The real `terraform` and hashicorp/aws provider for the tests: found here, or a failure that says how to get them.

Terraform installs the provider from a filesystem mirror (the folder that holds
registry.terraform.io/hashicorp/aws/...), never from the network: the tests write their own CLI
config (TF_CLI_CONFIG_FILE) that names the mirror and excludes the registry.
"""
from __future__ import annotations

import glob
import os
import platform
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF = os.path.join(ROOT, "infra", "terraform")
MIRROR_ENV = "CLASSIFYCLOUD_TF_MIRROR"
# Where a mirror usually lives: this checkout (ignored by git), then Terraform's implied local mirror folders.
KNOWN_MIRRORS = (
    os.path.join(ROOT, ".terraform-plugins"),
    "/opt/tf-plugins",
    os.path.expanduser("~/.terraform.d/plugins"),
    os.path.expanduser("~/.local/share/terraform/plugins"),
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
HOW_TO_GET = (
    "The deployment tests run the real terraform and hashicorp/aws provider, offline.\n"
    "  terraform: install Terraform >= 1.5 on PATH (https://developer.hashicorp.com/terraform/install).\n"
    "  provider:  on a machine with registry access, `cd infra/terraform && terraform init -backend=false && "
    "terraform providers mirror ../../.terraform-plugins` (plain `terraform init` with registry access downloads "
    "it); copy that folder here, or point {env} at any folder holding registry.terraform.io/hashicorp/aws/...\n"
    "  searched: {searched}"
)


def _platform() -> str:
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine().lower(),
                                                                         platform.machine().lower())
    return f"{platform.system().lower()}_{machine}"


def holds_aws_provider(root: str) -> bool:
    """Whether `root` is a provider mirror with hashicorp/aws for this platform (unpacked or packed layout)."""
    base = os.path.join(root, "registry.terraform.io", "hashicorp", "aws")
    unpacked = glob.glob(os.path.join(base, "*", _platform(), "terraform-provider-aws*"))
    packed = glob.glob(os.path.join(base, f"terraform-provider-aws_*_{_platform()}.zip"))
    return bool(unpacked or packed)


def find_mirror() -> str:
    """The mirror root: $CLASSIFYCLOUD_TF_MIRROR when set, else the first known folder holding the provider."""
    configured = os.environ.get(MIRROR_ENV)
    candidates = [configured] if configured else list(KNOWN_MIRRORS)
    for root in candidates:
        if root and holds_aws_provider(root):
            return root
    pytest.fail(HOW_TO_GET.format(env=MIRROR_ENV, searched=", ".join(candidates)), pytrace=False)


def find_terraform() -> str:
    """`terraform` on PATH."""
    found = shutil.which("terraform")
    if not found:
        pytest.fail(HOW_TO_GET.format(env=MIRROR_ENV, searched="PATH for terraform"), pytrace=False)
    return found


def write_cli_config(folder: str, mirror: str) -> str:
    """A CLI config that installs providers from `mirror` only; returns its path."""
    path = os.path.join(folder, "terraform.tfrc")
    with open(path, "w") as fh:
        fh.write('provider_installation {\n'
                 f'  filesystem_mirror {{\n    path = "{mirror}"\n  }}\n'
                 '  direct {\n    exclude = ["registry.terraform.io/*/*"]\n  }\n}\n')
    return path


def scratch_copy(dest: str) -> str:
    """infra/terraform copied with what it reads outside itself (shared/services.yaml); returns the root module."""
    module = os.path.join(dest, "infra", "terraform")
    shutil.copytree(TF, module, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"))
    os.makedirs(os.path.join(dest, "shared"), exist_ok=True)
    shutil.copy(os.path.join(ROOT, "shared", "services.yaml"), os.path.join(dest, "shared", "services.yaml"))
    return module


class Terraform:
    """terraform commands in one working directory, with the mirror-only CLI config and no prompts."""

    def __init__(self, workdir: str, env: dict[str, str] | None = None):
        self.binary = find_terraform()
        self.workdir = workdir
        config = write_cli_config(os.path.dirname(workdir.rstrip("/")), find_mirror())
        self.env = {**os.environ, **(env or {}), "TF_CLI_CONFIG_FILE": config, "TF_IN_AUTOMATION": "1",
                    "TF_INPUT": "0", "CHECKPOINT_DISABLE": "1"}
        self.env.pop("TF_PLUGIN_CACHE_DIR", None)

    def run(self, *args: str, timeout: float = 600, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess:
        """One command; fails the test (with its output) when the exit status is not in `ok`."""
        r = subprocess.run([self.binary, *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode not in ok:
            pytest.fail(f"terraform {' '.join(args)} exited {r.returncode}:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}",
                        pytrace=False)
        return r

    def init(self) -> None:
        self.run("init", "-no-color", timeout=300)
