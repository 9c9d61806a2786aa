"""The CLI finds the local stack by `up`'s state file; without a stack or credentials every command says so in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from classifycloud import stackfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# every command that reaches AWS or the web, each in a form that would do real work with a stack
COMMANDS = [["keys", "list"], ["keys", "create", "--owner", "someone"], ["versions", "list"], ["usage"],
            ["dlq", "list"], ["provision"], ["metrics", "--quiet"], ["batch", "--follow", "b123"],
            ["train", "--service", "mine", "--data", "s3://nowhere/data/"]]


def clean_env(tmp_path, **extra: str) -> dict[str, str]:
    """A new user's terminal: a home, runtime and config dir of its own, no AWS or ClassifyCloud variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLASSIFYCLOUD_", "XDG_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CONFIG_HOME=str(tmp_path / "config"),
               XDG_RUNTIME_DIR=str(tmp_path / "run"), PYTHONPATH=ROOT, **extra)
    for d in ("home", "config", "run"):
        (tmp_path / d).mkdir(exist_ok=True)
    return env


def cli(env: dict, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "classifycloud", *argv], env=env, cwd=str(env["HOME"]),
                          capture_output=True, text=True, timeout=120)


def write_state(env: dict, endpoint: str, prefix: str, pid: int) -> str:
    """A state file as `up` writes it, for the process pid."""
    path = stackfile.state_path(env)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump({"pid": pid, "aws_endpoint": endpoint, "web_url": "http://127.0.0.1:9", "prefix": prefix,
                   "bucket": f"{prefix}-data", "region": "us-east-1"}, fh)
    return path


def assert_one_line_exit_2(done: subprocess.CompletedProcess, command: list[str]) -> None:
    assert done.returncode == 2, (command, done.stdout[-500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout, (command, done.stderr[-2000:])
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, (command, lines)
    assert lines[0].startswith(f"classifycloud {command[0]}: ")
    assert "classifycloud up" in lines[0] and "stack.json" in lines[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_without_a_stack_or_credentials_each_command_says_so_in_one_line_and_exits_2(tmp_path, command):
    done = cli(clean_env(tmp_path), *command)
    assert_one_line_exit_2(done, command)
    what = "--url" if command[0] == "batch" else "AWS_ACCESS_KEY_ID"
    assert what in done.stderr


def test_a_state_file_left_by_a_killed_up_is_ignored(tmp_path, moto_endpoint):
    env = clean_env(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_state(env, moto_endpoint, "nothing", dead.pid)
    assert_one_line_exit_2(cli(env, "keys", "list"), ["keys", "list"])


def test_an_unreachable_endpoint_is_one_line_not_a_traceback(tmp_path):
    env = clean_env(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x",
                    AWS_SECRET_ACCESS_KEY="y", AWS_REGION="us-east-1")
    for command in (["keys", "list"], ["versions", "list"], ["dlq", "list"]):
        done = cli(env, *command)
        assert done.returncode == 2, (command, done.stderr[-2000:])
        assert "Traceback" not in done.stderr
        assert "does not answer" in done.stderr


def test_versions_and_keys_list_find_the_stack_by_its_state_file(tmp_path, settings, provisioned):
    env = clean_env(tmp_path)
    write_state(env, os.environ["AWS_ENDPOINT_URL"], settings.prefix, os.getpid())
    created = cli(env, "keys", "create", "--owner", "state-file-user", "--json")
    assert created.returncode == 0, created.stderr[-2000:]
    listed = cli(env, "keys", "list")
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert "state-file-user" in listed.stdout
    versions = cli(env, "versions", "list", "imagenet")
    assert versions.returncode == 0, versions.stderr[-2000:]
    assert "imagenet: live v1" in versions.stdout and "packaged" in versions.stdout


def test_variables_the_user_set_win_over_the_state_file(tmp_path, moto_endpoint):
    env = clean_env(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:9", AWS_ACCESS_KEY_ID="x",
                    AWS_SECRET_ACCESS_KEY="y")
    write_state(env, moto_endpoint, "ignored", os.getpid())
    assert stackfile.apply_state(dict(env)) is None
    fresh = clean_env(tmp_path)
    applied = dict(fresh)
    assert stackfile.apply_state(applied)["aws_endpoint"] == moto_endpoint
    assert applied["AWS_ENDPOINT_URL"] == moto_endpoint and applied["CLASSIFYCLOUD_PREFIX"] == "ignored"
    assert applied["AWS_ACCESS_KEY_ID"] == "local" and applied["CLASSIFYCLOUD_URL"] == "http://127.0.0.1:9"


def test_up_removes_only_its_own_state_file(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = stackfile.write_state("http://127.0.0.1:1", "http://127.0.0.1:2", "p", "p-data", "us-east-1")
    assert stackfile.read_state()["web_url"] == "http://127.0.0.1:2"
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == "0o700"
    with open(path) as fh:
        doc = json.load(fh)
    with open(path, "w") as fh:   # a second `up` wrote its own since
        json.dump({**doc, "pid": 1}, fh)
    stackfile.remove_state()
    assert os.path.exists(path)
    stackfile.write_state("http://127.0.0.1:1", "http://127.0.0.1:2", "p", "p-data", "us-east-1")
    stackfile.remove_state()
    assert not os.path.exists(path)


def test_without_a_runtime_dir_the_state_file_is_in_the_config_dir(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "missing")}
    assert stackfile.state_path(env) == str(tmp_path / ".config" / "classifycloud" / "stack.json")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "cfg")
    assert stackfile.state_path(env) == str(tmp_path / "cfg" / "classifycloud" / "stack.json")
