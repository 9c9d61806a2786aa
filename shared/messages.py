"""Message schemas (version 1): request, reply, terminate (SQS) and heartbeat (S3 record). See DESIGN.md."""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

VERSION = 1
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_PARAMS_BYTES = 4096
_S3_RE = re.compile(r"^s3://[a-z0-9.\-]{3,63}/.+$")
_VERSION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,19}$")  # shared/versions.py VERSION_RE


class MessageError(ValueError):
    """A message that does not follow the protocol; `code` goes into the error reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def now_ms() -> int:
    """Wall-clock epoch milliseconds (the protocol's time unit)."""
    return int(time.time() * 1000)


def new_id() -> str:
    """A fresh request id."""
    return str(uuid.uuid4())


def valid_id(value: Any) -> bool:
    """True when value can be used as a request id (also as an S3 key part)."""
    return isinstance(value, str) and bool(_ID_RE.match(value))


def _load(body: str | bytes | dict) -> dict:
    if isinstance(body, dict):
        return body
    try:
        data = json.loads(body)
    except (TypeError, ValueError) as exc:
        raise MessageError("malformed_message", f"message is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MessageError("malformed_message", "message must be a JSON object")
    return data


def _require(data: dict, key: str, kind: type | tuple, what: str) -> Any:
    if key not in data:
        raise MessageError("malformed_message", f"{what}: missing field {key!r}")
    value = data[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MessageError("malformed_message", f"{what}: field {key!r} has the wrong type")
    return value


@dataclass(frozen=True)
class Request:
    """A classification request, as put on `<prefix>-requests-<service>`."""

    id: str
    service: str
    image: dict                      # {"url": str} or {"s3": "s3://bucket/key"}
    reply_to: str | None             # reply queue URL; None for async jobs (result record only)
    top_k: int = 5
    submitted_at: int = field(default_factory=now_ms)
    v: int = VERSION
    params: dict | None = None       # optional, per kind: {"op", "gallery", "name"} (embedding), {"meta"} (skin)
    version: str | None = None       # optional: the service version chosen at submit (sticky on redelivery)
    shadow: str | None = None        # optional: a version that also runs on this image; its answer is not returned
    record: bool = True              # optional: write results/<id>.json; a waiting client's request says false
    expires_at: int | None = None    # optional, epoch ms: not started by then, the job is answered `expired`

    @property
    def wants_record(self) -> bool:
        """Whether the worker writes the result record: always without a reply queue, else as asked."""
        return self.reply_to is None or self.record

    def expired(self, now: int | None = None) -> bool:
        """True when the request carries a deadline and it has passed."""
        return self.expires_at is not None and (now_ms() if now is None else now) > self.expires_at

    def to_json(self) -> str:
        """The message body (optional fields only when given, so plain requests keep their v1 shape)."""
        body = asdict(self)
        for key in ("params", "version", "shadow", "expires_at"):
            if body[key] is None:
                del body[key]
        if body["record"]:  # the default: absent, as in messages written before the field existed
            del body["record"]
        return json.dumps(body, separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str | bytes | dict) -> "Request":
        """Parse and validate; raises MessageError."""
        data = _load(body)
        what = "request"
        if data.get("v") != VERSION:
            raise MessageError("unsupported_version", f"request version {data.get('v')!r} is not {VERSION}")
        rid = _require(data, "id", str, what)
        if not valid_id(rid):
            raise MessageError("malformed_message", "request: id must be 1-64 of [A-Za-z0-9_-]")
        service = _require(data, "service", str, what)
        image = _require(data, "image", dict, what)
        if set(image) == {"url"} and isinstance(image["url"], str) and image["url"]:
            pass
        elif (set(image) == {"url", "expires_at"} and isinstance(image["url"], str) and image["url"]
              and isinstance(image["expires_at"], int) and not isinstance(image["expires_at"], bool)):
            pass   # a presigned batch item: the link is dead after expires_at (epoch ms)
        elif set(image) == {"s3"} and isinstance(image["s3"], str) and _S3_RE.match(image["s3"]):
            pass
        else:
            raise MessageError("malformed_message", "request: image must be {'url': str[, 'expires_at': epoch ms]} "
                                                    "or {'s3': 's3://bucket/key'}")
        reply_to = data.get("reply_to")
        if reply_to is not None and not (isinstance(reply_to, str) and reply_to):
            raise MessageError("malformed_message", "request: reply_to must be a queue URL or null")
        top_k = data.get("top_k", 5)
        if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= 100:
            raise MessageError("malformed_message", "request: top_k must be an integer in 1..100")
        submitted = data.get("submitted_at", now_ms())
        if not isinstance(submitted, int) or isinstance(submitted, bool):
            raise MessageError("malformed_message", "request: submitted_at must be epoch milliseconds")
        params = data.get("params")
        if params is not None and not (isinstance(params, dict) and len(json.dumps(params)) <= MAX_PARAMS_BYTES):
            raise MessageError("malformed_message", f"request: params must be a JSON object of at most "
                                                    f"{MAX_PARAMS_BYTES} bytes")
        expires_at = data.get("expires_at")
        if expires_at is not None and (not isinstance(expires_at, int) or isinstance(expires_at, bool)):
            raise MessageError("malformed_message", "request: expires_at must be epoch milliseconds or null")
        versions = {k: data.get(k) for k in ("version", "shadow")}
        for key, value in versions.items():
            if value is not None and not (isinstance(value, str) and _VERSION_RE.match(value)):
                raise MessageError("malformed_message", f"request: {key} must be a version name like 'v2'")
        record = data.get("record", True)
        if not isinstance(record, bool):
            raise MessageError("malformed_message", "request: record must be true or false")
        return cls(id=rid, service=service, image=dict(image), reply_to=reply_to,
                   top_k=top_k, submitted_at=submitted, params=params, record=record, expires_at=expires_at,
                   **versions)


def readable_reply_to(body: str | bytes) -> tuple[str | None, str | None]:
    """Best effort (id, reply_to) from a message that failed validation, to answer it."""
    try:
        data = json.loads(body)
    except (TypeError, ValueError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    rid = data.get("id") if valid_id(data.get("id")) else None
    reply_to = data.get("reply_to") if isinstance(data.get("reply_to"), str) and data.get("reply_to") else None
    return rid, reply_to


@dataclass(frozen=True)
class Reply:
    """A worker's answer, sent to the request's reply_to and stored as results/<id>.json."""

    id: str
    service: str
    status: str                                   # "ok" | "error"
    results: list = field(default_factory=list)   # [{"label", "index", "score"}]
    error: dict | None = None                     # {"code", "message"}
    timings_ms: dict = field(default_factory=dict)  # {"queue", "fetch", "inference", "total"}
    worker: str = ""
    model: dict = field(default_factory=dict)     # {"name", "version"}
    v: int = VERSION
    kind: str = "classifier"                      # optional: the service kind that shaped `results`
    version: str = ""                             # optional: the service version that answered (docs/VERSIONS.md)

    @classmethod
    def ok(cls, req_id: str, service: str, results: list, **kw: Any) -> "Reply":
        """A successful reply."""
        return cls(id=req_id, service=service, status="ok", results=results, **kw)

    @classmethod
    def failure(cls, req_id: str, service: str, code: str, message: str, **kw: Any) -> "Reply":
        """An error reply with a machine-readable code and a human reason."""
        return cls(id=req_id, service=service, status="error", results=[],
                   error={"code": code, "message": message}, **kw)

    def to_dict(self) -> dict:
        """Plain dict (the JSON shape; version only when the service has versions)."""
        body = asdict(self)
        if not body["version"]:
            del body["version"]
        return body

    def to_json(self) -> str:
        """The message body."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, body: str | bytes | dict) -> "Reply":
        """Parse and validate; raises MessageError."""
        data = _load(body)
        what = "reply"
        if data.get("v") != VERSION:
            raise MessageError("unsupported_version", f"reply version {data.get('v')!r} is not {VERSION}")
        rid = _require(data, "id", str, what)
        service = _require(data, "service", str, what)
        status = _require(data, "status", str, what)
        if status not in ("ok", "error"):
            raise MessageError("malformed_message", "reply: status must be 'ok' or 'error'")
        results = data.get("results") or []
        if not isinstance(results, list):
            raise MessageError("malformed_message", "reply: results must be a list")
        error = data.get("error")
        if status == "error" and not (isinstance(error, dict) and "code" in error and "message" in error):
            raise MessageError("malformed_message", "reply: an error reply needs error.code and error.message")
        return cls(id=rid, service=service, status=status, results=results, error=error,
                   timings_ms=data.get("timings_ms") or {}, worker=data.get("worker") or "",
                   model=data.get("model") or {},
                   kind=data.get("kind") if isinstance(data.get("kind"), str) else "classifier",
                   version=data.get("version") if isinstance(data.get("version"), str) else "")


@dataclass(frozen=True)
class Terminate:
    """One message asks one worker to stop; stale after the expiry."""

    issued_at: int = field(default_factory=now_ms)
    kind: str = "terminate"
    v: int = VERSION

    def to_json(self) -> str:
        """The message body."""
        return json.dumps(asdict(self), separators=(",", ":"))

    def is_fresh(self, expiry_s: float, now: int | None = None) -> bool:
        """True when issued within the last expiry_s seconds."""
        now = now_ms() if now is None else now
        return now - self.issued_at <= expiry_s * 1000

    @staticmethod
    def check_interval_s(check_interval_s: float, expiry_s: float) -> float:
        """How often an idle worker looks: the setting, but at most half the expiry (a fresh one never goes stale)."""
        return min(check_interval_s, expiry_s / 2)

    @staticmethod
    def check_due(idle: bool, since_check_s: float, interval_s: float) -> bool:
        """The worker's rule (worker/terminate.py, and the simulator's): only an idle worker, once per interval.

        Idle = nothing held, nothing in flight, and its last look for work came back empty; a worker
        that just finished a batch with work waiting is not idle, however long since its last check.
        """
        return idle and since_check_s >= interval_s

    @classmethod
    def from_json(cls, body: str | bytes | dict) -> "Terminate":
        """Parse and validate; raises MessageError."""
        data = _load(body)
        if data.get("v") != VERSION or data.get("kind") != "terminate":
            raise MessageError("malformed_message", "terminate: needs v=1 and kind='terminate'")
        issued = _require(data, "issued_at", int, "terminate")
        return cls(issued_at=issued)


HEARTBEAT_STATES = ("ready", "stopping")


@dataclass(frozen=True)
class Heartbeat:
    """A worker's liveness record, heartbeats/<instance_id>.json, rewritten every heartbeat_interval_s."""

    instance_id: str
    services: list = field(default_factory=list)     # services this worker hosts
    unavailable: dict = field(default_factory=dict)  # service -> why it cannot be hosted
    state: str = "ready"                             # "ready" | "stopping"
    busy: int = 0                                    # messages held (waiting + being processed)
    backends: dict = field(default_factory=dict)     # service -> {"backend": serving backend, "auto": measurements}
    started_at: int = field(default_factory=now_ms)
    at: int = field(default_factory=now_ms)          # when written, epoch ms
    step_at: int = 0                                 # the worker loop's last step, epoch ms (0: unknown)
    oldest_held_at: int = 0                          # receive time of the oldest message held, epoch ms (0: none)
    v: int = VERSION

    def to_dict(self) -> dict:
        """Plain dict (the JSON shape)."""
        return asdict(self)

    def to_json(self) -> str:
        """The record's body."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def age_ms(self, now: int | float | None = None) -> float:
        """Milliseconds since it was written."""
        return (now_ms() if now is None else now) - self.at

    def is_fresh(self, max_age_s: float, now: int | float | None = None) -> bool:
        """True when written within the last max_age_s seconds."""
        return self.age_ms(now) <= max_age_s * 1000

    @property
    def idle(self) -> bool:
        """Ready and holding nothing."""
        return self.state == "ready" and self.busy == 0

    @classmethod
    def from_json(cls, body: str | bytes | dict) -> "Heartbeat":
        """Parse and validate; raises MessageError. Records without "v" (written before it existed) are v1."""
        data = _load(body)
        what = "heartbeat"
        if data.get("v", VERSION) != VERSION:
            raise MessageError("unsupported_version", f"heartbeat version {data.get('v')!r} is not {VERSION}")
        instance_id = _require(data, "instance_id", str, what)
        if not instance_id:
            raise MessageError("malformed_message", "heartbeat: instance_id must not be empty")
        at = _require(data, "at", (int, float), what)
        if isinstance(at, bool):
            raise MessageError("malformed_message", "heartbeat: field 'at' has the wrong type")
        state = data.get("state", "ready")
        if state not in HEARTBEAT_STATES:
            raise MessageError("malformed_message", f"heartbeat: state must be one of {HEARTBEAT_STATES}")
        busy = data.get("busy", 0)
        if not isinstance(busy, int) or isinstance(busy, bool) or busy < 0:
            raise MessageError("malformed_message", "heartbeat: busy must be a non-negative integer")
        services = data.get("services", [])
        if not isinstance(services, list) or not all(isinstance(s, str) for s in services):
            raise MessageError("malformed_message", "heartbeat: services must be a list of names")
        unavailable = data.get("unavailable", {})
        if not isinstance(unavailable, dict):
            raise MessageError("malformed_message", "heartbeat: unavailable must be an object")
        started = data.get("started_at", int(at))
        if not isinstance(started, (int, float)) or isinstance(started, bool):
            raise MessageError("malformed_message", "heartbeat: started_at must be epoch milliseconds")
        progress = {}
        for name in ("step_at", "oldest_held_at"):   # absent in records written before liveness by progress
            value = data.get(name, 0)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise MessageError("malformed_message", f"heartbeat: {name} must be epoch milliseconds")
            progress[name] = int(value)
        backends = data.get("backends", {})
        if not isinstance(backends, dict) or not all(isinstance(v, dict) for v in backends.values()):
            raise MessageError("malformed_message", "heartbeat: backends must map services to objects")
        return cls(instance_id=instance_id, services=list(services), unavailable=dict(unavailable), state=state,
                   busy=busy, backends=dict(backends), started_at=int(started), at=int(at), **progress)
