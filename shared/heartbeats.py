"""One reader of the workers' heartbeats (heartbeats/<instance>.json), for the web's probes and the autoscaler."""
from __future__ import annotations

import logging

from botocore.exceptions import ClientError

from shared import naming
from shared.config import Settings
from shared.messages import Heartbeat, MessageError

log = logging.getLogger(__name__)

# an object not rewritten within the freshness limit and this margin is not fetched at all
_LISTING_MARGIN_MS = 5000


def fresh_heartbeats(settings: Settings, s3, now_ms: float) -> list[Heartbeat]:
    """Every heartbeat fresh at now_ms (epoch ms). A record deleted between listing and reading (a worker
    that just left) or malformed (logged) is skipped; any other S3 error is raised to the caller."""
    max_age_ms = settings.heartbeat_max_age_s * 1000
    out = []
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=settings.bucket_name,
                                                          Prefix=naming.heartbeat_prefix())
    for page in pages:
        for obj in page.get("Contents", []):
            if now_ms - obj["LastModified"].timestamp() * 1000 > max_age_ms + _LISTING_MARGIN_MS:
                continue
            try:
                beat = Heartbeat.from_json(s3.get_object(Bucket=settings.bucket_name, Key=obj["Key"])["Body"].read())
            except ClientError as exc:
                if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                    continue
                raise
            except MessageError as exc:
                log.warning("heartbeat %s is malformed (%s); ignored", obj["Key"], exc)
                continue
            if beat.is_fresh(settings.heartbeat_max_age_s, now_ms):
                out.append(beat)
    return out
