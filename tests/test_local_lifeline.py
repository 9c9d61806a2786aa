"""`classifycloud up` takes its children with it: SIGKILL of up, or Ctrl-C, leaves no process and a free port."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import requests

from classifycloud.local import free_port


def _children() -> dict[int, int]:
    """pid -> ppid of every live (non-zombie) process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            out[int(name)] = int(fields[1])
    return out


def descendants(pid: int) -> set[int]:
    """Every live process below pid."""
    table, found, frontier = _children(), set(), {pid}
    while frontier:
        frontier = {p for p, pp in table.items() if pp in frontier and p not in found}
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    table = _children()
    return {p for p in pids if p in table}


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` again: as gunicorn does, with SO_REUSEADDR, so a connection the
    stopped server closed (TIME_WAIT) does not count, and a listener still there does."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


@pytest.fixture
def up(tmp_path):
    """`classifycloud up` (autoscaled, min 1 worker) on a free port, started and waited for; killed afterwards."""
    port = free_port()
    log = open(tmp_path / "up.log", "w+")
    (tmp_path / "run").mkdir()
    env = {**os.environ, "CLASSIFYCLOUD_METRICS_ENABLED": "false", "CLASSIFYCLOUD_MIN_WORKERS": "1",
           "CLASSIFYCLOUD_SERVICES": "imagenet",   # one model loads in seconds; `up` skips the services no worker hosts
           "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    for k in ("AWS_ENDPOINT_URL",):   # up starts its own AWS endpoint
        env.pop(k, None)
    proc = subprocess.Popen([sys.executable, "-m", "classifycloud", "up", "--port", str(port), "--web-processes", "2"],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        try:
            if requests.get(base + "/healthz", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    else:
        raise AssertionError("stack not ready:\n" + (tmp_path / "up.log").read_text()[-3000:])
    kids = descendants(proc.pid)
    yield proc, port, kids, tmp_path / "up.log"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for p in alive(kids):
        os.kill(p, signal.SIGKILL)
    log.close()


def _gone_within(kids: set[int], port: int, limit_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if not alive(kids) and port_free(port):
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"after {limit_s:.0f}s: {len(alive(kids))} children alive, port free: {port_free(port)}")


@pytest.mark.slow
@pytest.mark.timing
def test_sigkill_of_up_takes_every_child_with_it_and_frees_the_port(up):
    proc, port, kids, _ = up
    assert len(kids) >= 4       # gunicorn master + 2 workers + 1 classifycloud worker (at least)
    proc.kill()
    proc.wait()
    took = _gone_within(kids, port, 8.0)
    print(f"children gone and port free {took:.1f}s after SIGKILL of up")


@pytest.mark.slow
@pytest.mark.timing
def test_ctrl_c_stops_everything_within_a_few_seconds(up):
    proc, port, kids, log = up
    state = log.parent / "run" / "classifycloud" / "stack.json"
    assert json.loads(state.read_text())["web_url"] == f"http://127.0.0.1:{port}"
    # a second terminal, with no AWS variables, finds the stack by the state file
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CLASSIFYCLOUD_"))}
    second = subprocess.run([sys.executable, "-m", "classifycloud", "versions", "list", "imagenet"],
                            env={**env, "XDG_RUNTIME_DIR": str(state.parent.parent), "HOME": str(log.parent)},
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 0 and "imagenet: live v1" in second.stdout, second.stderr[-2000:]
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    assert proc.wait(15) == 0, log.read_text()[-2000:]
    assert not state.exists()
    took = _gone_within(kids, port, 3.0) + (time.monotonic() - t0)
    print(f"everything stopped {took:.1f}s after Ctrl-C")
    assert "stopped." in log.read_text()


@pytest.mark.slow
def test_watch_parent_stops_a_child_whose_parent_died(tmp_path):
    # a grandchild whose parent exits at once: it must notice and stop by itself (no process group kill)
    code = ("import os,sys,time,signal;from shared.lifeline import watch_parent;"
            "parent=os.getpid();pid=os.fork()\n"
            "if pid: time.sleep(0.5);os._exit(0)\n"
            "open(sys.argv[1],'w').write(str(os.getpid()));watch_parent(parent,interval_s=0.1);time.sleep(60)")
    marker = tmp_path / "pid"
    subprocess.run([sys.executable, "-c", code, str(marker)], check=True, timeout=30,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    deadline = time.monotonic() + 10
    while not marker.exists() or not marker.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pid = int(marker.read_text())
    while pid in alive({pid}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pid not in alive({pid})


def test_watch_parent_is_off_at_zero():
    from shared.lifeline import watch_parent
    assert watch_parent(0) is None
