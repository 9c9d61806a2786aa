"""Dead-lettered requests end as errors: a result record (and a reply) with code dead_lettered.

A request that exhausted maxReceiveCount sits in its service's DLQ; nobody would ever answer it, so
GET /jobs/<id> would say pending forever. Each sweep (in the autoscaler loop) writes results/<id>.json
= an error reply with code `dead_lettered` and the last reason a worker gave (failures/<id>.json), and
sends it to the request's reply_to. The message stays in the DLQ for `classifycloud dlq list|redrive`.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.catalogue import Catalogue
from shared.config import Settings
from shared.messages import Reply, valid_id
from shared.transport import QueueGone, Received, Transport, TransportError

log = logging.getLogger(__name__)

CODE = "dead_lettered"


@dataclass(frozen=True)
class DeadLetter:
    """One message in a DLQ, as much of it as could be read."""

    service: str
    message_id: str
    request_id: str | None
    reply_to: str | None
    sent_at_ms: int
    body: str
    receipt_handle: str


def read_dead_letters(transport: Transport, dlq_url: str, service: str, limit: int = 100,
                      hold_s: int = 30) -> list[DeadLetter]:
    """Receive up to limit messages of a DLQ; each stays hidden hold_s seconds, so one pass sees it once."""
    queue = transport.consumer(dlq_url, wait_s=0, visibility_timeout=hold_s)
    out: list[DeadLetter] = []
    while len(out) < limit:
        msgs = queue.receive(min(10, limit - len(out)))
        if not msgs:
            break
        out.extend(_letter(service, m) for m in msgs)
    return out


def _letter(service: str, m: Received) -> DeadLetter:
    rid = reply_to = None
    try:
        doc = json.loads(m.body)
        if isinstance(doc, dict):
            rid = doc.get("id") if isinstance(doc.get("id"), str) and valid_id(doc["id"]) else None
            reply_to = doc.get("reply_to") if isinstance(doc.get("reply_to"), str) else None
    except ValueError:
        pass
    return DeadLetter(service, m.message_id, rid, reply_to, m.sent_at or 0, m.body, m.receipt_handle)


def release_all(transport: Transport, dlq_url: str, letters: list[DeadLetter]) -> None:
    """Make peeked dead letters visible again."""
    try:
        result = transport.change_visibility_batch(
            dlq_url, [(i, dl.receipt_handle) for i, dl in enumerate(letters)], 0)
    except TransportError as exc:   # they come back by themselves after hold_s
        log.info("dead letters: release failed: %s", exc)
        return
    if result.failed:
        log.info("dead letters: %d not released: %s", len(result.failed), result.failed[0].message)


class DeadLetterSettler:
    """maybe_settle(): every interval, write the dead_lettered record of each new DLQ message."""

    def __init__(self, settings: Settings, catalogue: Catalogue, transport: Transport, s3, clock=time.time):
        self.settings = settings
        self.catalogue = catalogue    # a LiveCatalogue grows with S3 entries: read its names every sweep
        self.transport = transport
        self.s3 = s3
        self.clock = clock
        self._last = -float("inf")
        self.settled: list[str] = []

    def maybe_settle(self) -> list[str]:
        """Settle when janitor_interval_s has passed; never raises."""
        interval = self.settings.janitor_interval_s
        if interval <= 0 or self.clock() - self._last < interval:
            return []
        self._last = self.clock()
        try:
            return self.settle()
        except (TransportError, ClientError, BotoCoreError) as exc:
            log.warning("dead letters: sweep failed: %s", exc)
            return []

    @property
    def services(self) -> list[str]:
        """The services whose DLQs are swept (services added live included)."""
        return self.catalogue.names()

    def dlq_url(self, service: str) -> str | None:
        """A service's DLQ URL (None when it does not exist)."""
        try:
            return self.transport.url(naming.dead_letter_queue(self.settings.prefix, service))
        except QueueGone:
            return None

    def settle(self) -> list[str]:
        """Record every dead-lettered request that has no result record yet; returns their ids."""
        done = []
        for service in self.services:
            url = self.dlq_url(service)
            if url is None:
                continue
            letters = read_dead_letters(self.transport, url, service)
            try:
                done.extend(self._settle(service, letters))
            finally:  # a peek: visible again for `classifycloud dlq` and the next sweep
                release_all(self.transport, url, letters)
        self.settled.extend(done)
        return done

    def _settle(self, service: str, letters: list[DeadLetter]) -> list[str]:
        done = []
        for dl in letters:
            if dl.request_id is None or self._has_record(dl.request_id):
                continue   # unreadable (no id to answer) or already settled
            message, detail = self._reason(dl.request_id)
            reply = Reply.failure(dl.request_id, service, CODE, message, worker="")
            self.s3.put_object(Bucket=self.settings.bucket_name, Key=naming.result_key(dl.request_id),
                               Body=reply.to_json().encode(), ContentType="application/json")
            if dl.reply_to and dl.reply_to.rsplit("/", 1)[-1].startswith(
                    naming.reply_queue_prefix(self.settings.prefix)):
                try:
                    self.transport.send(dl.reply_to, reply)
                except TransportError as exc:   # the asker is gone: the record answers GET /jobs/<id>
                    log.info("dead letters: reply for %s not sent: %s", dl.request_id, exc)
            log.warning("request %s dead-lettered (%s): %s; last failure: %s", dl.request_id, service,
                        message, detail)
            done.append(dl.request_id)
        return done

    def _has_record(self, request_id: str) -> bool:
        try:
            self.s3.get_object(Bucket=self.settings.bucket_name, Key=naming.result_key(request_id))
            return True
        except ClientError:
            return False

    def _reason(self, request_id: str) -> tuple[str, str]:
        """(what the client is told, what the log gets): a worker's exception text stays in the log."""
        base = f"not answered after {self.settings.max_receive_count} deliveries"
        try:
            body = self.s3.get_object(Bucket=self.settings.bucket_name,
                                      Key=naming.failure_key(request_id))["Body"].read()
            last = json.loads(body).get("reason")
            if last:
                return f"{base}; the last attempt failed with an internal error (operators: see the log)", str(last)
        except (ClientError, ValueError, AttributeError):
            pass
        return f"{base}; each worker holding it stopped or timed out before answering", "none recorded"
