"""gunicorn -w 2 serves the app: one reply queue per worker process, created after fork, deleted on exit."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
import requests

from shared import naming
from shared.aws import client
from web_peer import PeerWorker
from webserver.serve import gunicorn_command


def reply_queues(settings) -> list[str]:
    resp = client("sqs", settings).list_queues(QueueNamePrefix=naming.reply_queue_prefix(settings.prefix))
    return resp.get("QueueUrls", [])


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


SERVE = ("from shared.config import get_settings; from webserver import serve; "
         "serve(get_settings(), processes=1, host='127.0.0.1', port={port})")


@pytest.fixture(params=["command"])
def gunicorn_server(request, web_settings, provisioned, tmp_path):
    """gunicorn on a free port, from gunicorn_command (2 processes) or serve() (1); stopped with SIGTERM."""
    import socket
    import sys
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if request.param == "command":
        cmd = gunicorn_command(web_settings, processes=2, host="127.0.0.1", port=port)
    else:
        cmd = [sys.executable, "-c", SERVE.format(port=port)]
    log = open(tmp_path / "gunicorn.log", "w+")  # a file, not a pipe: a full pipe would block gunicorn
    proc = subprocess.Popen(cmd, env={**os.environ, **web_settings.to_env()},
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return requests.get(base + "/services", timeout=2).status_code == 200
        except requests.ConnectionError:
            assert proc.poll() is None, (tmp_path / "gunicorn.log").read_text()
            return False

    try:
        wait_for(up)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


@pytest.mark.slow
def test_gunicorn_two_processes_each_own_a_reply_queue_answer_correctly_and_delete_them_on_exit(
        gunicorn_server, web_settings):
    base, proc = gunicorn_server
    wait_for(lambda: len(reply_queues(web_settings)) == 2)
    queues = set(reply_queues(web_settings))
    peer = PeerWorker(web_settings).start()
    answers = {}

    def one(i):
        url = f"http://example.com/g-{i}.jpg"
        r = requests.get(base + "/classify", params={"url": url}, timeout=60)
        answers[i] = (r.status_code, r.json(), "url:" + url)

    try:
        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
    finally:
        peer.stop()
    assert len(answers) == 12
    assert all(status == 200 and body["results"][0]["label"] == want for status, body, want in answers.values())
    # every request named one of the two processes' own queues (which process took it is the kernel's pick)
    assert {q.reply_to for q in peer.requests} <= queues
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert reply_queues(web_settings) == []


@pytest.mark.slow
@pytest.mark.parametrize("gunicorn_server", ["serve"], indirect=True)
def test_serve_runs_gunicorn_in_process_answers_and_deletes_its_reply_queue_on_sigterm(
        gunicorn_server, web_settings):
    base, proc = gunicorn_server
    wait_for(lambda: len(reply_queues(web_settings)) == 1)
    peer = PeerWorker(web_settings).start()
    try:
        r = requests.post(base + "/classify", json={"url": "http://example.com/s.jpg"}, timeout=60)
    finally:
        peer.stop()
    assert r.status_code == 200 and r.json()["results"][0]["label"] == "url:http://example.com/s.jpg"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert reply_queues(web_settings) == []
