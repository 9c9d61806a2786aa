"""A child of the local stack ends with its parent: a watchdog thread, plus PR_SET_PDEATHSIG where it is safe."""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import threading
import time

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Ask Linux to send sig when the parent *thread* exits; only safe from a child of a long-lived thread."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # not Linux: the watchdog alone covers it
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    return True


def _watch(still_there, what: str, on_gone, grace_s: float, interval_s: float, name: str) -> threading.Thread:
    """A daemon thread: once still_there() is false, call on_gone, wait grace_s, then exit this process hard."""
    def run() -> None:
        while still_there():
            time.sleep(interval_s)
        log.warning("%s is gone (the local stack died); stopping", what)
        try:
            if on_gone is not None:
                on_gone()
        except Exception:
            log.exception("stopping after %s died failed", what)
        # its AWS endpoint died with it: nothing left to hand back, so do not linger
        time.sleep(grace_s)
        log.warning("still running %.0f s after %s died; exiting now", grace_s, what)
        os._exit(1)

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    return t


def exit_when_gone(pid: int, interval_s: float = 0.5, grace_s: float = 1.0) -> threading.Thread:
    """Exit this process hard grace_s after process pid (not our parent) ends."""
    return _watch(lambda: _alive(pid), f"process {pid}", None, grace_s, interval_s, "stack-watch")


def watch_parent(parent_pid: int, on_gone=None, interval_s: float = 0.5, hard_exit_after_s: float = 3.0
                 ) -> threading.Thread | None:
    """When parent_pid is no longer our parent, call on_gone (default SIGTERM to self), then exit hard after
    hard_exit_after_s if still running. 0 turns it off."""
    if parent_pid <= 0:
        return None
    if os.getppid() != parent_pid:   # already orphaned before we looked
        log.warning("parent %d is gone at start-up; exiting", parent_pid)
        os._exit(1)
    return _watch(lambda: os.getppid() == parent_pid, f"parent {parent_pid}",
                  on_gone or (lambda: os.kill(os.getpid(), signal.SIGTERM)), hard_exit_after_s, interval_s,
                  "parent-watch")
