"""An in-memory Transport for component tests (dramatiq's StubBroker): queues with SQS's visibility rules.

It implements the primitives of shared.transport.Transport (queue lifecycle, send, delete, change
visibility, receive) and inherits everything built on them (grouped sends, ack/release of received
messages, URL caching), so a component under test cannot tell it from SQS in the ways that matter:
a received message is invisible until acked, released or its visibility timeout runs out; receive
long-polls up to wait_s; a gone queue raises QueueGone. tests/test_stub_transport.py runs the same
contract against moto's SQS and this stub. The transport's own tests, the web over gunicorn, end-to-end
and deployment tests keep using moto.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable

from shared.config import Settings
from shared.messages import now_ms
from shared.transport import (
    MAX_BATCH,
    EntriesResult,
    Failure,
    QueueConsumer,
    QueueDepth,
    QueueGone,
    Received,
    Transport,
    TransportError,
    _body,
)

BASE = "http://stub.local/000000000000/"


@dataclass
class _Message:
    id: str
    body: str
    sent_at: int
    visible_at: float = 0.0
    receipts: set[str] = field(default_factory=set)
    receive_count: int = 0


@dataclass
class _Queue:
    name: str
    attributes: dict[str, str]
    tags: dict[str, str]
    messages: dict[str, _Message] = field(default_factory=dict)

    def visibility_s(self) -> float:
        return float(self.attributes.get("VisibilityTimeout", "30"))


class StubTransport(Transport):
    """Transport over in-memory queues; `calls` counts each primitive operation by SQS action name."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.sqs = self.poll_sqs = None           # no AWS client: nothing here may reach one
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self.url_hits = self.url_misses = 0
        self._queues: dict[str, _Queue] = {}      # by URL
        self._cond = threading.Condition()
        self._receipts = itertools.count()
        self.calls: dict[str, int] = {}

    def _count(self, action: str) -> None:
        self.calls[action] = self.calls.get(action, 0) + 1

    def _queue(self, url: str) -> _Queue:
        q = self._queues.get(url)
        if q is None:
            self.forget(url)
            raise QueueGone(url)
        return q

    # --- queue lifecycle --------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        """A queue's URL by name; QueueGone when it does not exist."""
        with self._cond:
            self._count("GetQueueUrl")
            if BASE + name not in self._queues:
                raise QueueGone(name)
            return BASE + name

    def create_queue(self, name: str, attributes: dict[str, str] | None = None,
                     tags: dict[str, str] | None = None) -> str:
        """Create a queue, or find it when it exists with the same attributes (SQS's rule)."""
        url, attrs = BASE + name, dict(attributes or {})
        with self._cond:
            self._count("CreateQueue")
            q = self._queues.get(url)
            if q is not None and any(q.attributes.get(k) != v for k, v in attrs.items()):
                raise TransportError(f"queue {name} exists with other attributes", "QueueAlreadyExists")
            if q is None:
                self._queues[url] = _Queue(name, attrs, dict(tags or {}))
        return url

    def delete_queue(self, url: str) -> None:
        """Delete a queue; one already gone counts as deleted."""
        with self._cond:
            self._count("DeleteQueue")
            self._queues.pop(url, None)
            self._cond.notify_all()

    def list_queues(self, prefix: str) -> list[str]:
        """URLs of every queue whose name starts with prefix."""
        with self._cond:
            self._count("ListQueues")
            return [u for u, q in self._queues.items() if q.name.startswith(prefix)]

    def set_attributes(self, url: str, attributes: dict[str, str]) -> None:
        """Change a queue's attributes."""
        with self._cond:
            self._count("SetQueueAttributes")
            self._queue(url).attributes.update(attributes)

    def attributes(self, url: str, names: Iterable[str]) -> dict[str, str]:
        """Some attributes of a queue (QueueArn is derived from the name)."""
        with self._cond:
            self._count("GetQueueAttributes")
            q = self._queue(url)
            known = {**q.attributes, "QueueArn": f"arn:aws:sqs:us-east-1:000000000000:{q.name}"}
            return {n: known[n] for n in names if n in known}

    def tags(self, url: str) -> dict[str, str]:
        """A queue's tags."""
        with self._cond:
            self._count("ListQueueTags")
            return dict(self._queue(url).tags)

    def tag(self, url: str, tags: dict[str, str]) -> None:
        """Set tags on a queue."""
        with self._cond:
            self._count("TagQueue")
            self._queue(url).tags.update(tags)

    def depth(self, url: str) -> QueueDepth:
        """Visible and in-flight counts (nothing is ever delayed here)."""
        with self._cond:
            self._count("GetQueueAttributes")
            now = time.monotonic()
            msgs = self._queue(url).messages.values()
            visible = sum(1 for m in msgs if m.visible_at <= now)
            return QueueDepth(visible=visible, in_flight=len(msgs) - visible, delayed=0)

    # --- sending, acknowledging -------------------------------------------------------------------------
    def send(self, url: str, message: Any) -> str:
        """Send one message; its id."""
        result = self.send_batch(url, [(0, message)])
        if not result.ok:
            raise TransportError(result.failed[0].message, result.failed[0].code)
        return self._last_id

    def send_batch(self, url: str, messages: Iterable[tuple[Hashable, Any]]) -> EntriesResult:
        """Send (key, message) pairs; QueueGone when the queue does not exist."""
        entries = [(key, _body(msg)) for key, msg in messages]
        result = EntriesResult()
        with self._cond:
            q = self._queue(url)
            for i in range(0, len(entries), MAX_BATCH):
                self._count("SendMessageBatch" if len(entries) > 1 else "SendMessage")
                for key, body in entries[i:i + MAX_BATCH]:
                    self._last_id = mid = str(uuid.uuid4())
                    q.messages[mid] = _Message(mid, body, now_ms())
                    result.succeeded.append(key)
            self._cond.notify_all()
        return result

    def delete_batch(self, url: str, handles: Iterable[tuple[Hashable, str]]) -> EntriesResult:
        """Delete (key, receipt handle) pairs; an unknown handle fails its entry."""
        return self._by_handle("DeleteMessageBatch", url, handles, lambda q, m: q.messages.pop(m.id))

    def change_visibility_batch(self, url: str, handles: Iterable[tuple[Hashable, str]],
                                timeout_s: int) -> EntriesResult:
        """Visible again after timeout_s (0: now)."""
        def change(q: _Queue, m: _Message) -> None:
            m.visible_at = time.monotonic() + timeout_s
        return self._by_handle("ChangeMessageVisibilityBatch", url, handles, change)

    def _by_handle(self, action: str, url: str, handles, op) -> EntriesResult:
        handles = list(handles)
        result = EntriesResult()
        with self._cond:
            q = self._queue(url)
            for i in range(0, len(handles), MAX_BATCH):
                self._count(action)
                for key, handle in handles[i:i + MAX_BATCH]:
                    m = next((m for m in q.messages.values() if handle in m.receipts), None)
                    if m is None:
                        result.failed.append(Failure(key, "ReceiptHandleIsInvalid", f"no message for {handle}", True))
                        continue
                    op(q, m)
                    result.succeeded.append(key)
            self._cond.notify_all()
        return result

    def consumer(self, url: str, wait_s: int | None = None, visibility_timeout: int | None = None) -> "StubConsumer":
        """The receiving side of one queue."""
        return StubConsumer(self, url, wait_s, visibility_timeout)

    def receive(self, url: str, max_messages: int, wait_s: float, visibility_timeout: int | None) -> list[Received]:
        """Up to max_messages visible messages, waiting up to wait_s for the first."""
        end = time.monotonic() + wait_s
        with self._cond:
            self._count("ReceiveMessage")
            while True:
                q = self._queue(url)
                now = time.monotonic()
                ready = [m for m in q.messages.values() if m.visible_at <= now][:max(1, min(MAX_BATCH, max_messages))]
                if ready or now >= end:
                    break
                self._cond.wait(min(end - now, 0.05))   # short waits: visibility timeouts run out unannounced
            hide = q.visibility_s() if visibility_timeout is None else visibility_timeout
            out = []
            for m in ready:
                handle = f"rh-{next(self._receipts)}"
                m.receipts.add(handle)
                m.receive_count += 1
                m.visible_at = now + hide
                out.append(Received(queue_url=url, message_id=m.id, receipt_handle=handle, body=m.body,
                                    receive_count=m.receive_count, sent_at=m.sent_at))
            return out


class StubConsumer(QueueConsumer):
    """One stub queue's receiver: QueueConsumer's ack and release, with an in-memory receive."""

    def receive(self, max_messages: int = 10) -> list[Received]:
        """Up to max_messages (1..10), waiting up to wait_s for the first; QueueGone."""
        return self.transport.receive(self.url, max_messages, self.wait_s, self.visibility_timeout)
