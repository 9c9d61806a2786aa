"""`classifycloud keys create|list|revoke|grant|ungrant|topic|untopic`: API keys, from an operator's machine."""
from __future__ import annotations

import argparse
import json
import sys

from shared.aws import client
from shared.config import Settings
from shared.grants import GRANTS_ATTR, TOPICS_ATTR, GrantError, normalize_grant
from shared.messages import now_ms
from shared.notify import valid_topic
from webserver.keys import ApiKey, hash_key, new_key, table_name


def create_key(settings: Settings, owner: str, rate_limit: float | None = None, burst: int | None = None,
               monthly_quota: int | None = None, dynamodb=None) -> tuple[str, ApiKey]:
    """Store a new key's hash and limits; returns (the key, shown once; its record)."""
    if not owner.strip():
        raise ValueError("owner must not be empty")
    db = dynamodb or client("dynamodb", settings)
    key_id, secret = new_key()
    record = ApiKey(key_id=key_id, key_hash=hash_key(secret), owner=owner.strip(), created_at=now_ms(),
                    revoked_at=None,
                    rate_limit=float(settings.api_key_rate_limit if rate_limit is None else rate_limit),
                    burst=int(settings.api_key_burst if burst is None else burst),
                    monthly_quota=int(settings.api_key_monthly_quota if monthly_quota is None else monthly_quota))
    if record.rate_limit <= 0 or record.burst < 1 or record.monthly_quota < 0:
        raise ValueError("rate limit must be > 0, burst >= 1 and quota >= 0")
    db.put_item(TableName=table_name(settings), ConditionExpression="attribute_not_exists(key_id)", Item={
        "key_id": {"S": key_id}, "key_hash": {"S": record.key_hash}, "owner": {"S": record.owner},
        "created_at": {"N": str(record.created_at)}, "rate_limit": {"N": repr(record.rate_limit)},
        "burst": {"N": str(record.burst)}, "monthly_quota": {"N": str(record.monthly_quota)}})
    return secret, record


def list_keys(settings: Settings, dynamodb=None) -> list[ApiKey]:
    """Every key record, oldest first."""
    db = dynamodb or client("dynamodb", settings)
    out = []
    for page in db.get_paginator("scan").paginate(TableName=table_name(settings)):
        out.extend(ApiKey.from_item(item) for item in page.get("Items", []))
    return sorted(out, key=lambda k: k.created_at)


def revoke_key(settings: Settings, key_id: str, dynamodb=None) -> bool:
    """Mark a key revoked (kept for the usage history); False when there is no such key."""
    db = dynamodb or client("dynamodb", settings)
    try:
        db.update_item(TableName=table_name(settings), Key={"key_id": {"S": key_id}},
                       UpdateExpression="SET revoked_at = if_not_exists(revoked_at, :now)",
                       ConditionExpression="attribute_exists(key_id)",
                       ExpressionAttributeValues={":now": {"N": str(now_ms())}})
    except db.exceptions.ConditionalCheckFailedException:
        return False
    return True


def grant_location(settings: Settings, key_id: str, uri: str, dynamodb=None, withdraw: bool = False) -> str:
    """Grant (or withdraw) a batch location to one key; returns the stored form. GrantError for a location
    no key may be given (the data bucket), LookupError for an unknown key."""
    grant = normalize_grant(uri, settings)
    db = dynamodb or client("dynamodb", settings)
    try:
        db.update_item(TableName=table_name(settings), Key={"key_id": {"S": key_id}},
                       UpdateExpression=f"{'DELETE' if withdraw else 'ADD'} #g :g",
                       ConditionExpression="attribute_exists(key_id)",
                       ExpressionAttributeNames={"#g": GRANTS_ATTR},
                       ExpressionAttributeValues={":g": {"SS": [grant]}})
    except db.exceptions.ConditionalCheckFailedException:
        raise LookupError(f"no key with id {key_id!r}") from None
    return grant


def register_topic(settings: Settings, key_id: str, arn: str, dynamodb=None, withdraw: bool = False) -> str:
    """Register (or withdraw) an SNS topic this key's notices may go to; ValueError for a value that is not
    a topic ARN, LookupError for an unknown key."""
    if not valid_topic(arn):
        raise ValueError(f"{arn!r} is not an SNS topic ARN")
    db = dynamodb or client("dynamodb", settings)
    try:
        db.update_item(TableName=table_name(settings), Key={"key_id": {"S": key_id}},
                       UpdateExpression=f"{'DELETE' if withdraw else 'ADD'} #t :t",
                       ConditionExpression="attribute_exists(key_id)",
                       ExpressionAttributeNames={"#t": TOPICS_ATTR}, ExpressionAttributeValues={":t": {"SS": [arn]}})
    except db.exceptions.ConditionalCheckFailedException:
        raise LookupError(f"no key with id {key_id!r}") from None
    return arn


def main(argv: list[str]) -> int:
    """Entry point of `classifycloud keys`."""
    settings = Settings.from_env()
    p = argparse.ArgumentParser(prog="classifycloud keys", description="API keys (stored as hashes in DynamoDB)")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="create a key; it is printed once and never stored")
    c.add_argument("--owner", required=True)
    c.add_argument("--rate", type=float, default=None, help=f"requests/s (default {settings.api_key_rate_limit:g})")
    c.add_argument("--burst", type=int, default=None, help=f"burst size (default {settings.api_key_burst})")
    c.add_argument("--quota", type=int, default=None,
                   help=f"calls per month (default {settings.api_key_monthly_quota})")
    c.add_argument("--json", action="store_true")
    ls = sub.add_parser("list", help="every key: id, owner, limits, this month's calls")
    ls.add_argument("--json", action="store_true")
    r = sub.add_parser("revoke", help="revoke a key by its id (kNNNNNNNNNNNN)")
    r.add_argument("key_id")
    for action, verb in (("grant", "let the key use"), ("ungrant", "withdraw from the key")):
        gr = sub.add_parser(action, help=f"{verb} a batch location: s3://bucket/ or s3://bucket/prefix/ "
                            "(never the data bucket; the bucket must be in CLASSIFYCLOUD_BATCH_BUCKETS)")
        gr.add_argument("key_id")
        gr.add_argument("location")
    for action, verb in (("topic", "register"), ("untopic", "withdraw")):
        tp = sub.add_parser(action, help=f"{verb} an SNS topic ARN this key's notices may go to")
        tp.add_argument("key_id")
        tp.add_argument("topic_arn")
    args = p.parse_args(argv)
    if args.action in ("topic", "untopic"):
        try:
            register_topic(settings, args.key_id, args.topic_arn, withdraw=args.action == "untopic")
        except (ValueError, LookupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{'registered' if args.action == 'topic' else 'withdrew'} {args.topic_arn} for {args.key_id}")
        return 0
    if args.action in ("grant", "ungrant"):
        try:
            grant = grant_location(settings, args.key_id, args.location, withdraw=args.action == "ungrant")
        except (GrantError, LookupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.action == "grant" and grant.split("/")[2] not in settings.batch_buckets:
            print(f"warning: {grant} is not in CLASSIFYCLOUD_BATCH_BUCKETS here; batches use it only once "
                  "the deployment's bucket list names it", file=sys.stderr)
        done = "granted {} to {}" if args.action == "grant" else "withdrew {} from {}"
        print(done.format(grant, args.key_id))
        return 0
    if args.action == "create":
        try:
            secret, rec = create_key(settings, args.owner, args.rate, args.burst, args.quota)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.json:
            print(json.dumps({"key": secret, **rec.public()}))
        else:
            print(f"key id  {rec.key_id}\nowner   {rec.owner}\nlimits  {rec.rate_limit:g}/s, burst {rec.burst}, "
                  f"{rec.monthly_quota}/month\n\n{secret}\n\nThis key is shown once; only its hash is stored.")
        return 0
    if args.action == "list":
        keys = list_keys(settings)
        if args.json:
            print(json.dumps([k.public() for k in keys]))
            return 0
        print(f"{'key id':14s} {'owner':20s} {'state':8s} {'rate/s':>7s} {'burst':>5s} {'quota':>9s} {'month':>9s}"
              "  batch grants")
        for k in keys:
            print(f"{k.key_id:14s} {k.owner[:20]:20s} {'active' if k.active else 'revoked':8s} {k.rate_limit:7g} "
                  f"{k.burst:5d} {k.monthly_quota:9d} {k.calls_this_month:9d}  {' '.join(k.batch_grants) or '-'}")
        return 0
    if not revoke_key(settings, args.key_id):
        print(f"error: no key with id {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0
