"""The worker's model CPU account: thread and process CPU time spent in forward passes, readable from outside.

Counters live in a 40-byte file mapped into memory (settings.cpu_stats_path), so a batch costs two clock
reads and a few stores, no system call for writing; bench/e2e.py reads the file before and after each cell
and splits the worker's /proc CPU time into model and everything else.
"""
from __future__ import annotations

import mmap
import os
import struct
import threading
import time

_FORMAT = "<5q"   # batches, images, thread CPU ns, process CPU ns, wall ns (all cumulative)
SIZE = struct.calcsize(_FORMAT)
FIELDS = ("batches", "images", "thread_cpu_ns", "process_cpu_ns", "wall_ns")


class ModelClock:
    """Cumulative forward-pass counters; `with clock.measure(n):` around one batch's model work."""

    def __init__(self, path: str = ""):
        self.values = [0] * len(FIELDS)
        self._lock = threading.Lock()
        self._map: mmap.mmap | None = None
        if path:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, SIZE)
                self._map = mmap.mmap(fd, SIZE)
            finally:
                os.close(fd)

    def measure(self, images: int) -> "_Measure":
        """A context manager that adds one batch of `images` to the counters."""
        return _Measure(self, images)

    def add(self, images: int, thread_ns: int, process_ns: int, wall_ns: int) -> None:
        """Add one batch (thread-safe: two inference threads may finish at once)."""
        with self._lock:
            v = self.values
            v[0] += 1
            v[1] += images
            v[2] += thread_ns
            v[3] += process_ns
            v[4] += wall_ns
            if self._map is not None:
                struct.pack_into(_FORMAT, self._map, 0, *v)

    def snapshot(self) -> dict[str, int]:
        """The counters by name."""
        with self._lock:
            return dict(zip(FIELDS, self.values))

    def close(self) -> None:
        """Unmap the file (it stays, with the last values)."""
        with self._lock:
            if self._map is not None:
                self._map.close()
                self._map = None


class _Measure:
    # thread CPU: exact for the forward when the model runs in the calling thread (one intra-op thread);
    # process CPU over the same window also catches intra-op pool threads (and anything running beside it)
    __slots__ = ("clock", "images", "t", "p", "w")

    def __init__(self, clock: ModelClock, images: int):
        self.clock, self.images = clock, images

    def __enter__(self):
        self.t, self.p, self.w = time.thread_time_ns(), time.process_time_ns(), time.perf_counter_ns()
        return self

    def __exit__(self, *exc):
        self.clock.add(self.images, time.thread_time_ns() - self.t, time.process_time_ns() - self.p,
                       time.perf_counter_ns() - self.w)
        return False


def read_stats(path: str) -> dict[str, int] | None:
    """The counters a worker wrote to path (None when absent or short)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(SIZE)
    except OSError:
        return None
    if len(data) < SIZE:
        return None
    return dict(zip(FIELDS, struct.unpack(_FORMAT, data)))
