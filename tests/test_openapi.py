"""webserver/openapi.yaml stays true: it validates, describes every route, and real responses match it."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
import requests
from openapi_check import CHECKED, flask_rule_to_path, operation_for, response_problems
from openapi_spec_validator import validate

from classifycloud.local import free_port
from webserver.app import create_app
from webserver.docs import load_spec
from webserver.serve import gunicorn_command

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture
def app(settings, catalogue):
    app = create_app(settings, catalogue)
    yield app
    app.extensions["classifycloud"].close()


def test_the_document_is_valid_openapi_3_1():
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    validate(spec)


def test_every_route_of_the_app_is_described_with_its_methods(app):
    paths = load_spec()["paths"]
    missing = []
    for rule in app.url_map.iter_rules():
        path = flask_rule_to_path(rule.rule)
        for method in sorted(rule.methods - IGNORED_METHODS):
            if method.lower() not in paths.get(path, {}):
                missing.append(f"{method} {rule.rule}")
    assert missing == [], f"routes not described in webserver/openapi.yaml: {missing}"


def test_routes_added_in_parallel_are_described_too():
    for method, path in [("GET", "/livez"), ("GET", "/readyz"), ("POST", "/faces/staff"),
                         ("POST", "/cv/mcloud/skin"), ("POST", "/cv/imagenet")]:
        assert operation_for(method, path) is not None, (method, path)
    assert operation_for("POST", "/cv/mcloud/skin")["operationId"] == "xcloudSkin"


def test_openapi_json_and_docs_are_served_from_the_file(app):
    c = app.test_client()
    r = c.get("/openapi.json")
    assert r.status_code == 200 and r.json == json.loads(json.dumps(load_spec()))
    page = c.get("/docs")
    assert page.status_code == 200 and b"/openapi.json" in page.data
    assert b"http://" not in page.data and b"https://" not in page.data, "the docs page loads nothing from outside"


def test_a_response_that_breaks_its_schema_is_reported():
    good = json.dumps({"id": "a", "service": "imagenet", "status": "pending", "status_url": "http://x/jobs/a"})
    assert response_problems("POST", "/jobs", 202, "application/json", good.encode()) == []
    bad = json.dumps({"id": "a", "status": "queued"})
    problems = response_problems("POST", "/jobs", 202, "application/json", bad.encode())
    assert any("status_url" in p for p in problems) and any("pending" in p for p in problems)
    assert response_problems("GET", "/jobs/abc", 404, "text/html", b"<p>no</p>")
    assert response_problems("POST", "/cv/imagenet", 422, "application/json",
                             json.dumps({"error": {"code": "x", "message": "y"}}).encode())


@pytest.mark.slow
def test_the_web_tests_responses_are_checked_by_the_conftest_hook(settings, provisioned, catalogue):
    """The session fixture in conftest wraps requests: every gunicorn response in any test is validated."""
    port = free_port()
    env = dict(os.environ, **settings.to_env())
    proc = subprocess.Popen(gunicorn_command(settings, processes=1, host="127.0.0.1", port=port), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        before = CHECKED["count"]
        deadline = time.monotonic() + 60
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/services", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.3)
        assert r.status_code == 200
        assert requests.post(f"http://127.0.0.1:{port}/classify", json={"url": "ftp://x/y"}, timeout=5).status_code == 400
        assert requests.get(f"http://127.0.0.1:{port}/jobs/nope", timeout=5).status_code == 404
        assert CHECKED["count"] - before == 3
    finally:
        proc.terminate()
        proc.wait(30)
