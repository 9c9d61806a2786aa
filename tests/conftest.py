"""Shared fixtures: a moto server (the only AWS stand-in), fresh settings, provisioned queues; test grouping."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest
from catalogue_subset import only_services

from classifycloud.local import aws_env, free_port  # noqa: F401  (tests import free_port from here)
from shared.catalogue import load_catalogue
from shared.config import Settings

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "classifycloud", "samples")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory):
    """A moto server for the whole session; AWS_* variables point boto3 (and children) at it.

    In a process of its own: serving requests in a thread of the test's process took that process's GIL
    from the code under test (an in-process web app, a peer worker thread).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path_factory.mktemp("moto") / "moto.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, f"the moto server exited ({server.returncode})"
        try:
            urllib.request.urlopen(url + "/moto-api/data.json", timeout=5).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "the moto server did not answer within 60 s"
            time.sleep(0.1)
    env = aws_env(url)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    server.terminate()
    try:
        server.wait(10)
    except subprocess.TimeoutExpired:
        server.kill()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def settings(moto_endpoint) -> Settings:
    """Settings with a prefix of their own, so tests never share queues; keys off (the edge tests turn them on)."""
    return Settings.from_env({}, prefix="t" + uuid.uuid4().hex[:10], metrics_enabled=False, api_keys="off")


@pytest.fixture(scope="session")
def catalogue():
    """The packaged catalogue."""
    return load_catalogue()


@pytest.fixture
def provisioned(request, settings, catalogue):
    """Queues and bucket created for `settings`; yields {service: queue_url, '__terminate__': url}.

    `@pytest.mark.services("imagenet", ...)` on a test or module provisions only those services' queues
    (0.08 s against 0.4-1.0 s for all twelve); a test that then touches another service fails on its missing
    queue, so the marker cannot hide a use.
    """
    from classifycloud.provision import ensure_all
    marker = request.node.get_closest_marker("services")
    return ensure_all(settings, only_services(catalogue, marker.args) if marker else catalogue)


@pytest.fixture(scope="session")
def full_stack(moto_endpoint):
    """One local stack (a web process, one worker) hosting every packaged service, shared by the tests that need
    them all: loading every model is the slow part, so it happens once per session, on the worker that runs the
    stack group."""
    from classifycloud.local import LocalStack
    settings = Settings.from_env({}, prefix="s" + uuid.uuid4().hex[:8], metrics_enabled=False)
    stack = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, workers=1).start()
    try:
        stack.wait_ready(timeout=300)
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def sample_bytes():
    """Bytes of the bundled real photos (scikit-image's chelsea, coffee, astronaut, rocket)."""
    out = {}
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        with open(os.path.join(SAMPLES, f"{name}.jpg"), "rb") as fh:
            out[name] = fh.read()
    return out


@pytest.fixture(scope="session", autouse=True)
def responses_match_the_openapi_description():
    """Every response our web server (gunicorn) gives to `requests` in any test is checked against the spec."""
    import requests
    from openapi_check import check_requests_response
    original = requests.Session.send

    def send(self, request, **kwargs):
        resp = original(self, request, **kwargs)
        if not kwargs.get("stream"):
            check_requests_response(resp)
        return resp

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(requests.Session, "send", send)
        yield


# --- running the suite in parallel (pytest-xdist, --dist loadgroup; see the Makefile and README) ---------------
# Each group runs on one xdist worker, in series: the deployment suite (Terraform against its own moto); the
# offline infrastructure checks (terraform, checkov, packer, shellcheck); and the tests that start whole stacks
# of processes with models loaded, which would otherwise compete for the two cores and the memory.
GROUPS = (
    ("deploy", ("test_deploy.py", "test_deploy_moved.py")),
    ("infra", ("test_infra_", "test_metrics_tf.py")),
    ("stack", ("test_e2e_", "test_local_lifeline.py", "test_local_housekeeping.py")),
)


def group_of(filename: str) -> str | None:
    """The xdist group of a test file, or None (the file is a unit of its own)."""
    for group, prefixes in GROUPS:
        if filename.startswith(prefixes):
            return group
    return None


# the longest units start first, one per worker, so that neither is left running alone at the end
FIRST = ("deploy", "stack", "tests/web/test_web_schemathesis.py")


@pytest.hookimpl(optionalhook=True)   # a hook of xdist's: unknown (and not called) under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """With --dist loadgroup: a group's files on one worker in series, every other file whole on one worker.

    Our own scheduler rather than xdist_group marks: xdist 3.8 tags a grouped test by rewriting its node
    id, which pytest 9 no longer honours, so the marks grouped nothing (the e2e versions module was split
    over two workers, each with its own stack). A file is never split: module fixtures stay on one worker.
    """
    if config.getoption("dist") != "loadgroup":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadScopeScheduling

    class FrontLoaded(OrderedDict):
        """xdist's work queue, with the units named in FIRST kept at its front in that order."""

        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            for first in reversed(FIRST):
                if first in self:
                    self.move_to_end(first, last=False)

    class GroupScheduling(LoadScopeScheduling):
        def __init__(self, config, log=None):
            super().__init__(config, log)
            self.workqueue = FrontLoaded()

        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return group_of(os.path.basename(path)) or path

    return GroupScheduling(config, log)


def pytest_terminal_summary(terminalreporter, config):
    """Every test's setup + call + teardown time, slowest first, in out/durations.tsv (kept out of git)."""
    if hasattr(config, "workerinput"):
        return
    total: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) in ("setup", "call", "teardown") and hasattr(rep, "duration"):
                total[rep.nodeid] = total.get(rep.nodeid, 0.0) + rep.duration
    if not total:
        return
    out = os.path.join(str(config.rootpath), "out")
    os.makedirs(out, exist_ok=True)
    name = os.environ.get("DURATIONS_FILE", "durations.tsv")
    with open(os.path.join(out, name), "w") as fh:
        fh.write("seconds\ttest\n")
        for nodeid, secs in sorted(total.items(), key=lambda kv: -kv[1]):
            fh.write(f"{secs:.2f}\t{nodeid}\n")
    terminalreporter.write_line(f"per-test durations: out/{name} ({len(total)} tests, {sum(total.values()):.0f} s)")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    """Captured output with lone surrogates (tests send undecodable bodies on purpose) made UTF-8-safe.

    xdist sends each report to the controller as UTF-8: a lone surrogate in a captured log crashed the worker.
    """
    def safe(text: str) -> str:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    report.sections = [(title, safe(content)) for title, content in report.sections]
