"""Live services: keep a running worker's models and consumers in step with the packaged + S3 catalogue."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from shared import naming
from shared.live_catalogue import S3Entries, merge
from shared.transport import TransportError

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """What one check did."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.added or self.replaced or self.removed or self.failed)


class LiveServices:
    """On start and every models_refresh_s: load new or changed services, drop removed ones, start their consumers.

    Models load in this thread while the worker goes on answering; the swap into the registry is one
    dict store. A bad entry, a missing queue or weights that fail to load are reported and skipped (a
    changed service keeps serving its previous model); an unreadable S3 listing changes nothing.
    """

    def __init__(self, worker, entries: S3Entries | None = None):
        self.worker = worker
        self.settings = worker.settings
        self.registry = worker.registry
        self.packaged = worker.catalogue
        self.entries = entries or S3Entries(self.settings, worker.s3)
        # what the worker loaded at startup: packaged services, no S3 fingerprint
        self.applied: dict[str, tuple] = {n: (self.packaged[n], None) for n in self.packaged.names()
                                          if self.registry.wants(n)}
        self.failed: dict[str, tuple] = {}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> "LiveServices":
        """Check once now, then periodically in a background thread (unless models_refresh_s is 0)."""
        self.check()
        if self.settings.models_refresh_s > 0:
            self._thread = threading.Thread(target=self._run, name="live-services", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking (waits for a check in progress)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.settings.models_refresh_s):
            try:
                self.check()
            except Exception:  # never let the checker die: the next period tries again
                log.exception("live services: check failed")

    def check(self) -> Changes:
        """One pass: read S3, diff against what is applied, load/swap/remove, start/stop consumers."""
        with self._lock:
            changes = Changes()
            try:
                entries, errors = self.entries.read()
            except Exception as exc:  # S3 unreachable: keep everything as it is
                log.warning("live services: cannot list s3://%s/%s: %s", self.settings.bucket_name,
                            naming.models_prefix(), exc)
                return changes
            snap = merge(self.packaged, entries, errors, self.settings.catalogue_s3_replaces_packaged)
            for name, reason in errors.items():
                if self.registry.wants(name) and self.registry.get(name) is None:
                    self.registry.unavailable[name] = f"invalid S3 entry: {reason}"
            wanted = {n: s for n, s in snap.catalogue.services.items() if self.registry.wants(n)}
            for name, spec in wanted.items():
                if self._stop.is_set():
                    break
                try:
                    self._apply(name, (spec, snap.fingerprints.get(name)), changes)
                except Exception as exc:  # an AWS hiccup for one service: the others go on, next check retries
                    log.exception("live services: service %s not applied", name)
                    changes.failed[name] = f"{type(exc).__name__}: {exc}"
            for name in [n for n in self.applied if n not in wanted]:
                self._remove(name, changes)
            for name in [n for n in self.registry.unavailable if n not in wanted and n not in errors]:
                self.registry.unavailable.pop(name, None)  # a deleted or fixed bad entry is no longer news
            if changes:
                log.info("live services: added %s, replaced %s, removed %s, failed %s; hosting %s",
                         changes.added, changes.replaced, changes.removed, sorted(changes.failed),
                         self.registry.hosted())
            self._publish()
            return changes

    def _apply(self, name: str, key: tuple, changes: Changes) -> None:
        if self.applied.get(name) == key or self.failed.get(name) == key:
            return  # unchanged, or this exact version already failed (retried once it changes)
        spec = key[0]
        url = self._queue_url(name)
        if url is None:
            if self.registry.get(name) is None:
                self.registry.unavailable[name] = (f"request queue {naming.request_queue(self.settings.prefix, name)}"
                                                   " does not exist yet")
            return  # retried next check: whoever adds the service creates its queue
        hosted = self.registry.get(name) is not None
        reason = spec.unavailable_reason(self.settings.model_dir)
        if reason:
            if hosted:
                self._remove(name, changes)
            self.registry.unavailable[name] = reason
            self.applied[name] = key
            return
        try:
            handler = self.registry.build_handler(spec)
        except Exception as exc:  # weights, labels, architecture: the service (or its old version) stays as it was
            self.failed[name] = key
            changes.failed[name] = str(exc)
            log.error("live services: service %s failed to load%s: %s", name,
                      " (keeps serving the previous version)" if hosted else "", exc)
            if not hosted:
                self.registry.unavailable[name] = str(exc)
            return
        if hosted:
            self.registry.replace(spec, handler)
            changes.replaced.append(name)
        else:
            self.registry.add(spec, handler)
            changes.added.append(name)
            self._start_consumer(name, url)
        self.applied[name] = key
        self.failed.pop(name, None)

    def _remove(self, name: str, changes: Changes) -> None:
        self._stop_consumer(name)
        if self.registry.get(name) is not None or name in self.registry.catalogue:
            self.registry.remove(name)
        self.applied.pop(name, None)
        self.failed.pop(name, None)
        changes.removed.append(name)

    def _queue_url(self, name: str) -> str | None:
        url = self.worker.queue_urls.get(name)
        if url:
            return url
        try:
            return self.worker.transport.request_queue_url(name)
        except TransportError:  # not provisioned yet (QueueGone) or unreachable: tried again next scan
            return None

    def _start_consumer(self, name: str, url: str) -> None:
        from worker.consumer import Consumer
        w = self.worker
        if any(c.service == name for c in w.consumers):
            return
        consumer = Consumer(self.settings, name, url, w.buffer, w.transport)
        consumer.start()
        w.consumers.append(consumer)
        w.queue_urls[name] = url
        log.info("live services: consuming %s", naming.request_queue(self.settings.prefix, name))

    def _stop_consumer(self, name: str) -> None:
        w = self.worker
        for consumer in [c for c in w.consumers if c.service == name]:
            consumer.stop()
            w.consumers.remove(consumer)
            w.buffer.put(consumer.name, 0, [])  # counts as idle, so burst mode is not held up by it
        w.queue_urls.pop(name, None)

    def _publish(self) -> None:
        hb = self.worker.heartbeat
        if hb is not None:
            hb.services = self.registry.hosted()
            hb.unavailable = dict(self.registry.unavailable)
            hb.backends = self.registry.backend_choices()
