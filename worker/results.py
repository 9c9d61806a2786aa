"""Delivery: send replies in batches, write results/<id>.json where one is read, then delete the requests.

The reply goes first because the client waits for it and not for the record; the request is deleted
only once both are done, so a record that fails still brings the request back (at-least-once).
A record is written only where something reads it: async jobs and batch items (no reply queue),
requests that ask for one, and replies whose queue is gone. A waiting client's request asks for
none: one S3 PUT per request cost more than the GPUs; its web process records a late reply itself.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings
from shared.messages import MessageError, Reply, now_ms, readable_reply_to
from shared.transport import Transport
from worker.consumer import Held

log = logging.getLogger(__name__)


@dataclass
class DeliveryOutcome:
    """A held message and the reply it gets; reply_to None means an async job (record only)."""

    held: Held
    reply: Reply
    reply_to: str | None
    record: bool = True       # write results/<id>.json even when the reply is delivered (Request.wants_record)


class ResultSink:
    """Records, replies and deletes for one batch; a message is deleted only once it was answered."""

    def __init__(self, settings: Settings, transport: Transport, s3, threads: int = 8):
        self.settings = settings
        self.transport = transport
        self.s3 = s3
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="records")

    def note_failure(self, held: list[Held], reason: str) -> None:
        """Keep why these requests failed (failures/<id>.json): a dead-lettered job ends with this reason."""
        for h in held:
            rid, _ = readable_reply_to(h.body)
            if rid is None:
                continue
            try:
                self.s3.put_object(Bucket=self.settings.bucket_name, Key=naming.failure_key(rid),
                                   Body=json.dumps({"id": rid, "reason": reason[:1000], "at": now_ms(),
                                                    "receive_count": h.receive_count}).encode(),
                                   ContentType="application/json")
            except Exception as exc:  # best effort: the dead-letter record then gives a generic reason
                log.warning("request %s: failure reason not stored: %s", rid, exc)

    def stored_reply(self, request_id: str) -> Reply | None:
        """The result record of an earlier delivery of this request, if one was written."""
        try:
            obj = self.s3.get_object(Bucket=self.settings.bucket_name, Key=naming.result_key(request_id))
            return Reply.from_json(obj["Body"].read())
        except ClientError:
            return None
        except (MessageError, ValueError) as exc:
            log.warning("request %s: stored result record unreadable (%s); recomputing", request_id, exc)
            return None

    def deliver(self, outcomes: list[DeliveryOutcome]) -> list[Held]:
        """Reply, record, delete; returns the held messages that were deleted."""
        if not outcomes:
            return []
        replied, homeless = self._send_replies(outcomes)  # first: the client waits for this, not for the record
        wanted = [o for i, o in enumerate(outcomes) if o.reply_to is None or o.record or i in homeless]
        written = dict(zip(map(id, wanted), self.pool.map(self._record, wanted), strict=True))
        recorded = [written.get(id(o), True) for o in outcomes]
        done = []
        for outcome, ok_record, ok_reply in zip(outcomes, recorded, replied):
            if ok_reply and ok_record:
                done.append(outcome.held)
            elif ok_reply:  # answered but no record: let it come back so the record gets written
                log.warning("request %s: replied but result record missing; not deleting", outcome.reply.id)
        return self.delete(done)

    def _record(self, outcome: DeliveryOutcome) -> bool:
        try:
            self.s3.put_object(Bucket=self.settings.bucket_name, Key=naming.result_key(outcome.reply.id),
                               Body=outcome.reply.to_json().encode(), ContentType="application/json")
            return True
        except Exception as exc:
            log.error("request %s: result record not written: %s", outcome.reply.id, exc)
            return False

    def _send_replies(self, outcomes: list[DeliveryOutcome]) -> tuple[list[bool], set[int]]:
        """Send the replies, batched per reply queue.

        Returns True per outcome that was answered (or needs no answer), and the positions whose reply
        queue is gone: only a record can answer those.
        """
        sent = [o.reply_to is None for o in outcomes]
        homeless: set[int] = set()
        result = self.transport.send_grouped((i, o.reply_to, o.reply) for i, o in enumerate(outcomes)
                                             if o.reply_to is not None)
        for i in result.succeeded:
            sent[i] = True
        for f in result.failed:
            if f.queue_gone:  # the asking web process is gone; the record answers GET /jobs/<id>
                log.warning("request %s: reply queue %s is gone; kept as a record only",
                            outcomes[f.key].reply.id, outcomes[f.key].reply_to)
                sent[f.key] = True
                homeless.add(f.key)
            else:
                log.error("request %s: reply not sent (%s: %s); request stays queued",
                          outcomes[f.key].reply.id, f.code, f.message)
        return sent, homeless

    def delete(self, messages: list[Held]) -> list[Held]:
        """Delete answered requests, batched per queue; returns the messages deleted."""
        result = self.transport.ack_received(messages)
        for f in result.failed:  # answered but not deleted: it comes back, the stored record answers it
            log.warning("message %s not deleted: %s %s", messages[f.key].message_id, f.code, f.message)
        return [messages[i] for i in sorted(result.succeeded)]

    def close(self) -> None:
        """Stop the record-writer pool."""
        self.pool.shutdown(wait=True)
