"""Publish a service to S3 (models/<service>/): weights, labels, entry.yaml; and create its request queue."""
from __future__ import annotations

import hashlib
import logging
import os

import yaml

from shared import naming
from shared.aws import client
from shared.config import Settings
from shared.live_catalogue import entry_uri, parse_s3_entry
from shared.service_queues import ensure_request_queue
from shared.transport import Transport
from worker.models.loader import sha256_of

log = logging.getLogger(__name__)


def push_service(settings: Settings, service: str, weights_path: str, labels: list[str], entry: dict,
                 s3=None) -> dict:
    """Upload a service so running workers and web servers pick it up; returns the entry as written.

    Files are content-addressed (weights-<sha>.safetensors, labels-<sha>.txt), so the entry, written
    last, switches a service from one complete version to the next: a worker never sees new weights
    under an old entry. The request queue is created first, because workers start consuming a new
    service only once its queue exists.
    """
    s3 = s3 or client("s3", settings)
    transport = Transport(settings)   # an operator command's own (`classifycloud train --publish`)
    bucket = settings.bucket_name
    weights_sha = sha256_of(weights_path)
    ext = ".safetensors" if weights_path.endswith(".safetensors") else ".pth"
    labels_text = "\n".join(labels) + "\n"
    labels_sha = hashlib.sha256(labels_text.encode()).hexdigest()
    written = {**entry, "weights": f"weights-{weights_sha[:16]}{ext}", "sha256": weights_sha,
               "labels": f"labels-{labels_sha[:16]}.txt"}
    text = yaml.safe_dump(written, sort_keys=False, default_flow_style=None)
    parse_s3_entry(service, text, bucket)  # the rules every worker applies: refuse before uploading anything
    url = ensure_request_queue(transport, settings, service,
                               reconcile=lambda u, attrs: transport.set_attributes(u, attrs))
    s3.upload_file(weights_path, bucket, naming.model_key(service, written["weights"]))
    s3.put_object(Bucket=bucket, Key=naming.model_key(service, written["labels"]), Body=labels_text.encode(),
                  ContentType="text/plain")
    s3.put_object(Bucket=bucket, Key=naming.model_key(service, naming.MODEL_ENTRY), Body=text.encode(),
                  ContentType="application/yaml")
    log.info("published %s: %s (%d MB) and queue %s", service, entry_uri(settings, service),
             os.path.getsize(weights_path) >> 20, url)
    return written


def remove_service(settings: Settings, service: str, s3=None) -> int:
    """Delete a service's S3 folder (workers drop it on their next check); the queue is kept. Returns objects deleted."""
    s3 = s3 or client("s3", settings)
    bucket = settings.bucket_name
    n = 0
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=naming.model_key(service, ""))
    for page in pages:
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])
            n += 1
    return n
