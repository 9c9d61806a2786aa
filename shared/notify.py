"""Notifications (`notify` on jobs and batches): the spec's checks, the webhook signature, the outbox records.

A client names SNS topics for success and for error (as SageMaker asynchronous inference does) and/or an
HTTPS webhook. A webhook body is signed with HMAC-SHA256 over "<timestamp>.<body>" with the API key's
webhook secret, sent as `X-ClassifyCloud-Signature: t=<timestamp>,v1=<hex>`. Delivery (at least once,
retried with backoff, every attempt recorded) is autoscaler/notify.py's; this module is what the web,
the driver and a receiver share.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from urllib.parse import urlsplit

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings
from shared.messages import MessageError

SIGNATURE_HEADER = "X-ClassifyCloud-Signature"
EVENT_HEADER = "X-ClassifyCloud-Event"
DELIVERY_HEADER = "X-ClassifyCloud-Delivery"
TOLERANCE_S = 300            # a receiver refuses signatures older than this (replays)
_TOPIC_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")
FIELDS = ("success_topic", "error_topic", "webhook")


class NotifyError(MessageError):
    """A `notify` object the web refuses (400 with this code)."""


def valid_topic(arn: object) -> bool:
    """Whether a value is an SNS topic ARN."""
    return isinstance(arn, str) and bool(_TOPIC_RE.match(arn))


def check_notify(spec: object, settings: Settings, topics: tuple[str, ...] | None = None) -> dict | None:
    """The normalised notify object ({success_topic, error_topic, webhook}, each optional), or None.

    topics: with API keys on, the topics the operator registered to the key (shared/grants.py); a topic
    outside them is refused. None (keys off, one tenant): any topic ARN."""
    if spec is None:
        return None
    if not isinstance(spec, dict) or not spec or set(spec) - set(FIELDS):
        raise NotifyError("invalid_notify", f"notify must be an object with some of {', '.join(FIELDS)}")
    out = {}
    for name in ("success_topic", "error_topic"):
        if name in spec:
            if not valid_topic(spec[name]):
                raise NotifyError("invalid_notify", f"notify.{name} must be an SNS topic ARN")
            if topics is not None and spec[name] not in topics:
                raise NotifyError("topic_not_registered", f"notify.{name} is not a topic registered to this key "
                                  "(the operator registers topics with `classifycloud keys topic`)")
            out[name] = spec[name]
    if "webhook" in spec:
        out["webhook"] = check_webhook(spec["webhook"], settings)
    return out


def check_webhook(url: object, settings: Settings) -> str:
    """The checks an image URL gets at the web, plus HTTPS (plain http only where loopback photos are allowed).

    The network-level rules (resolve, refuse private/loopback/metadata addresses, pin the IP) run at
    every delivery, as the worker runs them at every image fetch.
    """
    if not isinstance(url, str) or not url.strip() or len(url) > 2048:
        raise NotifyError("invalid_webhook", "notify.webhook must be an https URL of at most 2048 characters")
    try:
        parts = urlsplit(url.strip())
        _ = parts.port   # raises ValueError for a port out of range
    except ValueError as exc:
        raise NotifyError("invalid_webhook", f"notify.webhook is not a valid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and settings.fetch_allow_loopback):
        raise NotifyError("invalid_webhook", "notify.webhook must use https")
    if not parts.hostname:
        raise NotifyError("invalid_webhook", "notify.webhook has no host")
    if parts.username or parts.password:
        raise NotifyError("invalid_webhook", "notify.webhook must not carry credentials")
    return url.strip()


def new_secret() -> str:
    """A webhook signing secret."""
    return "whsec_" + secrets.token_hex(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of "<timestamp>.<body>"."""
    return hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-ClassifyCloud-Signature header value: t=<timestamp>,v1=<hex>."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={signature(secret, t, body)}"


def verify(secret: str, header: str, body: bytes, tolerance_s: float = TOLERANCE_S, now: float | None = None) -> bool:
    """A receiver's check: the header's v1 matches the body and its timestamp is recent (constant time)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        t = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - t) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, t, body), fields.get("v1", ""))


class WebhookSecrets:
    """Each API key's webhook secret, kept in the data bucket (notify/secrets/<key id>.json)."""

    def __init__(self, settings: Settings, s3):
        self.settings = settings
        self.s3 = s3

    @staticmethod
    def key(owner: str | None) -> str:
        """Where an owner's secret lives (keys off: one 'anonymous' secret)."""
        return f"notify/secrets/{owner or 'anonymous'}.json"

    def get(self, owner: str | None, create: bool = True) -> str | None:
        """The owner's secret; made on first use when create (a race keeps whichever write landed last)."""
        try:
            body = self.s3.get_object(Bucket=self.settings.bucket_name, Key=self.key(owner))["Body"].read()
            return json.loads(body)["secret"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404", "NotFound") or not create:
                raise
        return self.rotate(owner)

    def rotate(self, owner: str | None) -> str:
        """A new secret for the owner (the old one stops verifying at once)."""
        value = new_secret()
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=self.key(owner),
                           Body=json.dumps({"secret": value, "at": int(time.time())}).encode(),
                           ContentType="application/json")
        return value


class Outbox:
    """notify/pending/<id>.json until delivered or given up, then notify/done/<id>.json (with every attempt)."""

    def __init__(self, settings: Settings, s3):
        self.settings = settings
        self.s3 = s3

    def get(self, key: str) -> dict | None:
        """A JSON record of the data bucket, or None."""
        try:
            return json.loads(self.s3.get_object(Bucket=self.settings.bucket_name, Key=key)["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise

    def put(self, key: str, doc: dict) -> None:
        """Write a JSON record to the data bucket."""
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=key, Body=json.dumps(doc).encode(),
                           ContentType="application/json")

    def enqueue(self, notice_id: str, owner: str | None, notify: dict, payload: dict | None,
                ok: bool = True, job_id: str | None = None, output: str | None = None) -> None:
        """Queue a notice once (a driver that finishes a batch twice queues it once); a job's notice
        (payload None) waits for the job's result record; output: an s3:// prefix the answer is copied to."""
        pending, done = naming.notify_key("pending", notice_id), naming.notify_key("done", notice_id)
        if self.get(pending) is not None or self.get(done) is not None:
            return
        self.put(pending, {"id": notice_id, "owner": owner, "notify": notify, "payload": payload, "ok": ok,
                           "job_id": job_id, "created_at": int(time.time() * 1000), "next_at": 0,
                           "delivered": [], "attempts": [], **({"output": output} if output else {})})

    def withdraw(self, notice_id: str) -> None:
        """Mark a pending notice withdrawn (its job was refused): the driver files it as such, sending nothing."""
        key = naming.notify_key("pending", notice_id)
        doc = self.get(key)
        if doc is not None:
            doc["withdrawn"] = True
            self.put(key, doc)

    def record(self, notice_id: str) -> dict | None:
        """A notice's record, pending or done (with its attempts)."""
        return self.get(naming.notify_key("pending", notice_id)) or self.get(naming.notify_key("done", notice_id))

    def pending_ids(self) -> list[str]:
        """Notices not yet delivered or given up."""
        head = naming.notify_key("pending", "")[:-len(".json")]
        out = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.settings.bucket_name, Prefix=head)
        for page in pages:
            out.extend(o["Key"][len(head):-len(".json")] for o in page.get("Contents", []))
        return out
