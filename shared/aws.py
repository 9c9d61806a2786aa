"""One AWS client factory, on the SDK's own conventions.

boto3 itself reads AWS_ENDPOINT_URL (a local endpoint such as the moto server),
AWS_REGION / AWS_DEFAULT_REGION and the credential chain; we only add the
standard retry mode and our region fallback. Nothing is hard-coded.
"""
from __future__ import annotations

import os
import threading

import boto3
from botocore.config import Config

from shared.config import Settings

_local = threading.local()


def region(settings: Settings) -> str:
    """The region boto3 would use, falling back to settings.region."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or settings.region


def client(service: str, settings: Settings, **config: object):
    """A boto3 client with standard retries. Clients are thread-safe; create them once."""
    cfg = Config(retries={"mode": "standard", "max_attempts": 5},
                 max_pool_connections=32, **config)
    return boto3.session.Session().client(service, region_name=region(settings), config=cfg)


def sqs_long_poll_client(settings: Settings):
    """An SQS client whose read timeout outlasts a 20 s long poll."""
    return client("sqs", settings, read_timeout=settings.wait_time_s + 15, connect_timeout=5)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key') from 's3://bucket/key'."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key
