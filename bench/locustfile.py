"""Load test: the realistic mix of ClassifyCloud calls (run headless by bench/load_test.py, not a test).

Mix per simulated user (weights): URL GET 5, upload 3, XCloud route 2, async job + poll 1,
bad inputs 1 (expected 4xx: counted as successes when the status is the expected one).
Settings from the environment: CC_SAMPLES_URL (where chelsea.jpg / coffee.jpg are served),
CC_SAMPLES_DIR (their files), CC_API_KEY (sent as a bearer key when set).
"""
from __future__ import annotations

import os
import random
import time

from locust import HttpUser, between, task

SAMPLES_URL = os.environ.get("CC_SAMPLES_URL", "http://127.0.0.1:8000")
SAMPLES_DIR = os.environ.get("CC_SAMPLES_DIR", os.path.join(os.path.dirname(__file__), "..", "classifycloud",
                                                            "samples"))
API_KEY = os.environ.get("CC_API_KEY", "")
PHOTOS = ("chelsea", "coffee")
_BYTES = {name: open(os.path.join(SAMPLES_DIR, f"{name}.jpg"), "rb").read() for name in PHOTOS}


class ClassifyUser(HttpUser):
    """One client: mostly synchronous classification, some jobs, a few mistakes."""

    wait_time = between(0.1, 0.5)

    def on_start(self):
        if API_KEY:
            self.client.headers["Authorization"] = f"Bearer {API_KEY}"

    def _expect(self, resp, status: int, check=None):
        if resp.status_code != status:
            resp.failure(f"HTTP {resp.status_code} (wanted {status}): {resp.text[:200]}")
        elif check is not None and not check(resp):
            resp.failure(f"unexpected body: {resp.text[:200]}")
        else:
            resp.success()

    @staticmethod
    def _has_results(resp) -> bool:
        try:
            return bool(resp.json().get("results"))
        except ValueError:
            return False

    @task(5)
    def classify_url(self):
        photo = random.choice(PHOTOS)
        with self.client.get("/classify", params={"url": f"{SAMPLES_URL}/{photo}.jpg"}, name="GET /classify?url",
                             catch_response=True) as r:
            self._expect(r, 200, self._has_results)

    @task(3)
    def classify_upload(self):
        photo = random.choice(PHOTOS)
        with self.client.post("/classify", files={"image": (f"{photo}.jpg", _BYTES[photo], "image/jpeg")},
                              name="POST /classify (upload)", catch_response=True) as r:
            self._expect(r, 200, self._has_results)

    @task(2)
    def xcloud_route(self):
        photo = random.choice(PHOTOS)
        with self.client.post("/cv/imagenet", files={"image": (f"{photo}.jpg", _BYTES[photo], "image/jpeg")},
                              name="POST /cv/<service>", catch_response=True) as r:
            self._expect(r, 200, lambda resp: resp.json().get("code") == 0)

    @task(1)
    def job_and_poll(self):
        with self.client.post("/jobs", json={"url": f"{SAMPLES_URL}/coffee.jpg"}, name="POST /jobs",
                              catch_response=True) as r:
            self._expect(r, 202)
            if r.status_code != 202:
                return
            job_id = r.json()["id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with self.client.get(f"/jobs/{job_id}", name="GET /jobs/<id>", catch_response=True) as p:
                if p.status_code == 202:
                    p.success()
                    time.sleep(0.3)
                    continue
                self._expect(p, 200, self._has_results)
                return
        self.environment.events.request.fire(request_type="JOB", name="job finished in 60 s", response_time=60000,
                                             response_length=0, exception=TimeoutError("job not done in 60 s"),
                                             context={})

    @task(1)
    def bad_inputs(self):
        """Mistakes clients make; the right 4xx is a success, anything else a failure."""
        case = random.randrange(3)
        if case == 0:
            with self.client.post("/classify", files={"image": ("notes.txt", b"not an image", "text/plain")},
                                  name="bad: non-image (422)", catch_response=True) as r:
                self._expect(r, 422)
        elif case == 1:
            with self.client.get("/classify", params={"url": "ftp://example.com/x.jpg"},
                                 name="bad: ftp URL (400)", catch_response=True) as r:
                self._expect(r, 400)
        else:
            with self.client.get("/classify", params={"url": f"{SAMPLES_URL}/chelsea.jpg", "service": "nope"},
                                 name="bad: unknown service (404)", catch_response=True) as r:
                self._expect(r, 404)
