"""A key's monthly quota counter in the key table: one atomic, conditional add, for the web and the driver.

The web reserves calls in blocks (webserver/keys.py QuotaBlocks); the batch driver charges a batch's items
when it expands the input (autoscaler/batches.py). Both add to the same counter, calls_<yyyy>_<mm>.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone

from botocore.exceptions import ClientError


class QuotaExceeded(Exception):
    """The key has used its monthly quota (or the calls asked for do not fit in what is left)."""


def month_attr(at: float | None = None) -> str:
    """The item attribute that counts this calendar month's calls (UTC), e.g. calls_2026_11."""
    d = datetime.fromtimestamp(time.time() if at is None else at, tz=timezone.utc)
    return f"calls_{d.year:04d}_{d.month:02d}"


def add_calls(db, table: str, key_id: str, calls: int, monthly_quota: int, attr: str | None = None) -> int:
    """Add `calls` to the month's counter only if they fit under the quota; the new count.

    QuotaExceeded when they do not (or the key is gone); other DynamoDB errors propagate."""
    attr = attr or month_attr()
    try:
        out = db.update_item(
            TableName=table, Key={"key_id": {"S": key_id}},
            UpdateExpression="SET #m = if_not_exists(#m, :zero) + :n",
            ConditionExpression="attribute_exists(key_id) AND (attribute_not_exists(#m) OR #m <= :room)",
            ExpressionAttributeNames={"#m": attr},
            ExpressionAttributeValues={":zero": {"N": "0"}, ":n": {"N": str(calls)},
                                       ":room": {"N": str(monthly_quota - calls)}},
            ReturnValues="UPDATED_NEW")
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
            raise QuotaExceeded(key_id) from None
        raise
    return int(out["Attributes"][attr]["N"])
