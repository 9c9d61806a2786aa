"""The instance metadata service (IMDSv2): a session token, then GETs of metadata paths."""
from __future__ import annotations

import logging
import os
import time

import urllib3

log = logging.getLogger(__name__)

IMDS = "http://169.254.169.254"
TOKEN_TTL_S = 21600          # the longest IMDSv2 allows; refreshed well before it ends


def imds_base() -> str | None:
    """The metadata endpoint, by the SDK's variables (AWS_EC2_METADATA_SERVICE_ENDPOINT / _DISABLED)."""
    if os.environ.get("AWS_EC2_METADATA_DISABLED", "").strip().lower() == "true":
        return None
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS).rstrip("/")


class Imds:
    """get(path) -> text or None (404, or not on EC2); one token reused until close to its end."""

    def __init__(self, base: str | None = None, timeout: float = 1.0):
        self.base = (base or imds_base() or "").rstrip("/")
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)
        self._token = ""
        self._token_until = 0.0

    def _fresh_token(self) -> str:
        if self._token and time.monotonic() < self._token_until:
            return self._token
        resp = self.http.request("PUT", f"{self.base}/latest/api/token",
                                 headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_S)})
        if resp.status != 200:
            raise OSError(f"IMDS token refused: HTTP {resp.status}")
        self._token = resp.data.decode().strip()
        self._token_until = time.monotonic() + TOKEN_TTL_S / 2
        return self._token

    def get(self, path: str) -> str | None:
        """The text at latest/meta-data/<path>; None when absent (404). OSError when IMDS does not answer."""
        if not self.base:
            return None
        try:
            resp = self.http.request("GET", f"{self.base}/latest/meta-data/{path.lstrip('/')}",
                                     headers={"X-aws-ec2-metadata-token": self._fresh_token()})
        except urllib3.exceptions.HTTPError as exc:
            raise OSError(f"IMDS unreachable: {exc}") from None
        if resp.status == 401:        # token expired or revoked: once more with a new one
            self._token = ""
            resp = self.http.request("GET", f"{self.base}/latest/meta-data/{path.lstrip('/')}",
                                     headers={"X-aws-ec2-metadata-token": self._fresh_token()})
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise OSError(f"IMDS {path}: HTTP {resp.status}")
        return resp.data.decode()

    def close(self) -> None:
        """Drop the connections."""
        self.http.clear()
