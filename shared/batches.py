"""Batches: the records one batch keeps in the data bucket, shared by the web (create, read, cancel) and the driver.

batches/<id>/batch.json    the batch: service, input, output, notify, deadline, owner, state and progress
batches/<id>/inputs.jsonl  the expanded input, one JSON string per line; line i is item <id>-<i>
batches/<id>/tally.json    which items have a result record (a bitmap) and how many of them failed
batches/<id>/cancel        written by the owner's DELETE; the driver finishes the batch as cancelled
batches-active/<id>        present until the batch is final: the driver lists only these
results/<id>-<i>.json      an item's result record (the worker's reply, as for any job)

Every item id is fixed by its line in inputs.jsonl, so a resent item overwrites its own record and the
output, assembled from the records line by line, has exactly one line per input.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import time
import uuid
import zlib

from botocore.exceptions import ClientError

from shared import naming
from shared.aws import credentials_expiry, parse_s3_uri
from shared.config import Settings
from shared.grants import covers
from shared.messages import MessageError

log = logging.getLogger(__name__)

STATES = ("accepted", "running", "succeeded", "failed", "cancelled")
FINAL = frozenset({"succeeded", "failed", "cancelled"})
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")
_ID_RE = re.compile(r"^b[0-9a-f]{20}$")
_MISSING = ("NoSuchKey", "404", "NotFound")
BAD_LINE = "manifest-line:"
MAX_LINE = 8192            # a manifest line longer than this is an error item (an item is a URL or a URI)


class BatchError(MessageError):
    """An input that cannot be used (client's fault): `code` names it for the 400 or the item's error line."""


def new_batch_id() -> str:
    """A fresh batch id: 'b' + 20 hex digits (never a prefix of a uuid job id, nor of another batch's items)."""
    return "b" + uuid.uuid4().hex[:20]


def valid_batch_id(value: object) -> bool:
    """True for an id new_batch_id could have made."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def io_prefix(owner: str | None) -> str:
    """Where a key's batch input and output may live in the data bucket (tenancy: its own folder)."""
    return f"batch-io/{owner or 'anonymous'}/"


def check_location(uri: object, owner: str | None, settings: Settings, what: str,
                   grants: tuple[str, ...] = ()) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI the owner may use: its data-bucket folder, or a location granted to it.

    Keys on, `grants` are the key's own (shared/grants.py) and must lie in a bucket of batch_buckets; keys
    off (owner None, one tenant), batch_buckets are granted whole. The data bucket is never granted."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise BatchError("invalid_location", f"{what} must be an s3://bucket/key URI")
    try:
        bucket, key = parse_s3_uri(uri)
    except ValueError as exc:
        raise BatchError("invalid_location", f"{what}: {exc}") from None
    if ".." not in key:
        if bucket == settings.bucket_name:
            if key.startswith(io_prefix(owner)):
                return bucket, key
        elif bucket in settings.batch_buckets and (owner is None or covers(grants, bucket, key, settings)):
            return bucket, key
    raise BatchError("forbidden_location", f"{what} is not a location this key may use: use "
                     f"s3://{settings.bucket_name}/{io_prefix(owner)}... or a location granted to this key")


def bad_line(number: int, code: str) -> str:
    """The input recorded for a manifest line that cannot run: its number and why, never its text."""
    return f"{BAD_LINE}{number}:{code}"


def bad_line_error(source: str) -> BatchError | None:
    """The error of an input made by bad_line, else None."""
    if not source.startswith(BAD_LINE):
        return None
    number, _, code = source[len(BAD_LINE):].partition(":")
    reasons = {"invalid_json": "is not JSON (or is nested too deeply)", "line_too_long": "is longer than 8 KiB"}
    reason = reasons.get(code, "is not a URL, an s3:// URI or {\"url\"|\"s3\": ...}")
    return BatchError(code or "invalid_input", f"manifest line {number} {reason}")


def item_input(entry: object) -> str:
    """One manifest or list entry as its input string: a URL, an s3:// URI, or {"url"|"s3"|"source-ref": ...}."""
    if isinstance(entry, dict) and len(entry) == 1:
        (name, value), = entry.items()
        if name in ("url", "s3", "source-ref"):
            entry = value
    if not isinstance(entry, str) or not entry.strip():
        raise BatchError("invalid_input", "an item must be a URL, an s3:// URI or {\"url\"|\"s3\": ...}")
    return entry.strip()


def manifest_item(line: str, number: int) -> str:
    """One manifest line as its input, or bad_line(number, code) when it cannot be one."""
    if len(line) > MAX_LINE:
        return bad_line(number, "line_too_long")
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):     # deep nesting: this line fails, never the batch
        return bad_line(number, "invalid_json")
    try:
        item = item_input(entry)
    except BatchError:
        return bad_line(number, "invalid_input")
    if not item.lower().startswith(("http://", "https://", "s3://")):
        return bad_line(number, "invalid_input")
    return item


class BatchStore:
    """Reads and writes a batch's records in the data bucket."""

    def __init__(self, settings: Settings, s3):
        self.settings = settings
        self.bucket = settings.bucket_name
        self.s3 = s3

    # --- plain records -----------------------------------------------------------------------------
    def get_json(self, key: str, bucket: str | None = None) -> dict | None:
        """A JSON object from S3, or None when the key does not exist."""
        try:
            body = self.s3.get_object(Bucket=bucket or self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        doc = json.loads(body)
        return doc if isinstance(doc, dict) else None

    def put_json(self, key: str, doc: dict) -> None:
        """Write a JSON object to the data bucket."""
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(doc).encode(),
                           ContentType="application/json")

    def exists(self, key: str) -> bool:
        """Whether a key exists in the data bucket."""
        try:
            self.s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise

    # --- the batch ---------------------------------------------------------------------------------
    def create(self, record: dict, inputs: list[str] | None) -> None:
        """Inputs (when given inline) first, then the record, then the active marker the driver looks for."""
        bid = record["id"]
        if inputs is not None:
            self.write_inputs(bid, inputs)
        self.put_json(naming.batch_key(bid, "batch.json"), record)
        self.s3.put_object(Bucket=self.bucket, Key=naming.active_batch_prefix() + bid, Body=b"")

    def record(self, batch_id: str) -> dict | None:
        """batch.json, or None for an unknown batch."""
        return self.get_json(naming.batch_key(batch_id, "batch.json"))

    def save(self, record: dict) -> None:
        """Rewrite batch.json (the driver only, after creation)."""
        self.put_json(naming.batch_key(record["id"], "batch.json"), record)

    def cancel(self, batch_id: str) -> None:
        """The owner's cancel: a marker of its own, so the driver's next save cannot overwrite it."""
        self.s3.put_object(Bucket=self.bucket, Key=naming.batch_key(batch_id, "cancel"), Body=b"")

    def cancelled(self, batch_id: str) -> bool:
        """Whether the owner asked to cancel."""
        return self.exists(naming.batch_key(batch_id, "cancel"))

    def active_ids(self) -> list[str]:
        """Ids of the batches not yet final."""
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                   Prefix=naming.active_batch_prefix())
        for page in pages:
            out.extend(o["Key"].rsplit("/", 1)[-1] for o in page.get("Contents", []))
        return [b for b in out if valid_batch_id(b)]

    def open_work(self, owner: str | None, skip: str | None = None) -> tuple[int, int]:
        """(batches not yet final, their items not yet answered) of one key: what the per-key caps count.

        One record read per active batch of any key; the caps keep that list short."""
        batches = items = 0
        for bid in self.active_ids():
            rec = self.record(bid) if bid != skip else None
            if not rec or rec.get("owner") != owner or rec.get("state") in FINAL:
                continue
            batches += 1
            items += max(0, (rec.get("total") or 0) - (rec.get("done") or 0))
        return batches, items

    def finish(self, batch_id: str) -> None:
        """Drop the active marker (the batch is final)."""
        self.s3.delete_object(Bucket=self.bucket, Key=naming.active_batch_prefix() + batch_id)

    # --- inputs --------------------------------------------------------------------------------------
    def write_inputs(self, batch_id: str, inputs: list[str]) -> None:
        """inputs.jsonl: line i is item i (written once; the ids depend on it)."""
        body = "".join(json.dumps(x) + "\n" for x in inputs).encode()
        self.s3.put_object(Bucket=self.bucket, Key=naming.batch_key(batch_id, "inputs.jsonl"), Body=body,
                           ContentType="application/x-ndjson")

    def inputs(self, batch_id: str) -> list[str] | None:
        """The expanded inputs, or None before expansion."""
        try:
            body = self.s3.get_object(Bucket=self.bucket,
                                      Key=naming.batch_key(batch_id, "inputs.jsonl"))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise
        return [json.loads(line) for line in body.decode().splitlines() if line.strip()]

    def list_images(self, bucket: str, prefix: str) -> list[str]:
        """s3:// URIs of the images under a prefix, in key order (S3 lists lexicographically: deterministic)."""
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            out.extend(f"s3://{bucket}/{o['Key']}" for o in page.get("Contents", [])
                       if o["Key"].lower().endswith(IMAGE_SUFFIXES))
            if len(out) > self.settings.batch_max_lines:
                raise BatchError("input_too_large", f"the prefix holds more than {self.settings.batch_max_lines} "
                                 "images; split it into several batches")
        return out

    def read_manifest(self, bucket: str, key: str) -> list[str]:
        """The manifest's items, streamed under a byte and line cap; a line that cannot run is kept as
        bad_line(number, code), so it fails alone and its text never reaches the output."""
        cap = self.settings.batch_manifest_max_bytes
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING + ("NoSuchBucket",):
                raise BatchError("manifest_not_found", f"manifest s3://{bucket}/{key} does not exist") from None
            raise
        body = obj["Body"]
        try:
            if obj.get("ContentLength", 0) > cap:
                raise BatchError("manifest_too_large", f"the manifest is larger than {cap} bytes")
            items, number, read = [], 0, 0
            for raw in body.iter_lines(chunk_size=64 << 10, keepends=True):
                number += 1
                read += len(raw)
                if read > cap:   # a body longer than its Content-Length said: the cap holds all the same
                    raise BatchError("manifest_too_large", f"the manifest is larger than {cap} bytes")
                line = raw.decode("utf-8", errors="replace").strip()
                if not line:
                    continue
                if len(items) >= self.settings.batch_max_lines:
                    raise BatchError("input_too_large", f"the manifest has more than "
                                     f"{self.settings.batch_max_lines} items; split it into several batches")
                items.append(manifest_item(line, number))
            return items
        finally:
            body.close()

    def presign(self, uri: str, expires_s: int | None = None) -> tuple[str, int]:
        """A GET link for an S3 item, so workers fetch it as a URL (they read no customer bucket themselves), and
        when it dies (epoch ms): after batch_link_expiry_s (or expires_s: a job's link lives as long as the job
        may run), or sooner with the signing credentials (a role's session lasts hours), so a worker that takes
        the item later answers link_expired and the driver signs it again rather than the item failing."""
        bucket, key = parse_s3_uri(uri)
        life = min(self.settings.batch_link_expiry_s if expires_s is None else expires_s, 7 * 86400)
        url = self.s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=life)
        dies = time.time() + life
        creds = credentials_expiry(self.s3)
        if creds is not None:
            dies = min(dies, creds)
        return url, int(dies * 1000)

    def shard_chunks(self, uri: str, owner: str | None):
        """The bytes of an output shard in the owner's data-bucket folder, in chunks; BatchError elsewhere."""
        bucket, key = parse_s3_uri(uri)
        if bucket != self.bucket or not key.startswith(io_prefix(owner)) or ".." in key:
            raise BatchError("unknown_shard", "this shard is not in the data bucket: read it from its own bucket")
        body = self.s3.get_object(Bucket=bucket, Key=key)["Body"]

        def chunks():
            try:
                yield from body.iter_chunks(64 << 10)
            finally:
                body.close()
        return chunks()

    # --- results -------------------------------------------------------------------------------------
    def result(self, item_id: str) -> dict | None:
        """An item's result record, or None."""
        return self.get_json(naming.result_key(item_id))

    def put_result(self, item_id: str, reply_json: str) -> None:
        """Write an item's result record (the driver's own, for inputs no worker can take)."""
        self.s3.put_object(Bucket=self.bucket, Key=naming.result_key(item_id), Body=reply_json.encode(),
                           ContentType="application/json")

    def delete_result(self, item_id: str) -> None:
        """Drop an item's record (one the driver answers again: a dead presigned link)."""
        self.s3.delete_object(Bucket=self.bucket, Key=naming.result_key(item_id))

    def recorded(self, batch_id: str) -> set[int]:
        """Indices of the items that have a result record."""
        head = naming.result_key(batch_id + "-")[:-len(".json")]
        out = set()
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=head):
            for o in page.get("Contents", []):
                tail = o["Key"][len(head):-len(".json")]
                if tail.isdigit():
                    out.add(int(tail))
        return out

    def tally(self, batch_id: str) -> tuple[set[int], int]:
        """(indices counted so far, how many of them failed)."""
        doc = self.get_json(naming.batch_key(batch_id, "tally.json")) or {}
        seen = set()
        if doc.get("seen"):
            bits = zlib.decompress(base64.b64decode(doc["seen"]))
            seen = {i for i in range(len(bits) * 8) if bits[i // 8] >> (i % 8) & 1}
        return seen, int(doc.get("failed", 0))

    def save_tally(self, batch_id: str, seen: set[int], failed: int) -> None:
        """Store the tally as a compressed bitmap (a million items: about 125 KiB before compression)."""
        bits = bytearray((max(seen) // 8 + 1) if seen else 0)
        for i in seen:
            bits[i // 8] |= 1 << (i % 8)
        self.put_json(naming.batch_key(batch_id, "tally.json"),
                      {"seen": base64.b64encode(zlib.compress(bytes(bits))).decode(), "failed": failed})


def output_line(index: int, item_id: str, source: str, record: dict | None) -> dict:
    """One output line: the input, its id, the label and results or the error, and the model version."""
    if record is None:
        return {"index": index, "id": item_id, "input": source, "status": "error", "label": None, "results": [],
                "error": {"code": "cancelled", "message": "the batch was cancelled before this item ran"},
                "model": None}
    results = record.get("results") or []
    top = results[0] if results and isinstance(results[0], dict) else {}
    return {"index": index, "id": item_id, "input": source, "status": record.get("status"),
            "label": top.get("label"), "results": results, "error": record.get("error"),
            "model": record.get("model") or None}


def summary_of(rec: dict) -> dict:
    """The public view of a batch (GET /batches/<id> and the notification body)."""
    keys = ("id", "service", "state", "total", "done", "failed", "rate", "eta_s", "output", "shards",
            "deadline", "expires_at", "created_at", "started_at", "finished_at", "error")
    out = {k: rec.get(k) for k in keys}
    out["kind"] = "batch"
    out["done"] = out["done"] or 0
    out["failed"] = out["failed"] or 0
    out["shards"] = out["shards"] or []
    return out
