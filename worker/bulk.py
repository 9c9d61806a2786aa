"""Bulk consumers: batch items are taken only while the worker's interactive queues are quiet.

A bulk consumer is a Consumer with a gate (`ready`): it watches the interactive consumers'
`received` counters and reserves room in the shared buffer only when the worker
holds nothing and no interactive message arrived for bulk_yield_s. So an interactive request waits at
most for one small bulk batch (bulk_receive items) already being classified.
"""
from __future__ import annotations

import logging
import time

from shared import naming
from shared.config import Settings
from shared.transport import QueueGone, Transport, TransportError
from worker.consumer import Consumer, MessageBuffer

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


class BulkConsumer(Consumer):
    """Long-polls one bulk queue (briefly), and only when the gate says interactive work is not waiting."""

    def __init__(self, settings: Settings, service: str, queue_url: str, buffer: MessageBuffer, transport: Transport,
                 gate):
        self.gate = gate
        self.max_receive = max(1, min(10, settings.bulk_receive))  # small: an interactive request waits for it
        super().__init__(settings, service, queue_url, buffer, transport, name=f"bulk-{service}",
                         wait_s=settings.bulk_wait_time_s)

    def ready(self) -> bool:
        """Interactive first: nothing held by this worker and the interactive queues quiet."""
        return self.buffer.held() == 0 and self.gate()


def start_bulk_consumers(settings: Settings, transport: Transport, services: list[str], buffer: MessageBuffer,
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
        consumer = BulkConsumer(settings, svc, url, buffer, transport, gate)
        consumer.start()
        out.append(consumer)
    return out
