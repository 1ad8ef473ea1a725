"""The coordinator servicer in-process: submit, watch, get, list, cancel, describe, and their errors."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from services.common.clients import dial
from services.common.config import ServerSettings
from services.common.errors import (
    ConfigError,
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unimplemented,
)
from services.common.gaussians import Gaussians, write_ply
from services.common.server import ServiceSpec, describe, start_server
from services.common.store import MemoryStore, content_key, content_sha256
from services.coordinator.admission import AdmissionMetrics
from services.coordinator.auth import TokenBook, new_token, token_entry
from services.coordinator.jobqueue import JobQueue
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.retention import RELEASE_GRACE_S, Retention
from services.coordinator.server import SERVICE_NAME, CoordinatorServicer, CoordinatorSettings
from services.coordinator.stages import RetryPolicy
from services.coordinator.steps import StepLog
from services.embedded import embedded_stages

ROOT = Path(__file__).parents[3]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"


class Call:
    """A gRPC call's context as the servicer sees it: the metadata a client with ``token`` sends."""

    def __init__(self, token: str = "", metadata: tuple = ()):
        self.metadata = (("authorization", f"Bearer {token}"),) if token else metadata

    def invocation_metadata(self):
        return self.metadata

    def is_active(self) -> bool:
        return True


TOKENS = {name: new_token() for name in ("alice", "bob", "root")}
ALICE, BOB, ROOT = (Call(TOKENS[name]) for name in ("alice", "bob", "root"))
ENTRIES = ",".join(token_entry(token, name, admin=name == "root") for name, token in TOKENS.items())


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    stages = embedded_stages(store)
    jobs = JobStore(":memory:")
    queue = JobQueue(JobRunner(jobs, stages, store, RetryPolicy(initial_backoff_s=0.0)), workers=1)
    servicer = CoordinatorServicer(
        jobs, queue, store, TokenBook(inline=ENTRIES), CoordinatorSettings(), stages
    )
    yield servicer
    jobs.close()


def drain(stream) -> list:
    """The responses of an async stream (``WatchJob``) called in-process, to its end."""

    async def collect() -> list:
        return [response async for response in stream]

    return asyncio.run(collect())


def staged(servicer, data: bytes, suffix: str, principal: str = "alice") -> common_pb2.ObjectRef:
    """``data`` uploaded by ``principal`` as CreateUpload and a presigned PUT would leave it: announced,
    and written at a staging key (SubmitJob checks it and moves it into place)."""
    store, sha256 = servicer.store, content_sha256(data)
    uri = store.uri_for(content_key(sha256, suffix))
    staging = store.uri_for(f"staging/{principal}/{sha256[:8]}{suffix}")
    servicer.jobs.expect_upload(principal, uri, sha256, len(data), staging, time.time_ns() + 10**12)
    store.put_at(staging, data)
    media_type = {".ply": "application/x-ply", ".png": "image/png"}[suffix]
    return common_pb2.ObjectRef(uri=uri, sha256=sha256, size_bytes=len(data), media_type=media_type)


def spec(servicer, principal: str = "alice", **fields) -> coordinator_pb2.JobSpec:
    return coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[staged(servicer, MONKEY.read_bytes(), ".ply", principal)]),
        references=[staged(servicer, FRONT.read_bytes(), ".png", principal)],
        **{"resolution": 64, "orbit_step_deg": 60, "strength": 1.0, **fields},
    )


def test_submitted_jobs_run_and_watch_streams_to_the_end(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer)), ALICE).job
    assert job.state == coordinator_pb2.JOB_STATE_QUEUED
    assert list(job.spec.rings.fixed.limits_deg) == [20, 90, 180]  # defaults filled in
    servicer.queue.start()
    events = [
        r.event for r in drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), ALICE))
    ]
    assert events[0].HasField("step_started") and events[-1].HasField("finished")
    assert events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED
    # Resuming the stream after a sequence number gives exactly the rest.
    tail = drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id, after_sequence=5), ALICE))
    assert [r.event.sequence for r in tail] == [e.sequence for e in events[5:]]
    # Past the end: the stream ends at once.
    after_end = coordinator_pb2.WatchJobRequest(job_id=job.id, after_sequence=events[-1].sequence)
    assert drain(servicer.WatchJob(after_end, ALICE)) == []
    got = servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), ALICE).job
    assert got.state == coordinator_pb2.JOB_STATE_SUCCEEDED and len(got.outputs.repaired.frames) == 1
    listed = servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ALICE).jobs
    assert [j.id for j in listed] == [job.id]


def card_spec(servicer, **fields) -> coordinator_pb2.JobSpec:
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
    job = spec(servicer, **fields)
    job.asset.frames[0].CopyFrom(staged(servicer, write_ply(card), ".ply"))
    return job


def test_the_orbit_is_fitted_to_the_asset_and_recorded(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer)), ALICE).job
    framing = job.spec.framing
    assert len(framing.center) == 3 and max(abs(c) for c in framing.center) < 0.1
    assert framing.radius == pytest.approx(1.5, abs=0.15)  # LGM's monkey: about LGM's orbit
    assert 0.5 < framing.extent < 0.8 and list(framing.warnings) == []
    got = servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), ALICE).job
    assert got.spec.framing == framing
    # A pinned framing is kept as given.
    pinned = spec(servicer, framing=coordinator_pb2.Framing(center=[0.0, 0.1, 0.0], radius=1.8))
    kept = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=pinned), ALICE).job.spec.framing
    assert list(kept.center) == pytest.approx([0.0, 0.1, 0.0]) and kept.radius == pytest.approx(1.8)


def test_a_flat_card_is_refused_at_submit_with_the_reason(servicer, store):
    with pytest.raises(FailedPrecondition, match=r"flat or thin \(a card or a stick.*ratio 0\.0\d+.*`force`"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=card_spec(servicer)), ALICE)
    assert servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ALICE).jobs == []


def test_a_pinned_orbit_inside_the_asset_is_refused_at_submit(servicer, store):
    inside = spec(servicer, framing=coordinator_pb2.Framing(radius=0.2))
    with pytest.raises(FailedPrecondition, match=r"inside the asset or past it"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=inside), ALICE)


def test_a_forced_card_runs_with_a_warning_event_and_report_entry(servicer, store):
    job = servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=card_spec(servicer, force=True)), ALICE
    ).job
    (warning,) = job.spec.framing.warnings
    assert "flat or thin" in warning
    servicer.queue.start()
    events = [
        r.event for r in drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), ALICE))
    ]
    assert events[0].warning.message == warning  # the job's first event
    assert events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED, events[-1].finished.error
    report = json.loads(store.get_bytes(events[-1].finished.outputs.report.uri))
    assert report["framing"]["warnings"] == [warning]
    assert report["framing"]["radius"] == pytest.approx(job.spec.framing.radius, rel=1e-5)
    assert report["framing"]["center"] == pytest.approx(list(job.spec.framing.center), abs=1e-5)


def test_warnings_are_sent_once_though_a_resumed_job_starts_again(servicer, store):
    job = servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=card_spec(servicer, force=True)), ALICE
    ).job
    for _ in range(2):  # the first run, then a resume after a crash
        StepLog(servicer.jobs, job.id, four_d=False, steps_total=1, rings_total=0).warn_once(
            job.spec.framing.warnings
        )
    events = servicer.jobs.events(job.id)
    assert [event.warning.message for event in events] == list(job.spec.framing.warnings)


def test_submit_is_idempotent_for_a_request_id(servicer, store):
    request = coordinator_pb2.SubmitJobRequest(spec=spec(servicer), request_id="client-42")
    first = servicer.SubmitJob(request, ALICE).job
    again = servicer.SubmitJob(request, ALICE).job
    assert first.id == again.id
    assert len(servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ALICE).jobs) == 1


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
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer, **fields)), ALICE)


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
    bad = spec(servicer)
    frame = bad.asset.frames[0]
    if "uri_key" in change:
        frame.uri = store.uri_for(change.pop("uri_key"))
    for name, value in change.items():
        setattr(frame, name, value)
    with pytest.raises(InvalidArgument, match=rf"`spec\.{re.escape(field)}`.*{why}"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bad), ALICE)


def test_a_spec_without_references_is_refused(servicer, store):
    bad = spec(servicer)
    del bad.references[:]
    with pytest.raises(InvalidArgument, match=r"`spec\.references"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bad), ALICE)


def test_unknown_jobs_are_not_found(servicer):
    for call in (
        lambda: servicer.GetJob(coordinator_pb2.GetJobRequest(job_id="job-000000000000"), ALICE),
        lambda: servicer.CancelJob(coordinator_pb2.CancelJobRequest(job_id="job-000000000000"), ALICE),
        lambda: drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id="job-000000000000"), ALICE)),
    ):
        with pytest.raises(NotFound, match="job-000000000000"):
            call()


def test_cancelling_a_queued_job_ends_it(servicer, store):
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer)), ALICE).job
    cancelled = servicer.CancelJob(coordinator_pb2.CancelJobRequest(job_id=job.id), ALICE).job
    assert cancelled.state == coordinator_pb2.JOB_STATE_CANCELLED
    (last,) = drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), ALICE))
    assert last.event.finished.state == coordinator_pb2.JOB_STATE_CANCELLED


def test_describe_reports_every_stage(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), ALICE)
    assert info.service == "tire.v1.CoordinatorService"
    assert info.settings["stage.inpainter"].startswith("colour on cpu")
    assert {f"stage.{name}" for name in ("renderer", "tracker", "refiner", "reconstructor")} <= set(
        info.settings
    )


def test_describe_says_who_asks_and_what_an_unset_field_becomes(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), ALICE)
    assert info.settings["caller"] == "alice"
    # The defaults a client shows are the ones SubmitJob fills in.
    unset = spec(servicer, resolution=0, orbit_step_deg=0)
    resolved = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=unset), ALICE).job.spec
    assert info.settings["default.resolution"] == str(resolved.resolution)
    assert float(info.settings["default.orbit_step_deg"]) == resolved.orbit_step_deg
    limits = [float(limit) for limit in info.settings["default.rings.fixed.limits_deg"].split(",")]
    assert limits == list(resolved.rings.fixed.limits_deg)
    assert info.settings["default.fit.steps"] == str(resolved.fit.steps)


def test_uploads_and_downloads_need_a_store_that_signs_urls(servicer, store):
    request = coordinator_pb2.CreateUploadRequest(
        files=[
            coordinator_pb2.UploadFile(
                name="a.ply", size_bytes=10, sha256="0" * 64, media_type="application/x-ply"
            )
        ]
    )
    with pytest.raises(Unimplemented, match="signs no URLs"):
        servicer.CreateUpload(request, ALICE)
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer)), ALICE).job
    download = coordinator_pb2.CreateDownloadRequest(job_id=job.id, uris=[job.spec.asset.frames[0].uri])
    with pytest.raises(Unimplemented, match="signs no URLs"):
        servicer.CreateDownload(download, ALICE)


def test_unset_strengths_are_left_to_the_stage_backends(store):
    jobs = JobStore(":memory:")
    servicer = CoordinatorServicer(jobs, None, store, TokenBook(inline=ENTRIES))  # type: ignore[arg-type]
    unset = spec(servicer, strength=0.0)
    job = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=unset), ALICE).job
    assert (job.spec.strength, job.spec.refine_strength) == (0.0, 0.0)
    given = servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=spec(servicer, strength=0.25)), ALICE
    ).job
    assert given.spec.strength == pytest.approx(0.25)


# ---- principals, uploads, deletion, limits -------------------------------------------------------------


def submit(servicer, call=ALICE, **fields) -> coordinator_pb2.Job:
    principal = {id(ALICE): "alice", id(BOB): "bob", id(ROOT): "root"}[id(call)]
    return servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=spec(servicer, principal, **fields)), call
    ).job


def run_to_end(servicer, job_id: str, call=ALICE) -> coordinator_pb2.JobEvent:
    servicer.queue.start()
    events = [r.event for r in drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job_id), call))]
    return events[-1]


@pytest.mark.parametrize(
    ("call", "why"),
    [
        (Call(), "carries no credential"),
        (Call(metadata=(("authorization", "Basic YWxpY2U6c2VjcmV0"),)), "must read `Bearer <token>`"),
        (Call("tire_not-a-token-of-ours"), "not valid here"),
    ],
)
def test_every_call_needs_a_valid_token(servicer, call, why):
    service = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"]
    for method in service.methods:
        request = getattr(coordinator_pb2, method.input_type.name, None) or common_pb2.DescribeRequest
        with pytest.raises(Unauthenticated, match=why) as caught:
            answer = getattr(servicer, method.name)(request(), call)
            if method.server_streaming:
                drain(answer)
        assert "tire_not" not in str(caught.value)  # a token is never echoed


def test_principals_see_only_their_own_jobs_and_an_admin_sees_all(servicer):
    mine = submit(servicer, ALICE)
    theirs = submit(servicer, BOB)
    assert (mine.owner, theirs.owner) == ("alice", "bob")
    for call, job in ((ALICE, theirs), (BOB, mine)):
        attempts = (
            (servicer.GetJob, coordinator_pb2.GetJobRequest(job_id=job.id)),
            (servicer.WatchJob, coordinator_pb2.WatchJobRequest(job_id=job.id)),
            (servicer.CancelJob, coordinator_pb2.CancelJobRequest(job_id=job.id)),
            (servicer.DeleteJob, coordinator_pb2.DeleteJobRequest(job_id=job.id)),
            (
                servicer.CreateDownload,
                coordinator_pb2.CreateDownloadRequest(job_id=job.id, uris=[job.spec.asset.frames[0].uri]),
            ),
        )
        for method, request in attempts:
            with pytest.raises(NotFound, match=job.id):  # as if it did not exist
                answer = method(request, call)
                if method == servicer.WatchJob:
                    drain(answer)
    assert [j.id for j in servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ALICE).jobs] == [mine.id]
    assert [j.id for j in servicer.ListJobs(coordinator_pb2.ListJobsRequest(), BOB).jobs] == [theirs.id]
    everyone = servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ROOT).jobs
    assert [j.id for j in everyone] == [theirs.id, mine.id]
    assert servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=mine.id), ROOT).job.state == mine.state
    # Request ids are each principal's own: the same one from another principal is another job.
    first = servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=spec(servicer), request_id="r1"), ALICE)
    other = servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=spec(servicer, "bob"), request_id="r1"), BOB
    )
    assert first.job.id != other.job.id


def test_a_job_reads_only_its_principals_uploads_and_job_objects(servicer, store):
    alices = spec(servicer)
    asset = alices.asset.frames[0]
    servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=alices), ALICE)
    assert not store.list_prefix(store.uri_for("staging"))  # checked, moved into place, staging gone
    # Bob names Alice's objects (he learnt the sha256): refused, though the bytes are in the store.
    bobs = coordinator_pb2.JobSpec()
    bobs.CopyFrom(alices)
    with pytest.raises(
        PermissionDenied, match=r"`spec\.asset\.frames\[0\]\.uri`.*neither a file you uploaded"
    ):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bobs), BOB)
    # Uploading the same bytes himself proves he has them.
    bobs.asset.frames[0].CopyFrom(staged(servicer, MONKEY.read_bytes(), ".ply", "bob"))
    bobs.references[0].CopyFrom(staged(servicer, FRONT.read_bytes(), ".png", "bob"))
    assert servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bobs), BOB).job.owner == "bob"
    # CreateUpload asks Alice for no PUT of what she uploaded, and Bob's new files get a staging URL only.
    request = coordinator_pb2.CreateUploadRequest(
        files=[
            coordinator_pb2.UploadFile(
                name="a.ply", size_bytes=asset.size_bytes, sha256=asset.sha256, media_type="application/x-ply"
            )
        ]
    )
    (upload,) = servicer.CreateUpload(request, ALICE).uploads
    assert (upload.needs_upload, upload.put_url, upload.object.uri) == (False, "", asset.uri)


def test_a_jobs_outputs_are_inputs_for_its_principal_only(servicer):
    job = submit(servicer)
    finished = run_to_end(servicer, job.id)
    repaired = finished.finished.outputs.repaired.frames[0]
    again = spec(servicer)
    again.asset.frames[0].CopyFrom(repaired)
    assert servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=again), ALICE).job.owner == "alice"
    again.references[0].CopyFrom(staged(servicer, FRONT.read_bytes(), ".png", "bob"))
    with pytest.raises(PermissionDenied, match="neither a file you uploaded"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=again), BOB)


@pytest.mark.parametrize(
    ("bytes_put", "why"),
    [
        (None, "has not been uploaded yet"),
        (b"garbage", "does not hold the bytes announced.*7 bytes where"),
        (b"x" * 10_000_000, "does not hold the bytes announced"),  # an oversized body
        ("same size", "does not hold the bytes announced.*sha256"),
    ],
)
def test_uploaded_bytes_are_checked_before_a_job_reads_them(servicer, store, bytes_put, why):
    bad = spec(servicer)
    asset = bad.asset.frames[0]
    _, _, staging = servicer.jobs.upload("alice", asset.uri)
    store.remove([staging])
    if bytes_put == "same size":
        bytes_put = bytes(asset.size_bytes)
    if bytes_put is not None:
        store.put_at(staging, bytes_put)
    with pytest.raises(InvalidArgument, match=rf"`spec\.asset\.frames\[0\]\.uri` {why}"):
        servicer.SubmitJob(coordinator_pb2.SubmitJobRequest(spec=bad), ALICE)
    assert not store.exists(asset.uri)  # nothing reached the content-addressed key


def test_delete_job_removes_its_record_and_releases_the_objects_only_it_used(servicer, store):
    job = submit(servicer)
    with pytest.raises(FailedPrecondition, match="cancel it"):
        servicer.DeleteJob(coordinator_pb2.DeleteJobRequest(job_id=job.id), ALICE)
    finished = run_to_end(servicer, job.id).finished
    repaired, report = finished.outputs.repaired.frames[0].uri, finished.outputs.report.uri
    asset = job.spec.asset.frames[0].uri
    answer = servicer.DeleteJob(coordinator_pb2.DeleteJobRequest(job_id=job.id), ALICE)
    assert answer.objects_released > 5
    with pytest.raises(NotFound):
        servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), ALICE)
    assert servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ALICE).jobs == []
    # The retention sweep after the grace removes them; Alice's upload stays for her next jobs.
    after_grace = datetime.now(UTC) + timedelta(seconds=RELEASE_GRACE_S + 1)
    sweep = Retention(servicer.jobs, store, retention_s=0, url_expiry_s=3600).sweep(after_grace)
    assert sweep["removed"] == answer.objects_released
    assert not store.exists(repaired) and not store.exists(report)
    assert store.exists(asset)


@pytest.mark.parametrize(
    ("call", "field", "limit"),
    [
        (lambda s: s.GetJob(coordinator_pb2.GetJobRequest(job_id="j" * 5000), ALICE), "job_id", 64),
        (
            lambda s: s.SubmitJob(coordinator_pb2.SubmitJobRequest(request_id="r" * 5000), ALICE),
            "request_id",
            128,
        ),
        (
            lambda s: s.ListJobs(coordinator_pb2.ListJobsRequest(page_token="p" * 5000), ALICE),
            "page_token",
            256,
        ),
        (
            lambda s: s.SubmitJob(
                coordinator_pb2.SubmitJobRequest(
                    spec=coordinator_pb2.JobSpec(
                        asset=common_pb2.AssetRef(
                            frames=[common_pb2.ObjectRef(uri="s3://b/" + "k" * 5 * 2**20)]
                        )
                    )
                ),
                ALICE,
            ),
            r"spec\.asset\.frames\[0\]\.uri",
            1024,
        ),
        (
            lambda s: s.CreateUpload(
                coordinator_pb2.CreateUploadRequest(files=[coordinator_pb2.UploadFile(name="n" * 300)]), ALICE
            ),
            r"files\[0\]\.name",
            255,
        ),
    ],
)
def test_every_string_of_the_api_is_limited(servicer, call, field, limit):
    with pytest.raises(InvalidArgument, match=rf"`{field}` must be at most {limit} characters") as caught:
        call(servicer)
    assert len(str(caught.value)) < 300


def test_describe_never_reports_the_tokens(servicer):
    servicer.settings = CoordinatorSettings(tokens=ENTRIES)
    info = servicer.Describe(common_pb2.DescribeRequest(), ALICE)
    assert "tokens" not in info.settings and not any("sha256:" in v for v in info.settings.values())


def test_a_page_of_jobs_stays_small_whatever_the_jobs_hold(servicer, monkeypatch):
    from services.coordinator import jobstore

    monkeypatch.setattr(jobstore, "MAX_PAGE_BYTES", 6000)  # about two of these jobs
    labels = {f"k{i}": "v" * 256 for i in range(16)}  # the most labels a spec may hold
    submitted = [submit(servicer, labels=labels).id for _ in range(5)]
    pages, token = [], ""
    while True:
        answer = servicer.ListJobs(coordinator_pb2.ListJobsRequest(page_size=100, page_token=token), ALICE)
        assert answer.jobs and answer.ByteSize() <= 6000 + 3 * len(answer.jobs)  # each job framed in 3 bytes
        pages.append([job.id for job in answer.jobs])
        token = answer.next_page_token
        if not token:
            break
    assert len(pages) > 1 and [i for page in pages for i in page] == submitted[::-1]


def test_the_coordinator_calls_stages_that_ask_for_mutual_tls(tmp_path):
    from tire.v1 import renderer_pb2_grpc

    from services.common.config import ServerSettings
    from services.common.server import ServiceSpec, start_server
    from services.coordinator.stages import dial_stages, stage_tls
    from services.renderer.server import RendererSettings, build_servicer
    from services.testing.pki import Pki

    pki = Pki(tmp_path)
    ca = pki.authority("tire-internal")
    stage, coordinator = pki.issue(ca, "renderer"), pki.issue(ca, "coordinator")
    renderer = build_servicer(RendererSettings(), MemoryStore())
    settings = ServerSettings(
        port=0,
        host="127.0.0.1",
        metrics_port=-1,
        tls_cert_file=str(stage.cert),
        tls_key_file=str(stage.key),
        tls_client_ca_file=str(ca.cert),
    )
    spec = ServiceSpec(
        "tire.v1.RendererService",
        lambda s: renderer_pb2_grpc.add_RendererServiceServicer_to_server(renderer, s),
    )
    running = start_server(spec, settings)
    try:
        targets = {
            name: f"localhost:{running.port}"
            for name in ("renderer", "tracker", "inpainter", "refiner", "reconstructor")
        }
        trusted = dial_stages(
            targets, credentials=stage_tls(str(ca.cert), str(coordinator.cert), str(coordinator.key))
        )
        assert (
            trusted.renderer.Describe(common_pb2.DescribeRequest(), timeout=10).service
            == "tire.v1.RendererService"
        )
        for credentials in (stage_tls(str(ca.cert)), None):  # no client certificate; plaintext
            stranger = dial_stages(targets, credentials=credentials)
            with pytest.raises(grpc.RpcError) as caught:
                stranger.renderer.Describe(common_pb2.DescribeRequest(), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0)


def test_a_request_id_given_again_with_another_spec_is_refused(servicer):
    first = servicer.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=spec(servicer), request_id="r-9"), ALICE
    ).job
    other = coordinator_pb2.SubmitJobRequest(spec=spec(servicer, seed=8), request_id="r-9")
    with pytest.raises(
        InvalidArgument, match=rf"`request_id` was given with another spec, for job {first.id}"
    ):
        servicer.SubmitJob(other, ALICE)


def test_the_jobs_seed_reaches_the_subject_fit_and_a_seed_near_2_64_wraps(servicer, store):
    job = submit(servicer, seed=2**64 - 1)
    assert job.spec.fit.seed == 2**64 - 1
    assert run_to_end(servicer, job.id).finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED
    pinned = submit(servicer, seed=5, fit=common_pb2.FitSettings(seed=9))
    assert pinned.spec.fit.seed == 9


# ---- under load: watches on grpc.aio, and their limits --------------------------------------------------


@pytest.fixture
def served(store):
    """The coordinator on a grpc.aio server (as ``main`` serves it), its job queue not started, with
    at most 50 open watches per caller; (servicer, stub, metadata of each principal)."""
    jobs = JobStore(":memory:")
    stages = embedded_stages(store)
    queue = JobQueue(JobRunner(jobs, stages, store, RetryPolicy(initial_backoff_s=0.0)), workers=1)
    settings = CoordinatorSettings(max_watches_per_caller=50, max_watches=120)
    servicer = CoordinatorServicer(jobs, queue, store, TokenBook(inline=ENTRIES), settings, stages)
    spec = ServiceSpec(
        SERVICE_NAME,
        lambda server: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server),
        asynchronous=True,
        collector=servicer.collector,
    )
    running = start_server(spec, ServerSettings(port=0, host="127.0.0.1", metrics_port=0))
    servicer.metrics_url = f"http://127.0.0.1:{running.metrics_port}/metrics"
    metadata = {name: (("authorization", f"Bearer {token}"),) for name, token in TOKENS.items()}
    with dial(f"127.0.0.1:{running.port}", retries=0) as channel:
        yield servicer, coordinator_pb2_grpc.CoordinatorServiceStub(channel), metadata
    running.stop(0)
    jobs.close()


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_open_watches_leave_the_other_calls_answering(served):
    """50 streams watch a queued job (the server has 8 threads); ListJobs and CancelJob answer within a
    second, and the cancellation ends every stream with its JobFinished event."""
    servicer, stub, metadata = served
    job = submit(servicer, ALICE)
    request = coordinator_pb2.WatchJobRequest(job_id=job.id)
    streams = [stub.WatchJob(request, metadata=metadata["alice"], timeout=60) for _ in range(50)]
    wait_until(lambda: servicer.watch_limits.open_watches == 50)
    start = time.monotonic()
    listed = stub.ListJobs(coordinator_pb2.ListJobsRequest(), metadata=metadata["alice"], timeout=5)
    cancelled = stub.CancelJob(
        coordinator_pb2.CancelJobRequest(job_id=job.id), metadata=metadata["alice"], timeout=5
    )
    assert time.monotonic() - start < 1.0
    assert [j.id for j in listed.jobs] == [
        job.id
    ] and cancelled.job.state == coordinator_pb2.JOB_STATE_CANCELLED
    for stream in streams:
        (last,) = [response.event for response in stream]
        assert last.finished.state == coordinator_pb2.JOB_STATE_CANCELLED
    wait_until(lambda: servicer.watch_limits.open_watches == 0)


def test_a_watch_sees_the_end_that_lands_between_its_reads(servicer, monkeypatch):
    """The job ends (state and JobFinished together) just after a watch read no events: the watch still
    streams the JobFinished event, rather than ending on the final state without it."""
    job = submit(servicer, ALICE)
    read, ended = servicer.jobs.events, []

    def read_then_end(job_id, after=0, limit=1000):
        found = read(job_id, after, limit)
        if not found and not ended:
            ended.append(servicer.jobs.finish(job_id, coordinator_pb2.JOB_STATE_CANCELLED))
        return found

    monkeypatch.setattr(servicer.jobs, "events", read_then_end)
    (last,) = drain(servicer.WatchJob(coordinator_pb2.WatchJobRequest(job_id=job.id), ALICE))
    assert last.event.finished.state == coordinator_pb2.JOB_STATE_CANCELLED


def test_queued_jobs_say_their_place_in_line(servicer):
    """Jobs start round-robin across owners: alice's second job waits behind bob's first."""
    first, second = submit(servicer, ALICE), submit(servicer, ALICE)
    bobs = submit(servicer, BOB)
    assert (first.queue_position, second.queue_position, bobs.queue_position) == (1, 2, 2)
    place = {job.id: servicer.GetJob(coordinator_pb2.GetJobRequest(job_id=job.id), ROOT).job.queue_position
             for job in (first, second, bobs)}  # fmt: skip
    assert [place[first.id], place[bobs.id], place[second.id]] == [1, 2, 3]
    listed = servicer.ListJobs(coordinator_pb2.ListJobsRequest(), ROOT).jobs
    assert {job.id: job.queue_position for job in listed} == place
    request = coordinator_pb2.WatchJobRequest(job_id=second.id, queue_positions=True)

    async def first_response():
        stream = servicer.WatchJob(request, ALICE)
        try:
            return await anext(stream)
        finally:
            await stream.aclose()

    assert asyncio.run(first_response()) == coordinator_pb2.WatchJobResponse(queue_position=3)


def test_the_limits_counts_are_metrics(served):
    """What the admission limits count, on the metrics port: open watches, jobs running here, queued
    jobs, and queued and running jobs per principal."""
    servicer, stub, metadata = served
    mine, _, theirs = submit(servicer, ALICE), submit(servicer, ALICE), submit(servicer, BOB)
    streams = [
        stub.WatchJob(coordinator_pb2.WatchJobRequest(job_id=mine.id), metadata=metadata["alice"], timeout=60)
        for _ in range(3)
    ]
    try:
        wait_until(lambda: servicer.watch_limits.open_watches == 3)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        text = opener.open(servicer.metrics_url, timeout=5).read().decode()
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("tire_coordinator_")
        }
        assert samples == {
            ("tire_coordinator_open_watches", ()): 3,
            ("tire_coordinator_running_jobs", ()): 0,
            ("tire_coordinator_queued_jobs", ()): 3,
            ("tire_coordinator_active_jobs", (("owner", "alice"),)): 2,
            ("tire_coordinator_active_jobs", (("owner", "bob"),)): 1,
        }
        assert theirs.owner == "bob"
    finally:
        for stream in streams:
            stream.cancel()


def test_a_caller_over_its_watch_limit_is_refused_and_others_are_not(served):
    servicer, stub, metadata = served
    mine, theirs = submit(servicer, ALICE), submit(servicer, BOB)
    streams = [
        stub.WatchJob(coordinator_pb2.WatchJobRequest(job_id=mine.id), metadata=metadata["alice"], timeout=60)
        for _ in range(50)
    ]
    try:
        wait_until(lambda: servicer.watch_limits.open_watches == 50)
        one_more = stub.WatchJob(
            coordinator_pb2.WatchJobRequest(job_id=mine.id), metadata=metadata["alice"], timeout=10
        )
        with pytest.raises(grpc.RpcError) as refused:
            next(one_more)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "alice has 50 open WatchJob streams" in refused.value.details()
        status = rpc_status.from_call(refused.value)
        kinds = {detail.type_url.rsplit(".", 1)[-1] for detail in status.details}
        assert {"ErrorInfo", "RetryInfo"} <= kinds
        # Bob's calls, a watch included, go on.
        bobs = stub.WatchJob(
            coordinator_pb2.WatchJobRequest(job_id=theirs.id), metadata=metadata["bob"], timeout=10
        )
        stub.CancelJob(
            coordinator_pb2.CancelJobRequest(job_id=theirs.id), metadata=metadata["bob"], timeout=5
        )
        assert [r.event.finished.state for r in bobs] == [coordinator_pb2.JOB_STATE_CANCELLED]
    finally:
        for stream in streams:
            stream.cancel()
    wait_until(lambda: servicer.watch_limits.open_watches == 0)


@pytest.mark.parametrize(
    ("field", "value"), [("lease_s", 1.0), ("lease_s", 7200.0), ("database_pool_size", 1)]
)
def test_lease_and_pool_settings_out_of_range_are_refused(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"CoordinatorSettings.{field} is out of range"):
        CoordinatorSettings(**{field: value})


def test_the_database_url_and_its_password_file_are_never_described() -> None:
    settings = CoordinatorSettings(
        database_url="postgresql://tire:hunter2@db:5432/tire", database_password_file="/run/pw"
    )
    answer = describe(SERVICE_NAME, "ring-schedule", "cpu", ("ring-schedule",), settings)
    assert "hunter2" not in str(answer) and "/run/pw" not in str(answer)
    assert "lease_s" in answer.settings and "database_url" not in answer.settings


def test_metrics_answer_without_the_job_database_counts_while_it_is_down():
    def down():
        raise DatabaseUnavailable("the job database is unavailable")

    collector = AdmissionMetrics(lambda: 2, lambda: 1, down, down)
    assert [family.name for family in collector.collect()] == [
        "tire_coordinator_open_watches",
        "tire_coordinator_running_jobs",
    ]
