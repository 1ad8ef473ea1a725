"""The coordinator service: ``tire.v1.CoordinatorService``, the public API of TIRE.

Validates job specs, frames each job's orbit on its asset (``framing_check.frame_job``: an asset the
orbit cannot see is refused with FAILED_PRECONDITION), keeps jobs in a ``JobStore`` (SQLite), runs
them on worker threads through a ``JobRunner`` over the stage services, and streams their events. At
start it resumes every job that was queued or running when it last stopped; finished steps are not
run again.

Configuration (environment, read once at start):
    TIRE_COORDINATOR_RENDERER, _TRACKER, _INPAINTER, _REFINER, _RECONSTRUCTOR
        gRPC targets of the stages, e.g. dns:///tire-inpainter:50051 (round-robin over replicas)
        (default: where `tire up` runs them, localhost:50052 ... localhost:50056)
    TIRE_COORDINATOR_STATE_PATH          the SQLite file of the job state (default coordinator.sqlite)
    TIRE_COORDINATOR_WORKERS             jobs run at once (default 2)
    TIRE_COORDINATOR_MAX_PARALLEL_CALLS  stage calls in flight per fan-out of a job (default 4)
    TIRE_COORDINATOR_CALL_TIMEOUT_S      deadline of one stage call (default 900)
    TIRE_COORDINATOR_RETRY_ATTEMPTS      tries of a stage call failing with UNAVAILABLE or
                                         DEADLINE_EXCEEDED (default 6, backoff 0.5 s doubling to 15 s)
    TIRE_COORDINATOR_URL_EXPIRY_S        lifetime of presigned upload and download URLs (default 3600)
    TIRE_COORDINATOR_SOURCE_WEIGHT       the source view's weight in reconstruction (default 10)
    TIRE_COORDINATOR_PORT, TIRE_COORDINATOR_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
    TIRE_S3_PUBLIC_ENDPOINT              the store as clients outside reach it: presigned URLs name it
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from services.common import validation
from services.common.errors import ConfigError, InvalidArgument
from services.common.registry import STAGE_NAMES, stage
from services.common.server import describe, run_service
from services.common.store import BlobStore, content_key
from services.coordinator.framing_check import frame_job
from services.coordinator.jobqueue import JobQueue
from services.coordinator.jobstore import FINAL_STATES, JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import check_uploaded, resolve_spec
from services.coordinator.stages import RetryPolicy, Stages, dial_stages

log = logging.getLogger(__name__)

SERVICE_NAME = "tire.v1.CoordinatorService"
MAX_UPLOAD_FILES = 64
MAX_UPLOAD_BYTES = 8 * 2**30
_SUFFIXES = {"application/x-ply": ".ply", "image/png": ".png", "application/json": ".json"}


@dataclass(frozen=True)
class CoordinatorSettings:
    renderer: str = stage("renderer").local_target
    tracker: str = stage("tracker").local_target
    inpainter: str = stage("inpainter").local_target
    refiner: str = stage("refiner").local_target
    reconstructor: str = stage("reconstructor").local_target
    state_path: str = "coordinator.sqlite"
    workers: int = 2
    max_parallel_calls: int = 4
    call_timeout_s: float = 900.0
    retry_attempts: int = 6
    url_expiry_s: int = 3600
    source_weight: float = 10.0

    def __post_init__(self) -> None:
        for name, ok in (
            ("workers", self.workers >= 1),
            ("max_parallel_calls", self.max_parallel_calls >= 1),
            ("call_timeout_s", self.call_timeout_s > 0),
            ("retry_attempts", self.retry_attempts >= 1),
            ("url_expiry_s", 60 <= self.url_expiry_s <= 7 * 24 * 3600),
            ("source_weight", 0 < self.source_weight < 1e6),
        ):
            if not ok:
                raise ConfigError(f"CoordinatorSettings.{name} is out of range, got {getattr(self, name)!r}.")


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    def __init__(
        self,
        jobs: JobStore,
        queue: JobQueue,
        store: BlobStore,
        settings: CoordinatorSettings = CoordinatorSettings(),
        stages: Stages | None = None,
    ):
        self.jobs = jobs
        self.queue = queue
        self.store = store
        self.settings = settings
        self.stages = stages

    def Describe(self, request, context):
        answer = describe(SERVICE_NAME, "ring-schedule", "cpu", ("ring-schedule",), self.settings)
        for name in STAGE_NAMES if self.stages is not None else ():
            try:
                info = getattr(self.stages, name).Describe(common_pb2.DescribeRequest(), timeout=5)
                answer.settings[f"stage.{name}"] = f"{info.backend} on {info.device} ({info.version})"
            except Exception as exc:  # report, do not fail: Describe is for diagnosis
                answer.settings[f"stage.{name}"] = f"unreachable: {type(exc).__name__}"
        return answer

    def CreateUpload(self, request, context):
        if not 1 <= len(request.files) <= MAX_UPLOAD_FILES:
            raise InvalidArgument("files", len(request.files), f"must hold 1 to {MAX_UPLOAD_FILES} files")
        expires = timedelta(seconds=self.settings.url_expiry_s)
        expires_at = Timestamp()
        expires_at.FromDatetime(datetime.now(UTC) + expires)
        uploads = []
        for i, file in enumerate(request.files):
            field = f"files[{i}]"
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
            needed = not self.store.exists(uri)
            uploads.append(
                coordinator_pb2.Upload(
                    name=file.name,
                    # No URL for an object that exists: a PUT would write over what jobs may be reading.
                    put_url=self.store.presigned_put(file.sha256, suffix=suffix, expires=expires)
                    if needed
                    else "",
                    object=common_pb2.ObjectRef(
                        uri=uri, sha256=file.sha256, size_bytes=file.size_bytes, media_type=file.media_type
                    ),
                    expires_at=expires_at,
                    needs_upload=needed,
                )
            )
        return coordinator_pb2.CreateUploadResponse(uploads=uploads)

    def CreateDownload(self, request, context):
        job = self.jobs.get(request.job_id)
        owned = _job_uris(job) | {
            uri for event in self.jobs.events(job.id, limit=100_000) for uri in _event_uris(event)
        }
        expires = timedelta(seconds=self.settings.url_expiry_s)
        expires_at = Timestamp()
        expires_at.FromDatetime(datetime.now(UTC) + expires)
        downloads = []
        for i, uri in enumerate(request.uris):
            if uri not in owned:
                raise InvalidArgument(f"uris[{i}]", uri, f"must be an object of job {job.id}")
            downloads.append(
                coordinator_pb2.Download(
                    uri=uri, get_url=self.store.presigned_get(uri, expires=expires), expires_at=expires_at
                )
            )
        return coordinator_pb2.CreateDownloadResponse(downloads=downloads)

    def SubmitJob(self, request, context):
        spec = resolve_spec(request.spec)
        check_uploaded(spec, self.store.uri_for(""))
        spec = frame_job(spec, self.store)  # the orbit fitted to the asset, or FAILED_PRECONDITION
        job, created = self.jobs.create(spec, request.request_id)
        if created:
            self.queue.put(job.id)
        return coordinator_pb2.SubmitJobResponse(job=job)

    def GetJob(self, request, context):
        return coordinator_pb2.GetJobResponse(job=self.jobs.get(request.job_id))

    def WatchJob(self, request, context):
        job_id, after = request.job_id, request.after_sequence
        self.jobs.get(job_id)  # NOT_FOUND before the stream starts
        while context is None or context.is_active():
            for event in self.jobs.events(job_id, after):
                yield coordinator_pb2.WatchJobResponse(event=event)
                after = event.sequence
                if event.HasField("finished"):
                    return
            if (
                not self.jobs.wait_events(job_id, after, timeout=1.0)
                and self.jobs.get(job_id).state in FINAL_STATES
            ):
                return  # resumed past the JobFinished event: nothing more will come

    def CancelJob(self, request, context):
        return coordinator_pb2.CancelJobResponse(job=self.jobs.request_cancel(request.job_id))

    def ListJobs(self, request, context):
        jobs, token = self.jobs.list(request.page_size, request.page_token, request.state)
        return coordinator_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)


def _job_uris(job: coordinator_pb2.Job) -> set[str]:
    """Every object URI a job's spec and outputs name (its tensors' previews too)."""
    uris = {ref.uri for ref in job.spec.asset.frames} | {ref.uri for ref in job.spec.references}
    outputs = job.outputs
    uris |= {ref.uri for ref in outputs.repaired.frames}
    uris |= {outputs.contact_sheet.uri, outputs.turntable.uri, outputs.report.uri, outputs.change_map.uri}
    for ring in outputs.rings:
        for tensor in (ring.unobserved, ring.inpainted):
            uris |= {tensor.uri, *tensor.preview_uris}
    return uris - {""}


def _event_uris(event: coordinator_pb2.JobEvent) -> set[str]:
    uris: set[str] = set()
    if event.HasField("step_finished"):
        for artifact in event.step_finished.artifacts:
            uris |= {artifact.tensor.uri, *artifact.tensor.preview_uris, artifact.object.uri}
    return uris - {""}


def build_servicer(settings: CoordinatorSettings, store: BlobStore) -> CoordinatorServicer:
    """The servicer, its job state and its workers (not started: ``warm_up`` starts them)."""
    stages = dial_stages({name: getattr(settings, name) for name in STAGE_NAMES})
    jobs = JobStore(settings.state_path)
    retry = RetryPolicy(attempts=settings.retry_attempts, timeout_s=settings.call_timeout_s)
    runner = JobRunner(jobs, stages, store, retry, settings.max_parallel_calls, settings.source_weight)
    return CoordinatorServicer(jobs, JobQueue(runner, settings.workers), store, settings, stages)


def warm_up(servicer: CoordinatorServicer) -> None:
    """Check the store, then start the workers, resuming the jobs the last run left unfinished."""
    servicer.store.ensure_bucket()
    unfinished = servicer.jobs.unfinished()
    if unfinished:
        log.info("resuming %d unfinished jobs", len(unfinished), extra={"jobs": unfinished})
    servicer.queue.start(unfinished)


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_COORDINATOR_",
        CoordinatorSettings,
        build_servicer,
        coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server,
        warm_up,
    )


if __name__ == "__main__":
    main()
