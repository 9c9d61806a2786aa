"""One AWS client factory, on the SDK's own conventions.

boto3 itself reads AWS_ENDPOINT_URL (a local endpoint such as the moto server),
AWS_REGION / AWS_DEFAULT_REGION and the credential chain; we only add the
standard retry mode and our region fallback. Nothing is hard-coded.

One boto3 session per process and one client per (service, region, endpoint, credentials, config):
a new session costs 80-180 ms (it re-reads the SDK's data files), a client from a warm one 2-35 ms.
Clients are thread-safe; sessions are not, so creation is under a lock.
"""
from __future__ import annotations

import os
import threading

import boto3
from botocore.config import Config

from shared.config import Settings

_lock = threading.Lock()
_sessions: dict[tuple, boto3.session.Session] = {}
_clients: dict[tuple, object] = {}
# what the credential chain and endpoint resolution read from the environment: a change of any of them
# (a test that points at another endpoint, or drops credentials) gets a session and clients of its own
_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
             "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
             "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_EC2_METADATA_DISABLED")


def region(settings: Settings) -> str:
    """The region boto3 would use, falling back to settings.region."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or settings.region


def session() -> boto3.session.Session:
    """This process's boto3 session for the current environment."""
    env = tuple(os.environ.get(k) for k in _ENV_KEYS) + (os.getpid(),)
    with _lock:
        s = _sessions.get(env)
        if s is None:
            s = _sessions[env] = boto3.session.Session()
        return s


def credentials_expiry(s3_client) -> float | None:
    """Epoch seconds when the credentials a client signs with expire (an instance role's or an assumed role's
    session); None for long-term keys. A presigned link dies with them, whatever its ExpiresIn says."""
    creds = getattr(getattr(s3_client, "_request_signer", None), "_credentials", None)   # botocore keeps them here
    expiry = getattr(creds, "_expiry_time", None)     # RefreshableCredentials only
    return expiry.timestamp() if expiry is not None else None


def client(service: str, settings: Settings, **config: object):
    """A boto3 client with standard retries, shared by every caller asking for the same one."""
    sess = session()
    key = (id(sess), service, region(settings), os.environ.get(f"AWS_ENDPOINT_URL_{service.upper()}"),
           repr(sorted(config.items())))
    with _lock:
        c = _clients.get(key)
        if c is None:
            cfg = Config(**{"retries": {"mode": "standard", "max_attempts": 5}, "max_pool_connections": 32,
                            **config})
            c = _clients[key] = sess.client(service, region_name=region(settings), config=cfg)
        return c


def sqs_long_poll_client(settings: Settings):
    """An SQS client whose read timeout outlasts a 20 s long poll."""
    return client("sqs", settings, read_timeout=settings.wait_time_s + 15, connect_timeout=5)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """('bucket', 'key') from 's3://bucket/key'."""
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, key = uri[5:].split("/", 1)
    return bucket, key
