"""Web fixtures: the app against the moto server, and a peer thread that plays the worker over real SQS."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import requests
from web_peer import PeerWorker

from webserver.app import create_app


@pytest.fixture
def web_settings(settings):
    """Short long-polls and timeouts so fixtures stop quickly."""
    return settings.replace(wait_time_s=1, reply_timeout_s=15.0)


@pytest.fixture
def make_app(provisioned):
    """Factory: an app for given settings; every app made is closed (reply queue deleted) afterwards."""
    apps = []

    def make(settings, **kw):
        app = create_app(settings, **kw)
        app.config["TESTING"] = False  # error handlers answer as in production
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["classifycloud"].close()


@pytest.fixture
def app(make_app, web_settings):
    """The web app with the packaged catalogue."""
    return make_app(web_settings)


@pytest.fixture
def web(app):
    """A test client for the app."""
    return app.test_client()


@pytest.fixture
def peer(web_settings, provisioned):
    """A started peer worker for the imagenet queue."""
    p = PeerWorker(web_settings).start()
    yield p
    p.stop()


@pytest.fixture
def start_server(web_settings, provisioned):
    """Factory: start(cmd, port, log_path) runs a web server process with its output in a file (a full pipe
    would block it) and returns (base URL, process) once GET /services answers 200; each is stopped with
    SIGTERM (then killed) afterwards unless the test already ended it."""
    started = []

    def start(cmd, port, log_path, settings=None):
        log = open(log_path, "w+")
        proc = subprocess.Popen(cmd, env={**os.environ, **(settings or web_settings).to_env()},
                                stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the server did not answer"
            try:
                if requests.get(base + "/services", timeout=30).status_code == 200:
                    return base, proc
            except requests.ConnectionError:
                time.sleep(0.3)

    yield start
    for proc, log in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
