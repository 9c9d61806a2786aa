"""`classifycloud up` as a new user starts it, and clients of other systems beside it: Triton's own client, and
a second terminal's CLI with no AWS variables set (it finds the stack by up's state file)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import requests
import tritonclient.http as triton

from classifycloud.local import free_port, samples_dir

pytestmark = pytest.mark.slow


def user_env(tmp) -> dict:
    """A new user's terminal: no AWS or ClassifyCloud variables, a home and runtime dir of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLASSIFYCLOUD_"))}
    for name in ("home", "run", "config"):
        (tmp / name).mkdir(exist_ok=True)
    env.update(HOME=str(tmp / "home"), XDG_RUNTIME_DIR=str(tmp / "run"), XDG_CONFIG_HOME=str(tmp / "config"))
    return env


def cli(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "classifycloud", *args], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def up(tmp_path_factory):
    """`classifycloud up` (imagenet only, so it loads in seconds), waited for until its sample tables ran."""
    tmp = tmp_path_factory.mktemp("up")
    env, port = user_env(tmp), free_port()
    log = open(tmp / "up.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "classifycloud", "up", "--port", str(port)],
                            env={**env, "CLASSIFYCLOUD_SERVICES": "imagenet", "CLASSIFYCLOUD_METRICS_ENABLED": "false"},
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "Ctrl-C stops everything" not in (tmp / "up.log").read_text():
        assert proc.poll() is None, (tmp / "up.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp / "up.log").read_text()[-3000:]
        time.sleep(0.5)
    try:
        yield proc, f"127.0.0.1:{port}", env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def test_tritons_client_classifies_chelsea_as_egyptian_cat_on_a_stack_started_with_up(up):
    _, host, _ = up
    with open(os.path.join(samples_dir(), "chelsea.jpg"), "rb") as fh:
        chelsea = fh.read()
    client = triton.InferenceServerClient(host, network_timeout=180.0, connection_timeout=30.0)
    try:
        assert client.is_server_live() and client.is_model_ready("imagenet")
        image = triton.InferInput("image", [1], "BYTES")
        image.set_data_from_numpy(np.array([chelsea], dtype=np.object_), binary_data=True)
        result = client.infer("imagenet", [image], outputs=[triton.InferRequestedOutput("labels"),
                                                           triton.InferRequestedOutput("scores")])
    finally:
        client.close()
    labels, scores = result.as_numpy("labels"), result.as_numpy("scores")
    assert labels[0][0].decode() == "Egyptian cat", labels
    plain = requests.post(f"http://{host}/classify", files={"image": ("chelsea.jpg", chelsea)}, timeout=180).json()
    assert plain["results"][0]["label"] == "Egyptian cat"
    assert abs(float(scores[0][0]) - plain["results"][0]["score"]) < 1e-5


def test_a_second_terminal_lists_versions_and_keys_with_no_aws_variables_set(up):
    _, _, env = up
    versions = cli(env, "versions", "list")
    assert versions.returncode == 0 and "imagenet" in versions.stdout, versions.stderr
    keys = cli(env, "keys", "list")
    assert keys.returncode == 0 and "Traceback" not in keys.stderr, keys.stderr


def test_after_ctrl_c_the_cli_says_in_one_line_that_no_stack_runs(up):
    proc, _, env = up
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    out = cli(env, "keys", "list")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == "", out.stderr
