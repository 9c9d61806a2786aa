"""The edge end to end, keys on: CLI-made keys, the usage log and its report, the upload page in real Chromium."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter

import pytest
import requests

from classifycloud.local import LocalStack
from shared.config import Settings

pytestmark = pytest.mark.slow
CATS = range(281, 286)
CAT_NAMES = ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "classifycloud", "samples")


@pytest.fixture(scope="module")
def stack(moto_endpoint):
    """One web process and one worker hosting imagenet (all these tests use), API keys on."""
    settings = Settings.from_env({}, prefix="x" + uuid.uuid4().hex[:8], metrics_enabled=False, api_keys="on",
                                 api_key_cache_s=0.0, usage_flush_interval_s=0.2, services=("imagenet",))
    s = LocalStack(settings, endpoint=moto_endpoint, web_processes=1, workers=1).start()
    try:
        s.wait_ready(timeout=240)
        yield s
    finally:
        s.stop()


def cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "classifycloud", *args], env=stack.child_env(),
                          capture_output=True, text=True, timeout=120)


def new_key(stack, owner: str, *extra: str) -> dict:
    out = cli(stack, "keys", "create", "--owner", owner, "--json", *extra)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_cli_key_classifies_chelsea_and_a_revoked_or_missing_key_gets_401(stack):
    key = new_key(stack, "e2e")
    auth = {"Authorization": f"Bearer {key['key']}"}
    r = requests.get(stack.base_url + "/classify", params={"url": stack.sample_url("chelsea")}, headers=auth,
                     timeout=120)
    assert r.status_code == 200 and r.json()["results"][0]["index"] in CATS
    assert requests.get(stack.base_url + "/classify", params={"url": stack.sample_url("chelsea")},
                        timeout=30).status_code == 401
    listed = cli(stack, "keys", "list")
    assert key["key_id"] in listed.stdout and "active" in listed.stdout and key["key"] not in listed.stdout
    assert cli(stack, "keys", "revoke", key["key_id"]).returncode == 0
    r = requests.get(stack.base_url + "/classify", params={"url": stack.sample_url("chelsea")}, headers=auth,
                     timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "revoked_api_key"


def test_the_usage_report_counts_exactly_the_calls_a_key_made(stack, sample_bytes, tmp_path):
    key = new_key(stack, "counter")
    auth = {"X-Api-Key": key["key"]}
    statuses = []
    statuses.append(requests.get(stack.base_url + "/classify", params={"url": stack.sample_url("coffee")},
                                 headers=auth, timeout=120).status_code)
    statuses.append(requests.post(stack.base_url + "/classify", headers=auth, timeout=120,
                                  files={"image": ("chelsea.jpg", sample_bytes["chelsea"])}).status_code)
    statuses.append(requests.post(stack.base_url + "/cv/imagenet", headers=auth, timeout=120,
                                  data={"image": stack.sample_url("chelsea")}).status_code)
    statuses.append(requests.post(stack.base_url + "/classify", headers=auth, timeout=120,
                                  files={"image": ("notes.txt", b"not an image at all")}).status_code)
    job = requests.post(stack.base_url + "/jobs", headers=auth, json={"url": stack.sample_url("coffee")}, timeout=30)
    statuses.append(job.status_code)
    for _ in range(240):
        poll = requests.get(job.json()["status_url"], headers=auth, timeout=30)
        statuses.append(poll.status_code)
        if poll.status_code == 200:
            break
        time.sleep(0.25)
    assert statuses[:5] == [200, 200, 200, 422, 202] and statuses[-1] == 200
    out_csv = tmp_path / "usage.csv"
    deadline = time.monotonic() + 30
    while True:  # the web process writes its counts off the request path, within a flush interval
        out = cli(stack, "usage", "--since", "1h", "--key", key["key_id"], "--csv", str(out_csv))
        assert out.returncode == 0, out.stderr
        rows = list(csv.DictReader(out_csv.open()))
        if sum(int(r["calls"]) for r in rows) >= len(statuses) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sum(int(r["calls"]) for r in rows) == len(statuses)
    by_status, routes = Counter(), set()
    for r in rows:   # cells like "200=3; 422=1" and "POST /classify=2; GET /jobs/<job_id>=1"
        by_status.update({int(p.split("=")[0]): int(p.split("=")[1]) for p in r["statuses"].split("; ")})
        routes.update(p.rpartition("=")[0].split(" ", 1)[1] for p in r["routes"].split("; "))
    assert by_status == Counter(statuses)
    assert routes == {"/classify", "/cv/<service>", "/jobs", "/jobs/<job_id>"}
    total = next(line for line in out.stdout.splitlines() if line.startswith(key["key_id"]) and "(all services)" in line)
    assert int(total.split()[-1]) == len(statuses)


# --- the upload page in real headless Chromium -----------------------------------------------------------

def _chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("the upload-page test needs Debian's chromium and chromium-driver: `make test` installs them "
                    "(apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,1100"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)


@pytest.fixture(scope="module")
def browser():
    drv = _chromium()
    yield drv
    drv.quit()


def _screenshot(drv, name: str, tmp_path) -> None:
    folder = os.environ.get("CLASSIFYCLOUD_SCREENSHOT_DIR") or str(tmp_path)
    drv.save_screenshot(os.path.join(folder, name))


def _open_page_with_key(stack, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait
    key = new_key(stack, "browser")
    browser.get(stack.base_url + "/")
    WebDriverWait(browser, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#service option[value=imagenet]")))
    field = browser.find_element(By.ID, "apikey")
    field.clear()
    field.send_keys(key["key"])
    return By, ec, WebDriverWait


def test_uploading_chelsea_in_chromium_shows_a_cat_with_score_bars(stack, browser, tmp_path):
    By, ec, WebDriverWait = _open_page_with_key(stack, browser)
    browser.find_element(By.ID, "file").send_keys(os.path.abspath(os.path.join(SAMPLES, "chelsea.jpg")))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#results .row")))
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#results .label")]
    bars = [e.get_attribute("style") for e in browser.find_elements(By.CSS_SELECTOR, "#results .bar > div")]
    assert len(labels) == 5 and labels[0] in CAT_NAMES, labels
    assert all("width" in b for b in bars) and not browser.find_element(By.ID, "error").is_displayed()
    # the page ran under its CSP, and the key lives in this tab only
    assert browser.execute_script("return localStorage.getItem('classifycloud-key')") is None
    assert browser.execute_script("return sessionStorage.getItem('classifycloud-key')")
    _screenshot(browser, "upload-page.png", tmp_path)


def test_uploading_a_non_image_in_chromium_shows_the_error_in_words(stack, browser, tmp_path):
    By, ec, WebDriverWait = _open_page_with_key(stack, browser)
    bogus = tmp_path / "notes.txt"
    bogus.write_text("this is not a photo")
    browser.find_element(By.ID, "file").send_keys(str(bogus))
    browser.find_element(By.ID, "go").click()
    WebDriverWait(browser, 120).until(ec.visibility_of_element_located((By.ID, "error")))
    text = browser.find_element(By.ID, "error").text
    assert "not an image" in text and "422" in text, text
    assert browser.find_elements(By.CSS_SELECTOR, "#results .row") == []
    _screenshot(browser, "upload-page-error.png", tmp_path)


def test_gunicorn_shutdown_flushes_every_counted_call(settings, provisioned):
    """A long flush interval keeps the counts in memory; SIGTERM must still write every one."""
    from classifycloud.local import free_port
    from shared.aws import client
    from webserver.serve import gunicorn_command
    from webserver.usage import table_name
    s = settings.replace(usage_flush_interval_s=600.0)
    port = free_port()
    proc = subprocess.Popen(gunicorn_command(s, processes=1, host="127.0.0.1", port=port),
                            env=dict(os.environ, **s.to_env()), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/livez-or-not", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "gunicorn did not start"
                time.sleep(0.3)
        calls = [requests.get(f"http://127.0.0.1:{port}/services", timeout=10) for _ in range(5)]
        calls += [requests.post(f"http://127.0.0.1:{port}/classify", json={"url": "ftp://x/y.jpg"}, timeout=10)
                  for _ in range(4)]
        assert [r.status_code for r in calls] == [200] * 5 + [400] * 4
        db = client("dynamodb", s)
        count = lambda: sum(int(i["calls"]["N"]) for p in db.get_paginator("scan").paginate(TableName=table_name(s))  # noqa: E731
                            for i in p["Items"])
        assert count() == 0, "counts were written before shutdown: the flush interval did not hold them"
    finally:
        proc.terminate()
        proc.wait(60)
    assert count() == 1 + 9   # the probe to an unknown path counts too ("unmatched")
