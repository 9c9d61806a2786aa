"""The SQS transport: every queue call of the project goes through here (components speak messages, not boto3).

`Transport` is the broker: it owns the clients, resolves and caches queue URLs, creates and deletes
queues, sends, and runs batched send / delete / change-visibility in chunks of at most 10 entries (and
256 KiB) with each entry's failure reported back by the caller's own key. `QueueConsumer` is one queue's
receiving side: long-poll, ack (delete) and release (visible again). "The queue does not exist" is
recognised here only, and raised as QueueGone; every other AWS failure is a TransportError.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.config import Settings
from shared.messages import MessageError, now_ms

log = logging.getLogger(__name__)

MAX_BATCH = 10                      # SQS: entries per batch call
MAX_BATCH_BYTES = 256 * 1024        # SQS: total payload of one SendMessageBatch
GONE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"})
DEPTH_ATTRIBUTES = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed")
M = TypeVar("M")


class TransportError(Exception):
    """An SQS call failed (network, throttling, permissions); `code` is AWS's error code when there is one."""

    def __init__(self, message: str, code: str = ""):
        super().__init__(message)
        self.code = code


class QueueGone(TransportError):
    """The queue does not exist (never provisioned, or deleted: e.g. a web process's reply queue)."""

    def __init__(self, queue: str, code: str = "AWS.SimpleQueueService.NonExistentQueue"):
        super().__init__(f"queue {queue} does not exist", code)
        self.queue = queue


def error_code(exc: BaseException) -> str:
    """AWS's error code of a ClientError ('' for anything else)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or err.get("QueryErrorCode") or "")
    return ""


def is_gone(exc: BaseException) -> bool:
    """True when exc says the queue does not exist (the one place these codes are known)."""
    if isinstance(exc, QueueGone):
        return True
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return bool({err.get("Code"), err.get("QueryErrorCode")} & GONE_CODES)
    return False


def _translate(exc: Exception, queue: str) -> TransportError:
    if is_gone(exc):
        return QueueGone(queue, error_code(exc))
    return TransportError(f"SQS call on {queue} failed: {exc}", error_code(exc) or type(exc).__name__)


@dataclass(frozen=True)
class Failure:
    """One batch entry that was not done: the caller's key, AWS's code and message, and whose fault."""

    key: Hashable
    code: str
    message: str
    sender_fault: bool = False
    queue_gone: bool = False        # the entry's queue does not exist (grouped operations report it per entry)


@dataclass
class EntriesResult:
    """Outcome of one batched operation over any number of entries: keys done, and failures by key."""

    succeeded: list = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every entry succeeded."""
        return not self.failed

    @property
    def failed_keys(self) -> list:
        """Keys of the failed entries, in order."""
        return [f.key for f in self.failed]

    def codes(self) -> dict:
        """{key: error code} of the failed entries."""
        return {f.key: f.code for f in self.failed}


@dataclass(frozen=True)
class Received:
    """One received message and what is needed to ack or release it."""

    queue_url: str
    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1          # ApproximateReceiveCount: > 1 means delivered before
    sent_at: int | None = None      # SentTimestamp, epoch ms
    received_at: int = field(default_factory=now_ms)

    def parse(self, kind: type[M]) -> M:
        """The typed message (Request, Reply, Terminate, Heartbeat); MessageError names this message."""
        try:
            return kind.from_json(self.body)
        except MessageError as exc:
            raise MessageError(exc.code, f"message {self.message_id}: {exc.message}") from None


@dataclass(frozen=True)
class QueueDepth:
    """A queue's approximate counts."""

    visible: int
    in_flight: int
    delayed: int


def _body(message: Any) -> str:
    """A message object's JSON (anything with to_json), or a str as it is."""
    return message if isinstance(message, str) else message.to_json()


def _chunks(entries: list[tuple[Hashable, Any]], sizer=None) -> Iterable[list[tuple[Hashable, Any]]]:
    """At most MAX_BATCH entries per chunk, and (with sizer) at most MAX_BATCH_BYTES of payload."""
    chunk, size = [], 0
    for entry in entries:
        n = sizer(entry[1]) if sizer else 0
        if chunk and (len(chunk) == MAX_BATCH or size + n > MAX_BATCH_BYTES):
            yield chunk
            chunk, size = [], 0
        chunk.append(entry)
        size += n
    if chunk:
        yield chunk


class Transport:
    """The broker: clients, the queue-URL cache, queue lifecycle, sends and batched operations.

    Each process's composition root builds one and hands it to every component; the clients default to
    shared.aws's (tests give clients of their own, e.g. one whose endpoint is down).
    """

    def __init__(self, settings: Settings, sqs=None, poll_sqs=None):
        from shared.aws import client, sqs_long_poll_client
        self.settings = settings
        self.sqs = sqs if sqs is not None else client("sqs", settings)
        # receives wait up to wait_time_s: they need a client whose read timeout outlasts the poll
        self.poll_sqs = poll_sqs if poll_sqs is not None else (
            sqs if sqs is not None else sqs_long_poll_client(settings))
        self._urls: dict[str, str] = {}
        self._lock = threading.Lock()
        self.url_hits = 0
        self.url_misses = 0

    # --- queue URLs -------------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        """A queue's URL by name, looked up once per process; QueueGone when it does not exist."""
        with self._lock:
            url = self._urls.get(name)
            if url is not None:
                self.url_hits += 1
                return url
            self.url_misses += 1
        try:
            url = self.sqs.get_queue_url(QueueName=name)["QueueUrl"]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, name) from None
        with self._lock:
            self._urls[name] = url
        return url

    def request_queue_url(self, service: str) -> str:
        """The URL of a service's request queue."""
        return self.url(naming.request_queue(self.settings.prefix, service))

    def terminate_queue_url(self) -> str:
        """The URL of the terminate queue."""
        return self.url(naming.terminate_queue(self.settings.prefix))

    def forget(self, name_or_url: str) -> None:
        """Drop a cached URL (the queue was found gone: a recreated queue is looked up again)."""
        with self._lock:
            for name, url in list(self._urls.items()):
                if name_or_url in (name, url):
                    del self._urls[name]

    def _gone(self, exc: Exception, url: str) -> TransportError:
        err = _translate(exc, url)
        if isinstance(err, QueueGone):
            self.forget(url)
        return err

    # --- queue lifecycle --------------------------------------------------------------------------------
    def create_queue(self, name: str, attributes: dict[str, str] | None = None,
                     tags: dict[str, str] | None = None) -> str:
        """Create (or find, when it exists with the same attributes) a queue; its URL, cached."""
        kwargs: dict[str, Any] = {"QueueName": name, "Attributes": dict(attributes or {})}
        if tags:
            kwargs["tags"] = dict(tags)
        try:
            url = self.sqs.create_queue(**kwargs)["QueueUrl"]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, name) from None
        with self._lock:
            self._urls[name] = url
        return url

    def delete_queue(self, url: str) -> None:
        """Delete a queue; one that is already gone counts as deleted."""
        self.forget(url)
        try:
            self.sqs.delete_queue(QueueUrl=url)
        except (ClientError, BotoCoreError) as exc:
            err = _translate(exc, url)
            if not isinstance(err, QueueGone):
                raise err from None

    def list_queues(self, prefix: str) -> list[str]:
        """URLs of every queue whose name starts with prefix."""
        try:
            pages = self.sqs.get_paginator("list_queues").paginate(QueueNamePrefix=prefix)
            return [url for page in pages for url in page.get("QueueUrls", [])]
        except (ClientError, BotoCoreError) as exc:
            raise _translate(exc, prefix + "*") from None

    def set_attributes(self, url: str, attributes: dict[str, str]) -> None:
        """Change a queue's attributes (operator tools reconciling a queue that exists with others)."""
        try:
            self.sqs.set_queue_attributes(QueueUrl=url, Attributes=dict(attributes))
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None

    def attributes(self, url: str, names: Iterable[str]) -> dict[str, str]:
        """Some attributes of a queue (QueueArn, CreatedTimestamp, ...)."""
        try:
            return self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(names))["Attributes"]
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None

    def tags(self, url: str) -> dict[str, str]:
        """A queue's tags."""
        try:
            return self.sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None

    def tag(self, url: str, tags: dict[str, str]) -> None:
        """Set tags on a queue."""
        try:
            self.sqs.tag_queue(QueueUrl=url, Tags=dict(tags))
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None

    def depth(self, url: str) -> QueueDepth:
        """Visible, in-flight and delayed counts of a queue."""
        try:
            attrs = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(DEPTH_ATTRIBUTES))["Attributes"]
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None
        return QueueDepth(visible=int(attrs.get("ApproximateNumberOfMessages", 0)),
                          in_flight=int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                          delayed=int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)))

    # --- sending ----------------------------------------------------------------------------------------
    def send(self, url: str, message: Any) -> str:
        """Send one message (a message object or a JSON str); its SQS MessageId."""
        try:
            return self.sqs.send_message(QueueUrl=url, MessageBody=_body(message))["MessageId"]
        except (ClientError, BotoCoreError) as exc:
            raise self._gone(exc, url) from None

    def send_batch(self, url: str, messages: Iterable[tuple[Hashable, Any]]) -> EntriesResult:
        """Send (key, message) pairs in batches; failures by key. QueueGone when the queue does not exist."""
        entries = [(key, _body(msg)) for key, msg in messages]
        return self._batch("send_message_batch", url, entries,
                           lambda i, body: {"Id": i, "MessageBody": body},
                           sizer=lambda body: len(body.encode()))

    # --- acknowledging ----------------------------------------------------------------------------------
    def delete_batch(self, url: str, handles: Iterable[tuple[Hashable, str]]) -> EntriesResult:
        """Delete (key, receipt handle) pairs in batches; failures (e.g. an expired handle) by key."""
        return self._batch("delete_message_batch", url, list(handles),
                           lambda i, handle: {"Id": i, "ReceiptHandle": handle})

    def change_visibility_batch(self, url: str, handles: Iterable[tuple[Hashable, str]],
                                timeout_s: int) -> EntriesResult:
        """Set the visibility timeout of (key, receipt handle) pairs; 0 makes them visible now."""
        return self._batch("change_message_visibility_batch", url, list(handles),
                           lambda i, handle: {"Id": i, "ReceiptHandle": handle, "VisibilityTimeout": int(timeout_s)})

    def _batch(self, op: str, url: str, entries: list[tuple[Hashable, Any]], entry, sizer=None) -> EntriesResult:
        keys = [key for key, _ in entries]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{op}: keys must be unique within one call")
        result = EntriesResult()
        call = getattr(self.sqs, op)
        for chunk in _chunks(entries, sizer):
            # SQS ids are positions in the chunk: caller keys need not follow SQS's id alphabet
            try:
                resp = call(QueueUrl=url, Entries=[entry(str(i), value) for i, (_, value) in enumerate(chunk)])
            except (ClientError, BotoCoreError) as exc:
                err = self._gone(exc, url)
                if isinstance(err, QueueGone):
                    raise err from None
                # the whole chunk failed (network, throttling): every entry in it is reported
                result.failed.extend(Failure(key, err.code, str(err)) for key, _ in chunk)
                log.warning("%s on %s: %d entries failed: %s", op, url, len(chunk), err)
                continue
            result.succeeded.extend(chunk[int(ok["Id"])][0] for ok in resp.get("Successful", []))
            for bad in resp.get("Failed", []):
                result.failed.append(Failure(chunk[int(bad["Id"])][0], bad.get("Code", ""),
                                             bad.get("Message", ""), bool(bad.get("SenderFault"))))
        return result

    # --- several queues at once (a worker's batch spans request queues and reply queues) -----------------
    def send_grouped(self, items: Iterable[tuple[Hashable, str, Any]]) -> EntriesResult:
        """Send (key, queue URL, message) triples, batched per queue; a gone queue fails its entries (queue_gone)."""
        by_queue: dict[str, list] = {}
        for key, url, msg in items:
            by_queue.setdefault(url, []).append((key, msg))
        return self._grouped(by_queue, self.send_batch)

    def ack_received(self, messages: Iterable[Any]) -> EntriesResult:
        """Delete received messages (anything with queue_url and receipt_handle), per queue.

        Keys are positions in `messages`: one message received twice (its visibility ran out while held)
        has two receipt handles under one MessageId, and both must be answerable.
        """
        return self._grouped(self._by_queue(messages), self.delete_batch)

    def release_received(self, messages: Iterable[Any], timeout_s: int = 0) -> EntriesResult:
        """Make received messages visible again after timeout_s (0: now), per queue; keys are positions."""
        return self._grouped(self._by_queue(messages),
                             lambda url, handles: self.change_visibility_batch(url, handles, timeout_s))

    @staticmethod
    def _by_queue(messages: Iterable[Any]) -> dict[str, list]:
        by_queue: dict[str, list] = {}
        for i, m in enumerate(messages):
            by_queue.setdefault(m.queue_url, []).append((i, m.receipt_handle))
        return by_queue

    @staticmethod
    def _grouped(by_queue: dict[str, list], op) -> EntriesResult:
        result = EntriesResult()
        for url, entries in by_queue.items():
            try:
                part = op(url, entries)
            except QueueGone as exc:
                result.failed.extend(Failure(key, exc.code, str(exc), True, queue_gone=True) for key, _ in entries)
                continue
            result.succeeded.extend(part.succeeded)
            result.failed.extend(part.failed)
        return result

    def consumer(self, url: str, wait_s: int | None = None, visibility_timeout: int | None = None) -> "QueueConsumer":
        """The receiving side of one queue."""
        return QueueConsumer(self, url, wait_s, visibility_timeout)


class QueueConsumer:
    """One queue's receiver: long-poll, ack (delete) and release (visible again now)."""

    def __init__(self, transport: Transport, url: str, wait_s: int | None = None,
                 visibility_timeout: int | None = None):
        self.transport = transport
        self.url = url
        self.wait_s = min(20, max(0, int(transport.settings.wait_time_s if wait_s is None else wait_s)))
        self.visibility_timeout = visibility_timeout

    def receive(self, max_messages: int = 10) -> list[Received]:
        """Up to max_messages (1..10), waiting up to wait_s for the first; QueueGone / TransportError."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.url, "MaxNumberOfMessages": max(1, min(MAX_BATCH, max_messages)),
            "WaitTimeSeconds": self.wait_s,
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"]}
        if self.visibility_timeout is not None:
            kwargs["VisibilityTimeout"] = self.visibility_timeout
        try:
            resp = self.transport.poll_sqs.receive_message(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self.transport._gone(exc, self.url) from None
        at = now_ms()
        out = []
        for m in resp.get("Messages", []):
            attrs = m.get("Attributes", {})
            sent = attrs.get("SentTimestamp")
            out.append(Received(queue_url=self.url, message_id=m["MessageId"], receipt_handle=m["ReceiptHandle"],
                                body=m.get("Body", ""), receive_count=int(attrs.get("ApproximateReceiveCount", "1")),
                                sent_at=int(sent) if sent else None, received_at=at))
        return out

    def ack(self, messages: Iterable[Received]) -> EntriesResult:
        """Delete messages that are done; failures keyed by message id."""
        return self.transport.delete_batch(self.url, [(m.message_id, m.receipt_handle) for m in messages])

    def release(self, messages: Iterable[Received], timeout_s: int = 0) -> EntriesResult:
        """Give messages back (visible again after timeout_s); failures keyed by message id."""
        return self.transport.change_visibility_batch(
            self.url, [(m.message_id, m.receipt_handle) for m in messages], timeout_s)
