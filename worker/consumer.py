"""Request-queue consumers: one long-polling thread per hosted queue, feeding a bounded buffer."""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Hashable

from shared.config import Settings
from shared.transport import Received, Transport, TransportError

log = logging.getLogger(__name__)

_MAX_RECEIVE = 10  # ReceiveMessage's MaxNumberOfMessages limit


@dataclass
class Held:
    """One received request message this worker holds until it deletes or releases it."""

    service: str              # the queue's service
    queue_url: str
    message_id: str
    receipt_handle: str
    body: str
    received_at: int          # epoch ms
    receive_count: int        # ApproximateReceiveCount: > 1 means delivered before

    @classmethod
    def from_received(cls, service: str, r: Received) -> "Held":
        """A held request from the transport's received message."""
        return cls(service=service, queue_url=r.queue_url, message_id=r.message_id,
                   receipt_handle=r.receipt_handle, body=r.body, received_at=r.received_at,
                   receive_count=r.receive_count)


class MessageBuffer:
    """Bounded buffer of held messages: consumers reserve room before receiving, so nothing is hoarded.

    Reservations follow the work. A busy queue (its last receive brought messages) waits its turn,
    first come first served, for free slots: one busy queue can fill the buffer, several split it.
    A queue that came back empty (or has not polled yet) long-polls for one message without
    keeping a slot: an idle poll never holds room a busy queue needs, and each idle queue can add
    at most one message past `capacity` (its next receive waits its turn like any busy one).
    `capacity` otherwise bounds everything the worker holds: messages waiting here, slots
    reserved by a receive in progress, and messages taken by the inference loop until done().
    """

    def __init__(self, capacity: int, group: Callable[[str], Hashable] | None = None):
        self.capacity = max(1, capacity)
        # which services may share a batch: those of one model (a derived service rides its parent's
        # forward pass); the worker sets it once its models are loaded; by default, one service
        self.group: Callable[[str], Hashable] = group or (lambda service: service)
        self._cond = threading.Condition()
        self._items: deque[Held] = deque()
        self._reserved = 0
        self._taken: dict[int, Held] = {}     # id(held) -> held: taken by the loop, not done yet
        self._closed = False
        self._idle: dict[str, bool] = {}      # consumer name -> last receive came back empty (burst's end)
        self._busy: dict[str, bool] = {}      # consumer name -> last receive brought messages
        self._claims: dict[str, int] = {}     # consumer name -> slots its receive in progress reserved
        self._turns: list[str] = []           # busy consumers waiting for room, in the order they asked

    def register(self, name: str) -> None:
        """Declare a consumer (burst mode waits until each has seen its queue empty)."""
        with self._cond:
            self._idle[name] = False
            self._busy[name] = False

    def reserve(self, most: int, timeout: float, name: str = "") -> int:
        """Slots for consumer `name`'s next receive (0 after a timeout or once closed).

        An idle queue gets one at once, reserving nothing; a busy one (or an unnamed caller) waits
        its turn for up to `most` free slots, at most an even split of the buffer over the busy queues.
        """
        with self._cond:
            if self._closed:
                return 0
            if name and not self._busy.get(name, False):
                self._claims[name] = 0           # a probe: one message, borrowed room
                return 1
            turn = name or f"anonymous-{threading.get_ident()}"
            if turn not in self._turns:           # a caller that timed out keeps its place
                self._turns.append(turn)
            end = time.monotonic() + timeout
            while not self._closed and not (self._turns[0] == turn and self._free() > 0):
                left = end - time.monotonic()
                if left <= 0:
                    if not name:
                        self._turns.remove(turn)
                        self._cond.notify_all()
                    return 0
                self._cond.wait(left)
            self._turns.remove(turn)
            self._cond.notify_all()              # the next in line may take what is left
            if self._closed:
                return 0
            busy = max(1, sum(self._busy.values()))
            n = min(most, self._free(), max(1, self.capacity // busy))
            self._reserved += n
            if name:
                self._claims[name] = n
            return n

    def put(self, name: str, reserved: int, messages: list[Held]) -> bool:
        """Add received messages and return the receive's reservation; False when closed (caller releases).

        `reserved` is what the receive asked for; the buffer returns what it actually reserved.
        """
        with self._cond:
            self._reserved -= self._claims.pop(name, 0)
            self._idle[name] = not messages
            self._busy[name] = bool(messages)
            if not messages and name in self._turns:   # a stopped consumer leaves the line
                self._turns.remove(name)
            if self._closed:
                self._cond.notify_all()
                return not messages
            self._items.extend(messages)
            self._cond.notify_all()
            return True

    def unreserve(self, n: int, name: str = "") -> None:
        """Give back slots of a receive that failed (says nothing about the queue being empty)."""
        with self._cond:
            self._reserved -= self._claims.pop(name, 0) if name else n
            self._cond.notify_all()

    def take_batch(self, max_size: int, max_wait_s: float, timeout: float) -> list[Held]:
        """Messages of the oldest one's group (services sharing its model), up to max_size; waits max_wait_s for more."""
        with self._cond:
            end = time.monotonic() + timeout
            while not self._items:
                left = end - time.monotonic()
                if left <= 0 or self._closed:
                    return []
                self._cond.wait(left)
            group = self.group(self._items[0].service)
            fill_by = time.monotonic() + max_wait_s
            while self._count(group) < max_size and not self._closed:
                left = fill_by - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, rest = [], deque()
            for item in self._items:
                (batch if len(batch) < max_size and self.group(item.service) == group else rest).append(item)
            self._items = rest
            self._taken.update((id(h), h) for h in batch)
            return batch

    def done(self, messages: list[Held], requeued: bool = False) -> None:
        """Taken messages were deleted or released: their slots are free again.

        requeued: some were made visible again, so a queue seen empty may not be empty any more
        (burst mode must poll once more, or a message released after that poll would be left behind).
        """
        with self._cond:
            for h in messages:
                self._taken.pop(id(h), None)
            if requeued:
                for name in self._idle:
                    self._idle[name] = False
            self._cond.notify_all()

    def close(self) -> list[Held]:
        """Stop accepting messages; return the ones still waiting (the caller releases them)."""
        with self._cond:
            self._closed = True
            items, self._items = list(self._items), deque()
            self._cond.notify_all()
            return items

    def held(self) -> int:
        """Messages held: waiting plus being processed."""
        with self._cond:
            return len(self._items) + len(self._taken)

    def holding(self) -> list[Held]:
        """Every message held: waiting and taken (a wedged worker releases them all)."""
        with self._cond:
            return list(self._items) + list(self._taken.values())

    def oldest_received_at(self) -> int | None:
        """Receive time (epoch ms) of the oldest message held, waiting or being processed; None when empty."""
        with self._cond:
            times = [h.received_at for h in self._items] + [h.received_at for h in self._taken.values()]
            return min(times) if times else None

    def quiescent(self) -> bool:
        """Nothing held, and every consumer's last receive came back empty (burst mode's end)."""
        with self._cond:
            return not self._items and not self._taken and all(self._idle.values())

    def _free(self) -> int:
        return self.capacity - len(self._items) - self._reserved - len(self._taken)

    def _count(self, group: Hashable) -> int:
        return sum(1 for item in self._items if self.group(item.service) == group)


def release(transport: Transport, messages: list[Held]) -> int:
    """Make messages visible again now (ChangeMessageVisibility 0); returns how many were released."""
    return set_visibility(transport, messages, 0)


def extend_visibility(transport: Transport, messages: list[Held], seconds: int) -> int:
    """Keep messages a worker is still working on invisible for `seconds` more; returns how many."""
    return set_visibility(transport, messages, seconds)


def set_visibility(transport: Transport, messages: list[Held], seconds: int) -> int:
    """Change the visibility of held messages (batched per queue by the transport); returns how many succeeded."""
    try:
        result = transport.release_received(messages, seconds)
    except TransportError as exc:  # released: visible after the timeout anyway; extended: maybe redelivered
        log.warning("visibility %ds of %d messages failed: %s", seconds, len(messages), exc)
        return 0
    for f in result.failed:
        log.warning("visibility %ds failed for %s: %s", seconds, messages[f.key].message_id, f.message)
    return len(result.succeeded)


class Consumer(threading.Thread):
    """Long-polls one request queue, receiving only as many messages as the buffer has room for."""

    max_receive = _MAX_RECEIVE    # per receive; SQS returns 10 messages at most

    def __init__(self, settings: Settings, service: str, queue_url: str, buffer: MessageBuffer, transport: Transport,
                 name: str = "", wait_s: int | None = None):
        super().__init__(name=name or f"consumer-{service}", daemon=True)  # daemon: a 20 s poll never blocks exit
        self.settings = settings
        self.service = service
        self.queue_url = queue_url
        self.buffer = buffer
        self.transport = transport   # the worker's: its long-poll client's pool has room for every consumer
        self.queue = self.transport.consumer(queue_url, wait_s=wait_s)
        self.stopping = threading.Event()
        self.received = 0
        buffer.register(self.name)

    def ready(self) -> bool:
        """Whether to receive now (always, for a request queue; worker/bulk.py waits for quiet)."""
        return True

    def stop(self) -> None:
        """Ask the thread to stop after its current poll."""
        self.stopping.set()

    def run(self) -> None:
        backoff = 0.5
        while not self.stopping.is_set():
            if not self.ready():
                self.stopping.wait(0.02)
                continue
            # the buffer decides by this queue's last receive
            n = self.buffer.reserve(self.max_receive, timeout=0.5, name=self.name)
            if n == 0:
                continue
            try:
                messages = [Held.from_received(self.service, r) for r in self.queue.receive(n)]
            except TransportError as exc:   # QueueGone too: a re-provisioned queue is found again by URL
                self.buffer.unreserve(n, name=self.name)
                log.warning("receive from %s failed: %s (retrying in %.1fs)", self.queue_url, exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 20.0)
                continue
            backoff = 0.5
            self.received += len(messages)
            for m in messages:
                log.debug("received %s from %s (delivery %d)", m.message_id, self.service, m.receive_count)
            if not self.buffer.put(self.name, n, messages):
                log.info("buffer closed: releasing %d just-received messages", len(messages))
                release(self.transport, messages)
        self.buffer.put(self.name, 0, [])   # leaves the line for slots: a stopped consumer must not block it
