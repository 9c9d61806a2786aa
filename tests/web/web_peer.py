"""Test helper: a peer thread that plays the worker over real SQS/S3 (moto server), and heartbeats."""
from __future__ import annotations

import hashlib
import json
import threading

from botocore.exceptions import ClientError

from shared import naming
from shared.aws import client
from shared.messages import MessageError, Reply, Request, now_ms
from shared.transport import is_gone


class PeerWorker:
    """Plays the worker: receives from the request queues, answers via reply_to, writes the S3 record where asked.

    Its answer is derived from what arrived (sha256 of uploaded bytes, or the URL), so a test can
    tell that each client got the answer to its own request.
    """

    def __init__(self, settings, services=("imagenet",)):
        self.settings = settings
        self.sqs = client("sqs", settings)
        self.s3 = client("s3", settings)
        self.urls = [self.sqs.get_queue_url(QueueName=naming.request_queue(settings.prefix, s))["QueueUrl"]
                     for s in services]
        self.requests: list[Request] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peer-worker", daemon=True)

    def start(self) -> "PeerWorker":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                resp = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
                for msg in resp.get("Messages", []):
                    self._answer(url, msg)

    def _answer(self, url: str, msg: dict) -> None:
        try:
            req = Request.from_json(msg["Body"])
        except MessageError:
            return  # left for the DLQ, as the real worker does
        self.requests.append(req)
        reply = self.classify(req)
        record = req.wants_record   # as the worker: a waiting client's request asks for no record
        if req.reply_to:
            try:
                self.sqs.send_message(QueueUrl=req.reply_to, MessageBody=reply.to_json())
            except ClientError as exc:
                if not is_gone(exc):
                    raise
                record = True       # as the real worker (worker/results.py): the asker is gone, the record answers
        if record:
            self.s3.put_object(Bucket=self.settings.bucket_name, Key=naming.result_key(req.id),
                               Body=reply.to_json().encode())
        self.sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])

    def classify(self, req: Request) -> Reply:
        if (req.params or {}).get("op") == "enroll":
            return self.enroll(req)
        if "url" in req.image:
            if "169.254.169.254" in req.image["url"]:
                return Reply.failure(req.id, req.service, "forbidden_address",
                                     "169.254.169.254 is a link-local address", worker="peer")
            if req.image["url"].endswith(".txt"):
                return Reply.failure(req.id, req.service, "invalid_image", "not a decodable image", worker="peer")
            label = "url:" + req.image["url"]
        else:
            bucket, key = req.image["s3"][5:].split("/", 1)
            data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            label = "sha256:" + hashlib.sha256(data).hexdigest()
        results = [{"label": label if i == 0 else f"other-{i}", "index": i * 7, "score": round(0.9 / (i + 1), 6)}
                   for i in range(req.top_k)]
        return Reply.ok(req.id, req.service, results, worker="peer",
                        timings_ms={"queue": 1, "fetch": 1, "inference": 1, "total": 3},
                        model={"name": req.service, "version": "peer"})

    def enroll(self, req: Request) -> Reply:
        """As facesearch enrols: one face stored under the tenant's gallery and name, its box in the reply."""
        p = req.params
        key = f"{naming.face_prefix(p['tenant'], p['gallery'], p['name'])}{req.id}.json"
        self.s3.put_object(Bucket=self.settings.bucket_name, Key=key, Body=b'{"embedding": []}')
        return Reply.ok(req.id, req.service, [{"label": p["name"], "box": [0, 0, 8, 8], "faces": 1}], worker="peer",
                        model={"name": req.service, "version": "peer"})


def sha_label(data: bytes) -> str:
    """The top-1 label the peer answers for uploaded bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_heartbeat(settings, instance_id: str, state: str = "ready", at: int | None = None) -> None:
    """Write a worker heartbeat record as workers do."""
    body = {"instance_id": instance_id, "services": ["imagenet"], "state": state, "busy": 0,
            "at": now_ms() if at is None else at}
    client("s3", settings).put_object(Bucket=settings.bucket_name, Key=naming.heartbeat_key(instance_id),
                                      Body=json.dumps(body).encode())
