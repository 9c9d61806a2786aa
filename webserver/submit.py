"""Turn a checked input into a request message: resolve the service, store bytes, send, wait."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from shared.catalogue import Catalogue, ServiceSpec
from shared.config import Settings
from shared.messages import Request, now_ms
from shared.metrics import MetricsPublisher
from shared.notify import Outbox
from shared.transport import QueueGone, Transport, TransportError
from webserver.auth import current_owner, owned_id
from webserver.errors import public_reason
from webserver.failures import (
    ImageTooLarge,
    QueueUnavailable,
    ServiceUnavailable,
    StorageUnavailable,
    UnknownService,
)
from webserver.inputs import ImageInput
from webserver.jobs import JobStore
from webserver.limits import release_request_body
from webserver.outcomes import RequestOutcome
from webserver.replies import ReplyListener
from webserver.versions import VersionRouter, split_service

log = logging.getLogger(__name__)

DEFAULT_SERVICE = "imagenet"


@dataclass(frozen=True)
class SubmittedJob:
    """An accepted job: its id, its service, and its deadline (epoch ms)."""

    id: str
    service: str
    expires_at: int


class Submitter:
    """Sends requests to the service queues and (for synchronous calls) waits on the reply listener."""

    def __init__(self, settings: Settings, catalogue: Catalogue, transport: Transport, jobs: JobStore,
                 listener: ReplyListener, metrics: MetricsPublisher, version_entries=None):
        self.settings = settings
        self.catalogue = catalogue
        self.jobs = jobs
        self.listener = listener
        self.metrics = metrics
        self.transport = transport
        self.versions = VersionRouter(settings, catalogue, getattr(jobs, "_s3", None), version_entries)

    def resolve_service(self, name: str | None) -> ServiceSpec:
        """The catalogue entry (of 'service' or 'service@version'); UnknownService or ServiceUnavailable."""
        name = split_service(name)[0] or DEFAULT_SERVICE
        services = self.catalogue.services  # one snapshot of the (live) catalogue
        spec = services.get(name)
        if spec is None:
            raise UnknownService(f"no service named {name!r}", services=list(services))
        reason = spec.unavailable_reason(self.settings.model_dir)
        if reason:
            raise ServiceUnavailable(f"service {name!r} is unavailable: {public_reason(reason)}")
        return spec

    def queue_url(self, service: str) -> str:
        """The service's request queue URL (the transport looks it up once per process)."""
        try:
            return self.transport.request_queue_url(service)
        except QueueGone as exc:
            log.error("request queue for %s does not exist: %s", service, exc)
            raise ServiceUnavailable(f"service {service!r} is not available right now") from None
        except TransportError as exc:
            log.error("queue lookup for %s failed: %s", service, exc)
            raise QueueUnavailable("the request queue cannot be reached; try again") from None

    def _image_ref(self, request_id: str, image: ImageInput) -> dict:
        if image.url is not None:
            return {"url": image.url}
        if len(image.data) > self.settings.max_upload_bytes:
            raise ImageTooLarge(f"image is {len(image.data)} bytes; the limit is {self.settings.max_upload_bytes}",
                                request_id)
        ref = {"s3": self.jobs.upload(request_id, image.data)}
        image.release()          # in S3 now: the wait for the reply holds no copy of the body
        release_request_body()
        return ref

    def _send(self, req: Request) -> None:
        url = self.queue_url(req.service)
        try:
            self.transport.send(url, req)
        except TransportError as exc:
            log.error("request %s: send to %s failed: %s", req.id, req.service, exc)
            raise QueueUnavailable("could not enqueue the request; try again", req.id) from None

    def classify(self, image: ImageInput, service: str | None, top_k: int | None,
                 params: dict | None = None, spec: ServiceSpec | None = None) -> RequestOutcome:
        """Send a request with reply_to = this process's queue and wait up to reply_timeout_s.

        spec: the entry the route already resolved for `service` (one catalogue read per request)."""
        spec = spec or self.resolve_service(service)
        rid = owned_id(current_owner())   # GET /jobs/<id> answers its owner even without a marker
        version, shadow = self.versions.route(spec.name, rid, split_service(service)[1],
                                              steady=(params or {}).get("op") == "enroll")
        try:
            reply_to = self.listener.start()
        except TransportError as exc:
            log.error("reply queue cannot be created: %s", exc)
            raise QueueUnavailable("this server's reply queue cannot be created; try again") from None
        started = time.monotonic()
        ref = self._image_ref(rid, image)
        # no result record: this process answers from the reply, and records it itself if the client gives up
        req = Request(id=rid, service=spec.name, image=ref, reply_to=reply_to, top_k=top_k or spec.top_k,
                      params=params, version=version, shadow=shadow, record=False)
        waiter = self.listener.register(rid, reply_to)
        try:
            self._send(req)
            log.info("request %s: sent to %s%s (%s), waiting", rid, spec.name, f"@{version}" if version else "",
                     image.kind)
            reply = waiter.wait(self.settings.reply_timeout_s)
            if reply is None and not waiter.shutdown:
                reply = self.listener.give_up(rid)   # from now on a reply for rid is recorded by the listener
        finally:
            self.listener.discard(rid)
        latency_ms = (time.monotonic() - started) * 1000
        if reply is None and waiter.shutdown:
            log.warning("request %s: web process stopping before its reply; 503 with the job id", rid)
            self.jobs.write_marker(rid, spec.name, req.submitted_at)
            return RequestOutcome(rid, spec.name, None, latency_ms, shutdown=True, version=version)
        if reply is None:
            log.warning("request %s: no reply within %.1f s", rid, self.settings.reply_timeout_s)
            self.metrics.record("Timeouts", 1, Service=spec.name)
            self.jobs.write_marker(rid, spec.name, req.submitted_at)
        else:
            self.metrics.record("Latency", latency_ms, Service=spec.name)
            log.info("request %s: %s reply after %.0f ms", rid, reply.status, latency_ms)
        return RequestOutcome(rid, spec.name, reply, latency_ms, version=version)

    def submit_job(self, image: ImageInput, service: str | None, top_k: int | None,
                   params: dict | None = None, spec: ServiceSpec | None = None, ttl_s: int | None = None,
                   notify: dict | None = None, rid: str | None = None, invocation_timeout_s: int | None = None,
                   input_location: str | None = None, output_location: str | None = None) -> SubmittedJob:
        """Asynchronous: queue its notice, send with reply_to = null and a deadline, write the job marker.

        The notice goes in the outbox before the send: a job that is queued always has its notice, and an
        S3 failure there refuses the job with nothing sent (a client's retry makes no duplicate)."""
        spec = spec or self.resolve_service(service)
        rid = rid or owned_id(current_owner())   # GET /jobs/<id> answers its owner even without a marker
        version, shadow = self.versions.route(spec.name, rid, split_service(service)[1],
                                              steady=(params or {}).get("op") == "enroll")
        ref = self._image_ref(rid, image)
        submitted = now_ms()
        expires_at = submitted + int((ttl_s or self.settings.job_ttl_s) * 1000)
        if notify or output_location:    # the driver copies the answer to the output location, like a notice
            self._queue_notice(rid, notify or {}, output_location)
        # send before the marker: a refused send must not leave a marker that says pending forever
        try:
            self._send(Request(id=rid, service=spec.name, image=ref, reply_to=None, top_k=top_k or spec.top_k,
                               submitted_at=submitted, params=params, version=version, shadow=shadow,
                               expires_at=expires_at))
        except QueueUnavailable:
            if notify or output_location:
                self._withdraw_notice(rid)
            raise
        try:
            self.jobs.write_marker(rid, spec.name, submitted, expires_at, invocation_timeout_s=invocation_timeout_s,
                                   input_location=input_location, output_location=output_location)
            self.jobs.index(rid, submitted)
        except StorageUnavailable:  # accepted all the same: its result record will answer GET /jobs/<id>
            log.warning("job %s: accepted without a pending marker; /jobs/<id> says unknown until it is done "
                        "(its id names its owner, so the result answers the owner)", rid)
        log.info("job %s: sent to %s (%s), expires in %d s", rid, spec.name, image.kind,
                 (expires_at - submitted) // 1000)
        return SubmittedJob(rid, spec.name, expires_at)

    def _queue_notice(self, rid: str, notify: dict, output: str | None = None) -> None:
        """The job's notice in the outbox (the driver sends it, and writes its output, once the result exists)."""
        try:
            Outbox(self.settings, self.jobs.s3).enqueue(f"job-{rid}", current_owner(), notify, None, job_id=rid,
                                                        output=output)
        except (ClientError, BotoCoreError) as exc:
            log.error("job %s: notice not queued (%s); nothing sent", rid, exc)
            raise StorageUnavailable("could not record the job's notification; try again", rid) from None

    def _withdraw_notice(self, rid: str) -> None:
        """The send was refused: mark the notice withdrawn (the driver files it unsent; the web deletes nothing)."""
        try:
            Outbox(self.settings, self.jobs.s3).withdraw(f"job-{rid}")
        except (ClientError, BotoCoreError) as exc:
            log.warning("job %s: refused, and its queued notice not withdrawn: %s", rid, exc)
