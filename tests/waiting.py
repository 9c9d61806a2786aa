"""One polling helper for every test that waits on something asynchronous, with a deadline."""
from __future__ import annotations

import time
from typing import Callable


def wait_for(predicate: Callable, timeout: float = 60.0, what: str = "condition", interval: float = 0.2,
             explain: Callable[[], str] = lambda: ""):
    """predicate()'s first truthy value; AssertionError naming `what` (and explain()) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    value = predicate()   # one last look: the deadline may have passed during a sleep
    if value:
        return value
    detail = explain()
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}" + (f"\n{detail}" if detail else ""))
