"""The batch driver: expand a batch's input, put its items on the bulk queue, tally, assemble the output.

Everything it knows is in S3 (shared/batches.py), so a driver that is killed and started again picks up
where the records say: the expanded inputs are written once, the enqueue cursor is checkpointed, and
an item sent twice has the same id, so its second result overwrites the first. Runs as a thread of the
autoscaler process (AWS) or as `python -m autoscaler.batches` (the local stack starts it).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import sys
import threading
import time

from autoscaler.deadletters import DeadLetterSettler
from autoscaler.notify import Notifier
from autoscaler.policy import QueueStats
from shared import logsafe, naming
from shared.aws import client
from shared.batches import (
    FINAL,
    BatchError,
    BatchStore,
    bad_line_error,
    check_location,
    item_input,
    output_line,
    summary_of,
)
from shared.catalogue import Catalogue, catalogue_for
from shared.config import Settings
from shared.grants import KeyGrants
from shared.messages import Reply, Request, now_ms
from shared.quota import QuotaExceeded
from shared.service_queues import ensure_bulk_queue
from shared.transport import QueueGone, Transport, TransportError

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0


class BulkDeadLetters(DeadLetterSettler):
    """Bulk items that exhausted their deliveries get a dead_lettered record, so their batch still finishes."""

    def dlq_url(self, service: str) -> str | None:
        """The service's bulk DLQ (None when it does not exist)."""
        try:
            return self.transport.url(naming.bulk_dead_letter_queue(self.settings.prefix, service))
        except TransportError:
            return None


class BatchDriver:
    """tick(): advance every active batch one step, settle dead-lettered items, deliver notifications."""

    def __init__(self, settings: Settings, catalogue: Catalogue | None = None, s3=None, transport=None,
                 notifier=None, clock=time.time, grants: KeyGrants | None = None):
        self.settings = settings
        self.catalogue = catalogue or catalogue_for(settings)
        self.s3 = s3 or client("s3", settings)
        self.transport = transport or Transport(settings)
        self.store = BatchStore(settings, self.s3)
        self.grants = grants or KeyGrants(settings, client("dynamodb", settings))
        self.notifier = notifier or Notifier(settings, self.s3, clock=clock, grants=self.grants)
        self.dead_letters = BulkDeadLetters(settings, self.catalogue, self.transport, self.s3, clock=clock)
        self.clock = clock
        self.ticks = 0

    # --- the loop ------------------------------------------------------------------------------------
    def tick(self) -> None:
        """One pass over the active batches; a failure on one batch never stops the others."""
        self.ticks += 1
        try:
            active = self.store.active_ids()
        except Exception as exc:
            log.warning("batch driver: active batches unreadable: %s", exc)
            active = []
        for bid in active:
            try:
                self.advance(bid)
            except Exception:
                log.exception("batch %s: step failed; retried next tick", bid)
        self.dead_letters.maybe_settle()
        self.notifier.deliver_due(wait=False)   # on the notifier's pool: a slow receiver never holds this tick

    def run(self, stop: threading.Event) -> None:
        """Tick every batch_tick_s until stop is set."""
        log.info("batch driver: tick %.1fs", self.settings.batch_tick_s)
        while not stop.is_set():
            started = time.monotonic()
            self.tick()
            stop.wait(max(0.0, self.settings.batch_tick_s - (time.monotonic() - started)))
        self.notifier.close()

    def start_thread(self, stop: threading.Event) -> threading.Thread:
        """Run in a daemon thread (inside the autoscaler process)."""
        thread = threading.Thread(target=self.run, args=(stop,), name="batch-driver", daemon=True)
        thread.start()
        return thread

    # --- one batch -----------------------------------------------------------------------------------
    def advance(self, bid: str) -> dict | None:
        """Expand, enqueue, tally, and finish when every item has a record (or the owner cancelled)."""
        rec = self.store.record(bid)
        if rec is None:     # the web died between the marker and the record: nothing to run
            log.warning("batch %s: active marker without a record; dropped", bid)
            self.store.finish(bid)
            return None
        if rec.get("state") in FINAL:
            self.store.finish(bid)
            return rec
        if self.store.cancelled(bid):
            return self.complete(rec, self.store.inputs(bid) or [], cancelled=True)
        inputs = self.store.inputs(bid)
        if inputs is None:
            try:
                inputs = self.expand(rec)
            except BatchError as exc:
                return self.fail(rec, exc.code, exc.message)
        if rec.get("state") == "accepted":
            try:
                self.admit(rec, inputs)
            except BatchError as exc:
                return self.fail(rec, exc.code, exc.message)
            rec.update(total=len(inputs), state="running", started_at=now_ms())
            self.store.save(rec)
        if rec.get("enqueued", 0) < rec["total"]:
            self.enqueue(rec, inputs)
        self.count(rec, inputs)
        if rec["done"] < rec["total"] and rec.get("enqueued", 0) >= rec["total"]:
            if rec.get("expires_at") and self.clock() >= rec["expires_at"]:
                self.expire(rec)
            else:
                self.resend_lost(rec, inputs)
        if rec["done"] >= rec["total"]:
            return self.complete(rec, inputs)
        self.store.save(rec)
        return rec

    def expand(self, rec: dict) -> list[str]:
        """The input as a list of items, written once to inputs.jsonl (an item's id is its line)."""
        spec, owner = rec["input"], rec.get("owner")
        if "s3_prefix" in spec:
            bucket, prefix = check_location(spec["s3_prefix"], owner, self.settings, "input.s3_prefix",
                                            self.grants.of(owner))
            inputs = self.store.list_images(bucket, prefix)
        elif "manifest" in spec:
            bucket, key = check_location(spec["manifest"], owner, self.settings, "input.manifest",
                                         self.grants.of(owner))
            inputs = self.store.read_manifest(bucket, key)    # a bad line is its own error item
        else:
            inputs = [item_input(x) for x in spec["items"]]
        if not inputs:
            raise BatchError("empty_input", "the input names no image")
        self.store.write_inputs(rec["id"], inputs)
        log.info("batch %s: %d items", rec["id"], len(inputs))
        return inputs

    def admit(self, rec: dict, inputs: list[str]) -> None:
        """The key's caps and quota, where the items are used (the web checked what it could): BatchError.

        Each item is a call against the key's monthly quota, charged once, here; a driver that dies before
        saving the running state charges them again on its next tick."""
        owner = rec.get("owner")
        _, open_items = self.store.open_work(owner, skip=rec["id"])
        if open_items + len(inputs) > self.settings.batch_max_open_items_per_key:
            raise BatchError("too_many_items", f"{len(inputs)} items with the key's {open_items} still running "
                             f"pass {self.settings.batch_max_open_items_per_key}")
        try:
            self.grants.charge(owner, len(inputs))
        except QuotaExceeded:
            raise BatchError("quota_exceeded", f"the {len(inputs)} items do not fit in what is left of this key's "
                             "monthly quota; nothing was charged") from None

    def enqueue(self, rec: dict, inputs: list[str]) -> None:
        """Send items from the cursor on, checkpointing it; an input no worker can take gets its error record."""
        url = self._bulk_url(rec["service"])
        start = rec.get("enqueued", 0)
        step = max(10, self.settings.batch_checkpoint_items)
        for lo in range(start, len(inputs), step):
            hi = min(len(inputs), lo + step)
            self._send(url, rec, inputs, range(lo, hi))
            rec["enqueued"] = hi
            self.store.save(rec)
        log.info("batch %s: items %d..%d on the bulk queue", rec["id"], start, len(inputs) - 1)

    def _bulk_url(self, service: str) -> str:
        try:
            return self.transport.url(naming.bulk_queue(self.settings.prefix, service))
        except QueueGone:   # a service added live (an S3 entry) has no bulk queue yet: made here, with its DLQ
            url = ensure_bulk_queue(self.transport, self.settings, service)
            log.info("created the bulk queue of service %s", service)
            return url

    def _send(self, url: str, rec: dict, inputs: list[str], indices) -> None:
        """Put these items on the bulk queue; an input no worker can take gets its error record instead."""
        messages = []
        for i in indices:
            item_id = naming.batch_item_id(rec["id"], i)
            try:
                image = self._image(inputs[i], rec.get("owner"))
            except BatchError as exc:
                self.store.put_result(item_id, Reply.failure(item_id, rec["service"], exc.code,
                                                             exc.message).to_json())
                continue
            messages.append((i, Request(id=item_id, service=rec["service"], image=image, reply_to=None,
                                        top_k=rec["top_k"])))
        result = self.transport.send_batch(url, messages)
        if result.failed:   # the caller's cursor stays before these: they are sent again next tick
            raise TransportError(f"{len(result.failed)} of {len(messages)} items not sent: "
                                 f"{result.failed[0].message}")

    def resend_lost(self, rec: dict, inputs: list[str]) -> None:
        """Send again the items whose message is gone: every item was sent, some lack a record, and the service's
        bulk queue and its DLQ have held nothing (visible, in flight or delayed) for batch_lost_grace_s.

        A message expires after the queue's retention or is purged, and nothing else would ever answer it; while
        the queue holds anything, an unrecorded item may still be in it, so nothing is sent twice early.
        """
        try:
            depth = self.transport.depth(self._bulk_url(rec["service"]))
            dlq = self.dead_letters.dlq_url(rec["service"])
            held = depth.visible + depth.in_flight + depth.delayed + (self.transport.depth(dlq).visible if dlq else 0)
        except TransportError as exc:
            log.warning("batch %s: bulk queue depth unreadable (%s); lost items checked next tick", rec["id"], exc)
            return
        now = self.clock()
        if held:
            rec.pop("empty_since", None)
            return
        rec.setdefault("empty_since", now)
        if now - rec["empty_since"] < self.settings.batch_lost_grace_s:
            return
        lost = sorted(set(range(rec["total"])) - self.store.recorded(rec["id"]))
        if lost:
            log.warning("batch %s: %d item(s) without a record and none queued; sent again (first: %d)",
                        rec["id"], len(lost), lost[0])
            self._send(self._bulk_url(rec["service"]), rec, inputs, lost)
            rec["resent"] = rec.get("resent", 0) + len(lost)
        rec.pop("empty_since", None)

    def expire(self, rec: dict) -> None:
        """The batch's time limit passed: each item still without a record ends as failed: expired."""
        open_items = sorted(set(range(rec["total"])) - self.store.recorded(rec["id"]))
        for i in open_items:
            item_id = naming.batch_item_id(rec["id"], i)
            self.store.put_result(item_id, Reply.failure(item_id, rec["service"], "expired",
                                                         "the batch's time limit passed before this item "
                                                         "was answered").to_json())
        log.warning("batch %s: time limit passed; %d open item(s) end as expired", rec["id"], len(open_items))
        self.count(rec)

    def _image(self, source: str, owner: str | None) -> dict:
        error = bad_line_error(source)
        if error is not None:
            raise error
        if source.startswith("s3://"):
            check_location(source, owner, self.settings, "item", self.grants.of(owner))
            url, dies = self.store.presign(source)
            return {"url": url, "expires_at": dies}
        if source.lower().startswith(("http://", "https://")) and len(source) <= 2048:
            return {"url": source}      # the worker resolves and checks it as it does any image URL
        raise BatchError("invalid_input", f"not a URL or s3:// URI: {source[:100]!r}")

    def count(self, rec: dict, inputs: list[str] | None = None) -> None:
        """Tally new result records (each read once, for its status) and refresh done, failed, rate, ETA.

        With `inputs`, an item a worker answered link_expired (its presigned link died before it was taken) is
        not counted: its record goes and the item is sent again with a fresh link."""
        bid = rec["id"]
        seen, failed = self.store.tally(bid)
        fresh = self.store.recorded(bid) - seen
        resign = []
        for i in sorted(fresh):
            doc = self.store.result(naming.batch_item_id(bid, i)) or {}
            if inputs is not None and (doc.get("error") or {}).get("code") == "link_expired":
                resign.append(i)
            elif doc.get("status") != "ok":
                failed += 1
        if resign:
            for i in resign:
                self.store.delete_result(naming.batch_item_id(bid, i))
            self._send(self._bulk_url(rec["service"]), rec, inputs, resign)
            fresh -= set(resign)
            rec["resigned"] = rec.get("resigned", 0) + len(resign)
            log.info("batch %s: %d item(s) whose link expired signed again and re-sent", bid, len(resign))
        if fresh:
            seen |= fresh
            self.store.save_tally(bid, seen, failed)
        now = self.clock()
        samples = [s for s in rec.get("samples", []) if now - s[0] <= RATE_WINDOW_S] + [[now, len(seen)]]
        rate = 0.0
        if len(samples) > 1 and samples[-1][0] > samples[0][0]:
            rate = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        left = rec["total"] - len(seen)
        rec.update(done=len(seen), failed=failed, samples=samples[-30:], rate=round(rate, 3),
                   eta_s=(round(left / rate, 1) if rate > 0 else None) if left else 0.0, updated_at=now_ms())

    # --- the end -------------------------------------------------------------------------------------
    def complete(self, rec: dict, inputs: list[str], cancelled: bool = False) -> dict:
        """Write the shards (one line per input, idempotent), mark the batch final, queue the notification."""
        bid = rec["id"]
        if rec.get("total") is None:
            rec["total"] = len(inputs)
        self.count(rec) if inputs else rec.update(done=0, failed=0)
        try:
            shards = self.write_shards(rec, inputs)
        except BatchError as exc:   # the output's grant was withdrawn while the batch ran: its items stay counted
            return self.fail(rec, exc.code, exc.message, total=rec["total"])
        rec.update(state="cancelled" if cancelled else "succeeded", shards=shards, finished_at=now_ms(),
                   eta_s=0.0)
        self.store.save(rec)
        self.notify(rec)
        self.store.finish(bid)
        log.info("batch %s: %s, %d items, %d failed, %d shards", bid, rec["state"], rec["total"],
                 rec.get("failed", 0), len(shards))
        return rec

    def fail(self, rec: dict, code: str, message: str, total: int = 0) -> dict:
        """The input could not be expanded (or the output not written): the batch ends failed with the reason."""
        rec.update(state="failed", error={"code": code, "message": message}, finished_at=now_ms(), total=total)
        self.store.save(rec)
        self.notify(rec)
        self.store.finish(rec["id"])
        log.warning("batch %s failed: %s", rec["id"], message)
        return rec

    def write_shards(self, rec: dict, inputs: list[str]) -> list[str]:
        """Shards part-NNNNN.jsonl under <output>/<batch id>/, built from the records, so duplicates collapse."""
        owner = rec.get("owner")
        bucket, prefix = check_location(rec["output"], owner, self.settings, "output", self.grants.of(owner))
        base = f"{prefix.rstrip('/')}/{rec['id']}/" if prefix.strip("/") else f"{rec['id']}/"
        per = max(1, self.settings.batch_shard_lines)
        shards = []
        for n in range(max(1, math.ceil(len(inputs) / per))):
            lines = []
            for i in range(n * per, min(len(inputs), (n + 1) * per)):
                item_id = naming.batch_item_id(rec["id"], i)
                lines.append(json.dumps(output_line(i, item_id, inputs[i], self.store.result(item_id))))
            key = f"{base}part-{n:05d}.jsonl"
            self.s3.put_object(Bucket=bucket, Key=key, Body=("\n".join(lines) + "\n" if lines else "").encode(),
                               ContentType="application/x-ndjson")
            shards.append(f"s3://{bucket}/{key}")
        return shards

    def notify(self, rec: dict) -> None:
        """Queue the batch's notification (success or error topic, webhook) in the outbox."""
        if rec.get("notify"):
            summary = summary_of(rec)
            self.notifier.enqueue(f"batch-{rec['id']}", rec.get("owner"), rec["notify"], summary,
                                  ok=rec["state"] == "succeeded" and not rec.get("failed"))


class BulkReader:
    """The bulk queues' counts for the policy, each with the earliest deadline of its running batches."""

    def __init__(self, settings: Settings, catalogue: Catalogue, transport: Transport, s3, clock=time.time):
        self.settings = settings
        self.catalogue = catalogue
        self.transport = transport
        self.store = BatchStore(settings, s3)
        self.clock = clock

    def deadlines(self) -> dict[str, float]:
        """service -> seconds left to the earliest deadline among its active batches."""
        out: dict[str, float] = {}
        for bid in self.store.active_ids():
            rec = self.store.record(bid) or {}
            if rec.get("deadline") and rec.get("service"):
                left = rec["deadline"] - self.clock()
                out[rec["service"]] = min(left, out.get(rec["service"], left))
        return out

    def read(self) -> list[QueueStats]:
        """One bulk QueueStats per existing bulk queue that holds items (S3 errors: no deadlines this tick)."""
        try:
            deadlines = self.deadlines()
        except Exception as exc:
            log.warning("bulk: batch deadlines unreadable (%s); sized without them this tick", exc)
            deadlines = {}
        out = []
        for service in self.catalogue.names():
            try:
                depth = self.transport.depth(self.transport.url(naming.bulk_queue(self.settings.prefix, service)))
            except QueueGone:
                continue
            if depth.visible or depth.in_flight:
                out.append(QueueStats(service=service, visible=depth.visible, in_flight=depth.in_flight,
                                      delayed=depth.delayed, bulk=True, deadline_s=deadlines.get(service)))
        return out


def main(argv: list[str] | None = None) -> int:
    """Run the batch driver until SIGTERM/SIGINT (the local stack's own small process)."""
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logsafe.install()   # client strings never start a forged log line
    if settings.parent_pid:
        from shared.lifeline import watch_parent
        watch_parent(settings.parent_pid)   # a local-stack driver ends with `classifycloud up`
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    BatchDriver(settings).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
