"""The coordinator servicer in-process: submit, watch, get, list, cancel, describe, and their errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from services.common.gaussians import Gaussians, write_ply
from services.common.store import MemoryStore
from services.coordinator.jobqueue import JobQueue
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.server import CoordinatorServicer, CoordinatorSettings
from services.coordinator.stages import RetryPolicy
from services.coordinator.steps import StepLog
from services.embedded import embedded_stages

ROOT = Path(__file__).parents[3]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    stages = embedded_stages(store)
    jobs = JobStore(":memory:")
    queue = JobQueue(JobRunner(jobs, stages, store, RetryPolicy(initial_backoff_s=0.0)), workers=1)
    servicer = CoordinatorServicer(jobs, queue, store, CoordinatorSettings(), stages)
    yield servicer
    jobs.close()


def spec(store, **fields) -> coordinator_pb2.JobSpec:
    return coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(MONKEY.read_bytes(), suffix=".ply")]),
        references=[store.put_bytes(FRONT.read_bytes(), suffix=".png")],
        **{"resolution": 64, "orbit_step_deg": 60, "strength": 1.0, **fields},
    )


def test_submitted_jobs_run_and_watch_streams_to_the_end(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store)), None).job
    assert job.state == coordinator_pb2.JOB_STATE_QUEUED
    assert list(job.spec.rings.fixed.limits_deg) == [20, 90, 180]  # defaults filled in
    servicer.queue.start([])
    events = [r.event for r in servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), None)]
    assert events[0].HasField("step_started") and events[-1].HasField("finished")
    assert events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED
    # Resuming the stream after a sequence number gives exactly the rest.
    tail = servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id, after_sequence=5), None)
    assert [r.event.sequence for r in tail] == [e.sequence for e in events[5:]]
    # Past the end: the stream ends at once.
    after_end = coordinator_pb2.WatchJobRequest(job_id=job.id, after_sequence=events[-1].sequence)
    assert list(servicer.WatchJob(after_end, None)) == []
    got = servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), None).job
    assert got.state == coordinator_pb2.JOB_STATE_SUCCEEDED and len(got.outputs.repaired.frames) == 1
    listed = servicer.ListJobs(coordinator_pb2.ListJobsRequest(), None).jobs
    assert [j.id for j in listed] == [job.id]


def card_spec(store, **fields) -> coordinator_pb2.JobSpec:
    """A job on a flat card (a label, not an object) facing the front view."""
    rng = np.random.default_rng(0)
    n = 2000
    means = np.stack([rng.uniform(-0.3, 0.3, n), rng.uniform(-0.2, 0.2, n), rng.normal(0, 0.003, n)], 1)
    card = Gaussians(
        means=means.astype(np.float32),
        log_scales=np.full((n, 3), np.log(0.01), np.float32),
        quats=np.tile(np.array([1, 0, 0, 0], np.float32), (n, 1)),
        opacity_logits=np.full(n, 4.0, np.float32),
        sh=np.full((n, 1, 3), 0.5, np.float32),
    )
    job = spec(store, **fields)
    job.asset.frames[0].CopyFrom(store.put_bytes(write_ply(card), suffix=".ply"))
    return job


def test_the_orbit_is_fitted_to_the_asset_and_recorded(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store)), None).job
    framing = job.spec.framing
    assert len(framing.center) == 3 and max(abs(c) for c in framing.center) < 0.1
    assert framing.radius == pytest.approx(1.5, abs=0.15)  # LGM's monkey: about LGM's orbit
    assert 0.5 < framing.extent < 0.8 and list(framing.warnings) == []
    got = servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), None).job
    assert got.spec.framing == framing
    # A pinned framing is kept as given.
    pinned = spec(store, framing=coordinator_pb2.Framing(center=[0.0, 0.1, 0.0], radius=1.8))
    kept = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=pinned), None).job.spec.framing
    assert list(kept.center) == pytest.approx([0.0, 0.1, 0.0]) and kept.radius == pytest.approx(1.8)


def test_a_flat_card_is_refused_at_submit_with_the_reason(servicer, store):
    with pytest.raises(FailedPrecondition, match=r"flat or thin \(a card or a stick.*ratio 0\.0\d+.*`force`"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=card_spec(store)), None)
    assert servicer.ListJobs(coordinator_pb2.ListJobsRequest(), None).jobs == []


def test_a_pinned_orbit_inside_the_asset_is_refused_at_submit(servicer, store):
    inside = spec(store, framing=coordinator_pb2.Framing(radius=0.2))
    with pytest.raises(FailedPrecondition, match=r"inside the asset or past it"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=inside), None)


def test_a_forced_card_runs_with_a_warning_event_and_report_entry(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=card_spec(store, force=True)), None).job
    (warning,) = job.spec.framing.warnings
    assert "flat or thin" in warning
    servicer.queue.start([])
    events = [r.event for r in servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), None)]
    assert events[0].warning.message == warning  # the job's first event
    assert events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED, events[-1].finished.error
    report = json.loads(store.get_bytes(events[-1].finished.outputs.report.uri))
    assert report["framing"]["warnings"] == [warning]
    assert report["framing"]["radius"] == pytest.approx(job.spec.framing.radius, rel=1e-5)
    assert report["framing"]["center"] == pytest.approx(list(job.spec.framing.center), abs=1e-5)


def test_warnings_are_sent_once_though_a_resumed_job_starts_again(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=card_spec(store, force=True)), None).job
    for _ in range(2):  # the first run, then a resume after a crash
        StepLog(servicer.jobs, job.id, four_d=False, steps_total=1, rings_total=0).warn_once(
            job.spec.framing.warnings
        )
    events = servicer.jobs.events(job.id)
    assert [event.warning.message for event in events] == list(job.spec.framing.warnings)


def test_submit_is_idempotent_for_a_request_id(servicer, store):
    request = coordinator_pb2.SubmitJobRequest(spec=spec(store), request_id="client-42")
    first = servicer.SubmitJob(request, None).job
    again = servicer.SubmitJob(request, None).job
    assert first.id == again.id
    assert len(servicer.ListJobs(coordinator_pb2.ListJobsRequest(), None).jobs) == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"resolution": 7}, "spec.resolution"),
        ({"orbit_step_deg": 7}, "spec.orbit_step_deg"),
        ({"strength": 1.5}, "spec.strength"),
        ({"framing": coordinator_pb2.Framing(center=[1.0, 2.0])}, "spec.framing.center"),
        (
            {"rings": coordinator_pb2.RingSchedule(fixed=coordinator_pb2.FixedRings(limits_deg=[20, 90]))},
            "spec.rings.fixed.limits_deg",
        ),
    ],
)
def test_bad_specs_are_invalid_argument_naming_the_field(servicer, store, fields, field):
    with pytest.raises(InvalidArgument, match=rf"`{field}"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store, **fields)), None)


@pytest.mark.parametrize(
    ("change", "field", "why"),
    [
        (dict(uri="s3://otherbucket/private/secret.ply"), "asset.frames[0].uri", "object of this deployment"),
        (dict(uri_key="uploads/monkey.ply"), "asset.frames[0].uri", "content-addressed"),
        (dict(sha256=""), "asset.frames[0].sha256", "the sha256 its URI names"),
        (dict(sha256="0" * 64), "asset.frames[0].sha256", "the sha256 its URI names"),
    ],
)
def test_a_job_reads_only_objects_uploaded_to_this_deployment(servicer, store, change, field, why):
    bad = spec(store)
    frame = bad.asset.frames[0]
    if "uri_key" in change:
        frame.uri = store.uri_for(change.pop("uri_key"))
    for name, value in change.items():
        setattr(frame, name, value)
    with pytest.raises(InvalidArgument, match=rf"`spec\.{re.escape(field)}`.*{why}"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bad), None)


def test_a_spec_without_references_is_refused(servicer, store):
    bad = spec(store)
    del bad.references[:]
    with pytest.raises(InvalidArgument, match=r"`spec\.references"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bad), None)


def test_unknown_jobs_are_not_found(servicer):
    for call in (
        lambda: servicer.GetJob(coordinator_pb2.GetJobRequest(job_id="job-000000000000"), None),
        lambda: servicer.CancelJob(coordinator_pb2.CancelJobRequest(job_id="job-000000000000"), None),
        lambda: list(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id="job-000000000000"), None)),
    ):
        with pytest.raises(NotFound, match="job-000000000000"):
            call()


def test_cancelling_a_queued_job_ends_it(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store)), None).job
    cancelled = servicer.CancelJob(coordinator_pb2.CancelJobRequest(job_id=job.id), None).job
    assert cancelled.state == coordinator_pb2.JOB_STATE_CANCELLED
    (last,) = list(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), None))
    assert last.event.finished.state == coordinator_pb2.JOB_STATE_CANCELLED


def test_describe_reports_every_stage(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.CoordinatorService"
    assert info.settings["stage.inpainter"].startswith("colour on cpu")
    assert {f"stage.{name}" for name in ("renderer", "tracker", "refiner", "reconstructor")} <= set(
        info.settings
    )


def test_uploads_and_downloads_need_a_store_that_signs_urls(servicer, store):
    request = coordinator_pb2.CreateUploadRequest(
        files=[
            coordinator_pb2.UploadFile(
                name="a.ply", size_bytes=10, sha256="0" * 64, media_type="application/x-ply"
            )
        ]
    )
    with pytest.raises(Unimplemented, match="signs no URLs"):
        servicer.CreateUpload(request, None)
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store)), None).job
    download = coordinator_pb2.CreateDownloadRequest(job_id=job.id, uris=[job.spec.asset.frames[0].uri])
    with pytest.raises(Unimplemented, match="signs no URLs"):
        servicer.CreateDownload(download, None)


def test_unset_strengths_are_left_to_the_stage_backends(store):
    jobs = JobStore(":memory:")
    servicer = CoordinatorServicer(jobs, None, store)  # type: ignore[arg-type]
    servicer.queue = type("NoQueue", (), {"put": lambda self, job_id: None})()
    unset = spec(store, strength=0.0)
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=unset), None).job
    assert (job.spec.strength, job.spec.refine_strength) == (0.0, 0.0)
    given = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(store, strength=0.25)), None).job
    assert given.spec.strength == pytest.approx(0.25)
