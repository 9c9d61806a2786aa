"""LocalFleet: real processes started, counted, reaped; a real worker obeys a terminate message."""
from __future__ import annotations

import sys
import threading

import pytest
from waiting import wait_for

from autoscaler.fleet import Fleet, make_fleet
from autoscaler.fleet.local import LocalFleet
from autoscaler.local import start_local_autoscaler, stop_local_autoscaler
from autoscaler.loop import Autoscaler
from autoscaler.queues import HeartbeatReader
from shared.aws import client
from shared.transport import Transport

pytestmark = pytest.mark.services("imagenet")   # only these queues (tests/conftest.py provisioned)

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]



@pytest.fixture
def fleet_factory(settings, tmp_path):
    """Builds LocalFleets and stops every process they started."""
    made = []

    def make(**kw):
        f = LocalFleet(settings, log_dir=str(tmp_path), **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.stop_all(timeout=10)


def test_local_fleet_is_a_fleet_and_make_fleet_picks_it(settings):
    assert isinstance(make_fleet(settings.replace(fleet="local")), Fleet)
    with pytest.raises(ValueError, match="fleet"):
        make_fleet(settings.replace(fleet="nope"))


def test_local_fleet_counts_booting_workers_as_pending_then_running(fleet_factory):
    fleet = fleet_factory(command=SLEEPER, boot_delay_s=1.0)
    ids = fleet.launch(2)
    assert len(ids) == 2 and len(set(ids)) == 2
    c = fleet.count()
    assert (c.running, c.pending) == (0, 2)
    assert wait_for(lambda: fleet.count().running == 2, timeout=20)
    assert fleet.count().pending == 0 and set(fleet.pids()) == set(ids)


def test_local_fleet_reaps_exited_workers_with_their_exit_code(fleet_factory):
    fleet = fleet_factory(command=[sys.executable, "-c", "import sys; sys.exit(0)"])
    [wid] = fleet.launch(1)
    assert wait_for(lambda: fleet.count().running == 0, timeout=20)
    assert fleet.exited[wid] == 0


def test_local_fleet_terminate_and_stop_all_end_the_processes(fleet_factory):
    fleet = fleet_factory(command=SLEEPER, boot_delay_s=0.0)
    a, b, c = fleet.launch(3)
    procs = {w: fleet._workers[w].proc for w in (a, b, c)}
    fleet.terminate([a])
    assert wait_for(lambda: fleet.count().running == 2, timeout=20)
    assert procs[a].poll() is not None
    fleet.stop_all(timeout=10)
    assert all(p.poll() is not None for p in procs.values())
    assert fleet.count().running == 0


def test_local_fleet_cancels_a_worker_still_in_its_boot_delay(fleet_factory):
    fleet = fleet_factory(command=SLEEPER, boot_delay_s=30.0)
    [wid] = fleet.launch(1)
    fleet.terminate([wid])
    c = fleet.count()
    assert (c.running, c.pending) == (0, 0) and fleet.exited[wid] == -1


@pytest.mark.slow
def test_a_real_local_worker_starts_beats_and_exits_0_on_a_terminate_message(settings, provisioned, tmp_path):
    s = settings.replace(services=("imagenet",), device="cpu", terminate_check_interval_s=1.0,
                         terminate_expiry_s=120.0, heartbeat_interval_s=1.0, min_workers=0, max_workers=1)
    fleet = LocalFleet(s, log_dir=str(tmp_path))
    loop = Autoscaler(s, fleet, transport=Transport(s))
    try:
        [wid] = fleet.launch(1)
        beats = HeartbeatReader(s, client("s3", s))
        assert wait_for(lambda: wid in beats.read().ids, timeout=240, interval=1.0), \
            (tmp_path / f"worker-{wid}.log").read_text()[-3000:]
        assert loop.send_terminates(1) == 1
        assert wait_for(lambda: fleet.maintain() is not None and wid in fleet.exited, timeout=120, interval=0.5)
        assert fleet.exited[wid] == 0                 # exit 0 = terminated on request
        assert fleet.count().running == 0
    finally:
        fleet.stop_all(timeout=20)


def test_start_local_autoscaler_starts_min_workers_and_stops_cleanly(settings, provisioned, tmp_path):
    s = settings.replace(min_workers=2, max_workers=3, tick_s=0.2)
    stop = threading.Event()
    started = start_local_autoscaler(s, Transport(s), stop, log_dir=str(tmp_path), command=SLEEPER)
    loop, fleet, thread = started
    try:
        assert thread.is_alive() and fleet.count().running + fleet.count().pending == 2
        assert wait_for(lambda: loop.ticks >= 2, timeout=30)
        assert loop.last is not None and loop.errors == 0
    finally:
        stop_local_autoscaler(started, stop, timeout=10)
    assert not thread.is_alive() and fleet.count().running == 0
