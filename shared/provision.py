"""Create the queues and bucket the code expects (the local stack and tests; Terraform in AWS)."""
from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from shared import naming
from shared.aws import client, region
from shared.catalogue import Catalogue
from shared.config import Settings
from shared.service_queues import ensure_request_queue  # noqa: F401  (callers import it from here)

log = logging.getLogger(__name__)


def ensure_terminate_queue(sqs, settings: Settings) -> str:
    """Create the terminate queue (short retention); return its URL."""
    return sqs.create_queue(QueueName=naming.terminate_queue(settings.prefix),
                            Attributes={"MessageRetentionPeriod": str(settings.terminate_retention_s)})["QueueUrl"]


def ensure_bucket(s3, settings: Settings) -> str:
    """Create the data bucket if missing; return its name."""
    name = settings.bucket_name
    try:
        s3.head_bucket(Bucket=name)
    except ClientError:
        kw = {}
        reg = region(settings)
        if reg != "us-east-1":
            kw["CreateBucketConfiguration"] = {"LocationConstraint": reg}
        s3.create_bucket(Bucket=name, **kw)
    return name


def ensure_all(settings: Settings, catalogue: Catalogue) -> dict[str, str]:
    """Every request queue (with DLQ), the terminate queue and the bucket; {name: url}."""
    sqs = client("sqs", settings)
    s3 = client("s3", settings)
    urls = {svc: ensure_request_queue(sqs, settings, svc) for svc in catalogue.names()}
    urls["__terminate__"] = ensure_terminate_queue(sqs, settings)
    ensure_bucket(s3, settings)
    log.info("provisioned %d request queues, terminate queue and bucket %s",
             len(catalogue.names()), settings.bucket_name)
    return urls
