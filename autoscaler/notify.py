"""The notification outbox: at-least-once delivery to SNS topics and signed webhooks, every attempt recorded.

notify/pending/<id>.json holds what to send and the attempts so far; the batch driver calls
deliver_due() every tick. A channel that answers is not tried again; one that fails is retried after
notify_backoff_s, doubling, up to notify_max_attempts. Then the record moves to notify/done/<id>.json
(delivered or given up), attempts and all. A job's notice waits for its result record.

Deliveries run on a pool of notify_workers threads, at most notify_per_key of them for one API key, so
a receiver that holds its connection to the deadline delays only its own key's notices; a notice is read
again only when its retry is due (the notifier remembers each one's next time and key).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.aws import client
from shared.batches import BatchError, check_location
from shared.config import Settings
from shared.grants import KeyGrants
from shared.job_state import CANCELLED, PENDING, SUCCEEDED, job_state
from shared.messages import now_ms
from shared.notify import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    Outbox,
    WebhookSecrets,
    sign,
)

# the same SSRF rules as image URLs: the worker's own checks (resolve, refuse internal addresses, pin the IP)
from shared.url_safety import CA_CERTS, FetchError, OwnEndpoints, SocketDeadline, parse_target

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 300.0


class Notifier(Outbox):
    """Delivers the outbox's due notices."""

    def __init__(self, settings: Settings, s3, sns=None, clock=time.time, grants: KeyGrants | None = None):
        super().__init__(settings, s3)
        self.sns = sns
        self.grants = grants
        self.secrets = WebhookSecrets(settings, s3)
        self.own = OwnEndpoints(settings)
        self.clock = clock
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._per_key: Counter = Counter()              # owner -> deliveries running for it
        self._known: dict[str, tuple[float, str | None]] = {}   # notice id -> (next try at, owner)

    # --- delivery ----------------------------------------------------------------------------------------
    def deliver_due(self, wait: bool = True) -> int:
        """Start every due notice on the pool (at most notify_per_key per key); with wait, wait for them and
        return how many were finished (delivered or given up). Never raises."""
        try:
            ids = self.pending_ids()
        except (ClientError, BotoCoreError) as exc:
            log.warning("notify: outbox unreadable: %s", exc)
            return 0
        now, started = self.clock(), []
        with self._lock:
            pending = set(ids)
            self._known = {nid: v for nid, v in self._known.items() if nid in pending}
            for nid in ids:
                next_at, owner = self._known.get(nid, (0.0, None))
                if nid in self._in_flight or next_at > now or self._per_key[owner] >= self._key_limit(owner):
                    continue
                self._in_flight.add(nid)
                self._per_key[owner] += 1
                started.append((nid, owner))
        if not started:
            return 0
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, self.settings.notify_workers),
                                            thread_name_prefix="notify")
        futures = [self._pool.submit(self._run, nid, owner) for nid, owner in started]
        return sum(f.result() for f in futures) if wait else 0

    def _key_limit(self, owner: str | None) -> int:
        """Deliveries one key may have running (an unread notice's key is not known yet: its own slot)."""
        return max(1, self.settings.notify_per_key) if owner is not None else max(1, self.settings.notify_workers)

    def _run(self, nid: str, owner: str | None) -> int:
        slot = [owner]      # the key whose slot this delivery holds (moved once the notice is read)
        try:
            return self._deliver(nid, slot)
        except Exception:
            log.exception("notify %s: delivery step failed; retried next tick", nid)
            return 0
        finally:
            with self._lock:
                self._in_flight.discard(nid)
                self._per_key[slot[0]] -= 1
                if self._per_key[slot[0]] <= 0:
                    del self._per_key[slot[0]]

    def close(self) -> None:
        """Wait for the deliveries under way (each ends by its deadline)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def _deliver(self, nid: str, slot: list | None = None) -> int:
        doc = self.get(naming.notify_key("pending", nid))
        if doc is None:
            return 0
        owner = doc.get("owner")
        with self._lock:
            self._known[nid] = (doc.get("next_at", 0), owner)
            if slot is not None and slot[0] != owner:   # first read: the slot moves to the notice's key
                if self._per_key[owner] >= self._key_limit(owner):
                    return 0                            # its key is at its limit: the next tick tries again
                self._per_key[slot[0]] -= 1
                self._per_key[owner] += 1
                slot[0] = owner
        if doc.get("next_at", 0) > self.clock():
            return 0
        if doc.get("withdrawn"):                 # its job was refused at the web: nothing to tell
            doc["state"], doc["finished_at"] = "withdrawn", now_ms()
            self.put(naming.notify_key("done", nid), doc)
            self.s3.delete_object(Bucket=self.settings.bucket_name, Key=naming.notify_key("pending", nid))
            return 1
        if doc.get("payload") is None:           # a job: notify once its result record exists
            job_id = doc["job_id"]
            record = self.get(naming.result_key(job_id))
            marker = self.get(naming.job_key(job_id)) if record is not None else None   # cancelled? timed out?
            state, answer = job_state(job_id, marker, record, now_ms())
            if state == PENDING:
                return 0
            if state == CANCELLED:               # cancelled before its answer: nothing is told or written
                doc["state"], doc["finished_at"] = "cancelled", now_ms()
                self.put(naming.notify_key("done", nid), doc)
                self.s3.delete_object(Bucket=self.settings.bucket_name, Key=naming.notify_key("pending", nid))
                return 1
            doc["ok"] = state == SUCCEEDED
            doc["payload"] = {"kind": "job", "id": job_id, "state": state, "result": answer}
        payload = dict(doc["payload"])
        payload["event"] = f"{payload.get('kind', 'job')}.{payload.get('state', 'succeeded')}"
        payload["delivery"] = doc["id"]   # inside the signed text: a receiver's dedup key cannot be swapped
        body = json.dumps(payload, separators=(",", ":")).encode()
        channels = self.channels(doc)
        for channel in channels:
            if channel in doc["delivered"]:
                continue
            ok, detail = self._send(channel, doc, payload["event"], body)
            doc["attempts"].append({"channel": channel, "at": now_ms(), "ok": ok, "detail": detail})
            log.info("notify %s: %s %s (%s)", nid, channel, "delivered" if ok else "failed", detail)
            if ok:
                doc["delivered"].append(channel)
        left = [c for c in channels if c not in doc["delivered"]]
        tries = max((sum(1 for a in doc["attempts"] if a["channel"] == c) for c in left), default=0)
        if not left or tries >= self.settings.notify_max_attempts:
            doc["state"] = "delivered" if not left else "failed"
            doc["finished_at"] = now_ms()
            self.put(naming.notify_key("done", nid), doc)
            self.s3.delete_object(Bucket=self.settings.bucket_name, Key=naming.notify_key("pending", nid))
            if left:
                log.error("notify %s: gave up on %s after %d attempts", nid, left, tries)
            return 1
        doc["next_at"] = self.clock() + min(MAX_BACKOFF_S, self.settings.notify_backoff_s * 2 ** (tries - 1))
        self.put(naming.notify_key("pending", nid), doc)
        with self._lock:
            self._known[nid] = (doc["next_at"], owner)   # not read again before then
        return 0

    @staticmethod
    def channels(doc: dict) -> list[str]:
        """The channels this notice goes to: the success or the error topic, and the webhook."""
        notify = doc.get("notify") or {}
        out = []
        topic = "success_topic" if doc.get("ok") else "error_topic"
        if notify.get(topic):
            out.append(topic)
        if notify.get("webhook"):
            out.append("webhook")
        if doc.get("output"):
            out.append("output")
        return out

    def _send(self, channel: str, doc: dict, event: str, body: bytes) -> tuple[bool, str]:
        if channel == "webhook":
            return self.post_webhook(doc["notify"]["webhook"], doc, event, body)
        if channel == "output":
            return self.write_output(doc)
        topic, owner = doc["notify"][channel], doc.get("owner")
        if owner is not None:   # keys on: only a topic the operator registered to the notice's key
            if self.grants is None:
                self.grants = KeyGrants(self.settings, client("dynamodb", self.settings))
            if topic not in self.grants.topics_of(owner):
                return False, "refused: topic_not_registered: the topic is not registered to the notice's key"
        return self.publish(topic, event, body)

    def write_output(self, doc: dict) -> tuple[bool, str]:
        """A job's answer to <output prefix><job id>.json, the location checked again against the key's grants."""
        owner = doc.get("owner")
        if owner is not None and self.grants is None:
            self.grants = KeyGrants(self.settings, client("dynamodb", self.settings))
        try:
            bucket, prefix = check_location(doc["output"], owner, self.settings, "output",
                                            self.grants.of(owner) if owner is not None else ())
        except BatchError as exc:   # a grant withdrawn after the job was accepted: written nowhere
            return False, f"refused: {exc.code}: {exc.message}"
        key = f"{prefix.rstrip('/')}/{doc['job_id']}.json" if prefix else f"{doc['job_id']}.json"
        body = json.dumps(doc["payload"]["result"], separators=(",", ":")).encode()
        try:
            self.s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json")
        except (ClientError, BotoCoreError) as exc:
            return False, f"s3: {type(exc).__name__}: {exc}"[:300]
        return True, f"written to s3://{bucket}/{key}"

    def publish(self, topic_arn: str, event: str, body: bytes) -> tuple[bool, str]:
        """Publish to an SNS topic; (ok, what happened)."""
        if self.sns is None:
            self.sns = client("sns", self.settings)
        try:
            mid = self.sns.publish(TopicArn=topic_arn, Message=body.decode(), Subject=f"ClassifyCloud {event}",
                                   MessageAttributes={"event": {"DataType": "String", "StringValue": event}})
            return True, f"sns message {mid.get('MessageId')}"
        except (ClientError, BotoCoreError) as exc:
            return False, f"sns: {type(exc).__name__}: {exc}"[:300]

    def post_webhook(self, url: str, doc: dict, event: str, body: bytes) -> tuple[bool, str]:
        """POST the signed body to the pinned, checked address; no redirects are followed. (ok, status).

        One deadline (notify_timeout_s) covers the whole delivery, DNS included: a per-read timeout alone
        let a receiver that sends its status line a byte at a time hold the driver's thread for ever."""
        deadline = time.monotonic() + self.settings.notify_timeout_s
        try:
            self.own.check_name(url)
            target = parse_target(url, self.settings.fetch_allow_loopback, self.settings.notify_timeout_s)
            self.own.check(target)
        except FetchError as exc:
            return False, f"refused: {exc.code}: {exc.message}"
        from urllib3.connection import HTTPConnection, HTTPSConnection
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, f"timeout: not delivered within {self.settings.notify_timeout_s:g} s"
        if target.scheme == "https":
            conn = HTTPSConnection(target.ip, target.port, timeout=remaining, server_hostname=target.host,
                                   assert_hostname=target.host, cert_reqs="CERT_REQUIRED", ca_certs=CA_CERTS)
        else:
            conn = HTTPConnection(target.ip, target.port, timeout=remaining)
        headers = {"Host": target.host_header, "Content-Type": "application/json",
                   "User-Agent": "ClassifyCloud-notify/1", EVENT_HEADER: event, DELIVERY_HEADER: doc["id"],
                   SIGNATURE_HEADER: sign(self.secrets.get(doc.get("owner")), body)}
        watchdog = SocketDeadline(conn, remaining)   # shuts the socket at the deadline, whatever read is blocked
        try:
            conn.connect()
            watchdog.sock = conn.sock
            conn.request("POST", target.path, body=body, headers=headers)
            status = conn.getresponse().status
        except Exception as exc:   # a receiver that is down or slow: retried with backoff
            if watchdog.fired or time.monotonic() >= deadline:
                return False, f"timeout: not delivered within {self.settings.notify_timeout_s:g} s"
            return False, f"{type(exc).__name__}: {exc}"[:300]
        finally:
            watchdog.cancel()
            conn.close()
        if watchdog.fired:
            return False, f"timeout: not delivered within {self.settings.notify_timeout_s:g} s"
        return 200 <= status < 300, f"HTTP {status}"
