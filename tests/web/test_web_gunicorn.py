"""gunicorn -w 2 serves the app: one reply queue per worker process, created after fork, deleted on exit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests
from waiting import wait_for
from web_peer import PeerWorker

from classifycloud.local import free_port
from shared import naming
from shared.aws import client
from webserver.serve import gunicorn_command

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)


def reply_queues(settings) -> list[str]:
    resp = client("sqs", settings).list_queues(QueueNamePrefix=naming.reply_queue_prefix(settings.prefix))
    return resp.get("QueueUrls", [])



SERVE = ("from shared.config import get_settings; from webserver import serve; "
         "serve(get_settings(), processes=1, host='127.0.0.1', port={port})")


@pytest.fixture(params=["command"])
def gunicorn_server(request, web_settings, start_server, tmp_path):
    """gunicorn on a free port, from gunicorn_command (2 processes) or serve() (1); stopped with SIGTERM."""
    port = free_port()
    if request.param == "command":
        cmd = gunicorn_command(web_settings, processes=2, host="127.0.0.1", port=port)
    else:
        cmd = [sys.executable, "-c", SERVE.format(port=port)]
    return start_server(cmd, port, tmp_path / "gunicorn.log")


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


class _PickyPeer(PeerWorker):
    """Answers only URLs containing 'answer-'; leaves the rest queued (a worker that never gets to them)."""

    def _answer(self, url: str, msg: dict) -> None:
        if "answer-" in msg["Body"]:
            super()._answer(url, msg)


@pytest.mark.slow
def test_sigterm_answers_each_waiting_request_or_503s_it_with_its_job_id_then_deletes_the_queue(
        web_settings, provisioned, tmp_path):
    # an 8 s drain: the peer's replies must land in it with the other core busy (a 3 s one was missed once)
    settings = web_settings.replace(shutdown_drain_s=8.0, reply_timeout_s=60.0)
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen(gunicorn_command(settings, processes=1, host="127.0.0.1", port=port),
                            env={**os.environ, **settings.to_env()}, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    answers: dict[str, requests.Response] = {}
    try:
        wait_for(lambda: len(reply_queues(settings)) == 1)

        def one(name):
            answers[name] = requests.get(base + "/classify", params={"url": f"http://example.com/{name}.jpg"},
                                         timeout=90)

        names = [f"answer-{i}" for i in range(10)] + [f"never-{i}" for i in range(10)]
        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        wait_for(lambda: sum(int(v) for v in client("sqs", settings).get_queue_attributes(
            QueueUrl=provisioned["imagenet"], AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"].values()) == 20)
        peer = _PickyPeer(settings)   # its clients are made before the signal: only its answers fall in the drain
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        peer.start()   # replies arriving during the drain still reach their waiters
        try:
            for t in threads:
                t.join(60)
        finally:
            peer.stop()
        assert proc.wait(30) == 0
        stopped_after = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    assert len(answers) == 20, (tmp_path / "gunicorn.log").read_text()[-3000:]
    for name, r in answers.items():
        if name.startswith("answer-"):
            assert r.status_code == 200 and r.json()["results"][0]["label"] == f"url:http://example.com/{name}.jpg"
        else:
            body = r.json()
            assert r.status_code == 503 and body["error"]["code"] == "shutting_down", (name, r.text)
            assert body["id"] and body["status_url"].endswith(f"/jobs/{body['id']}")
    assert stopped_after < 8.0 + 10
    assert reply_queues(settings) == []                 # deleted after the waiters were answered
    # the 503'd jobs can be polled: their marker is in S3, so /jobs/<id> says pending (not unknown)
    from webserver.app import create_app
    app = create_app(settings)
    try:
        for name, r in answers.items():
            if name.startswith("never-"):
                assert app.test_client().get(f"/jobs/{r.json()['id']}").status_code == 202
    finally:
        app.extensions["classifycloud"].close()


@pytest.mark.slow
def test_request_line_over_gunicorn_limit_is_a_json_414_and_a_long_url_under_it_a_json_400(gunicorn_server):
    base, _ = gunicorn_server
    r = requests.get(base + "/classify", params={"url": "http://example.com/" + "a" * 9000}, timeout=10)
    assert r.status_code == 414 and r.headers["Content-Type"] == "application/json"
    assert r.json()["error"]["code"] == "uri_too_long" and "POST" in r.json()["error"]["message"]
    # 5000 characters: over gunicorn's default 4094, under ours; the app's own URL check answers
    r = requests.get(base + "/classify", params={"url": "http://example.com/" + "a" * 5000}, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_url"
    assert requests.get(base + "/livez", timeout=5).status_code == 200   # the server is fine afterwards


def test_one_gunicorn_launch_path_cli_serve_conf_and_unit_agree(monkeypatch, web_settings):
    import configparser
    import sys

    from classifycloud import cli
    from shared.config import Settings
    from webserver import gunicorn_conf
    seen = {}
    monkeypatch.setattr(os, "execv", lambda path, argv: seen.update(path=path, argv=argv))
    monkeypatch.setenv("CLASSIFYCLOUD_WEB_PORT", "8099")
    cli.cmd_web(["--processes", "3"])
    settings = Settings.from_env()
    assert seen["argv"] == gunicorn_command(settings, processes=3)   # the CLI is the same command line
    flags = " ".join(seen["argv"])
    for overriding in ("--graceful-timeout", "--timeout", "-k ", "--worker-class"):
        assert overriding not in flags                               # gunicorn_conf.py alone decides these
    assert gunicorn_conf.graceful_timeout >= settings.reply_timeout_s
    assert gunicorn_conf.graceful_timeout >= settings.shutdown_drain_s
    assert gunicorn_conf.worker_class == "webserver.gunicorn_worker.JsonErrorWorker"
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str
    unit.read(os.path.join(os.path.dirname(__file__), "..", "..", "ami", "systemd", "classifycloud-web.service"))
    assert unit["Service"]["ExecStart"].endswith("/classifycloud web")
    assert int(unit["Service"]["TimeoutStopSec"]) > gunicorn_conf.graceful_timeout  # systemd outwaits the drain
    assert sys.modules["webserver.serve"].CONF.endswith("gunicorn_conf.py")


def _conf_threads(**env: str) -> int:
    """gunicorn_conf.threads as a fresh process with these CLASSIFYCLOUD_* variables reads it."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFYCLOUD_")}
    out = subprocess.run([sys.executable, "-c", "from webserver import gunicorn_conf; print(gunicorn_conf.threads)"],
                         env={**clean, **{f"CLASSIFYCLOUD_{k.upper()}": v for k, v in env.items()}},
                         capture_output=True, text=True, timeout=60, check=True)
    return int(out.stdout.strip())


def test_gunicorn_threads_come_from_settings_and_the_default_follows_the_reply_timeout_and_concurrency():
    assert _conf_threads(web_threads="7") == 7
    # derived: the larger of the expected concurrency (30) and requests/s x reply timeout (each request
    # waiting in a stall holds a thread), + 2 for probes
    assert _conf_threads(reply_timeout_s="40", web_expected_rps="1") == 42
    assert _conf_threads(reply_timeout_s="240", web_expected_rps="0.5") == 122
    assert _conf_threads(reply_timeout_s="60") == 32                               # the concurrency floor
    assert _conf_threads(web_expected_concurrency="50") == 52
    assert _conf_threads(reply_timeout_s="5", web_expected_concurrency="2") == 8   # never below 8
    assert _conf_threads(reply_timeout_s="600", web_expected_rps="10") == 256      # nor above 256
    assert _conf_threads() == 32   # the defaults (max(30, 0.25/s x 120 s) + 2): what was hard-coded before
