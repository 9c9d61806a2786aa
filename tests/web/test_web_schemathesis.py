"""Schemathesis (every check) against the served /openapi.json on a real web stack finds nothing.

The stack: gunicorn running the real app, the moto server for SQS/S3/DynamoDB, and the peer thread playing
the worker over real SQS (with its heartbeat, so /healthz is healthy as with a ready worker). Bounded
(MAX_EXAMPLES per operation) and deterministic (schemathesis's deterministic generation)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from web_peer import PeerWorker, write_heartbeat

from classifycloud.local import free_port
from webserver.serve import gunicorn_command

MAX_EXAMPLES = 10
# The document states every refusal a schema can (tests/web/test_web_schema_exact.py holds the base64
# pattern to the server's decoder, and a form's image to "one present"). These stay refusals of
# schema-valid requests, because they depend on things no JSON Schema sees:
# - an image URL whose host resolves to a private, loopback or link-local address (SSRF): 400
#   forbidden_address; the host is known only after DNS, at the worker (worker/fetch.py);
# - image bytes in a format the workers do not decode (PDF, TIFF, PSD ...): 415 unsupported_format, and
#   bytes no decoder reads: 422 invalid_image; the schema says "base64 of an image", not which bytes;
# - an S3 location outside the key's folder or grants: 403 forbidden_location (grants live in DynamoDB);
# - a pin of a version the traffic policy does not serve: 403 pinning_not_allowed / version_not_serving.
# The hooks (schemathesis_hooks.py) generate instances that avoid them: real photos, the stack's own folder.
# Not the stateful phase: it takes DELETE /batches/<id> for a delete, but it cancels (the batch stays readable,
# state cancelling, as docs/API.md says), and it doubles the run time.
PHASES = "examples,coverage,fuzzing"
PEER_SERVICES = ("imagenet", "facesearch", "skin")   # the ones the document's fixed routes name


@pytest.fixture
def web_settings(settings):
    """A bounded reply timeout, long enough for the peer on a loaded machine."""
    return settings.replace(wait_time_s=1, reply_timeout_s=15.0)


@pytest.fixture
def worker(web_settings, provisioned):
    """The peer worker for the fixed routes' services, heartbeating 'ready' while it runs."""
    peer = PeerWorker(web_settings, services=PEER_SERVICES).start()
    stop = threading.Event()

    def beat():
        while not stop.is_set():
            write_heartbeat(web_settings, "schemathesis-peer")
            stop.wait(5)
    beats = threading.Thread(target=beat, daemon=True)
    beats.start()
    yield peer
    stop.set()
    beats.join(10)
    peer.stop()


def test_schemathesis_with_every_check_finds_no_failure_against_the_served_document(
        start_server, worker, web_settings, tmp_path):
    port = free_port()
    # a 25 s reply wait (under schemathesis's 30 s limits): the peer's reply once took 17 s with the other
    # core busy, and the web's 504 for a late reply counts as a server error
    settings = web_settings.replace(reply_timeout_s=25.0)
    base, _ = start_server(gunicorn_command(settings, processes=1, threads=8, host="127.0.0.1", port=port),
                           port, tmp_path / "gunicorn.log", settings=settings)
    report = tmp_path / "schemathesis.json"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
           "CC_SCHEMATHESIS_BUCKET": web_settings.bucket_name}
    cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
           "--config-file", str(Path(__file__).parent / "schemathesis.toml"), "run", f"{base}/openapi.json", "--phases", PHASES, "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
           "--generation-deterministic", "--workers", "1", "--request-timeout", "30", "--max-response-time", "30",
           "--no-color", "--report", "json", "--report-json-path", str(report)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)  # its cache too
    out = run.stdout + run.stderr
    print(out[out.find("Test cases:"):][:200])   # how many cases ran (the report's count)
    first = min((i for i in (out.find("ERRORS"), out.find("FAILURES")) if i >= 0), default=0)
    failures = out[first:]     # runtime errors (ERRORS) come before the failures
    assert run.returncode == 0, failures[:30000]
    assert "Test cases:" in out and "unique failures" not in out, out[-3000:]
