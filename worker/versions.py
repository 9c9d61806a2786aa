"""A worker's service versions: load the versions requests name (live, no restart), record their outcomes.

v1 is the registry's own handler. Another version is loaded on the first request that names it (and
kept in step with its entry by a background refresh); its handler is registered as "<service>@<v>",
so the engine runs it like any service. Outcomes per version go to S3 (version-stats/<worker>.json)
for the autoscaler's rollback controller (autoscaler/versions.py).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque

from shared.catalogue import Catalogue
from shared.config import Settings
from shared.messages import now_ms
from shared.traffic import stats_key
from shared.version_entries import VersionEntries, VersionEntry
from shared.versions import BASE_VERSION, VersionOutcome, versioned_name

log = logging.getLogger(__name__)

MAX_OUTCOMES = 2000        # per service, per worker: enough for min_requests at any sane canary share
FLUSH_S = 2.0


class WorkerVersions:
    """Version handlers (loaded on demand, refreshed live) and the outcome log of one worker."""

    def __init__(self, settings: Settings, registry, s3, instance_id: str, entries: VersionEntries | None = None):
        self.settings = settings
        self.registry = registry
        self.s3 = s3
        self.instance_id = instance_id
        self.entries = entries or VersionEntries(settings, s3)
        self.loaded: dict[str, tuple] = {}       # "svc@v" -> (spec, fingerprint) applied
        self.failed: dict[str, tuple] = {}       # "svc@v" -> (spec, fingerprint, reason)
        self.outcomes: dict[str, deque] = {}
        self._dirty = False
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- handlers ------------------------------------------------------------------
    def key(self, service: str, version: str | None) -> str:
        """The registry name of a service's version ("imagenet" for v1 or none, else "imagenet@v2")."""
        return service if version in (None, "", BASE_VERSION) else versioned_name(service, version)

    def ensure(self, service: str, version: str | None) -> str | None:
        """None when the version's handler is hosted (loading it now if needed), else why it cannot answer."""
        name = self.key(service, version)
        if self.registry.get(name) is not None:
            return None
        if name == service:
            return self.registry.unavailable.get(service) or f"service {service!r} is not hosted by this worker"
        if self.registry.get(service) is None:
            return f"service {service!r} is not hosted by this worker"
        with self._load_lock:
            if self.registry.get(name) is not None:
                return None
            if name in self.failed:
                return self.failed[name][2]
            try:
                entry = self._entries(service).get(version)
            except Exception as exc:  # S3 unreachable: this request fails, the next one tries again
                return f"versions of {service!r} unreadable: {type(exc).__name__}"
            if entry is None:
                return f"service {service!r} has no version {version!r}"
            return self._load(name, entry)

    def _entries(self, service: str) -> dict[str, VersionEntry]:
        catalogue = Catalogue(dict(self.registry.catalogue.services), versions=self._packaged_versions())
        return self.entries.read(catalogue, service).get(service, {})

    def _packaged_versions(self) -> dict:
        return getattr(self.registry, "packaged_versions", None) or {}

    def _load(self, name: str, entry: VersionEntry) -> str | None:
        """Build and register the version's handler; the reason when it fails (remembered until the entry changes)."""
        key = (entry.spec, entry.fingerprint)
        reason = entry.error and f"invalid S3 entry: {entry.error}"
        reason = reason or entry.spec.unavailable_reason(self.settings.model_dir)
        if reason is None:
            t0 = time.monotonic()
            try:
                handler = self.registry.build_handler(entry.spec)
            except Exception as exc:  # weights that fail to load: this version answers errors, v1 goes on
                reason = f"version failed to load: {exc}"
            else:
                self.registry.versions[name] = handler
                self.loaded[name] = key
                self.failed.pop(name, None)
                log.info("version %s loaded in %.1f s (%s)", name, time.monotonic() - t0, entry.origin)
                return None
        self.failed[name] = (*key, reason)
        log.error("version %s cannot answer: %s", name, reason)
        return reason

    def refresh(self) -> None:
        """Reload versions whose entries changed, drop versions that are gone (v1 is LiveServices' job)."""
        services = {n.split("@", 1)[0] for n in [*self.loaded, *self.failed]}
        for service in services:
            try:
                entries = self._entries(service)
            except Exception as exc:
                log.warning("versions of %s unreadable: %s; keeping what is loaded", service, exc)
                continue
            for name in [n for n in [*self.loaded, *self.failed] if n.split("@", 1)[0] == service]:
                version = name.split("@", 1)[1]
                entry = entries.get(version)
                # what was last tried: a failed reload is not retried until the entry changes again
                applied = self.failed[name][:2] if name in self.failed else self.loaded.get(name)
                if entry is not None and (entry.spec, entry.fingerprint) == tuple(applied):
                    continue
                self.failed.pop(name, None)
                if entry is None:
                    self.loaded.pop(name, None)
                    old = self.registry.versions.pop(name, None)
                    log.info("version %s removed", name)
                    if old is not None:
                        old.close()
                    continue
                with self._load_lock:
                    self._load(name, entry)   # a failed reload keeps the old handler (loaded stays as it was)

    # --- outcomes -----------------------------------------------------------------
    def record(self, service: str, version: str, ok: bool, ms: float, cost_ms: float) -> None:
        """Note one answer of a version (the controller's error rate and p95, the autoscaler's cost)."""
        with self._lock:
            log_ = self.outcomes.setdefault(service, deque(maxlen=MAX_OUTCOMES))
            log_.append(VersionOutcome(now_ms(), version, ok, round(ms, 2), round(cost_ms, 2)))
            self._dirty = True

    def flush(self) -> bool:
        """Write this worker's outcome log when it changed; True when written."""
        with self._lock:
            if not self._dirty:
                return False
            doc = {"instance_id": self.instance_id, "at": now_ms(),
                   "services": {s: [[o.at, o.version, int(o.ok), o.ms, o.cost_ms] for o in q]
                                for s, q in self.outcomes.items()}}
            self._dirty = False
        try:
            self.s3.put_object(Bucket=self.settings.bucket_name, Key=stats_key(self.instance_id),
                               Body=json.dumps(doc, separators=(",", ":")).encode(), ContentType="application/json")
            return True
        except Exception as exc:  # the controller then decides on older numbers; requests are not affected
            log.warning("version stats not written: %s", exc)
            with self._lock:
                self._dirty = True
            return False

    # --- lifecycle ----------------------------------------------------------------
    def start(self) -> "WorkerVersions":
        """Flush outcomes every FLUSH_S and refresh versions every models_refresh_s, in one thread."""
        self._thread = threading.Thread(target=self._run, name="versions", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        last_refresh = time.monotonic()
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
                if self.settings.models_refresh_s > 0 and time.monotonic() - last_refresh >= self.settings.models_refresh_s:
                    last_refresh = time.monotonic()
                    self.refresh()
            except Exception:  # never let the thread die: the next period tries again
                log.exception("versions: periodic work failed")

    def close(self) -> None:
        """Stop the thread and write the last outcomes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
