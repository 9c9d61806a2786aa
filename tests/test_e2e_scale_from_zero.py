"""End to end: the local stack at zero workers is ready, and one request launches a worker and is answered."""
from __future__ import annotations

import time
import uuid

import pytest
import requests

from classifycloud.local import LocalStack
from shared.config import Settings

pytestmark = pytest.mark.slow


def test_stack_at_zero_workers_is_ready_and_one_request_launches_a_worker_within_one_tick(moto_endpoint):
    tick = 2.0
    settings = Settings.from_env({}, prefix="z" + uuid.uuid4().hex[:8], metrics_enabled=False,
                                 min_workers=0, max_workers=2, tick_s=tick)
    stack = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, autoscale=True).start()
    try:
        stack.wait_ready(timeout=120)                     # readiness: no worker needed
        assert requests.get(stack.base_url + "/healthz", timeout=5).status_code == 503   # and none there
        c = stack.fleet.count()
        assert c.running + c.pending == 0
        import threading
        box = {}
        t0 = time.monotonic()
        t = threading.Thread(target=lambda: box.setdefault("r", requests.get(
            stack.base_url + "/classify", params={"url": stack.sample_url("chelsea")}, timeout=200)))
        t.start()
        launched_after = None
        while time.monotonic() - t0 < 30 and launched_after is None:
            c = stack.fleet.count()
            if c.running + c.pending:
                launched_after = time.monotonic() - t0
            time.sleep(0.1)
        t.join(200)
        r = box["r"]
        assert r.status_code == 200, r.text
        assert r.json()["results"][0]["index"] in range(281, 286)     # a cat
        assert launched_after is not None and launched_after <= tick + 1.5, launched_after
        print(f"worker launched {launched_after:.1f}s after the request (tick {tick:g}s); "
              f"answered after {r.elapsed.total_seconds():.1f}s")
    finally:
        stack.stop()
