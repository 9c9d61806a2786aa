"""S3 side of a request: uploaded bytes, job markers, result records."""
from __future__ import annotations

import json
import logging

from botocore.exceptions import BotoCoreError, ClientError

from shared import naming
from shared.config import Settings
from shared.messages import Reply, now_ms
from webserver.auth import current_owner
from webserver.failures import CorruptRecord, StorageUnavailable

log = logging.getLogger(__name__)

_MISSING = ("NoSuchKey", "404", "NotFound")
INDEX = "jobs/index/"   # under jobs/: the web already writes there (infra/terraform/iam_web.tf)


def index_prefix(owner: str | None) -> str:
    """Where a key's job index lives (keys off: one tenant, 'anonymous')."""
    return f"{INDEX}{owner or 'anonymous'}/"



class JobStore:
    """Reads and writes uploads/<id>, jobs/<id>.json and results/<id>.json in the data bucket."""

    def __init__(self, settings: Settings, s3):
        self.settings = settings
        self.bucket = settings.bucket_name
        self._s3 = s3

    def upload(self, request_id: str, data: bytes) -> str:
        """Store a client's bytes under uploads/<id>; returns the s3:// reference for the message."""
        key = naming.upload_key(request_id)
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data,
                                ContentType="application/octet-stream")
        except (ClientError, BotoCoreError) as exc:
            log.error("request %s: upload to s3://%s/%s failed: %s", request_id, self.bucket, key, exc)
            raise StorageUnavailable("could not store the uploaded image; try again", request_id) from None
        return f"s3://{self.bucket}/{key}"

    def erase_upload(self, request_id: str) -> None:
        """Delete every version of uploads/<id> (a face enrolment's photo, once the face is enrolled); a failure
        is logged and left to the uploads lifecycle rule."""
        key = naming.upload_key(request_id)
        try:
            pages = self._s3.get_paginator("list_object_versions").paginate(Bucket=self.bucket, Prefix=key)
            versions = [{"Key": v["Key"], "VersionId": v["VersionId"]} for page in pages
                        for v in page.get("Versions", []) + page.get("DeleteMarkers", []) if v["Key"] == key]
            if versions:
                self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": versions, "Quiet": True})
        except (ClientError, BotoCoreError) as exc:
            log.error("request %s: enrolment photo not erased (the uploads lifecycle will): %s", request_id, exc)

    def write_marker(self, request_id: str, service: str, submitted_at: int | None = None,
                     expires_at: int | None = None, **options) -> None:
        """jobs/<id>.json: lets GET /jobs/<id> say pending rather than unknown (options: a job's
        invocation_timeout_s, input_location, output_location)."""
        body = {"id": request_id, "service": service, "submitted_at": submitted_at or now_ms(),
                "owner": current_owner(),  # the submitting API key: GET /jobs/<id> answers only to it
                "expires_at": expires_at, **{k: v for k, v in options.items() if v is not None}}
        self.put_marker(request_id, body)

    def put_marker(self, request_id: str, body: dict) -> None:
        """Write a job marker; StorageUnavailable on failure."""
        try:
            self._s3.put_object(Bucket=self.bucket, Key=naming.job_key(request_id),
                                Body=json.dumps(body).encode(), ContentType="application/json")
        except (ClientError, BotoCoreError) as exc:
            log.error("request %s: job marker not written: %s", request_id, exc)
            raise StorageUnavailable("could not record the job; try again", request_id) from None

    def index(self, request_id: str, submitted_at: int) -> None:
        """jobs/index/<owner>/<submitted ms>_<id>: GET /jobs lists a key's own jobs, oldest first, from it."""
        key = f"{index_prefix(current_owner())}{submitted_at:013d}_{request_id}"
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=b"")
        except (ClientError, BotoCoreError) as exc:
            log.error("job %s: not indexed: %s", request_id, exc)
            raise StorageUnavailable("could not record the job; try again", request_id) from None

    def list_page(self, owner: str | None, after: str | None, limit: int) -> tuple[list[str], str | None]:
        """(job ids, next token) of one page of the owner's index, after the token (one ListObjectsV2)."""
        prefix = index_prefix(owner)
        args = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": limit}
        if after:
            args["StartAfter"] = prefix + after
        try:
            page = self._s3.list_objects_v2(**args)
        except (ClientError, BotoCoreError) as exc:
            log.error("job index of %s unreadable: %s", owner, exc)
            raise StorageUnavailable("could not list the jobs; try again") from None
        names = [o["Key"][len(prefix):] for o in page.get("Contents", [])]
        ids = [n.partition("_")[2] for n in names]
        return ids, (names[-1] if page.get("IsTruncated") and names else None)

    def record_result(self, reply: Reply) -> None:
        """results/<id>.json from a late reply (its client stopped waiting); StorageUnavailable on failure."""
        try:
            self._s3.put_object(Bucket=self.bucket, Key=naming.result_key(reply.id), Body=reply.to_json().encode(),
                                ContentType="application/json")
        except (ClientError, BotoCoreError) as exc:
            log.error("request %s: result record not written: %s", reply.id, exc)
            raise StorageUnavailable("could not record the result; try again", reply.id) from None

    @property
    def s3(self):
        """The S3 client (the notify outbox shares it)."""
        return self._s3

    def result(self, request_id: str) -> dict | None:
        """The result record (the worker's reply), or None when there is none yet."""
        return self._get_json(naming.result_key(request_id), request_id)

    def reply(self, request_id: str) -> Reply | None:
        """The result record as a Reply (for a waiter whose reply queue died), or None when there is none yet."""
        doc = self.result(request_id)
        return Reply.from_json(doc) if doc is not None else None

    def marker(self, request_id: str) -> dict | None:
        """The job marker, or None when this id was never submitted as a job."""
        return self._get_json(naming.job_key(request_id), request_id)

    def _get_json(self, key: str, request_id: str) -> dict | None:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            log.error("request %s: reading s3://%s/%s failed: %s", request_id, self.bucket, key, exc)
            raise StorageUnavailable("could not read the job state; try again", request_id) from None
        except BotoCoreError as exc:
            log.error("request %s: reading s3://%s/%s failed: %s", request_id, self.bucket, key, exc)
            raise StorageUnavailable("could not read the job state; try again", request_id) from None
        try:
            doc = json.loads(obj["Body"].read())
        except ValueError:
            log.error("request %s: s3://%s/%s is not JSON", request_id, self.bucket, key)
            raise CorruptRecord("the stored record is not valid JSON", request_id) from None
        return doc if isinstance(doc, dict) else None
