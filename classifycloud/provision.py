"""Create the queues and bucket the code expects (the local stack and tests; Terraform in AWS)."""
from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from shared import naming
from shared.aws import client, region
from shared.catalogue import Catalogue
from shared.config import Settings
from shared.service_queues import deployed_request_policy, ensure_bulk_queue, ensure_request_queue
from shared.transport import Transport

log = logging.getLogger(__name__)


def ensure_terminate_queue(transport: Transport, settings: Settings) -> str:
    """Create the terminate queue (short retention); return its URL."""
    return transport.create_queue(naming.terminate_queue(settings.prefix),
                                  {"MessageRetentionPeriod": str(settings.terminate_retention_s)})


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
        # versioned as Terraform makes it (storage.tf), so erasure is tested against old versions too
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def ensure_tables(dynamodb, settings: Settings) -> list[str]:
    """The API-key and usage tables (on-demand, usage with a TTL); returns their names."""
    from webserver import keys, usage
    specs = {keys.table_name(settings): ([("key_id", "S")], [("key_id", "HASH")]),
             usage.table_name(settings): ([("day", "S"), ("sk", "S")], [("day", "HASH"), ("sk", "RANGE")])}
    for name, (attrs, schema) in specs.items():
        try:
            dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST",
                                  AttributeDefinitions=[{"AttributeName": a, "AttributeType": t} for a, t in attrs],
                                  KeySchema=[{"AttributeName": a, "KeyType": k} for a, k in schema])
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
            continue
        dynamodb.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
        if name == usage.table_name(settings):
            dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
                "Enabled": True, "AttributeName": "expires_at"})
    return list(specs)


def ensure_all(settings: Settings, catalogue: Catalogue, transport: Transport | None = None) -> dict[str, str]:
    """Every request and bulk queue (with DLQs), the terminate queue and the bucket; {name: url}.

    `transport`: the caller's one Transport (the local stack's); `classifycloud provision` has none yet.
    """
    transport = transport or Transport(settings)
    s3 = client("s3", settings)
    reconcile = transport.set_attributes
    policy = deployed_request_policy(transport, settings, catalogue.names())   # once, not once per queue
    urls = {svc: ensure_request_queue(transport, settings, svc, reconcile=reconcile, policy=policy)
            for svc in catalogue.names()}
    urls.update({f"__bulk__{svc}": ensure_bulk_queue(transport, settings, svc, reconcile=reconcile)
                 for svc in catalogue.names()})
    urls["__terminate__"] = ensure_terminate_queue(transport, settings)
    ensure_bucket(s3, settings)
    ensure_tables(client("dynamodb", settings), settings)
    log.info("provisioned %d request queues, terminate queue, bucket %s and the key/usage tables",
             len(catalogue.names()), settings.bucket_name)
    return urls
