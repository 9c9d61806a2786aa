"""The reply listener: this process's own reply queue, one long-poll thread, waiters by request id.

A synchronous request asks the worker for no result record (one S3 PUT per request cost more than
the GPUs). When its client stops waiting (504 after the timeout, 503 at shutdown) its id becomes
*late*: the reply that comes afterwards is written to results/<id>.json here, so GET /jobs/<id>
answers it, and deleted from the queue only once written.

A reply queue can vanish under a running process (the janitor after a stall, an operator, a second
provisioning). The listener then makes a new one under a new name (SQS refuses a deleted name for 60 s),
and every waiter whose request named the dead queue is answered from its result record: the worker
keeps the reply as `results/<id>.json` when its reply queue is gone, whatever the request asked.
"""
from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from typing import Callable

from shared import naming
from shared.config import Settings
from shared.messages import MessageError, Reply, now_ms
from shared.transport import QueueGone, Received, Transport, TransportError

log = logging.getLogger(__name__)

_LATE_MAX = 100_000   # late ids remembered per process (~10 MB); the oldest is forgotten first


class Waiter:
    """One request waiting for its reply."""

    __slots__ = ("request_id", "reply_to", "_event", "reply", "shutdown")

    def __init__(self, request_id: str, reply_to: str | None = None):
        self.request_id = request_id
        self.reply_to = reply_to       # the queue its request names; not the current one -> read its record
        self._event = threading.Event()
        self.reply: Reply | None = None
        self.shutdown = False          # woken without a reply because this process is stopping

    def deliver(self, reply: Reply) -> None:
        """Hand the reply over and wake the waiting request."""
        self.reply = reply
        self._event.set()

    def wait(self, timeout: float) -> Reply | None:
        """The reply, or None after timeout seconds."""
        self._event.wait(timeout)
        return self.reply


class ReplyListener:
    """Owns one reply queue per process (created after fork), polls it, wakes waiters, deletes it on close."""

    def __init__(self, settings: Settings, transport: Transport, record: Callable[[Reply], None] | None = None,
                 records: Callable[[str], Reply | None] | None = None):
        self.settings = settings
        self.transport = transport   # its poll client's read timeout outlasts the long poll
        self.record = record         # writes a late reply's result record (JobStore.record_result); raises on failure
        self.records = records       # request id -> its result record, for waiters whose reply queue died
        self._lock = threading.Lock()
        self._replacing = threading.Lock()
        self._waiters: dict[str, Waiter] = {}
        self._late: OrderedDict[str, float] = OrderedDict()   # id -> forget after (monotonic): client gave up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._atexit = False
        self.queue_name: str | None = None
        self.queue_url: str | None = None
        self._drain_timer: threading.Timer | None = None
        self._beat_at = 0.0
        self._checked_at = -1e9
        self._check: str | None = None
        self.draining = False          # SIGTERM seen: waiters get drain_s for their reply, then a 503
        self.delivered = 0
        self.orphans = 0               # replies for ids nobody waits for (timed out, duplicates)
        self.recorded = 0              # late replies written to results/<id>.json by this process
        self.malformed = 0
        self.replaced = 0              # reply queues found gone and made again
        self.from_records = 0          # waiters answered from their result record (their reply queue died)

    # --- lifecycle ----------------------------------------------------------
    def start(self) -> str:
        """Create this process's queue and start polling (idempotent; a forked child gets its own)."""
        with self._lock:
            if self._pid == os.getpid() and self.queue_url and self._thread and self._thread.is_alive():
                return self.queue_url
            if self._pid != os.getpid():
                # inherited across fork: the parent's queue and thread are not ours
                self._waiters.clear()
                self.queue_url = None
                self._thread = None
            self._stop.clear()
            if not self.queue_url:
                self.queue_name, self.queue_url = self._create()
                self._beat_at = time.monotonic()
                log.info("reply queue %s created (pid %d)", self.queue_name, os.getpid())
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="reply-listener", daemon=True)
            self._thread.start()
            if not self._atexit:
                atexit.register(self.close)
                self._atexit = True
            return self.queue_url

    def _create(self) -> tuple[str, str]:
        """Make a reply queue of a fresh name, tagged with its owner; (name, url)."""
        name = naming.reply_queue(self.settings.prefix)
        now = str(now_ms())
        url = self.transport.create_queue(
            name, {"MessageRetentionPeriod": "3600", "VisibilityTimeout": "30"},
            tags={naming.REPLY_TAG_OWNER: f"{socket.gethostname()[:100]}/{os.getpid()}",
                  naming.REPLY_TAG_CREATED: now, naming.REPLY_TAG_BEAT: now})
        return name, url

    def replace(self, dead_url: str | None) -> str | None:
        """The queue dead_url is gone: make a new one (once, whoever notices first); the URL now in use.

        Waiters keep their old reply_to: the listener answers them from their result records. Raises
        TransportError when the new queue cannot be made (the next receive or probe tries again).
        """
        with self._replacing:
            if self.queue_url != dead_url or self._stop.is_set() or self._pid != os.getpid():
                return self.queue_url   # replaced already, or this process is stopping
            old = self.queue_name
            name, url = self._create()
            with self._lock:
                self.queue_name, self.queue_url = name, url
                stranded = sum(1 for w in self._waiters.values() if w.reply_to not in (None, url))
            self._beat_at = time.monotonic()
            self._checked_at = -1e9
            self.replaced += 1
        log.warning("reply queue %s is gone (deleted under this process); made %s, %d waiting requests are "
                    "answered from their result records", old, name, stranded)
        return url

    def close(self, join_timeout: float = 2.0) -> None:
        """Stop polling and delete the queue (safe to call twice; replies in flight are lost to S3 only)."""
        with self._replacing, self._lock:   # never a new queue made after close
            if self._pid != os.getpid():
                return
            self._stop.set()
            url, self.queue_url = self.queue_url, None
            thread = self._thread
            for waiter in self._waiters.values():
                waiter.shutdown = True  # wake them; they answer 503 with their job id
                waiter.deliver(None)
                self._mark_late(waiter.request_id)   # the queue goes: the worker records these itself
            self._waiters.clear()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            late = bool(self._late)
        if url and late:   # replies for given-up clients that came after the last poll: record them first
            self._sweep(url)
        if url:
            try:
                self.transport.delete_queue(url)
                log.info("reply queue %s deleted", self.queue_name)
            except TransportError as exc:
                log.warning("reply queue %s not deleted: %s", self.queue_name, exc)
        if thread is not None and thread is not threading.current_thread():
            thread.join(join_timeout)

    def _sweep(self, url: str, rounds: int = 10) -> None:
        """Take what waits on the queue now (no long poll) before it is deleted; late replies are recorded.

        A reply sent between this sweep and the deletion is still lost with the queue (its client
        has a 503 with the job id, which then says pending); the window is this sweep's last call.
        """
        queue = self.transport.consumer(url, wait_s=0)
        try:
            for _ in range(rounds):
                messages = queue.receive(10)
                if not messages:
                    return
                self._handle(queue, messages)
        except TransportError as exc:
            log.warning("reply queue %s: last sweep failed: %s", self.queue_name, exc)

    def drain(self, grace_s: float) -> None:
        """Shutdown began: replies keep flowing for grace_s, then every waiter still waiting is woken as 'shutdown'."""
        with self._lock:
            if self.draining:
                return
            self.draining = True
            log.info("reply queue %s: draining %d waiting requests for up to %.0f s",
                     self.queue_name, len(self._waiters), grace_s)
            self._drain_timer = threading.Timer(grace_s, self._cut_waiters)
            self._drain_timer.daemon = True
            self._drain_timer.start()

    def _cut_waiters(self) -> None:
        with self._lock:
            waiters = list(self._waiters.values())
            self._waiters.clear()
            for waiter in waiters:   # answered 503 with the job id: a reply still to come is recorded
                self._mark_late(waiter.request_id)
        for waiter in waiters:
            waiter.shutdown = True
            waiter._event.set()
        if waiters:
            log.warning("reply queue %s: %d requests still waiting at shutdown; answered 503 with their job ids",
                        self.queue_name, len(waiters))

    def reachable(self, cache_s: float = 2.0) -> str | None:
        """None when the queue endpoint answered for this reply queue lately, else why not."""
        now = time.monotonic()
        if now - self._checked_at < cache_s:
            return self._check
        url = self.queue_url
        try:
            self.transport.attributes(url, ["QueueArn"])
            self._check = None
        except QueueGone:
            try:   # a probe that finds the queue gone replaces it at once: ready again in one poll
                self.replace(url)
                self._check = None
            except TransportError as exc:
                self._check = f"reply queue gone and not made again: {type(exc).__name__}"
        except TransportError as exc:
            self._check = f"queue endpoint unreachable: {type(exc).__name__}"
        self._checked_at = time.monotonic()
        return self._check

    @property
    def alive(self) -> bool:
        """True when the polling thread of this process runs."""
        t = self._thread
        return bool(t and t.is_alive() and self._pid == os.getpid() and not self._stop.is_set())

    @property
    def waiting(self) -> int:
        """Number of requests waiting for a reply (drops to 0 when all are answered or timed out)."""
        with self._lock:
            return len(self._waiters)

    # --- waiters ------------------------------------------------------------
    def register(self, request_id: str, reply_to: str | None = None) -> Waiter:
        """Register before sending the request (to reply_to), so a fast reply is never missed."""
        waiter = Waiter(request_id, reply_to)
        with self._lock:
            self._waiters[request_id] = waiter
        return waiter

    def discard(self, request_id: str) -> None:
        """Forget a waiter (after its reply, its timeout, or a failed send)."""
        with self._lock:
            self._waiters.pop(request_id, None)

    def give_up(self, request_id: str) -> Reply | None:
        """The client stops waiting: its reply, if one came just now, else None and the reply is recorded later.

        Under the lock that delivery takes too, so a reply is either handed to this waiter or
        recorded as late, never dropped between the two.
        """
        with self._lock:
            waiter = self._waiters.pop(request_id, None)
            if waiter is None or waiter.reply is not None:   # delivered (under this lock) before we got here
                return waiter.reply if waiter is not None else None
            self._mark_late(request_id)
            return None

    def is_late(self, request_id: str) -> bool:
        """True while a reply for this id would be recorded here (its client stopped waiting)."""
        with self._lock:
            return request_id in self._late

    def _mark_late(self, request_id: str) -> None:
        """Remember a given-up id for as long as its request can wait in a queue (caller holds the lock)."""
        self._late[request_id] = time.monotonic() + self.settings.message_retention_s
        self._late.move_to_end(request_id)
        now = time.monotonic()
        while self._late and (len(self._late) > _LATE_MAX or next(iter(self._late.values())) < now):
            self._late.popitem(last=False)

    # --- polling ------------------------------------------------------------
    def _beat(self, url: str) -> None:
        """Re-tag the queue with the time now: the janitor leaves queues whose owner beats alone."""
        if time.monotonic() - self._beat_at < self.settings.reply_heartbeat_s:
            return
        self._beat_at = time.monotonic()
        try:
            self.transport.tag(url, {naming.REPLY_TAG_BEAT: str(now_ms())})
        except QueueGone:
            self._replace_from_loop(url)
        except TransportError as exc:
            log.warning("reply queue %s: heartbeat tag not written: %s", self.queue_name, exc)

    def _replace_from_loop(self, url: str) -> None:
        try:
            self.replace(url)
        except TransportError as exc:
            log.warning("reply queue %s is gone and a new one cannot be made yet: %s", self.queue_name, exc)
            self._stop.wait(1.0)

    def _stranded(self) -> list[Waiter]:
        """Waiters whose request named a reply queue that is not this one any more."""
        with self._lock:
            url = self.queue_url
            return [w for w in self._waiters.values() if w.reply_to is not None and w.reply_to != url]

    def _answer_stranded(self, waiters: list[Waiter]) -> None:
        """Wake each stranded waiter whose result record is there (its reply went to a dead queue)."""
        for waiter in waiters:
            try:
                reply = self.records(waiter.request_id)
            except Exception as exc:  # S3 down: the next round tries again, the timeout still ends it
                log.warning("request %s: result record unreadable (%s); retrying", waiter.request_id, exc)
                return
            if reply is None:
                continue
            with self._lock:
                if self._waiters.pop(waiter.request_id, None) is None:
                    continue   # answered meanwhile, or timed out
            self.from_records += 1
            log.info("request %s: answered from its result record (its reply queue was replaced)", waiter.request_id)
            waiter.deliver(reply)

    def _run(self) -> None:
        while not self._stop.is_set():
            url = self.queue_url
            if url is None:
                break
            self._beat(url)
            stranded = self._stranded() if self.records is not None else []
            if stranded:
                self._answer_stranded(stranded)
            # while some wait on records, poll briefly so each record is read about once a second
            queue = self.transport.consumer(url, wait_s=1 if stranded else None)
            try:
                messages = queue.receive(10)
            except QueueGone:
                if not self._stop.is_set():
                    self._replace_from_loop(url)
                continue
            except TransportError as exc:
                if self._stop.is_set():
                    break
                log.warning("reply queue %s: receive failed: %s", self.queue_name, exc)
                self._stop.wait(1.0)
                continue
            try:
                if messages:
                    self._handle(queue, messages)
            except Exception:  # one bad batch must not end the only listener of this process
                log.exception("reply queue %s: handling a batch failed", self.queue_name)
        log.info("reply listener for %s stopped", self.queue_name)

    def _handle(self, queue, messages: list[Received]) -> None:
        done = []
        for msg in messages:
            try:
                reply = msg.parse(Reply)
            except MessageError as exc:
                # nothing to wake; keeping it would only redeliver the same garbage
                self.malformed += 1
                log.warning("reply queue %s: malformed reply dropped: %s", self.queue_name, exc.message)
                done.append(msg)
                continue
            with self._lock:
                waiter = self._waiters.pop(reply.id, None)
                if waiter is not None:
                    waiter.deliver(reply)   # under the lock: give_up() sees either this reply or a late id
                late = waiter is None and reply.id in self._late
            if waiter is not None:
                self.delivered += 1
            elif late and not self._record_late(reply):
                continue   # not written: left on the queue, it comes back after the visibility timeout
            else:
                self.orphans += 1
                if not late:
                    log.info("request %s: reply has no waiter (a duplicate); dropped", reply.id)
            done.append(msg)
        if not done:
            return
        messages = done
        try:
            result = queue.ack(messages)
        except TransportError as exc:
            log.warning("reply queue %s: delete failed (%s); duplicates will be ignored", self.queue_name, exc)
            return
        if result.failed:
            log.warning("reply queue %s: %d not deleted (%s); duplicates will be ignored", self.queue_name,
                        len(result.failed), result.failed[0].code)

    def _record_late(self, reply: Reply) -> bool:
        """Write a late reply's result record; True once written (or when this process writes none)."""
        if self.record is None:
            return True
        try:
            self.record(reply)
        except Exception as exc:  # StorageUnavailable or worse: the message stays and is tried again
            log.error("request %s: late reply not recorded (%s); kept on the reply queue", reply.id, exc)
            return False
        with self._lock:
            self._late.pop(reply.id, None)
        self.recorded += 1
        log.info("request %s: late reply recorded as results/%s.json", reply.id, reply.id)
        return True
