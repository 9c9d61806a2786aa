"""One batch, from held messages to replies: parse, fetch in parallel, infer per service, time it all."""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Iterator

from shared.config import Settings
from shared.messages import MessageError, Reply, Request, now_ms, readable_reply_to
from shared.metrics import MetricsPublisher
from worker.consumer import Held, extend_visibility
from worker.fetch import Fetcher, FetchError
from worker.models.engine import ImageDecodeError, InferenceEngine
from worker.models.registry import ModelRegistry
from worker.results import DeliveryOutcome, ResultSink
from worker.selfcheck import ModelHealth
from worker.shadow import ShadowRunner
from worker.versions import WorkerVersions

log = logging.getLogger(__name__)

_DEADLINE_SLACK_S = 1.0  # DNS resolution and the header check run outside the socket deadline
_VERSION_FAULTS = ("version_unavailable", "inference_failed", "service_unavailable")  # the version's fault


@dataclass
class _Item:
    held: Held
    request: Request
    image: bytes | None = None
    fetch_ms: float = 0.0
    reply: Reply | None = None
    timings: dict = field(default_factory=dict)


@dataclass
class Staged:
    """A prepared part of a batch: parsed, checked, fetched and decoded, waiting for its forward passes."""

    held: list[Held]                        # every message this part answers or releases (buffer.done on these)
    outcomes: list[DeliveryOutcome] = field(default_factory=list)    # answered already (malformed messages)
    unreadable: list[Held] = field(default_factory=list)
    items: list[_Item] = field(default_factory=list)         # requests (answered or to be answered)
    groups: list = field(default_factory=list)               # (service key, items, engine Prepared) per model
    release: list[Held] = field(default_factory=list)        # not to be answered here (the model is broken)
    prepared_at: float = field(default_factory=time.monotonic)


@dataclass
class BatchOutcome:
    """What became of a batch: replies to deliver, and unreadable messages to leave for the DLQ."""

    outcomes: list[DeliveryOutcome]
    unreadable: list[Held]
    early_delivered: list[Held] = field(default_factory=list)  # answered and deleted inside process()
    release: list[Held] = field(default_factory=list)  # not answered (the model is broken): for another worker


def _outcome(item: _Item) -> DeliveryOutcome:
    """What to deliver for one answered request: its reply, and a record only where one is read."""
    return DeliveryOutcome(item.held, item.reply, item.request.reply_to, record=item.request.wants_record)


class BatchProcessor:
    """Turns a batch of held messages into replies; never raises for a bad message."""

    def __init__(self, settings: Settings, registry: ModelRegistry, engine: InferenceEngine,
                 fetcher: Fetcher, sink: ResultSink, metrics: MetricsPublisher, worker_id: str):
        self.settings = settings
        self.registry = registry
        self.engine = engine
        self.fetcher = fetcher
        self.sink = sink
        self.metrics = metrics
        self.worker_id = worker_id
        self.pool = ThreadPoolExecutor(max_workers=max(2, min(16, settings.max_batch_size)),
                                       thread_name_prefix="fetch")
        self.health = ModelHealth(settings, engine)   # many model failures in a row: a self-check
        s3 = getattr(sink, "s3", None)
        self.versions = WorkerVersions(settings, registry, s3, worker_id)  # other versions, loaded on demand
        self.shadow = ShadowRunner(settings, engine, self.versions, s3, metrics) if s3 is not None else None
        if s3 is not None:
            self.versions.start()

    def process(self, batch: list[Held]) -> BatchOutcome:
        """Replies for every readable message of the batch, in series (the worker pipelines prepare and finish)."""
        parts = list(self.prepare(batch))
        out = BatchOutcome([], [])
        for i, part in enumerate(parts):
            done = self.finish(part)
            out.unreadable += done.unreadable
            out.release += done.release
            if i < len(parts) - 1:   # an early part: answered now, not after the stragglers
                out.early_delivered += self.sink.deliver(done.outcomes)
            else:
                out.outcomes = done.outcomes
        return out

    def prepare(self, batch: list[Held]) -> Iterator[Staged]:
        """Parse, check, fetch and decode a batch: one Staged part, or two when some images are slow.

        Fetches run in parallel; what arrived within fetch_batch_wait_s is decoded and yielded at once,
        so a slow image (a drip-feeding server) delays only itself: the rest is answered, recorded and
        deleted while it finishes or hits fetch_deadline_s, which closes its socket; the batch never
        waits past that deadline. The worker runs this while the model runs the part before.
        """
        if self.health.broken:
            yield Staged(list(batch), release=list(batch))
            return
        outcomes: list[DeliveryOutcome] = []
        unreadable: list[Held] = []
        items: list[_Item] = []
        # messages that waited in the buffer get a fresh visibility timeout before the work starts
        half = self.settings.visibility_timeout_s * 500
        self.keep_visible([h for h in batch if now_ms() - h.received_at > half])
        for held in batch:
            try:
                items.append(_Item(held, Request.from_json(held.body)))
            except MessageError as exc:
                rid, reply_to = readable_reply_to(held.body)
                if reply_to is None:
                    log.warning("message %s unreadable (%s) and has no reply_to: left for the DLQ",
                                held.message_id, exc.message)
                    unreadable.append(held)
                    continue
                rid = rid or held.message_id
                log.warning("request %s malformed: %s", rid, exc.message)
                reply = Reply.failure(rid, held.service, exc.code, exc.message, worker=self.worker_id,
                                      timings_ms=self._timings(held, None, 0.0, 0.0))
                self.metrics.record("Errors", 1, Service=held.service, Code=exc.code)
                outcomes.append(DeliveryOutcome(held, reply, reply_to, record=False))  # no request: the reply answers it
        for item in items:
            if item.request.expired():
                self._expire(item)
                continue
            self._check_service(item)
            if item.reply is None and item.held.receive_count > 1:
                item.reply = self.sink.stored_reply(item.request.id)  # answered before: send that again
                if item.reply is not None:
                    log.info("request %s: redelivered, resending the stored result", item.request.id)
        todo = [i for i in items if i.reply is None]
        started = time.monotonic()
        futures = {self.pool.submit(self._fetch, item.request): item for item in todo}
        done, pending = wait(futures, timeout=self.settings.fetch_batch_wait_s)
        for f in done:
            self._take(futures[f], f)
        slow = {id(futures[f]) for f in pending}
        first = [i for i in items if id(i) not in slow]
        yield Staged([o.held for o in outcomes] + unreadable + [i.held for i in first], outcomes, unreadable,
                     first, groups=self._decode(first))
        if not pending:
            return
        log.info("batch: %d image(s) still downloading; the rest is answered first", len(pending))
        late = [futures[f] for f in pending]
        self.keep_visible([i.held for i in late])
        # the fetcher's own deadline closes the socket; the slack covers DNS and the header check
        limit = self.settings.fetch_deadline_s + _DEADLINE_SLACK_S - (time.monotonic() - started)
        done_late, still = wait(pending, timeout=max(0.0, limit))
        for f in done_late:
            self._take(futures[f], f)
        for f in still:  # abandoned: its thread ends at the fetcher's deadline; its result is ignored
            item = futures[f]
            item.fetch_ms = (time.monotonic() - started) * 1000
            self._fail(item, "fetch_timeout", f"the image was not fetched within {self.settings.fetch_deadline_s:g} s")
        yield Staged([i.held for i in late], items=late, groups=self._decode(late))

    def finish(self, part: Staged) -> BatchOutcome:
        """The forward passes of a prepared part, then what to deliver: replies, and messages to release."""
        if self.health.broken:   # found broken while this part waited: for a worker whose model works
            return BatchOutcome(list(part.outcomes), list(part.unreadable),
                                release=list(part.release) + [i.held for i in part.items])
        half_s = self.settings.visibility_timeout_s / 2
        if time.monotonic() - part.prepared_at > half_s:   # waited long for the model: keep it covered
            self.keep_visible([i.held for i in part.items])
        for key, members, prepared in part.groups:
            self._infer(key, members, prepared)
        outcomes, unanswered = list(part.outcomes), list(part.release)
        for item in part.items:
            if item.reply is None:   # its model broke under it: no error reply, another worker answers it
                unanswered.append(item.held)
                continue
            outcomes.append(_outcome(item))
            self._log(item)
        return BatchOutcome(outcomes, list(part.unreadable), release=unanswered)

    def _decode(self, group: list[_Item]) -> list[tuple[str, list[_Item], object]]:
        """Decode per model (a service derived from another shares its parent's pass): (key, items, Prepared)."""
        by_model: dict[int, list[_Item]] = {}
        for item in group:
            if item.reply is None:
                handler = self.registry.get(self._key(item.request))
                by_model.setdefault(id(getattr(handler, "forward_owner", handler)), []).append(item)
        out = []
        for members in by_model.values():
            key = self._key(members[0].request)
            try:
                prepared = self.engine.prepare(key, [i.image for i in members])
            except Exception as exc:  # e.g. the service left the registry: the forward pass fails the group
                prepared = exc
            out.append((key, members, prepared))
        return out

    def _take(self, item: _Item, future) -> None:
        image, error, fetch_ms = future.result()
        item.fetch_ms = fetch_ms
        if error is not None:
            self._fail(item, error.code, error.message)
        else:
            item.image = image

    def _key(self, request: Request) -> str:
        """The registry name of the handler that answers this request (its version's)."""
        return self.versions.key(request.service, request.version)

    def keep_visible(self, held: list[Held]) -> None:
        """Extend the visibility of messages still being worked on, so no other worker gets them meanwhile."""
        if held and self.sink is not None and getattr(self.sink, "transport", None) is not None:
            extend_visibility(self.sink.transport, held, self.settings.visibility_timeout_s)

    @staticmethod
    def _log(item: _Item) -> None:
        log.info("request %s %s: %s", item.request.id, item.request.service,
                 item.reply.status if item.reply.status == "ok" else item.reply.error["code"])

    def _expire(self, item: _Item) -> None:
        """Past its deadline: answer `expired` instead of running it (unless an earlier delivery answered)."""
        if item.held.receive_count > 1:
            item.reply = self.sink.stored_reply(item.request.id)
            if item.reply is not None:
                return
        late_s = (now_ms() - item.request.expires_at) / 1000
        log.warning("request %s: not started before its deadline (%.1f s ago); answered expired",
                    item.request.id, late_s)
        self._fail(item, "expired", "the job was not started before its time-to-live ran out")

    def _check_service(self, item: _Item) -> None:
        reason = self.versions.ensure(item.request.service, item.request.version)  # loads a new version once
        if reason is not None:
            versioned = self._key(item.request) != item.request.service
            self._fail(item, "version_unavailable" if versioned else "service_unavailable", reason)

    def _fetch(self, request: Request) -> tuple[bytes | None, FetchError | None, float]:
        """(image, None, ms) or (None, error, ms); runs in the pool and touches no shared state."""
        t0 = time.perf_counter()
        try:
            return self.fetcher.fetch(request.image, request.id), None, (time.perf_counter() - t0) * 1000
        except FetchError as exc:
            return None, exc, (time.perf_counter() - t0) * 1000
        except Exception:  # an unexpected fetch failure fails this item, not the batch
            log.exception("request %s: fetch crashed", request.id)
            return None, FetchError("fetch_failed", "the image could not be fetched"), (time.perf_counter() - t0) * 1000
        finally:
            self.metrics.record("FetchTime", (time.perf_counter() - t0) * 1000, Service=request.service)

    def _infer(self, service: str, group: list[_Item], prepared) -> None:
        services = [self._key(i.request) for i in group]
        mixed = any(s != service for s in services)
        try:
            if isinstance(prepared, Exception):
                raise prepared
            result = self.engine.forward(prepared, [i.request.top_k for i in group],
                                         [i.request.params for i in group], answer_as=services if mixed else None)
        except Exception:  # the model failed: every item gets a clear error, the worker goes on
            log.exception("inference failed for a batch of %d %s requests", len(group), service)
            if self.health.failed(service):   # ... unless the self-check says the model is broken
                return                        # unanswered: released for a worker whose model works
            for item in group:
                self._fail(item, "inference_failed", "the model failed on this batch; try again")  # detail: the log
            return
        self.health.succeeded()
        for name in dict.fromkeys(i.request.service for i in group):
            self.metrics.record("InferenceTime", result.inference_ms, Service=name)
            self.metrics.record("BatchSize", len(group), Service=name)
        for item, res in zip(group, result.results):
            service = item.request.service
            handler = self.registry.get(self._key(item.request))
            timings = self._timings(item.held, item.request, item.fetch_ms, result.inference_ms)
            if isinstance(res, (ImageDecodeError, Exception)):
                self._fail(item, getattr(res, "code", "invalid_image"), str(res), inference_ms=result.inference_ms)
                continue
            item.reply = Reply.ok(item.request.id, service, res, timings_ms=timings, worker=self.worker_id,
                                  model=handler.model_info, kind=handler.kind, version=item.request.version or "")
            self._version_outcome(item, True, result.inference_ms, result.inference_ms / len(group))
            if item.request.shadow and self.shadow is not None:
                self.shadow.submit(item.request, item.image, item.request.version or "", res)
            self.metrics.record("Images", 1, Service=service)
            self.metrics.record("QueueWait", timings["queue"], Service=service)
            self.metrics.record("TotalTime", timings["total"], Service=service)

    def _fail(self, item: _Item, code: str, message: str, inference_ms: float = 0.0) -> None:
        req = item.request
        handler = self.registry.get(self._key(req))
        item.reply = Reply.failure(req.id, req.service, code, message, worker=self.worker_id,
                                   model=handler.model_info if handler else {},
                                   kind=handler.kind if handler else "classifier",
                                   timings_ms=self._timings(item.held, req, item.fetch_ms, inference_ms),
                                   version=req.version or "")
        self.metrics.record("Errors", 1, Service=req.service, Code=code)
        if code in _VERSION_FAULTS:  # a bad image or URL says nothing about the version
            self._version_outcome(item, False, inference_ms, 0.0)

    def _version_outcome(self, item: _Item, ok: bool, ms: float, cost_ms: float) -> None:
        """Per-version metrics and the outcome log (only for requests routed to a version)."""
        req = item.request
        if not req.version:
            return
        self.versions.record(req.service, req.version, ok, ms, cost_ms)
        if ok:
            self.metrics.record("VersionImages", 1, Service=req.service, Version=req.version)
            self.metrics.record("VersionInferenceTime", ms, Service=req.service, Version=req.version)
        else:
            self.metrics.record("VersionErrors", 1, Service=req.service, Version=req.version)

    @staticmethod
    def _timings(held: Held, req: Request | None, fetch_ms: float, inference_ms: float) -> dict:
        now = now_ms()
        submitted = req.submitted_at if req is not None else held.received_at
        return {"queue": max(0, held.received_at - submitted), "fetch": round(fetch_ms, 2),
                "inference": round(inference_ms, 2), "total": max(0, now - submitted)}

    def close(self) -> None:
        """Stop the fetch pool, finish shadow runs, write the last version outcomes."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        if self.shadow is not None:
            self.shadow.close()
        self.versions.close()
