"""The job runner over in-process stages: a whole job, 4D, resume after a crash, retries, failures,
cancellation. Small jobs (64 px, an orbit step of 45 degrees) keep each test to a second or two."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import pytest
from tire.v1 import common_pb2, coordinator_pb2, inpainter_pb2_grpc

from services.common.clients import dial
from services.common.config import ServerSettings
from services.common.errors import InvalidArgument, StoreUnavailable
from services.common.formats import detect_format, read_splats, write_splats
from services.common.gaussians import read_ply
from services.common.server import ServiceSpec, start_server
from services.common.store import MemoryStore
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.coordinator.stages import InProcessStub, RetryPolicy, Stages
from services.embedded import embedded_servicers
from services.reconstructor.backends import ColourSolveBackend
from services.reconstructor.server import ReconstructorServicer, ReconstructorSettings
from services.testing.format_bounds import assert_within_splat, assert_within_spz, covariance_error
from services.testing.ksplat_files import ksplat_bytes

ROOT = Path(__file__).parents[3]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"
BLOB = ROOT / "samples" / "blob4d"
FAST = RetryPolicy(attempts=4, initial_backoff_s=0.0)


class Crash(BaseException):
    """A simulated process death: not an Exception, so the runner cannot record it as a failure."""


class Scripted:
    """Wraps a stub: records each call's method (``calls``) and requests by method (``requests``), and
    lets a test inject behaviour before a call."""

    def __init__(self, stub, before=None):
        self.stub, self.before, self.calls = stub, before, []
        self.requests: dict[str, list] = {}

    def __getattr__(self, method):
        def call(request, timeout=None):
            self.calls.append(method)
            self.requests.setdefault(method, []).append(request)
            if self.before is not None:
                self.before(method, len(self.calls))
            return getattr(self.stub, method)(request, timeout=timeout)

        return call


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicers(store):
    return embedded_servicers(store, "cpu")


def stages_of(servicers, **wrappers) -> Stages:
    stubs = {name: InProcessStub(servicer) for name, servicer in servicers.items()}
    for name, wrap in wrappers.items():
        stubs[name] = wrap(stubs[name])
    return Stages(**stubs)


def submit(jobs: JobStore, store, plys=(MONKEY,), pngs=(FRONT,), **fields) -> str:
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(p.read_bytes(), suffix=".ply") for p in plys]),
        references=[store.put_bytes(p.read_bytes(), suffix=".png") for p in pngs],
        **{"resolution": 64, "orbit_step_deg": 45, "strength": 1.0, **fields},
    )
    job, _ = jobs.create(resolve_spec(spec))
    return job.id


def repaired_sha256(store, job: coordinator_pb2.Job) -> list[str]:
    return [hashlib.sha256(store.get_bytes(ref.uri)).hexdigest() for ref in job.outputs.repaired.frames]


def test_a_job_repairs_the_monkey_and_reports_it(store, servicers):
    jobs = JobStore(":memory:")
    job_id = submit(jobs, store)
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    outputs = job.outputs
    assert len(outputs.repaired.frames) == 1
    # Step 45: ring (0, 20] is empty, so two rings: 45/90 on each side, then 135/180/225.
    assert [list(r.target_azimuths_deg) for r in outputs.rings] == [[45, 315, 90, 270], [135, 225, 180]]
    assert list(outputs.rings[1].anchor_azimuths_deg) == [45, 315, 90, 270]
    report = json.loads(store.get_bytes(outputs.report.uri))
    frame = report["frames"][0]
    back = report["azimuths_deg"].index(180.0)
    assert back > 0 and frame["unobserved"]["mean_delta_e"] > 5  # the blue back moved
    assert frame["source_view"]["foreground_psnr_db"] > 35  # the source view is kept (64 px views)
    assert frame["gaussians"]["locked"] > 0 and frame["gaussians"]["resolved"] > 0
    assert set(report["framing"]) == {"center", "radius", "warnings"}
    assert {"fit_subject", "render", "ring1/locate/+", "ring2/inpaint/180", "refine", "reconstruct"} <= set(
        report["step_seconds"]
    )
    events = jobs.events(job_id, limit=10_000)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED
    assert any(e.HasField("fit") for e in events) and any(e.HasField("ring_progress") for e in events)
    assert job.progress.steps_done == job.progress.steps_total
    # Each step's start names the stage it calls and the model it runs, as the job pinned them.
    started = {e.step_started.step: e.step_started for e in events if e.HasField("step_started")}
    pinned = {m["stage"]: m for m in report["models"]}
    for step, stage in (
        ("render", "renderer"),
        ("ring2/inpaint/180", "inpainter"),
        ("fit_subject", "inpainter"),
    ):
        model = started[step].model
        assert (model.stage, model.backend, model.version) == (stage, pinned[stage]["backend"], "")
    assert not started["models"].HasField("model")


def test_an_spz_job_delivers_spz_by_default_and_glb_and_every_format_asked_for(store, servicers, tmp_path):
    """The asset's format is read from its content; the repaired asset comes back in it (the default)
    and in every format the spec names, each file decoding to the repaired `.ply` within its format's
    quantization (``services.testing.format_bounds``)."""
    asset = tmp_path / "monkey.spz"
    asset.write_bytes(write_splats(read_ply(MONKEY), "spz"))
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(asset.read_bytes(), suffix=".spz")]),
        references=[store.put_bytes(FRONT.read_bytes(), suffix=".png")],
        resolution=64,
        orbit_step_deg=90,
    )
    assert list(frame_job(resolve_spec(spec), store).output_formats) == ["spz"]
    spec.output_formats.extend(["splat", "spz", "glb", "ply"])
    jobs = JobStore(":memory:")
    job, _ = jobs.create(frame_job(resolve_spec(spec), store))
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(job.id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    delivered = {r.format: r.asset.frames[0] for r in job.outputs.repaired_formats}
    assert list(delivered) == ["splat", "spz", "glb", "ply"]
    assert delivered["ply"] == job.outputs.repaired.frames[0]
    repaired = read_ply(store.get_object(job.outputs.repaired.frames[0]))
    spz, splat = store.get_object(delivered["spz"]), store.get_object(delivered["splat"])
    assert delivered["spz"].uri.endswith(".spz") and detect_format(spz) == "spz"
    assert delivered["splat"].uri.endswith(".splat")
    assert_within_spz(read_splats(spz), repaired)
    assert_within_splat(read_splats(splat, name=delivered["splat"].uri), repaired)
    glb = read_splats(store.get_object(delivered["glb"]))
    assert delivered["glb"].uri.endswith(".glb") and covariance_error(glb, repaired) < 1e-5


def test_the_framing_of_an_asset_is_fitted_once_per_orbit(store):
    """A thousand submissions of one asset fit its framing once: a second job with the same frames
    (by sha256) and orbit reads nothing from the store; another orbit is fitted anew."""
    asset = store.put_bytes(MONKEY.read_bytes(), suffix=".ply")
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[asset]),
        references=[store.put_bytes(FRONT.read_bytes(), suffix=".png")],
        orbit_step_deg=72,
    )
    first = frame_job(resolve_spec(spec), store)

    class Unreadable(MemoryStore):
        def get_bytes(self, uri, sha256=None):
            raise AssertionError(f"read {uri}")

    assert frame_job(resolve_spec(spec), Unreadable()) == first
    spec.orbit_step_deg = 90
    with pytest.raises(AssertionError, match="read"):
        frame_job(resolve_spec(spec), Unreadable())


def test_a_ksplat_job_delivers_ply_by_default(store):
    """`.ksplat` is read, not written: a job from one delivers the repaired `.ply` (INRIA layout)."""
    ksplat = ksplat_bytes(read_ply(MONKEY))
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(ksplat, suffix=".ksplat")]),
        references=[store.put_bytes(FRONT.read_bytes(), suffix=".png")],
    )
    assert list(frame_job(resolve_spec(spec), store).output_formats) == ["ply"]


def test_a_stage_at_its_call_limit_refuses_and_the_job_still_finishes_alike(store, servicers):
    """The inpainter served over gRPC taking one call at a time (max_concurrent_rpcs=1) while the
    coordinator sends four at once: the extra ones are refused at once, retried, and the repaired asset
    is byte for byte the one of an unlimited run."""
    jobs = JobStore(":memory:")
    alone = JobRunner(jobs, stages_of(servicers), store, FAST, max_parallel_calls=4).run(submit(jobs, store))
    inpainter = servicers["inpainter"]
    spec = ServiceSpec(
        "tire.v1.InpainterService",
        lambda server: inpainter_pb2_grpc.add_InpainterServiceServicer_to_server(inpainter, server),
        asynchronous=True,  # as its main serves it: FitSubject is an async generator
    )
    settings = ServerSettings(port=0, host="127.0.0.1", metrics_port=-1, max_workers=1, max_concurrent_rpcs=1)
    running = start_server(spec, settings)
    refused = []

    def note_refusals(stub):
        class Noting:
            def __getattr__(self, method):
                def call(request, timeout=None):
                    try:
                        return getattr(stub, method)(request, timeout=timeout)
                    except grpc.RpcError as exc:
                        refused.append(exc.code())
                        raise

                return call

        return Noting()

    try:
        with dial(f"127.0.0.1:{running.port}", retries=0) as channel:
            remote = inpainter_pb2_grpc.InpainterServiceStub(channel)
            stages = stages_of(servicers, inpainter=lambda _: note_refusals(remote))
            retry = RetryPolicy(attempts=50, initial_backoff_s=0.01, max_backoff_s=0.05)
            limited = JobRunner(jobs, stages, store, retry, max_parallel_calls=4).run(submit(jobs, store))
    finally:
        running.stop(0)
    assert limited.state == coordinator_pb2.JOB_STATE_SUCCEEDED, limited.error
    assert refused and set(refused) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert repaired_sha256(store, limited) == repaired_sha256(store, alone)


def test_a_4d_job_repairs_every_time_step_with_one_subject_model(store, servicers):
    jobs = JobStore(":memory:")
    plys, pngs = sorted(BLOB.glob("*.ply"))[:2], sorted(BLOB.glob("*.png"))[:2]
    inpainter = []
    stages = stages_of(servicers, inpainter=lambda stub: inpainter.append(Scripted(stub)) or inpainter[0])
    job = JobRunner(jobs, stages, store, FAST).run(submit(jobs, store, plys, pngs, orbit_step_deg=90))
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    assert len(job.outputs.repaired.frames) == 2
    assert inpainter[0].calls.count("FitSubject") == 1
    assert {ring.time_step for ring in job.outputs.rings} == {0, 1}
    report = json.loads(store.get_bytes(job.outputs.report.uri))
    # The blob's time steps are one set of Gaussians moving: one solve gives a point one colour.
    assert {"t0/render", "t1/render", "reconstruct/joint", "t1/after"} <= set(report["step_seconds"])
    assert "t1/reconstruct" not in report["step_seconds"]
    assert report["cross_time_delta_e"]["output"] <= report["cross_time_delta_e"]["input"]
    assert job.progress.steps_done == job.progress.steps_total


def test_unset_strengths_are_sent_as_0_and_repair_as_the_backends_defaults(store, servicers):
    # The CPU backends' defaults: colour inpainter 1.0, consensus refiner 0.3.
    jobs, wrapped = JobStore(":memory:"), {}
    recorded = {
        name: lambda stub, name=name: wrapped.setdefault(name, Scripted(stub))
        for name in ("inpainter", "refiner")
    }
    unset_id = submit(jobs, store, strength=0.0)
    unset = JobRunner(jobs, stages_of(servicers, **recorded), store, FAST).run(unset_id)
    named_id = submit(jobs, store, strength=1.0, refine_strength=0.3)
    named = JobRunner(jobs, stages_of(servicers), store, FAST).run(named_id)
    assert unset.state == named.state == coordinator_pb2.JOB_STATE_SUCCEEDED, (unset.error, named.error)
    assert (unset.spec.strength, unset.spec.refine_strength) == (0.0, 0.0)
    assert {request.strength for request in wrapped["inpainter"].requests["Inpaint"]} == {0.0}
    assert {request.strength for request in wrapped["refiner"].requests["Refine"]} == {0.0}
    assert repaired_sha256(store, unset) == repaired_sha256(store, named)


def test_a_reconstructor_that_cannot_solve_time_steps_together_solves_them_one_by_one(store, servicers):
    # Two time steps' views together are over this reconstructor's pixel limit; one time step's are not.
    settings = ReconstructorSettings(max_pixels=9 * 64 * 64)
    servicers = {**servicers, "reconstructor": ReconstructorServicer(ColourSolveBackend(), store, settings)}
    jobs = JobStore(":memory:")
    plys, pngs = sorted(BLOB.glob("*.ply"))[:2], sorted(BLOB.glob("*.png"))[:2]
    job_id = submit(jobs, store, plys, pngs, orbit_step_deg=45)
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    steps = json.loads(store.get_bytes(job.outputs.report.uri))["step_seconds"]
    assert {"t0/reconstruct", "t1/reconstruct"} <= set(steps) and "reconstruct/joint" not in steps
    warnings = [e.warning.message for e in jobs.events(job_id, limit=10_000) if e.HasField("warning")]
    assert len(warnings) == 1 and "one by one" in warnings[0] and "RESOURCE_EXHAUSTED" in warnings[0]
    assert job.progress.steps_done == job.progress.steps_total


def test_a_restarted_job_resumes_without_redoing_finished_steps(store, servicers):
    jobs = JobStore(":memory:")
    reference = JobRunner(jobs, stages_of(servicers), store, FAST).run(submit(jobs, store))

    def die_at_third_inpaint(method, count):
        if method == "Inpaint" and count == 4:  # FitSubject, then three Inpaints
            raise Crash

    job_id = submit(jobs, store, seed=0)
    first = []
    crashing = stages_of(
        servicers, inpainter=lambda s: first.append(Scripted(s, die_at_third_inpaint)) or first[0]
    )
    with pytest.raises(Crash):
        JobRunner(jobs, crashing, store, FAST).run(job_id)
    assert jobs.get(job_id).state == coordinator_pb2.JOB_STATE_RUNNING
    done_before = set(jobs.finished_steps(job_id))
    assert "fit_subject" in done_before and "render" in done_before

    second = []
    resumed = stages_of(servicers, inpainter=lambda s: second.append(Scripted(s)) or second[0])
    job = JobRunner(jobs, resumed, store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    assert "FitSubject" not in second[0].calls  # fitted before the crash, not again
    inpainted_before = [step for step in done_before if "/inpaint/" in step]
    assert inpainted_before  # the crash came in the middle of the rings
    assert second[0].calls.count("Inpaint") == 7 - len(inpainted_before)
    resumed_steps = {
        e.step_finished.step for e in jobs.events(job_id, limit=10_000) if e.step_finished.resumed
    }
    assert done_before <= resumed_steps
    assert repaired_sha256(store, job) == repaired_sha256(store, reference)


def test_unavailable_stage_calls_are_retried(store, servicers):
    def flaky(method, count):
        if method == "Inpaint" and count in (3, 4):  # after Describe and FitSubject: the first two Inpaints
            raise StoreUnavailable("the store did not answer")

    jobs = JobStore(":memory:")
    calls = []
    stages = stages_of(servicers, inpainter=lambda s: calls.append(Scripted(s, flaky)) or calls[0])
    job = JobRunner(jobs, stages, store, FAST).run(submit(jobs, store))
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    assert calls[0].calls.count("Inpaint") == 7 + 2


def test_a_failing_step_fails_the_job_naming_the_step(store, servicers):
    def refuse(method, count):
        if method == "LocateUnobserved":
            raise InvalidArgument("views.depth", "bad", "must be non-negative")

    jobs = JobStore(":memory:")
    stages = stages_of(servicers, tracker=lambda s: Scripted(s, refuse))
    job = JobRunner(jobs, stages, store, FAST).run(submit(jobs, store))
    assert job.state == coordinator_pb2.JOB_STATE_FAILED
    assert job.error.startswith("ring1/locate/+: INVALID_ARGUMENT: `views.depth`")
    assert jobs.events(job.id, limit=10_000)[-1].finished.error == job.error


class OutageStore(MemoryStore):
    """A MemoryStore that cannot be reached from its ``start``-th read or write until ``down_for``
    calls have failed: a store restarting under a running job (the coordinator and the stages alike)."""

    def __init__(self, start: int, down_for: int):
        super().__init__()
        self.calls, self.start, self.down_for, self.failed = 0, start, down_for, 0

    def _reach(self) -> None:
        self.calls += 1
        if self.calls >= self.start and self.failed < self.down_for:
            self.failed += 1
            raise StoreUnavailable("the object store at 127.0.0.1:9000 cannot be reached")

    def put_bytes(self, data, **kwargs):
        self._reach()
        return super().put_bytes(data, **kwargs)

    def get_bytes(self, uri, **kwargs):
        self._reach()
        return super().get_bytes(uri, **kwargs)


@pytest.mark.parametrize("down_for", [3, 60])  # a blip the stage retries absorb; an outage they do not
def test_a_store_outage_mid_job_makes_it_wait_then_finish_as_if_nothing_happened(down_for):
    undisturbed = MemoryStore()
    jobs = JobStore(":memory:")
    reference = JobRunner(jobs, stages_of(embedded_servicers(undisturbed, "cpu")), undisturbed, FAST)
    expected = repaired_sha256(undisturbed, reference.run(submit(jobs, undisturbed)))

    store = OutageStore(start=120, down_for=down_for)  # about ring 1
    policy = RetryPolicy(attempts=4, initial_backoff_s=0.0, initial_wait_s=0.01, max_wait_s=0.05)
    runner = JobRunner(jobs, stages_of(embedded_servicers(store, "cpu")), store, policy)
    job_id = submit(jobs, store)
    job = runner.run_to_end(job_id)
    assert store.failed == down_for
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    assert repaired_sha256(store, job) == expected
    events = jobs.events(job_id, limit=100_000)
    waits = [event.waiting for event in events if event.HasField("waiting")]
    failures = [event.step_failed for event in events if event.HasField("step_failed")]
    # One wait per failed run of the job (steps failing side by side in a fan-out share it).
    assert len(waits) <= len(failures) and all(f.code == "UNAVAILABLE" for f in failures)
    assert waits or down_for < 10  # an outage longer than the stage retries makes the job wait
    assert [w.retry_in_s for w in waits][:3] == pytest.approx([0.01, 0.02, 0.04][: len(waits)])
    finished = [
        e.step_finished.step for e in events if e.HasField("step_finished") and not e.step_finished.resumed
    ]
    assert len(finished) == len(set(finished))  # no step ran twice


def test_a_clients_mistake_fails_the_job_naming_the_step_and_code_not_internal(store, servicers):
    jobs = JobStore(":memory:")
    job_id = submit(jobs, store)
    spec = jobs.get(job_id).spec
    spec.references[0].CopyFrom(store.put_bytes(b"not a png", suffix=".png"))
    job_id = jobs.create(spec)[0].id
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_FAILED
    assert job.error.startswith("fit_subject: INVALID_ARGUMENT: `spec.references[0]`"), job.error
    assert "0x" not in job.error and "internal" not in job.error.lower()
    (failure,) = [e.step_failed for e in jobs.events(job_id) if e.HasField("step_failed")]
    assert (failure.step, failure.code, failure.message) == ("fit_subject", "INVALID_ARGUMENT", job.error)
    assert failure.reason == "INVALID_FIELD"
    assert [v.field for v in failure.field_violations] == ["spec.references[0]"]
    assert job.error.endswith(failure.field_violations[0].description)
    assert job.failure == failure == jobs.events(job_id)[-1].finished.failure


def test_a_coordinator_bug_fails_the_job_as_internal_without_its_text(store, servicers, monkeypatch):
    from services.coordinator import pipeline

    def broken(*args, **kwargs):
        raise ZeroDivisionError("secret internals")

    monkeypatch.setattr(pipeline, "_initial_plan", broken)
    jobs = JobStore(":memory:")
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(submit(jobs, store))
    assert job.state == coordinator_pb2.JOB_STATE_FAILED
    assert job.error == "job: INTERNAL: see the coordinator's log"
    assert (job.failure.step, job.failure.code, job.failure.reason) == ("job", "INTERNAL", "INTERNAL")
    assert not job.failure.field_violations


def test_cancel_stops_a_running_job_before_its_next_step(store, servicers):
    jobs = JobStore(":memory:")
    job_id = submit(jobs, store)

    def cancel_on_first_inpaint(method, count):
        if method == "Inpaint":
            jobs.request_cancel(job_id)

    calls = []
    stages = stages_of(
        servicers, inpainter=lambda s: calls.append(Scripted(s, cancel_on_first_inpaint)) or calls[0]
    )
    job = JobRunner(jobs, stages, store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_CANCELLED
    assert calls[0].calls.count("Inpaint") <= 4  # the in-flight fan-out ends, nothing new starts
    assert "refine" not in jobs.finished_steps(job_id)
    assert jobs.events(job_id, limit=10_000)[-1].finished.state == coordinator_pb2.JOB_STATE_CANCELLED


def test_a_queued_job_cancelled_before_it_runs_never_calls_a_stage(store, servicers):
    jobs = JobStore(":memory:")
    job_id = submit(jobs, store)
    jobs.request_cancel(job_id)
    calls = []
    stages = stages_of(servicers, renderer=lambda s: calls.append(Scripted(s)) or calls[0])
    assert JobRunner(jobs, stages, store, FAST).run(job_id).state == coordinator_pb2.JOB_STATE_CANCELLED
    assert calls[0].calls == []


def test_an_asset_that_needs_no_repair_comes_back_unchanged(store, servicers, tmp_path):
    """Do no harm: the clean truth, with its own front view as the reference, is kept bit for bit."""
    from samples.make_samples import front_reference
    from services.common.gaussians import write_ply
    from services.common.tensors import png_bytes
    from services.testing.synthetic import textured_blob

    truth = textured_blob(12_000, seed=3)  # 128-pixel views: at 64, its stripes blur past the subject's
    ply, png = tmp_path / "truth.ply", tmp_path / "front.png"
    ply.write_bytes(write_ply(truth))
    png.write_bytes(png_bytes(front_reference(truth, 128)))
    jobs = JobStore(":memory:")
    job_id = submit(jobs, store, (ply,), (png,), resolution=128)
    job = JobRunner(jobs, stages_of(servicers), store, FAST).run(job_id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    frame = json.loads(store.get_bytes(job.outputs.report.uri))["frames"][0]
    assert frame["observed"]["mean_delta_e"] < 0.5 and frame["unobserved"]["mean_delta_e"] < 1.0
    assert frame["source_view"]["foreground_psnr_db"] > 45
    assert frame["gaussians"]["resolved"] < 0.05 * len(truth)
