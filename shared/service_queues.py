"""A service's request queue and its dead-letter queue, created on demand (push, autoscaler, provision)."""
from __future__ import annotations

import json
import logging

from shared import naming
from shared.config import Settings
from shared.transport import Transport, TransportError

log = logging.getLogger(__name__)


_LOOK_UP = object()   # ensure_request_queue's default: find the deployed policy itself


def ensure_request_queue(transport: Transport, settings: Settings, service: str, reconcile=None,
                         policy=_LOOK_UP) -> str:
    """Create a service's request queue and its DLQ with a redrive policy; return the queue URL.

    Protected as Terraform protects the packaged services' queues (infra/terraform/modules/service_queue):
    encrypted, the request queue under the same queue policy as theirs (only the web sends requests), the DLQ a
    dead-letter target of this request queue only. A queue that exists with other attributes is left
    as it is unless `reconcile(url, attrs)` is given: only operator tools pass one (SetQueueAttributes
    could also rewrite the queue policy, so the autoscaler's role has none; infra/terraform/iam.tf).
    A callback, not a flag, so the SetQueueAttributes call sits in the operator's code, where
    tests/test_infra_iam.py's scan charges it to the operator's role and not to the autoscaler's.
    `policy`: deployed_request_policy()'s answer when the caller already has it (provisioning looks it up
    once for every queue, not once per queue).
    """
    template = deployed_request_policy(transport, settings) if policy is _LOOK_UP else policy
    return _ensure(transport, settings, naming.request_queue(settings.prefix, service),
                   naming.dead_letter_queue(settings.prefix, service), settings.visibility_timeout_s,
                   reconcile, template)


def ensure_bulk_queue(transport: Transport, settings: Settings, service: str, reconcile=None) -> str:
    """Create a service's low-priority bulk queue (batch items) and its DLQ; return the queue URL.

    Not under the request queues' policy: the batch driver, not the web, sends to it.
    """
    return _ensure(transport, settings, naming.bulk_queue(settings.prefix, service),
                   naming.bulk_dead_letter_queue(settings.prefix, service), settings.bulk_visibility_timeout_s,
                   reconcile, None)


def _ensure(transport: Transport, settings: Settings, name: str, dlq_name: str, visibility_s: int, reconcile,
            template: tuple[str, str] | None) -> str:
    dlq_attrs = {"MessageRetentionPeriod": "1209600", "SqsManagedSseEnabled": "true"}
    arn = None
    if template is not None:
        # the queue's ARN is known from Terraform's queues: the DLQ is created a dead-letter target of it
        # alone, in CreateQueue itself (the autoscaler's role may create queues but not change them)
        arn = template[1].rsplit(":", 1)[0] + ":" + name
        dlq_attrs["RedriveAllowPolicy"] = json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [arn]})
    dlq_url = transport.create_queue(dlq_name, dlq_attrs)
    dlq_arn = transport.attributes(dlq_url, ["QueueArn"])["QueueArn"]
    attrs = {
        "VisibilityTimeout": str(visibility_s),
        "MessageRetentionPeriod": str(settings.message_retention_s),
        "SqsManagedSseEnabled": "true",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": str(settings.max_receive_count)}),
    }
    if template is not None:
        attrs["Policy"] = template[0].replace(template[1], arn)
    try:
        url = transport.create_queue(name, attrs)
    except TransportError as exc:
        if exc.code not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
        url = transport.url(name)
        if reconcile is None:
            log.warning("queue %s exists with other attributes; left as it is", name)
        else:
            reconcile(url, attrs)
    return url


def deployed_request_policy(transport: Transport, settings: Settings,
                            services: list[str] | None = None) -> tuple[str, str] | None:
    """(policy, queue ARN) of a packaged request queue Terraform gave a policy; None without one.

    Copied from a packaged service's queue rather than rebuilt: the web role it names is Terraform's to
    know. Where those queues carry no policy (the local stack), neither does a new one.
    """
    if services is None:
        from shared.catalogue import load_catalogue
        services = load_catalogue().names()
    for service in services:
        try:
            url = transport.url(naming.request_queue(settings.prefix, service))
            attrs = transport.attributes(url, ["Policy", "QueueArn"])
        except TransportError:   # not there (yet): another packaged service may be
            continue
        if attrs.get("Policy"):
            return attrs["Policy"], attrs["QueueArn"]
    return None
