"""A service's request queue and its dead-letter queue, created on demand (push, autoscaler, provision)."""
from __future__ import annotations

import json

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings


def ensure_request_queue(sqs, settings: Settings, service: str) -> str:
    """Create a service's request queue and its DLQ with a redrive policy; return the queue URL.

    Protected as Terraform protects the packaged services' queues (infra/terraform/queues.tf): encrypted,
    the request queue under the same queue policy as theirs (only the web sends requests), the DLQ a
    dead-letter target of this request queue only.
    """
    dlq_url = sqs.create_queue(QueueName=naming.dead_letter_queue(settings.prefix, service),
                               Attributes={"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"}
                               )["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    name = naming.request_queue(settings.prefix, service)
    arn = dlq_arn.rsplit(":", 1)[0] + ":" + name     # same account and region as its DLQ
    attrs = {
        "VisibilityTimeout": str(settings.visibility_timeout_s),
        "MessageRetentionPeriod": str(settings.message_retention_s),
        "SqsManagedSseEnabled": "true",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receive_count)}),
    }
    policy = deployed_request_policy(sqs, settings, arn)
    if policy is not None:
        attrs["Policy"] = policy
    try:
        url = sqs.create_queue(QueueName=naming.request_queue(settings.prefix, service), Attributes=attrs)["QueueUrl"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, service))["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=url, Attributes=attrs)
    sqs.set_queue_attributes(QueueUrl=dlq_url, Attributes={"RedriveAllowPolicy": json.dumps(
        {"redrivePermission": "byQueue", "sourceQueueArns": [arn]})})
    return url


def deployed_request_policy(sqs, settings: Settings, queue_arn: str) -> str | None:
    """The queue policy Terraform gives the packaged request queues, for the queue `queue_arn`; None without one.

    Copied from a packaged service's queue rather than rebuilt: the web role it names is Terraform's to
    know. Where those queues carry no policy (the local stack), neither does a new one.
    """
    from shared.catalogue import load_catalogue
    for service in load_catalogue().names():
        try:
            url = sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, service))["QueueUrl"]
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy", "QueueArn"])["Attributes"]
        except ClientError:   # not there (yet): another packaged service may be
            continue
        if attrs.get("Policy") and attrs["QueueArn"] != queue_arn:
            return attrs["Policy"].replace(attrs["QueueArn"], queue_arn)
    return None
