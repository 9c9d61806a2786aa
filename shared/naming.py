"""Queue and object names, derived in one place (Terraform mirrors these rules)."""
from __future__ import annotations

import hashlib
import os
import re
import socket
import uuid

_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def request_queue(prefix: str, service: str) -> str:
    """Name of a service's request queue."""
    return f"{prefix}-requests-{service}"


def dead_letter_queue(prefix: str, service: str) -> str:
    """Name of a service's dead-letter queue."""
    return request_queue(prefix, service) + "-dlq"


def bulk_queue(prefix: str, service: str) -> str:
    """Name of a service's low-priority bulk queue (batch items; workers take it when interactive is idle)."""
    return f"{prefix}-bulk-{service}"


def bulk_dead_letter_queue(prefix: str, service: str) -> str:
    """Name of a bulk queue's dead-letter queue."""
    return bulk_queue(prefix, service) + "-dlq"


def terminate_queue(prefix: str) -> str:
    """Name of the queue the autoscaler sends terminate messages to."""
    return f"{prefix}-terminate"


def api_key_table(prefix: str) -> str:
    """The API-key table (Terraform: infra/terraform/dynamodb.tf); the driver reads a key's grants there."""
    return f"{prefix}-api-keys"


def reply_queue_prefix(prefix: str) -> str:
    """Every web process's reply queue starts with this (IAM grants by this prefix)."""
    return f"{prefix}-reply-"


def reply_queue(prefix: str) -> str:
    """A fresh, unique reply queue name for this process (max 80 chars)."""
    host = _SAFE.sub("-", socket.gethostname())[:24]
    return f"{reply_queue_prefix(prefix)}{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"[:80]


# Tags on every reply queue: who owns it, when it was made, and the owner's last sign of life (epoch ms).
# The autoscaler's janitor deletes reply queues whose owner stopped beating (a SIGKILLed web process).
REPLY_TAG_OWNER = "classifycloud:owner"
REPLY_TAG_CREATED = "classifycloud:created"
REPLY_TAG_BEAT = "classifycloud:heartbeat"


def service_from_queue(prefix: str, queue_name: str) -> str | None:
    """Inverse of request_queue; None for other queues (DLQs included)."""
    head = f"{prefix}-requests-"
    if queue_name.startswith(head) and not queue_name.endswith("-dlq"):
        return queue_name[len(head):]
    return None


def upload_key(request_id: str) -> str:
    """S3 key for bytes a client uploaded (one per request id: no overwrites by name)."""
    return f"uploads/{request_id}"


def result_key(request_id: str) -> str:
    """S3 key of a request's result record."""
    return f"results/{request_id}.json"


def failure_key(request_id: str) -> str:
    """S3 key of the last reason a worker failed a request (read when the request is dead-lettered)."""
    return f"failures/{request_id}.json"


def heartbeat_prefix() -> str:
    """S3 prefix of worker heartbeat records."""
    return "heartbeats/"


def heartbeat_key(instance_id: str) -> str:
    """S3 key of one worker's heartbeat: {instance_id, services, state, busy, at}."""
    return f"{heartbeat_prefix()}{instance_id}.json"


def job_key(request_id: str) -> str:
    """S3 key of a submitted job's marker (lets GET /jobs/<id> tell pending from unknown)."""
    return f"jobs/{request_id}.json"


GALLERY_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # face gallery names and tenants (also S3 key parts)
GALLERY_CHARS = "1-64 characters of [A-Za-z0-9_-]"  # what GALLERY_RE takes, for error messages
# The one tenant of a stack without API keys (the local stack); with keys on, a tenant is a key id
# ("k" + 12 hex digits), so no key can ever name this one.
DEFAULT_TENANT = "default"


def galleries_prefix(tenant: str) -> str:
    """S3 prefix of every gallery of one tenant (the server derives the tenant from the API key)."""
    return f"galleries/{tenant}/"


def gallery_prefix(tenant: str, gallery: str) -> str:
    """S3 prefix of one tenant's face gallery."""
    return f"{galleries_prefix(tenant)}{gallery}/"


def face_name_id(name: str) -> str:
    """The key part that stands for an enrolled name (names may hold characters keys should not)."""
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def face_prefix(tenant: str, gallery: str, name: str) -> str:
    """S3 prefix of every face enrolled under one name in one tenant's gallery."""
    return f"{gallery_prefix(tenant, gallery)}{face_name_id(name)}/"


MODEL_ENTRY = "entry.yaml"


def models_prefix() -> str:
    """S3 prefix of live services: models/<service>/entry.yaml beside its weights and labels."""
    return "models/"


def model_key(service: str, filename: str) -> str:
    """S3 key of one file of a live service."""
    return f"{models_prefix()}{service}/{filename}"


def batch_key(batch_id: str, name: str) -> str:
    """S3 key of one of a batch's records: batch.json, inputs.jsonl, tally.json, cancel."""
    return f"batches/{batch_id}/{name}"


def active_batch_prefix() -> str:
    """S3 prefix of the markers of batches not yet finished (the driver lists only these)."""
    return "batches-active/"


def batch_item_id(batch_id: str, index: int) -> str:
    """A batch item's request id: deterministic, so a resend or a restarted driver resumes, never restarts."""
    return f"{batch_id}-{index}"


def notify_key(state: str, notice_id: str) -> str:
    """S3 key of a notification in the outbox: notify/pending/<id>.json, then notify/done/<id>.json."""
    return f"notify/{state}/{notice_id}.json"
