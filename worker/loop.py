"""The worker: start up, loop (forward passes of prefetched batches; worker/pipeline.py), tear down. Like rq's Worker.work()."""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from shared import naming
from shared.aws import client
from shared.catalogue import Catalogue, catalogue_for
from shared.config import Settings
from shared.liveness import stall_limit_s
from shared.metrics import MetricsPublisher
from shared.transport import QueueGone, Transport, TransportError
from worker.asg import FleetAgent
from worker.batch import BatchProcessor
from worker.bulk import start_bulk_consumers
from worker.consumer import Consumer, MessageBuffer, release
from worker.fetch import Fetcher
from worker.heartbeat import HeartbeatThread
from worker.identity import instance_id
from worker.live import LiveServices
from worker.liveness import Progress, Watchdog
from worker.pipeline import Pipeline
from worker.results import ResultSink
from worker.selfcheck import EXIT_BROKEN
from worker.terminate import TerminateWatch

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_CANNOT_START = 2


class StartupError(RuntimeError):
    """The worker cannot start: unknown services, nothing loadable, or missing queues."""


class Worker:
    """Polls the request queues of the services it hosts and answers them, at least once."""

    def __init__(self, settings: Settings, catalogue: Catalogue | None = None, registry=None, engine=None):
        self.settings = settings
        self.catalogue = catalogue or catalogue_for(settings)
        self.registry = registry      # tests pass a loaded registry/engine to share one model
        self.engine = engine
        self._own_engine = engine is None
        self.instance_id = ""
        self.transport: Transport | None = None
        self.s3 = None
        self.buffer = MessageBuffer(settings.buffer_size)
        self.consumers: list[Consumer] = []
        self.heartbeat: HeartbeatThread | None = None
        self.progress = Progress()
        self.watchdog: Watchdog | None = None
        self.wedged_exit = os._exit   # what the watchdog calls once it released a wedged worker's messages
        self.terminate: TerminateWatch | None = None
        self.processor: BatchProcessor | None = None
        self.sink: ResultSink | None = None
        self.metrics: MetricsPublisher | None = None
        self.live: LiveServices | None = None   # S3 services, picked up without a restart
        self.fleet_agent: FleetAgent | None = None   # scale-in protection, spot notices, self-removal
        self.queue_urls: dict[str, str] = {}
        self.pipeline: Pipeline | None = None   # prefetch and completion threads around the forward passes
        self.stop_reason: str | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._saved_handlers: dict[int, object] = {}
        self._signals = 0
        self._signals_wanted = False   # work() in the main thread: startup() installs the handlers

    # --- public ------------------------------------------------------------------
    @property
    def handled(self) -> int:
        """Messages answered or released so far."""
        return self.pipeline.handled if self.pipeline is not None else 0

    def work(self, burst: bool = False, install_signals: bool | None = None) -> int:
        """Run until stopped (SIGTERM, a terminate message, stop()) or, with burst, until the queues are empty."""
        if install_signals is None:
            install_signals = threading.current_thread() is threading.main_thread()
        self._signals_wanted = install_signals   # installed by startup() just before any message is taken
        try:
            try:
                self.startup()
            except StartupError as exc:
                log.error("worker cannot start: %s", exc)
                return EXIT_CANNOT_START
            self.ready.set()
            log.info("worker %s ready: services %s%s", self.instance_id, self.registry.hosted(),
                     " (burst)" if burst else "")
            while not self._stop.is_set():
                self.progress.step()
                part = self.pipeline.next(timeout=0.5)   # prefetched: received, fetched and decoded meanwhile
                if part is not None:
                    self.pipeline.run(part)              # forward passes; delivery goes on in its own thread
                    if self.processor.health.broken:
                        self._retire_broken(self.processor.health.broken)
                        break
                idle = part is None and self.buffer.held() == 0   # nothing held, nothing in flight
                if self.terminate.due(idle) and self.terminate.check():
                    if self.buffer.held():      # a consumer received meanwhile: busy again, not ours to take
                        self.terminate.give_back()
                    else:
                        self.terminate.confirm()
                        self.heartbeat.stopping()   # at once: the autoscaler must not ask another worker too
                        self.stop("terminate message")
                if burst and self.buffer.quiescent():
                    self.stop("burst: queues empty")
            self.pipeline.drain(answer=True)   # prefetched parts are answered, not dropped
            return EXIT_BROKEN if self.processor is not None and self.processor.health.broken else EXIT_OK
        finally:
            self.teardown()
            if install_signals:
                self._restore_signals()

    def stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch."""
        if not self._stop.is_set():
            self.stop_reason = reason
            log.info("worker %s stopping: %s", self.instance_id, reason)
            self._stop.set()

    # --- services added or removed while running (worker/live.py decides which) ---
    def request_queue_url(self, name: str) -> str | None:
        """A service's request queue URL; None while it is not provisioned (or SQS cannot say)."""
        url = self.queue_urls.get(name)
        if url:
            return url
        try:
            return self.transport.request_queue_url(name)
        except TransportError:  # not provisioned yet (QueueGone) or unreachable: the next check asks again
            return None

    def add_service(self, spec, handler, url: str) -> None:
        """Host one more service: its built model joins the registry, then a consumer polls its queue."""
        self.registry.add(spec, handler)
        if any(c.service == spec.name for c in self.consumers):
            return
        consumer = Consumer(self.settings, spec.name, url, self.buffer, self.transport)
        consumer.start()
        self.consumers.append(consumer)
        self.queue_urls[spec.name] = url
        log.info("worker %s: consuming %s", self.instance_id, naming.request_queue(self.settings.prefix, spec.name))

    def remove_service(self, name: str) -> None:
        """Stop hosting a service: its consumers stop, then its model leaves the registry."""
        for consumer in [c for c in self.consumers if c.service == name]:
            consumer.stop()
            self.consumers.remove(consumer)
            self.buffer.put(consumer.name, 0, [])  # counts as idle, so burst mode is not held up by it
        self.queue_urls.pop(name, None)
        if self.registry.get(name) is not None or name in self.registry.catalogue:
            self.registry.remove(name)

    def services_changed(self) -> None:
        """Tell the heartbeat what is hosted, unavailable and on which backend now."""
        if self.heartbeat is not None:
            self.heartbeat.services = self.registry.hosted()
            self.heartbeat.unavailable = dict(self.registry.unavailable)
            self.heartbeat.backends = self.registry.backend_choices()

    # --- stages ------------------------------------------------------------------
    def startup(self) -> None:
        """Load models, resolve queues, start consumers, heartbeat and metrics; StartupError when it cannot."""
        s = self.settings
        self.instance_id = instance_id(s)
        self.transport = Transport(s)
        self.s3 = client("s3", s)
        registry = self.registry
        if registry is None:
            from worker.models.registry import ModelRegistry
            registry = ModelRegistry(self.catalogue, s)
        try:
            wanted = registry.wanted()
        except ValueError as exc:  # unknown service names
            raise StartupError(str(exc)) from None
        urls = {}
        for svc in wanted:  # before loading models: a missing queue fails in a second, not after a download
            name = naming.request_queue(s.prefix, svc)
            try:
                urls[svc] = self.transport.request_queue_url(svc)
            except QueueGone:
                raise StartupError(f"request queue {name} not found; provision it first") from None
            except TransportError as exc:
                raise StartupError(f"request queue {name} cannot be looked up ({exc})") from None
        if self.registry is None:
            self.registry = registry.load()
        self.buffer.group = self._model_of   # one batch may hold every service of one model
        if self.engine is None:
            from worker.models.cpu_clock import ModelClock
            from worker.models.engine import InferenceEngine
            self.engine = InferenceEngine(self.registry, s.decode_threads, clock=ModelClock(s.cpu_stats_path))
        hosted = self.registry.hosted()
        if not hosted:
            raise StartupError(f"no service can be hosted: {self.registry.unavailable or 'none wanted'}")
        self.queue_urls = {svc: urls[svc] for svc in hosted if svc in urls}
        try:
            term_url = self.transport.terminate_queue_url()
        except TransportError as exc:
            log.warning("no terminate queue (%s): terminate messages cannot reach this worker", exc)
            term_url = None
        # a worker whose group is at its minimum size leaves terminates to others (AWS refuses its removal)
        self.terminate = TerminateWatch(s, self.transport, term_url,
                                        may_leave=lambda: self.fleet_agent is None or self.fleet_agent.may_leave())
        self.metrics = MetricsPublisher(s, "worker").start()
        self.sink = ResultSink(s, self.transport, self.s3)
        self.processor = BatchProcessor(s, self.registry, self.engine, Fetcher(s, self.s3), self.sink,
                                        self.metrics, self.instance_id)
        if self._signals_wanted:
            # from here on the worker holds messages: SIGTERM must release them, never kill it outright (while
            # the models load, the default action stops it at once, with nothing held)
            self._install_signals()
        self.pipeline = Pipeline(s, self.buffer, self.processor, self.sink, self.transport, self.metrics).start()
        self.fleet_agent = FleetAgent.start(s, self.instance_id, self.buffer.held, self.stop)
        self.consumers = [Consumer(s, svc, url, self.buffer, self.transport) for svc, url in self.queue_urls.items()]
        for c in self.consumers:
            c.start()
        # batch items: taken only while the interactive queues above are quiet (worker/bulk.py)
        self.consumers += start_bulk_consumers(s, self.transport, list(self.queue_urls), self.buffer,
                                               list(self.consumers))
        self.heartbeat = HeartbeatThread(s, self.s3, self.instance_id, hosted, self.registry.unavailable,
                                   self.buffer.held, self._progress, self.registry.backend_choices())
        self.heartbeat.beat()
        self.heartbeat.start()
        self.watchdog = Watchdog(s, stall_limit_s(s, hosted, self.catalogue),
                                 lambda: self.heartbeat.record().to_dict(), self._release_wedged,
                                 exit=lambda code: self.wedged_exit(code))
        self.watchdog.start()
        self.live = LiveServices(self).start()

    def _model_of(self, service: str) -> object:
        """The batch group of a request queue's service: its model's identity (a derived service: its parent's)."""
        handler = self.registry.get(service) if self.registry is not None else None
        if handler is None:   # not hosted (any more): a group of its own, answered service_unavailable
            return service
        return id(getattr(handler, "forward_owner", handler))

    def _progress(self) -> tuple[int, int]:
        """(loop's last step, oldest held message's receive time), epoch ms: the heartbeat's liveness fields.

        A pipeline stage working on one batch since before the loop's last step counts as that old a step:
        a prefetch or delivery that hangs is a wedge too.
        """
        stalled = self.pipeline.stalled_since() if self.pipeline is not None else None
        step_at = self.progress.step_at if stalled is None else min(self.progress.step_at, stalled)
        return step_at, self.buffer.oldest_received_at() or 0

    def _retire_broken(self, reason: str) -> None:
        """The model is broken: take no more work, give back what is held, and leave to be replaced."""
        self.stop(f"broken: {reason}")
        self.pipeline.drain(answer=False)   # prepared parts released; answered ones still delivered
        held = self.buffer.close()           # what is left waits in the buffer
        for c in self.consumers:
            c.stop()
        if held:
            n = release(self.transport, held)
            log.warning("broken model: released %d of %d held messages for other workers", n, len(held))

    def _release_wedged(self) -> int:
        """The loop is stuck: stop receiving and make every held message visible again, for another worker."""
        self.stop("wedged: no progress while holding work")
        held = self.buffer.holding()
        self.buffer.close()
        for c in self.consumers:
            c.stop()
        return release(self.transport, held) if held else 0

    def teardown(self) -> None:
        """Release what is held, stop threads, delete the heartbeat."""
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.pipeline is not None:   # after an error in the loop: what was prepared is released
            self.pipeline.drain(answer=False)
        if self.live is not None:
            self.live.stop()
        if self.heartbeat is not None:
            self.heartbeat.stopping()
        left = self.buffer.close()
        if left and self.transport is not None:
            n = release(self.transport, left)
            log.info("released %d of %d held messages", n, len(left))
        for c in self.consumers:
            c.stop()
        deadline = time.monotonic() + 2.0  # a consumer in a long poll releases what it gets when it returns
        for c in self.consumers:
            c.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.heartbeat is not None:
            self.heartbeat.stop()
        for part in (self.processor, self.sink):
            if part is not None:
                part.close()
        if self.engine is not None and self._own_engine:
            self.engine.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.fleet_agent is not None:   # last: the instance goes once nothing is held
            self.fleet_agent.close(self.stop_reason)
        log.info("worker %s stopped after %d requests (%s)", self.instance_id, self.handled,
                 self.stop_reason or "error")

    # --- signals -----------------------------------------------------------------
    def _install_signals(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._saved_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, handler in self._saved_handlers.items():
            signal.signal(sig, handler)
        self._saved_handlers.clear()

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        self._signals += 1
        if self._signals > 1:
            # second signal: the operator insists; held messages come back after the visibility timeout
            log.warning("second %s: exiting now", name)
            os._exit(1)
        self.stop(f"{name}: finishing the current batch, releasing held messages")
