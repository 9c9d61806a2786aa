"""End to end: the local stack with the autoscaler grows under a burst and shrinks back when idle."""
from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from classifycloud.local import LocalStack
from shared.config import Settings

pytestmark = pytest.mark.slow


def test_burst_of_40_grows_the_fleet_answers_all_and_returns_to_min(moto_endpoint):
    settings = Settings.from_env({}, prefix="a" + uuid.uuid4().hex[:8], metrics_enabled=False,
                                 min_workers=1, max_workers=3, tick_s=1.0, latency_budget_s=0.5,
                                 scale_in_window_s=8.0, services=("imagenet",))
    stack = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, autoscale=True).start()
    sizes: list[int] = []
    done = threading.Event()

    def watch():
        while not done.is_set():
            c = stack.fleet.count()
            sizes.append(c.running + c.pending)
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        stack.wait_ready(timeout=240, workers=True)
        watcher.start()
        url = stack.sample_url("coffee")
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda _: requests.get(stack.base_url + "/classify",
                                                           params={"url": url}, timeout=200), range(40)))
        assert [r.status_code for r in answers] == [200] * 40
        assert all(r.json()["results"][0]["index"] == 967 for r in answers)
        assert max(sizes) >= 2, f"the fleet never grew: {sizes}"
        assert max(sizes) <= 3
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and (sizes[-1] != 1 or len(sizes) < 2):
            time.sleep(1)
        assert sizes[-1] == 1, f"fleet did not return to min_workers: {sizes[-20:]}"
        assert min(sizes) >= 1, "never below min_workers"
    finally:
        done.set()
        stack.stop()
