"""Shared fixtures: a moto server (the only AWS stand-in), fresh settings, provisioned queues."""
from __future__ import annotations

import os
import uuid

import pytest

from classifycloud.local import aws_env, free_port, start_moto  # noqa: F401  (tests import free_port from here)
from shared.catalogue import load_catalogue
from shared.config import Settings

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "classifycloud", "samples")


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto server for the whole session; AWS_* variables point boto3 (and children) at it."""
    server, url = start_moto()
    env = aws_env(url)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield url
    server.stop()
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
def provisioned(settings, catalogue):
    """Queues and bucket created for `settings`; yields {service: queue_url, '__terminate__': url}."""
    from classifycloud.provision import ensure_all
    return ensure_all(settings, catalogue)


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
