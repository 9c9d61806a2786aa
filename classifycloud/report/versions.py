"""The review's version pieces: shadow records (agreement with the primary) and per-version CloudWatch totals."""
from __future__ import annotations

import json
from dataclasses import dataclass

from classifycloud.report.tables import Table, fmt

SHADOW_PREFIX = "shadow/"    # worker/shadow.py: shadow/<service>/<id>.json


@dataclass(frozen=True)
class ShadowRecord:
    """One shadow run, reduced to what the table needs."""

    service: str
    version: str
    ok: bool
    agree: bool
    score_diff: float
    inference_ms: float


def parse_shadow(body: bytes, at: float) -> ShadowRecord:
    """A ShadowRecord from shadow/<service>/<id>.json (ValueError when it is not one)."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("service"), str) or not doc.get("shadow_version"):
        raise ValueError("not a shadow record")
    ok = "error" not in doc
    return ShadowRecord(doc["service"], str(doc["shadow_version"]), ok, bool(doc.get("agree")) if ok else False,
                        float(doc.get("score_diff") or 0.0), float(doc.get("inference_ms") or 0.0))


def shadow_table(records: list[ShadowRecord]) -> Table:
    """Per service and shadow version: runs, errors, top-1 agreement, mean |score diff|, mean model time."""
    groups: dict[tuple[str, str], list[ShadowRecord]] = {}
    for r in records:
        groups.setdefault((r.service, r.version), []).append(r)
    rows = []
    for (service, version), rs in sorted(groups.items()):
        ok = [r for r in rs if r.ok]
        n = len(ok) or 1
        rows.append([f"{service}@{version}", str(len(rs)), str(len(rs) - len(ok)),
                     fmt(100.0 * sum(r.agree for r in ok) / n, 1) if ok else "-",
                     fmt(sum(abs(r.score_diff) for r in ok) / n, 3) if ok else "-",
                     fmt(sum(r.inference_ms for r in ok) / n, 1) if ok else "-"])
    return Table("Shadow versions against the primary (shadow records in S3)",
                 ["service@shadow", "runs", "errors", "top-1 agree %", "mean |score diff|", "model ms"], rows,
                 "agreement: the shadow's top-1 class equals the answer returned to the client; "
                 "latency and errors of each answering version: the per-service table's service@version rows")
