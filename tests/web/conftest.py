"""Web fixtures: the app against the moto server, and a peer thread that plays the worker over real SQS."""
from __future__ import annotations

import pytest

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
