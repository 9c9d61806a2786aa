"""The worker's pipeline: prepare the next batch and deliver the last one while the model runs this one.

Three stages, each on its own thread, joined by bounded queues:

- prefetch: takes a batch from the buffer (the consumers received it), parses, fetches and decodes it
  (BatchProcessor.prepare) and queues the prepared part; at most `depth` parts wait for the model.
- model: the worker's loop thread takes a prepared part and runs its forward passes (BatchProcessor.finish).
- completion: sends replies, writes the records something reads, then deletes (ResultSink.deliver), and
  releases what is not answered; at most `depth` answered parts wait for it, so a slow SQS slows the model
  down instead of piling up answers.

Every message stays taken in the buffer (counted as held, its visibility kept by the processor) until the
completion stage is done with it, so burst mode, the terminate check and the watchdog see it as work.
Delivery order per message is unchanged: delete only after the reply and any record were sent.
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from shared.messages import now_ms
from worker.batch import BatchOutcome, BatchProcessor, Staged
from worker.consumer import Held, MessageBuffer, release

log = logging.getLogger(__name__)

_POLL_S = 0.1   # how often a blocked stage looks whether the pipeline is stopping


class _Answered:
    """A part whose forward passes ran: what to deliver, and the stage time it took so far."""

    def __init__(self, part: Staged, outcome: BatchOutcome, spent_s: float):
        self.part = part
        self.outcome = outcome
        self.spent_s = spent_s


class Pipeline:
    """Prefetch and completion threads around the worker loop's forward passes."""

    def __init__(self, settings, buffer: MessageBuffer, processor: BatchProcessor, sink, transport, metrics,
                 depth: int = 1):
        self.settings = settings
        self.buffer = buffer
        self.processor = processor
        self.sink = sink
        self.transport = transport
        self.metrics = metrics
        self.ready: queue.Queue[Staged] = queue.Queue(maxsize=max(1, depth))          # for the model
        self.outbox: queue.Queue[_Answered | None] = queue.Queue(maxsize=max(1, depth))  # for delivery
        self.handled = 0
        self._spent: dict[int, float] = {}      # id(part) -> prepare seconds (WorkTime is the stages' sum)
        self._busy: dict[str, int | None] = {"prefetch": None, "completion": None}   # epoch ms, when working
        self._stop_taking = threading.Event()
        self._drained = False
        self.prefetcher = threading.Thread(target=self._prefetch, name="prefetch", daemon=True)
        self.completer = threading.Thread(target=self._complete, name="completion", daemon=True)

    def start(self) -> "Pipeline":
        """Start the prefetch and completion threads."""
        self.prefetcher.start()
        self.completer.start()
        return self

    # --- the model stage (the worker loop's thread) ---------------------------------
    def next(self, timeout: float) -> Staged | None:
        """The next prepared part, or None after timeout."""
        try:
            return self.ready.get(timeout=timeout)
        except queue.Empty:
            return None

    def run(self, part: Staged) -> None:
        """Forward passes of one part, then hand it to the completion thread (never raises)."""
        started = time.perf_counter()
        try:
            outcome = self.processor.finish(part)
        except Exception as exc:  # its messages come back after the visibility timeout
            log.exception("batch of %d failed; its messages will be redelivered", len(part.held))
            self._failed(part, exc)
            return
        spent = self._spent.pop(id(part), 0.0) + time.perf_counter() - started
        self.outbox.put(_Answered(part, outcome, spent))   # waits while delivery is behind

    def stalled_since(self) -> int | None:
        """When the oldest stage still working started that work (epoch ms); None when none works now."""
        times = [t for t in self._busy.values() if t is not None]
        return min(times) if times else None

    def drain(self, answer: bool) -> None:
        """Stop taking batches; answer (or, if not `answer`, release) what was prepared; deliver what was answered.

        Nothing taken is lost: each prepared part is either answered and deleted, or made visible again
        at once (ChangeMessageVisibility 0) for another worker.
        """
        if self._drained:
            return
        self._drained = True
        self._stop_taking.set()
        while self.prefetcher.is_alive() or not self.ready.empty():
            part = self.next(_POLL_S)
            if part is None:
                continue
            if answer:
                self.run(part)
            else:
                n = release(self.transport, part.held) if part.held else 0
                log.info("stopping: released %d of %d prepared messages", n, len(part.held))
                self._spent.pop(id(part), None)
                self.buffer.done(part.held, requeued=True)
        self.outbox.put(None)
        self.completer.join()

    # --- prefetch ---------------------------------------------------------------------
    def _prefetch(self) -> None:
        s = self.settings
        while not self._stop_taking.is_set():
            batch = self.buffer.take_batch(s.max_batch_size, s.max_batch_wait_ms / 1000, timeout=0.5)
            if not batch:
                continue
            if self._stop_taking.is_set():   # taken as the pipeline stopped: visible again, for another worker
                release(self.transport, batch)
                self.buffer.done(batch, requeued=True)
                return
            queued: set[int] = set()
            try:
                self._busy["prefetch"] = now_ms()
                started = time.perf_counter()
                for part in self.processor.prepare(batch):
                    self._spent[id(part)] = time.perf_counter() - started
                    self._busy["prefetch"] = None          # waiting for the model is not this stage's stall
                    self.ready.put(part)   # waits while the model is `depth` parts behind
                    queued.update(id(h) for h in part.held)
                    self._busy["prefetch"] = now_ms()
                    started = time.perf_counter()
            except Exception as exc:  # never die on one batch: its messages come back after the visibility timeout
                left = [h for h in batch if id(h) not in queued]
                log.exception("preparing a batch of %d failed; %d will be redelivered", len(batch), len(left))
                self._failed_held(left, exc)
            finally:
                self._busy["prefetch"] = None

    # --- completion -------------------------------------------------------------------
    def _complete(self) -> None:
        while True:
            answered = self.outbox.get()
            if answered is None:
                return
            self._busy["completion"] = now_ms()
            try:
                self._deliver(answered)
            finally:
                self._busy["completion"] = None

    def _deliver(self, answered: _Answered) -> None:
        part, result = answered.part, answered.outcome
        started = time.perf_counter()
        requeued = False
        try:
            deleted = self.sink.deliver(result.outcomes)
            if result.unreadable:  # visible again now, so maxReceiveCount moves it to the DLQ soon
                release(self.transport, result.unreadable)
                requeued = True
            if result.release:     # the model broke under them: visible again now, for a worker that works
                release(self.transport, result.release)
                requeued = True
            self.handled += len(part.held)
            # what one request costs this worker (fetch, decode, inference, reply, record, delete), the
            # stages' time and not their waits: the autoscaler sizes the fleet by it (autoscaler.queues)
            if part.held:
                per_request = (answered.spent_s + time.perf_counter() - started) * 1000 / len(part.held)
                for service in dict.fromkeys(h.service for h in part.held):   # services of one model
                    self.metrics.record("WorkTime", per_request, Service=service)
            log.debug("batch of %d: %d deleted, %d unreadable", len(part.held), len(deleted), len(result.unreadable))
        except Exception as exc:  # its messages come back after the visibility timeout
            log.exception("delivering a batch of %d failed; its messages will be redelivered", len(part.held))
            self.sink.note_failure(part.held, f"{type(exc).__name__}: {exc}")
        finally:
            self.buffer.done(part.held, requeued)

    # --- helpers ----------------------------------------------------------------------
    def _failed(self, part: Staged, exc: Exception) -> None:
        self._spent.pop(id(part), None)
        self._failed_held(part.held, exc)

    def _failed_held(self, held: list[Held], exc: Exception) -> None:
        try:
            self.sink.note_failure(held, f"{type(exc).__name__}: {exc}")
        finally:
            self.buffer.done(held)
