"""Bulk consumers: batch items are taken only while the worker's interactive queues are quiet.

Kept apart from worker/consumer.py on purpose: a bulk consumer watches the interactive consumers'
`received` counters (no change to them) and reserves room in the shared buffer only when the worker
holds nothing and no interactive message arrived for bulk_yield_s. So an interactive request waits at
most for one small bulk batch (bulk_receive items) already being classified.
"""
from __future__ import annotations

import logging
import threading
import time

from shared import naming
from shared.config import Settings
from shared.transport import QueueGone, TransportError
from worker.consumer import Held, MessageBuffer, own_transport, release

log = logging.getLogger(__name__)


class InteractiveQuiet:
    """True once no interactive consumer has received anything for yield_s seconds."""

    def __init__(self, consumers: list, yield_s: float, clock=time.monotonic):
        self.consumers = consumers
        self.yield_s = yield_s
        self.clock = clock
        self._total = -1
        self._changed = -float("inf")

    def __call__(self) -> bool:
        total = sum(c.received for c in self.consumers)
        now = self.clock()
        if total != self._total:
            self._total, self._changed = total, now if self._total >= 0 else -float("inf")
        return now - self._changed >= self.yield_s


class BulkConsumer(threading.Thread):
    """Long-polls one bulk queue (briefly), and only when the gate says interactive work is not waiting."""

    def __init__(self, settings: Settings, service: str, queue_url: str, buffer: MessageBuffer, gate):
        super().__init__(name=f"bulk-{service}", daemon=True)
        self.settings = settings
        self.service = service
        self.queue_url = queue_url
        self.buffer = buffer
        self.gate = gate
        self.transport = own_transport(settings)
        self.queue = self.transport.consumer(queue_url, wait_s=settings.bulk_wait_time_s)
        self.stopping = threading.Event()
        self.received = 0
        buffer.register(self.name)

    def stop(self) -> None:
        """Ask the thread to stop after its current poll."""
        self.stopping.set()

    def ready(self) -> bool:
        """Interactive first: nothing held by this worker and the interactive queues quiet."""
        return self.buffer.held() == 0 and self.gate()

    def run(self) -> None:
        # mirrors Consumer.run with the gate in front, kept here so worker/consumer.py (issue 19) stays untouched
        backoff = 0.5
        while not self.stopping.is_set():
            if not self.ready():
                self.stopping.wait(0.02)
                continue
            n = self.buffer.reserve(max(1, min(10, self.settings.bulk_receive)), timeout=0.5, name=self.name)
            if n == 0:
                continue
            try:
                messages = [Held.from_received(self.service, r) for r in self.queue.receive(n)]
            except TransportError as exc:
                self.buffer.unreserve(n, self.name)
                log.warning("receive from bulk queue %s failed: %s (retrying in %.1fs)", self.queue_url, exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 20.0)
                continue
            backoff = 0.5
            self.received += len(messages)
            if not self.buffer.put(self.name, n, messages):
                release(self.transport, messages)


def start_bulk_consumers(settings: Settings, transport, services: list[str], buffer: MessageBuffer,
                         interactive: list) -> list[BulkConsumer]:
    """One bulk consumer per hosted service whose bulk queue exists, sharing one interactive-quiet gate."""
    gate = InteractiveQuiet(interactive, settings.bulk_yield_s)
    out = []
    for svc in services:
        try:
            url = transport.url(naming.bulk_queue(settings.prefix, svc))
        except QueueGone:
            log.info("no bulk queue for %s: this worker takes no batch items of it", svc)
            continue
        except TransportError as exc:
            log.warning("bulk queue of %s cannot be looked up (%s): no batch items of it", svc, exc)
            continue
        consumer = BulkConsumer(settings, svc, url, buffer, gate)
        consumer.start()
        out.append(consumer)
    return out
