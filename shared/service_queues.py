"""A service's request queue and its dead-letter queue, created on demand (push, autoscaler, provision)."""
from __future__ import annotations

import json
import logging

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings

log = logging.getLogger(__name__)


def ensure_request_queue(sqs, settings: Settings, service: str, reconcile=None) -> str:
    """Create a service's request queue and its DLQ with a redrive policy; return the queue URL.

    A queue that exists with other attributes is left as it is unless `reconcile(url, attrs)` is given:
    only operator tools pass one (SetQueueAttributes could also rewrite the queue policy, so the
    autoscaler's role has none; infra/terraform/iam.tf)."""
    return _ensure(sqs, settings, naming.request_queue(settings.prefix, service),
                   naming.dead_letter_queue(settings.prefix, service), settings.visibility_timeout_s, reconcile)


def ensure_bulk_queue(sqs, settings: Settings, service: str, reconcile=None) -> str:
    """Create a service's low-priority bulk queue (batch items) and its DLQ; return the queue URL."""
    return _ensure(sqs, settings, naming.bulk_queue(settings.prefix, service),
                   naming.bulk_dead_letter_queue(settings.prefix, service), settings.bulk_visibility_timeout_s,
                   reconcile)


def _ensure(sqs, settings: Settings, name: str, dlq_name: str, visibility_s: int, reconcile=None) -> str:
    dlq_url = sqs.create_queue(QueueName=dlq_name, Attributes={"MessageRetentionPeriod": "1209600"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attrs = {
        "VisibilityTimeout": str(visibility_s),
        "MessageRetentionPeriod": str(settings.message_retention_s),
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receive_count)}),
    }
    try:
        url = sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        if reconcile is None:
            log.warning("queue %s exists with other attributes; left as it is", name)
        else:
            reconcile(url, attrs)
    return url
