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


def exit_when_gone(pid: int, interval_s: float = 0.5, grace_s: float = 1.0) -> threading.Thread:
    """Start a daemon thread that exits this process hard grace_s after process pid (not our parent) ends."""
    def run() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            except PermissionError:  # alive, owned by someone else
                pass
            time.sleep(interval_s)
        log.warning("process %d is gone (the local stack died); exiting in %.0f s", pid, grace_s)
        time.sleep(grace_s)
        os._exit(1)

    t = threading.Thread(target=run, name="stack-watch", daemon=True)
    t.start()
    return t


def watch_parent(parent_pid: int, on_gone=None, interval_s: float = 0.5, hard_exit_after_s: float = 3.0
                 ) -> threading.Thread | None:
    """Start a daemon thread: when parent_pid is no longer our parent, call on_gone (default SIGTERM to self),
    then exit hard after hard_exit_after_s if still running. 0 turns it off."""
    if parent_pid <= 0:
        return None
    if os.getppid() != parent_pid:   # already orphaned before we looked
        log.warning("parent %d is gone at start-up; exiting", parent_pid)
        os._exit(1)

    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        log.warning("parent %d is gone (the local stack died); stopping", parent_pid)
        try:
            (on_gone or (lambda: os.kill(os.getpid(), signal.SIGTERM)))()
        except Exception:
            log.exception("stopping after the parent died failed")
        # its AWS endpoint died with it: nothing left to hand back, so do not linger
        time.sleep(hard_exit_after_s)
        log.warning("still running %.0f s after the parent died; exiting now", hard_exit_after_s)
        os._exit(1)

    t = threading.Thread(target=run, name="parent-watch", daemon=True)
    t.start()
    return t
