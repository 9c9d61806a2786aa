"""gunicorn's access log: paths without query strings, no credentials, the client's X-Forwarded-For."""
from __future__ import annotations

import time

import pytest
import requests

from classifycloud.local import free_port
from webserver.serve import gunicorn_command


@pytest.fixture
def gunicorn_logged(web_settings, start_server, tmp_path):
    """gunicorn (1 process) on a free port with its output in a file; yields (base URL, log path)."""
    port = free_port()
    log_path = tmp_path / "gunicorn.log"
    base, _ = start_server(gunicorn_command(web_settings, processes=1, host="127.0.0.1", port=port), port, log_path)
    return base, log_path


@pytest.mark.slow
def test_access_log_has_no_query_or_credentials_and_names_the_forwarded_client(gunicorn_logged):
    base, log_path = gunicorn_logged
    secret_url = "https://alice:pa55word@images.example.com/cat.jpg?X-Amz-Signature=deadbeef&token=T0KEN"
    r = requests.get(base + "/classify", params={"url": secret_url, "service": "nosuch"},
                     headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30)
    assert r.status_code == 404
    r = requests.get(base + "/jobs/abc?sig=S1GNATURE", headers={"X-Forwarded-For": "198.51.100.9"}, timeout=30)
    assert r.status_code == 404
    deadline = time.monotonic() + 15
    while "198.51.100.9" not in log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    text = log_path.read_text()
    lines = [ln for ln in text.splitlines() if '"GET ' in ln]
    assert any('"GET /classify HTTP/1.1" 404' in ln and "xff=203.0.113.7" in ln for ln in lines), lines
    assert any('"GET /jobs/abc HTTP/1.1" 404' in ln and "xff=198.51.100.9" in ln for ln in lines), lines
    for secret in ("pa55word", "deadbeef", "T0KEN", "S1GNATURE", "X-Amz-Signature", "alice"):
        assert secret not in text
    assert not any("?" in ln for ln in lines)
