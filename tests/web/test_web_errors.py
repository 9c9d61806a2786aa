"""The error layer: one table for native and XCloud bodies, no import circle, domain failures mapped to HTTP."""
from __future__ import annotations

import subprocess
import sys

import pytest

from webserver.errors import ERRORS, XCLOUD_INTERNAL, XCLOUD_INVALID_URL, ApiError, status_for_code, xcloud_code
from webserver.failures import (
    CorruptRecord,
    ImageTooLarge,
    QueueUnavailable,
    ServiceUnavailable,
    StorageUnavailable,
    UnknownService,
)
from webserver.jobs import JobStore

ROUTE_MODULES = {"webserver.routes", "webserver.xcloud", "webserver.faces", "webserver.docs"}


def test_importing_the_error_layer_in_a_fresh_interpreter_imports_no_route_module():
    out = subprocess.run([sys.executable, "-c", "import sys, webserver.errors; "
                          "print(' '.join(m for m in sys.modules if m.startswith('webserver.')))"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert "webserver.errors" in out and not ROUTE_MODULES & set(out), out


@pytest.mark.parametrize("code", sorted(ERRORS))
def test_every_code_in_the_table_renders_the_same_status_natively_and_in_the_xcloud_envelope(code):
    err = ApiError.of(code, "why", "rid-1", status_url="http://x/jobs/rid-1")
    assert err.status == ERRORS[code].status and err.body()["error"] == {"code": code, "message": "why", "id": "rid-1"}
    env = err.envelope()
    assert env["code"] == ERRORS[code].xcloud and env["error"] == code and env["results"] is None
    assert env["id"] == "rid-1" and env["status_url"] == "http://x/jobs/rid-1"


def test_codes_outside_the_table_follow_the_fetch_and_internal_rules():
    assert status_for_code("fetch_failed") == 422 and xcloud_code("fetch_failed") == XCLOUD_INVALID_URL
    assert status_for_code("internal_oops") == 500 and xcloud_code("internal_oops") == XCLOUD_INTERNAL
    assert status_for_code("something_new") == 422


@pytest.mark.parametrize("failure, status", [
    (StorageUnavailable("s3 down", "r1"), 503), (CorruptRecord("bad json", "r1"), 502),
    (UnknownService("no such", services=["imagenet"]), 404), (ServiceUnavailable("model missing"), 503),
    (QueueUnavailable("sqs down"), 503), (ImageTooLarge("too big", "r1"), 413)])
def test_domain_failures_map_to_their_http_status_through_the_table(failure, status):
    err = ApiError.from_failure(failure)
    assert (err.status, err.code, err.message, err.request_id) == (status, failure.code, failure.message,
                                                                   failure.request_id)
    assert err.extra == failure.extra


def test_the_job_store_raises_a_domain_failure_and_the_route_answers_503(make_app, web_settings):
    import boto3
    from botocore.config import Config

    from classifycloud.local import free_port
    dead = boto3.session.Session().client("s3", region_name="us-east-1",
                                          endpoint_url=f"http://127.0.0.1:{free_port()}",
                                          config=Config(retries={"max_attempts": 1}, connect_timeout=1))
    with pytest.raises(StorageUnavailable):
        JobStore(web_settings, dead).result("job-1")
    app = make_app(web_settings)
    app.extensions["classifycloud"].jobs = JobStore(web_settings, dead)
    r = app.test_client().get("/jobs/job-1")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "storage_unavailable"
