"""Instance identity: configured id, IMDSv2 (moto server's metadata endpoint), hostname-pid fallback."""
from __future__ import annotations

import os
import socket

from classifycloud.local import free_port
from shared.config import Settings
from worker.identity import from_imds, instance_id


def test_configured_instance_id_wins(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1")
    assert instance_id(Settings(instance_id="local-7")) == "local-7"


def test_instance_id_comes_from_imdsv2_when_not_configured(moto_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto_endpoint)
    assert from_imds() == "i-fake"          # moto's metadata endpoint: token PUT, then GET
    assert instance_id(Settings()) == "i-fake"


def test_instance_id_falls_back_to_hostname_and_pid_off_ec2(monkeypatch):
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens
    assert instance_id(Settings()) == f"{socket.gethostname()}-{os.getpid()}"
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert from_imds() is None
