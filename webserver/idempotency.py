"""Idempotent submission: an `Idempotency-Key` names one job (or batch) for idempotency_window_s, never a second.

The first request with a key claims it with a conditional S3 write (If-None-Match: *) of
`<jobs|batches>/idempotency/<owner>/<sha256 of the key>.json`, holding the id it will create; only the
winner sends. A later request with the key and the same inputs gets that job back; with other
inputs, a 422. A claim whose holder never said accepted (it crashed, or its send was refused) is
taken over after idempotency_claim_s with a conditional write (If-Match) and the same job id, so
even a resend is the same job.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from shared.config import Settings
from webserver.failures import StorageUnavailable

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
KEY_RE = re.compile(r"^[\x21-\x7e]{1,255}$")     # printable ASCII, no spaces (as Stripe's and the IETF draft's)
_MISSING = ("NoSuchKey", "404", "NotFound")
_CONFLICT = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


@dataclass(frozen=True)
class Claim:
    """What the store holds for one key: the job, the inputs' fingerprint, and how far it got."""

    job_id: str
    fingerprint: str
    created_at: float                 # epoch s of the first claim
    state: str                        # claimed | accepted | refused
    claimed_at: float                 # epoch s of the latest claim
    answer: dict | None = None        # accepted: what the first 202 said beyond the id (service, deadline, total)
    etag: str = ""

    def to_json(self) -> bytes:
        """The stored body (the ETag is S3's, not stored)."""
        body = {k: v for k, v in self.__dict__.items() if k != "etag"}
        return json.dumps(body).encode()


class KeyReused(Exception):
    """The key names a job with other inputs."""


class KeyInProgress(Exception):
    """Another request with the key is being sent right now."""


def fingerprint(inputs: dict) -> str:
    """sha256 of the inputs as canonical JSON (what the job would do, not how the body was framed)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class IdempotencyStore:
    """Claims, replays and releases Idempotency-Keys in the data bucket; speaks S3, not HTTP."""

    def __init__(self, settings: Settings, s3, area: str = "jobs", clock=time.time):
        self.settings = settings
        self._s3 = s3
        self.area = area                  # jobs | batches: the web writes under these (its IAM grants)
        self.clock = clock

    def s3_key(self, owner: str | None, key: str) -> str:
        """Where a key's claim lives: per owner, so one tenant's keys never meet another's."""
        return f"{self.area}/idempotency/{owner or 'anonymous'}/{hashlib.sha256(key.encode()).hexdigest()}.json"

    def claim(self, owner: str | None, key: str, print_: str, job_id: str) -> tuple[Claim, bool]:
        """(the claim, True when this caller must send the job) or (an accepted claim to replay, False).

        KeyReused for other inputs within the window; KeyInProgress while another caller sends."""
        where = self.s3_key(owner, key)
        now = self.clock()
        fresh = Claim(job_id, print_, now, "claimed", now)
        for _ in range(3):                          # a lost race re-reads and decides again
            if self._put(where, fresh, if_none_match=True):
                return fresh, True
            prior = self._get(where)
            if prior is None:
                continue                            # gone between the two calls
            if now - prior.created_at >= self.settings.idempotency_window_s:
                taken = fresh                       # the old key has lapsed: a new job
            elif prior.fingerprint != print_:
                raise KeyReused(prior.job_id)
            elif prior.state == "accepted":
                return prior, False
            elif prior.state == "claimed" and now - prior.claimed_at < self.settings.idempotency_claim_s:
                raise KeyInProgress(prior.job_id)
            else:                                   # refused, or its holder went silent: same job id again
                taken = Claim(prior.job_id, print_, prior.created_at, "claimed", now)
            if self._put(where, taken, if_match=prior.etag):
                return taken, True
        raise KeyInProgress(job_id)

    def accepted(self, owner: str | None, key: str, claim: Claim, answer: dict) -> None:
        """The job was sent: later requests with the key replay it (best effort: a claim left 'claimed'
        is taken over with the same job id)."""
        done = Claim(claim.job_id, claim.fingerprint, claim.created_at, "accepted", claim.claimed_at, answer)
        try:
            self._put(self.s3_key(owner, key), done)
        except StorageUnavailable:
            log.warning("job %s: sent, but its idempotency key not marked accepted", claim.job_id)

    def refused(self, owner: str | None, key: str, claim: Claim) -> None:
        """The send was refused: a retry with the key may send at once (with the same job id)."""
        out = Claim(claim.job_id, claim.fingerprint, claim.created_at, "refused", claim.claimed_at)
        try:
            self._put(self.s3_key(owner, key), out)
        except StorageUnavailable:
            log.warning("job %s: refused, and its idempotency claim left to lapse", claim.job_id)

    # --- S3 -------------------------------------------------------------------------------------------
    def _put(self, where: str, claim: Claim, if_none_match: bool = False, if_match: str = "") -> bool:
        """Write the claim; False when the condition failed (someone else wrote first)."""
        kw = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:
            self._s3.put_object(Bucket=self.settings.bucket_name, Key=where, Body=claim.to_json(),
                                ContentType="application/json", **kw)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONFLICT + _MISSING:
                return False
            log.error("idempotency claim %s not written: %s", where, exc)
        except BotoCoreError as exc:
            log.error("idempotency claim %s not written: %s", where, exc)
        raise StorageUnavailable("could not record the idempotency key; try again")

    def _get(self, where: str) -> Claim | None:
        try:
            obj = self._s3.get_object(Bucket=self.settings.bucket_name, Key=where)
            doc = json.loads(obj["Body"].read())
            return Claim(**{k: doc.get(k) for k in ("job_id", "fingerprint", "created_at", "state", "claimed_at",
                                                    "answer")}, etag=obj["ETag"])
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            log.error("idempotency claim %s unreadable: %s", where, exc)
        except (BotoCoreError, ValueError, TypeError) as exc:
            log.error("idempotency claim %s unreadable: %s", where, exc)
        raise StorageUnavailable("could not read the idempotency key; try again")
