"""Shadow runs: a sampled request also goes through the shadow version; its answer is recorded, never returned.

Runs after the primary answer in its own thread (the reply does not wait for it), on the bytes the
worker already holds. The record (shadow/<service>/<id>.json) and the metrics compare it with the
primary: top-1 agreement, score difference, model time.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from shared.config import Settings
from shared.messages import now_ms
from shared.metrics import MetricsPublisher
from shared.versions import versioned_name

log = logging.getLogger(__name__)

MAX_PENDING = 64     # shadow work never piles up behind real work: beyond this a sample is skipped


def shadow_key(service: str, request_id: str) -> str:
    """S3 key of a request's shadow record."""
    return f"shadow/{service}/{request_id}.json"


def compare(primary: list, shadow: list) -> dict:
    """Top-1 agreement and score difference (shadow - primary) of two classifier answers."""
    p, s = (primary or [{}])[0], (shadow or [{}])[0]
    return {"agree": p.get("index") == s.get("index") and p.get("label") == s.get("label"),
            "score_diff": round(float(s.get("score", 0.0)) - float(p.get("score", 0.0)), 6)}


class ShadowRunner:
    """Queues shadow runs for a single background thread; writes each record and its metrics."""

    def __init__(self, settings: Settings, engine, versions, s3, metrics: MetricsPublisher):
        self.settings = settings
        self.engine = engine
        self.versions = versions          # worker.versions.WorkerVersions
        self.s3 = s3
        self.metrics = metrics
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadow")
        self._pending = 0
        self._lock = threading.Lock()
        self.done = 0

    def submit(self, request, image: bytes, primary_version: str, primary: list) -> bool:
        """Run the request's shadow version later; False when skipped (too much shadow work queued)."""
        with self._lock:
            if self._pending >= MAX_PENDING:
                log.warning("request %s: shadow %s skipped, %d shadow runs queued", request.id, request.shadow,
                            self._pending)
                return False
            self._pending += 1
        self.pool.submit(self._run, request, image, primary_version, primary)
        return True

    def _run(self, request, image: bytes, primary_version: str, primary: list) -> None:
        try:
            self._shadow(request, image, primary_version, primary)
        except Exception:  # a shadow failure never touches the primary answer
            log.exception("request %s: shadow run failed", request.id)
        finally:
            with self._lock:
                self._pending -= 1
                self.done += 1

    def _shadow(self, request, image: bytes, primary_version: str, primary: list) -> None:
        service, version = request.service, request.shadow
        record = {"id": request.id, "service": service, "primary_version": primary_version,
                  "shadow_version": version, "at": now_ms(), "primary": primary[:5]}
        reason = self.versions.ensure(service, version)
        ok = False
        if reason is None:
            try:
                result = self.engine.run(self.versions.key(service, version), [image], [request.top_k],
                                         [request.params])
                answer = result.results[0]
                if isinstance(answer, Exception):
                    record["error"] = {"code": getattr(answer, "code", "invalid_image"), "message": str(answer)}
                else:
                    ok = True
                    record.update(shadow=answer[:5], inference_ms=round(result.inference_ms, 2),
                                  **compare(primary, answer))
            except Exception as exc:
                record["error"] = {"code": "inference_failed", "message": f"{type(exc).__name__}: {exc}"}
            ms = record.get("inference_ms", 0.0)
        else:
            record["error"] = {"code": "version_unavailable", "message": reason}
            ms = 0.0
        self.versions.record(service, version, ok, ms, ms)
        label = versioned_name(service, version)
        if ok:
            self.metrics.record("ShadowAgreement", 1.0 if record["agree"] else 0.0, Service=service, Version=version)
            self.metrics.record("ShadowScoreDiff", abs(record["score_diff"]), Service=service, Version=version)
            self.metrics.record("VersionInferenceTime", ms, Service=service, Version=version)
        else:
            self.metrics.record("VersionErrors", 1, Service=service, Version=version)
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=shadow_key(service, request.id),
                           Body=json.dumps(record, separators=(",", ":")).encode(), ContentType="application/json")
        log.info("request %s: shadow %s %s", request.id, label,
                 f"agree={record['agree']} diff={record['score_diff']:+.3f}" if ok else record["error"]["code"])

    def close(self) -> None:
        """Stop: the run in progress finishes, queued ones are dropped (a shadow is a sample, never owed)."""
        self.pool.shutdown(wait=True, cancel_futures=True)
