"""The coordinator service: ``tire.v1.CoordinatorService``, the public API of TIRE.

Identifies every caller by its bearer token (``auth.TokenBook``): a principal sees and acts on its own
jobs only, and its jobs read only what it uploaded or its jobs produced. Validates job specs, frames
each job's orbit on its asset (``framing_check.frame_job``: an asset the orbit cannot see is refused
with FAILED_PRECONDITION), keeps jobs in a ``JobStore`` (SQLite or PostgreSQL), runs them on worker
threads through a ``JobRunner`` over the stage services, and streams their events.
Several replicas can share one PostgreSQL database: each runs the jobs it leases (``jobqueue``), and any
of them answers for any job. Jobs left unfinished by a replica that stopped (or by this one, last time)
are resumed by whichever claims them; finished steps are not run again.

Configuration (environment, read once at start):
    TIRE_COORDINATOR_RENDERER, _TRACKER, _INPAINTER, _REFINER, _RECONSTRUCTOR
        gRPC targets of the stages, e.g. dns:///tire-inpainter:50051 (round-robin over replicas)
        (default: where `tire up` runs them, localhost:50052 ... localhost:50056)
    TIRE_COORDINATOR_DATABASE_URL        the job state: sqlite:///abs/path, sqlite:rel/path or
                                         postgresql://user@host:port/db (default sqlite:coordinator.sqlite;
                                         services.coordinator.databases); _DATABASE_PASSWORD_FILE holds
                                         PostgreSQL's password, _DATABASE_POOL_SIZE its connections (10)
    TIRE_COORDINATOR_REPLICA_ID          this replica's name in job leases (default host-pid)
    TIRE_COORDINATOR_LEASE_S             how long a job's lease holds unrenewed (default 30): a dead
                                         replica's jobs are resumed by another after this
    TIRE_COORDINATOR_WORKERS             jobs run at once (default 2)
    TIRE_COORDINATOR_MAX_PARALLEL_CALLS  stage calls in flight per fan-out of a job (default 4)
    TIRE_COORDINATOR_CALL_TIMEOUT_S      deadline of one stage call (default 900)
    TIRE_COORDINATOR_RETRY_ATTEMPTS      tries of a stage call failing with UNAVAILABLE or
                                         DEADLINE_EXCEEDED (default 6, backoff 0.5 s doubling to 15 s)
    TIRE_COORDINATOR_URL_EXPIRY_S        lifetime of presigned upload and download URLs (default 3600)
    TIRE_COORDINATOR_SOURCE_WEIGHT       the source view's weight in reconstruction (default 10)
    TIRE_COORDINATOR_TOKENS_FILE         the file of token entries (services.coordinator.auth), read
                                         again when it changes; TIRE_COORDINATOR_TOKENS: entries inline
    TIRE_COORDINATOR_TLS_CERT_FILE, _TLS_KEY_FILE  the certificate the API is served with (required
                                         unless TIRE_COORDINATOR_ALLOW_PLAINTEXT=1); _TLS_CLIENT_CA_FILE
                                         asks clients for certificates too; _HEALTH_PORT: plaintext health
    TIRE_COORDINATOR_STAGE_TLS_CA_FILE   call the stages over TLS, trusting these CA certificates (and
                                         with _STAGE_TLS_CERT_FILE and _KEY_FILE, mutual TLS: the stages
                                         set TIRE_<STAGE>_TLS_CERT_FILE, _KEY_FILE and _CLIENT_CA_FILE)
    TIRE_COORDINATOR_RETENTION_S         finished jobs, unused uploads and unnamed objects are deleted this
                                         long after (default 30 days; 0 keeps everything), swept every
                                         TIRE_COORDINATOR_RETENTION_SWEEP_S (default 3600)
    TIRE_COORDINATOR_PORT, TIRE_COORDINATOR_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
    TIRE_S3_PUBLIC_ENDPOINT              the store as clients outside reach it: presigned URLs name it
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from services.common import validation
from services.common.errors import (
    ConfigError,
    FailedPrecondition,
    IntegrityError,
    InvalidArgument,
    ObjectNotFound,
    ObjectTooLarge,
    PermissionDenied,
)
from services.common.formats import FORMATS
from services.common.registry import STAGE_NAMES, stage
from services.common.server import describe, run_service
from services.common.store import BlobStore, content_key
from services.coordinator.admission import AdmissionMetrics, SubmissionRate, WatchLimits
from services.coordinator.auth import Caller, TokenBook
from services.coordinator.framing_check import frame_job
from services.coordinator.jobqueue import DEFAULT_LEASE_S, JobQueue
from services.coordinator.jobstore import FINAL_STATES, JobStore, Upload
from services.coordinator.pipeline import JobRunner
from services.coordinator.retention import STAGING_PREFIX, Retention
from services.coordinator.spec import check_uploaded, input_refs, resolve_spec, spec_defaults
from services.coordinator.stages import RetryPolicy, Stages, dial_stages, stage_tls
from services.coordinator.watches import WATCH_POLL_S, AppendBell
from services.coordinator.webhooks import (
    WebhookDispatcher,
    resolve_destination,
    resume_deliveries,
    webhook_secret_is_valid,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "tire.v1.CoordinatorService"
MAX_UPLOAD_FILES = 64
MAX_UPLOAD_BYTES = 8 * 2**30
MAX_DOWNLOAD_URIS = 1000
MAX_NAME_CHARS = 255
MAX_JOB_ID_CHARS = 64
MAX_REQUEST_ID_CHARS = 128
MAX_PAGE_TOKEN_CHARS = 256
_SUFFIXES = {
    **{spec.media_type: spec.extension for spec in FORMATS.values()},
    "image/png": ".png",
    "application/json": ".json",
}
_MEDIA_TYPES = {suffix: media_type for media_type, suffix in _SUFFIXES.items()}


@dataclass(frozen=True)
class CoordinatorSettings:
    renderer: str = stage("renderer").local_target
    tracker: str = stage("tracker").local_target
    inpainter: str = stage("inpainter").local_target
    refiner: str = stage("refiner").local_target
    reconstructor: str = stage("reconstructor").local_target
    database_url: str = dataclasses.field(default="sqlite:coordinator.sqlite", metadata={"secret": True})
    database_password_file: str = dataclasses.field(default="", metadata={"secret": True})
    database_pool_size: int = 10
    replica_id: str = ""
    lease_s: float = DEFAULT_LEASE_S
    workers: int = 2
    max_parallel_calls: int = 4
    call_timeout_s: float = 900.0
    retry_attempts: int = 6
    url_expiry_s: int = 3600
    source_weight: float = 10.0
    tokens_file: str = dataclasses.field(default="", metadata={"secret": True})
    tokens: str = dataclasses.field(default="", metadata={"secret": True})
    allow_plaintext: bool = False
    retention_s: int = 30 * 24 * 3600
    retention_sweep_s: float = 3600.0
    stage_tls_ca_file: str = ""
    stage_tls_cert_file: str = ""
    stage_tls_key_file: str = ""
    # Webhooks (JobSpec.webhook): none are sent without a secret (whsec_ and base64, as Standard Webhooks
    # has it). allow_private also lets them go to http and to loopback or private addresses.
    webhook_secret: str = dataclasses.field(default="", metadata={"secret": True})
    webhook_allow_private: bool = False
    webhook_attempts: int = 8
    webhook_backoff_s: float = 2.0
    webhook_timeout_s: float = 10.0
    # Admission (services/coordinator/admission.py): open WatchJob streams (each costs memory, not a
    # thread) per caller and in all; queued and running jobs per caller; submissions per second per
    # caller, in bursts of submission_burst.
    max_watches_per_caller: int = 100
    max_watches: int = 10_000
    max_active_jobs_per_caller: int = 1000
    max_submissions_per_s: float = 10.0
    submission_burst: int = 100

    def __post_init__(self) -> None:
        for name, ok in (
            ("workers", self.workers >= 1),
            ("database_pool_size", 2 <= self.database_pool_size <= 1000),
            ("lease_s", 3 <= self.lease_s <= 3600),
            ("replica_id", len(self.replica_id) <= 200),
            ("max_parallel_calls", self.max_parallel_calls >= 1),
            ("call_timeout_s", self.call_timeout_s > 0),
            ("retry_attempts", self.retry_attempts >= 1),
            ("url_expiry_s", 60 <= self.url_expiry_s <= 7 * 24 * 3600),
            ("source_weight", 0 < self.source_weight < 1e6),
            ("retention_s", self.retention_s == 0 or self.retention_s >= 3600),
            ("retention_sweep_s", self.retention_sweep_s >= 1),
            ("webhook_attempts", 1 <= self.webhook_attempts <= 20),
            ("webhook_backoff_s", 0 < self.webhook_backoff_s <= 300),
            ("webhook_timeout_s", 0 < self.webhook_timeout_s <= 120),
            ("max_watches_per_caller", 1 <= self.max_watches_per_caller <= self.max_watches),
            ("max_watches", 1 <= self.max_watches <= 1_000_000),
            ("max_active_jobs_per_caller", self.max_active_jobs_per_caller >= 1),
            ("max_submissions_per_s", self.max_submissions_per_s > 0),
            ("submission_burst", self.submission_burst >= 1),
        ):
            if not ok:
                raise ConfigError(f"CoordinatorSettings.{name} is out of range, got {getattr(self, name)!r}.")
        if self.webhook_secret and not webhook_secret_is_valid(self.webhook_secret):
            raise ConfigError(
                "CoordinatorSettings.webhook_secret must be whsec_ followed by the base64 of 24 to 64 "
                "random bytes (the value is not shown)."
            )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """The public API. Every call first identifies its caller (``TokenBook``): a principal acts on its
    own jobs and uploads only; an admin sees every job."""

    def __init__(
        self,
        jobs: JobStore,
        queue: JobQueue,
        store: BlobStore,
        tokens: TokenBook,
        settings: CoordinatorSettings = CoordinatorSettings(),
        stages: Stages | None = None,
        webhooks: WebhookDispatcher | None = None,
    ):
        self.webhooks = webhooks
        self.jobs = jobs
        self.bell = AppendBell()
        jobs.on_events(self.bell.ring)
        self.watch_limits = WatchLimits(settings.max_watches_per_caller, settings.max_watches)
        self.submissions = SubmissionRate(settings.max_submissions_per_s, settings.submission_burst)
        self.collector = AdmissionMetrics(
            lambda: self.watch_limits.open_watches,
            lambda: len(self.queue.running()) if self.queue is not None else 0,
            jobs.waiting_count,
            jobs.active_by_owner,
        )
        self.queue = queue
        self.store = store
        self.tokens = tokens
        self.settings = settings
        self.stages = stages

    def shutdown(self) -> None:
        """A graceful stop: running jobs stop before their next step and their leases are handed back,
        so other replicas resume them at once (``run_service`` calls this on SIGTERM)."""
        if self.queue is not None:
            self.queue.stop()

    def _owner(self, context) -> str | None:
        """Whose jobs the caller may see (``scope``)."""
        return scope(self.tokens.identify(context))

    def Describe(self, request, context):
        caller = self.tokens.identify(context)
        answer = describe(SERVICE_NAME, "ring-schedule", "cpu", ("ring-schedule",), self.settings)
        # Who is asking, and what an unset JobSpec field becomes: what a client shows beside its form.
        answer.settings["caller"] = caller.principal
        answer.settings.update(spec_defaults())
        for name in STAGE_NAMES if self.stages is not None else ():
            try:
                info = getattr(self.stages, name).Describe(common_pb2.DescribeRequest(), timeout=5)
                answer.settings[f"stage.{name}"] = f"{info.backend} on {info.device} ({info.version})"
            except Exception as exc:  # report, do not fail: Describe is for diagnosis
                answer.settings[f"stage.{name}"] = f"unreachable: {type(exc).__name__}"
        return answer

    def CreateUpload(self, request, context):
        principal = self.tokens.identify(context).principal
        if not 1 <= len(request.files) <= MAX_UPLOAD_FILES:
            raise InvalidArgument("files", len(request.files), f"must hold 1 to {MAX_UPLOAD_FILES} files")
        expires = timedelta(seconds=self.settings.url_expiry_s)
        expires_at = Timestamp()
        expires_at.FromDatetime(datetime.now(UTC) + expires)
        uploads = []
        for i, file in enumerate(request.files):
            field = f"files[{i}]"
            validation.text(file.name, f"{field}.name", MAX_NAME_CHARS)
            if not 0 < file.size_bytes <= MAX_UPLOAD_BYTES:
                raise InvalidArgument(
                    f"{field}.size_bytes", file.size_bytes, f"must be 1 to {MAX_UPLOAD_BYTES}"
                )
            validation.sha256(file.sha256, f"{field}.sha256")
            suffix = _SUFFIXES.get(file.media_type)
            if suffix is None:
                raise InvalidArgument(
                    f"{field}.media_type", file.media_type, f"must be one of {sorted(_SUFFIXES)}"
                )
            uri = self.store.uri_for(content_key(file.sha256, suffix))
            put_url = ""
            if not self._holds(principal, uri, self.jobs.upload(principal, uri)):
                # The bytes go to a staging key of the caller's, never to the object itself: SubmitJob
                # checks them before anything reads them, and nothing already stored can be written over.
                staging = f"{STAGING_PREFIX}/{principal}/{secrets.token_hex(16)}{suffix}"
                put_url = self.store.presigned_put(staging, expires=expires)
                self.jobs.expect_upload(
                    principal,
                    uri,
                    file.sha256,
                    file.size_bytes,
                    self.store.uri_for(staging),
                    expires_at.ToNanoseconds(),
                )
            uploads.append(
                coordinator_pb2.Upload(
                    name=file.name,
                    put_url=put_url,
                    object=common_pb2.ObjectRef(
                        uri=uri, sha256=file.sha256, size_bytes=file.size_bytes, media_type=file.media_type
                    ),
                    expires_at=expires_at,
                    needs_upload=bool(put_url),
                )
            )
        return coordinator_pb2.CreateUploadResponse(uploads=uploads)

    def CreateDownload(self, request, context):
        job = self.jobs.get(_job_id(request.job_id), self._owner(context))
        if not 1 <= len(request.uris) <= MAX_DOWNLOAD_URIS:
            raise InvalidArgument("uris", len(request.uris), f"must hold 1 to {MAX_DOWNLOAD_URIS} URIs")
        owned = self.jobs.objects_of(job.id)
        expires = timedelta(seconds=self.settings.url_expiry_s)
        expires_at = Timestamp()
        expires_at.FromDatetime(datetime.now(UTC) + expires)
        downloads = []
        for i, uri in enumerate(request.uris):
            if uri not in owned:
                validation.text(uri, f"uris[{i}]", validation.MAX_URI_CHARS)
                raise InvalidArgument(f"uris[{i}]", uri, f"must be an object of job {job.id}")
            downloads.append(
                coordinator_pb2.Download(
                    uri=uri, get_url=self.store.presigned_get(uri, expires=expires), expires_at=expires_at
                )
            )
        return coordinator_pb2.CreateDownloadResponse(downloads=downloads)

    def SubmitJob(self, request, context):
        principal = self.tokens.identify(context).principal
        self.submissions.take(principal)
        validation.text(request.request_id, "request_id", MAX_REQUEST_ID_CHARS)
        spec = resolve_spec(request.spec)
        if spec.webhook.url:
            if self.webhooks is None:
                raise FailedPrecondition(
                    "this coordinator sends no webhooks: its operator has set no webhook secret "
                    "(TIRE_COORDINATOR_WEBHOOK_SECRET)."
                )
            resolve_destination(
                spec.webhook.url, "spec.webhook.url", allow_private=self.webhooks.allow_private
            )
        check_uploaded(spec, self.store.uri_for(""))
        for name, ref in input_refs(spec):
            self._admit(principal, ref, name)
        spec = frame_job(spec, self.store)  # the orbit fitted to the asset, or FAILED_PRECONDITION
        limit = self.settings.max_active_jobs_per_caller
        job, created = self.jobs.create(spec, request.request_id, owner=principal, max_active=limit)
        if not created and job.spec != spec:
            raise InvalidArgument(
                "request_id",
                request.request_id,
                f"was given with another spec, for job {job.id}: use a new one",
            )
        if created:
            log.info(
                "job %s submitted by %s", job.id, principal, extra={"job": job.id, "principal": principal}
            )
        return coordinator_pb2.SubmitJobResponse(job=self._placed(job))

    def GetJob(self, request, context):
        return coordinator_pb2.GetJobResponse(
            job=self._placed(self.jobs.get(_job_id(request.job_id), self._owner(context)))
        )

    def _placed(self, *jobs: coordinator_pb2.Job) -> coordinator_pb2.Job:
        """``jobs`` with their ``queue_position`` (as of now; one read for all); returns the first."""
        queued = [job.id for job in jobs if job.state == coordinator_pb2.JOB_STATE_QUEUED]
        places = self.queue.positions(queued) if self.queue is not None and queued else {}
        for job in jobs:
            job.queue_position = places[job.id] + 1 if job.id in places else 0
        return jobs[0] if jobs else coordinator_pb2.Job()

    def _place(self, job_id: str, state: int) -> int:
        """Job.queue_position of a job in ``state``: 1 for the next to start, 0 when not queued."""
        queued = self.queue is not None and state == coordinator_pb2.JOB_STATE_QUEUED
        places = self.queue.positions([job_id]) if queued else {}
        return places[job_id] + 1 if job_id in places else 0

    async def WatchJob(self, request, context):
        """An async generator on the server's event loop: while it waits for events it holds no thread
        (``watches``); its reads of the job store run on the loop's default executor."""
        caller = self.tokens.identify(context)
        job_id, after = _job_id(request.job_id), request.after_sequence
        await asyncio.to_thread(self.jobs.get, job_id, scope(caller))  # NOT_FOUND before the stream
        with self.watch_limits.admit(caller.principal):
            place = 0
            while True:
                woken = self.bell.arm(job_id)  # before reading: an append after the read wakes it
                try:
                    events = await asyncio.to_thread(self.jobs.events, job_id, after)
                    if not events:
                        state = await asyncio.to_thread(self.jobs.state, job_id)
                        if state in FINAL_STATES:
                            # Its JobFinished event was committed with the state, maybe since the read.
                            events = await asyncio.to_thread(self.jobs.events, job_id, after)
                            if not events:
                                return  # resumed past the JobFinished event: nothing more will come
                        elif request.queue_positions and (now := self._place(job_id, state)) != place:
                            place = now
                            if place:  # 0: it has left the queue; its events say the rest
                                yield coordinator_pb2.WatchJobResponse(queue_position=place)
                    for event in events:
                        yield coordinator_pb2.WatchJobResponse(event=event)
                        after = event.sequence
                        if event.HasField("finished"):
                            return
                    if not events:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken, WATCH_POLL_S)
                finally:
                    self.bell.disarm(job_id, woken)

    def CancelJob(self, request, context):
        caller = self.tokens.identify(context)
        job = self.jobs.request_cancel(_job_id(request.job_id), scope(caller))
        log.info(
            "job %s cancelled by %s",
            job.id,
            caller.principal,
            extra={"job": job.id, "principal": caller.principal},
        )
        return coordinator_pb2.CancelJobResponse(job=job)

    def ListJobs(self, request, context):
        owner = self._owner(context)
        validation.text(request.page_token, "page_token", MAX_PAGE_TOKEN_CHARS)
        jobs, token = self.jobs.list(request.page_size, request.page_token, request.state, owner=owner)
        self._placed(*jobs)
        return coordinator_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)

    def DeleteJob(self, request, context):
        caller, job_id = self.tokens.identify(context), _job_id(request.job_id)
        released = self.jobs.delete(job_id, scope(caller))
        log.info(
            "job %s deleted by %s, %d objects released",
            job_id,
            caller.principal,
            released,
            extra={"job": job_id, "principal": caller.principal},
        )
        return coordinator_pb2.DeleteJobResponse(objects_released=released)

    def _holds(self, principal: str, uri: str, upload: Upload | None) -> bool:
        """Whether ``principal`` may read ``uri`` without uploading it: its ``upload`` verified, or an
        object of its jobs, and still in the store."""
        verified = upload is not None and upload.verified
        return (verified or self.jobs.produced_for(principal, uri)) and self.store.exists(uri)

    def _admit(self, principal: str, ref: common_pb2.ObjectRef, field: str) -> None:
        """Let a job of ``principal``'s read ``ref``: its own upload (checked and moved into place now,
        the first time) or an object of its jobs.

        Raises:
            PermissionDenied: neither.
            InvalidArgument: uploaded bytes that are not the ones announced, or nothing uploaded yet.
        """
        upload = self.jobs.upload(principal, ref.uri)
        if self._holds(principal, ref.uri, upload):
            if upload is not None and upload.verified:
                self.jobs.mark_uploaded(principal, ref.uri, self._keep_until())  # kept from its last use
            return
        if upload is None or upload.verified:
            raise PermissionDenied(
                f"`{field}.uri` {ref.uri} is neither a file you uploaded (CreateUpload) nor an object of "
                "one of your jobs."
            )
        try:
            suffix = _suffix(ref.uri)
            self.store.promote(
                upload.staging_uri,
                upload.sha256,
                upload.size_bytes,
                suffix=suffix,
                media_type=_MEDIA_TYPES.get(suffix, ""),
            )
        except ObjectNotFound:
            raise InvalidArgument(
                f"{field}.uri", ref.uri, "has not been uploaded yet: PUT the file to its URL first"
            ) from None
        except (IntegrityError, ObjectTooLarge) as exc:
            raise InvalidArgument(
                f"{field}.uri",
                ref.uri,
                f"does not hold the bytes announced ({str(exc).rstrip('.')}); PUT them again",
            ) from None
        self.jobs.mark_uploaded(principal, ref.uri, self._keep_until())

    def _keep_until(self) -> int:
        """Until when (Unix ns) a verified upload stays usable without a job naming it."""
        retention = self.settings.retention_s or 100 * 365 * 24 * 3600
        return time.time_ns() + retention * 10**9


def scope(caller: Caller) -> str | None:
    """Whose jobs ``caller`` may see and act on: its principal's, or (None) everybody's for an admin."""
    return None if caller.admin else caller.principal


def _job_id(job_id: str) -> str:
    return validation.text(job_id, "job_id", MAX_JOB_ID_CHARS)


def _suffix(uri: str) -> str:
    """The suffix of a content-addressed URI's key (``.ply``), "" for none."""
    name = uri.rsplit("/", 1)[-1]
    return name[64:] if len(name) > 64 else ""


def build_servicer(settings: CoordinatorSettings, store: BlobStore) -> CoordinatorServicer:
    """The servicer, its job state and its workers (not started: ``warm_up`` starts them)."""
    credentials = stage_tls(
        settings.stage_tls_ca_file, settings.stage_tls_cert_file, settings.stage_tls_key_file
    )
    stages = dial_stages({name: getattr(settings, name) for name in STAGE_NAMES}, credentials=credentials)
    jobs = JobStore(
        settings.database_url,
        password_file=settings.database_password_file,
        pool_size=settings.database_pool_size,
    )
    tokens = TokenBook(settings.tokens_file, settings.tokens)
    retry = RetryPolicy(attempts=settings.retry_attempts, timeout_s=settings.call_timeout_s)
    runner = JobRunner(jobs, stages, store, retry, settings.max_parallel_calls, settings.source_weight)
    webhooks = None
    if settings.webhook_secret:
        webhooks = WebhookDispatcher(
            jobs.append_event,
            settings.webhook_secret,
            allow_private=settings.webhook_allow_private,
            attempts=settings.webhook_attempts,
            backoff_s=settings.webhook_backoff_s,
            timeout_s=settings.webhook_timeout_s,
        )
        jobs.on_state_change(webhooks.notify)
    queue = JobQueue(runner, settings.workers, holder=settings.replica_id, lease_s=settings.lease_s)
    return CoordinatorServicer(jobs, queue, store, tokens, settings, stages, webhooks)


def warm_up(servicer: CoordinatorServicer) -> None:
    """Check the store, then start the workers (which claim the unfinished jobs nobody holds: the ones
    the last run left, or a dead replica's once its leases expire) and the retention sweeps."""
    servicer.store.ensure_bucket()
    unfinished = servicer.jobs.unfinished()
    if unfinished:
        log.info("%d unfinished jobs in the job state", len(unfinished), extra={"jobs": unfinished})
    servicer.queue.start()
    if servicer.webhooks is not None:
        resumed = resume_deliveries(servicer.webhooks, servicer.jobs)
        if resumed:
            log.info("sending again %d unconcluded webhooks", len(resumed), extra={"jobs": resumed})
    settings = servicer.settings
    retention = Retention(servicer.jobs, servicer.store, settings.retention_s, settings.url_expiry_s)
    threading.Thread(
        target=retention.run_every, args=(settings.retention_sweep_s,), name="retention", daemon=True
    ).start()


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_COORDINATOR_",
        CoordinatorSettings,
        build_servicer,
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server,
        warm_up,
        plaintext_allowed=lambda settings: settings.allow_plaintext,
        asynchronous=True,  # grpc.aio: open WatchJob streams hold no thread
    )


if __name__ == "__main__":
    main()
