"""End to end through the local stack: the S3 server, the five stage services and the coordinator, each
its own process, driven only through the coordinator's gRPC API (as the `tire` CLI drives it).

Small jobs (64x64 views, an orbit step of 45 degrees: 8 views, two rings) keep each job to seconds on
two cores. The same job run embedded (stages in this process, in-memory store) gives the reference
bytes: the stack, a resumed coordinator, a retried stage and a scaled inpainter (three replicas behind
one target, one of them killed mid-job) must all end with exactly those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from conftest import ServiceProcess
from services.client import Credentials, upload
from services.client import coordinator_stub as client_stub
from services.common.formats import read_splats, write_splats
from services.common.gaussians import read_ply
from services.common.local_server import free_port
from services.common.registry import STAGE_NAMES
from services.common.store import MemoryStore
from services.coordinator.auth import new_token, token_entry
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.embedded import embedded_stages
from services.stack import SERVICES as STACK_SERVICES
from services.stack import sqlite_url
from services.testing.webhooks import WebhookReceiver

pytestmark = pytest.mark.slow

SAMPLES = Path(__file__).parents[1] / "samples"
MONKEY = SAMPLES / "monkey_lgm.ply"
REFERENCE = SAMPLES / "monkey_front.png"
# Each service's module and environment prefix, as `tire up` starts them.
SERVICES = {service.name: (service.server, service.env_prefix) for service in STACK_SERVICES}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"the stack test's secret: 32 byte").decode()
WATCH_TIMEOUT_S = 180.0
JOB = coordinator_pb2


def small_spec(frames: list[common_pb2.ObjectRef], references: list[common_pb2.ObjectRef]) -> JOB.JobSpec:
    """The job every test runs: the monkey at 64x64 every 45 degrees, fixed rings, the CPU strengths."""
    return JOB.JobSpec(
        asset=common_pb2.AssetRef(frames=frames),
        references=references,
        resolution=64,
        orbit_step_deg=45.0,
        strength=1.0,
        refine_strength=0.3,
        seed=7,
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages(launch_service) -> dict[str, ServiceProcess]:
    """The five stage services with their default (CPU) backends."""
    return {name: launch_service(*SERVICES[name]) for name in STAGE_NAMES}


# Two principals and an admin; the module's coordinator reads their entries from a file (which a test
# rewrites, as a rotated Kubernetes Secret is), the others from TIRE_COORDINATOR_TOKENS.
TOKENS = {name: new_token() for name in ("alice", "bob", "root")}
ENTRIES = [token_entry(token, name, admin=name == "root") for name, token in TOKENS.items()]


@pytest.fixture(scope="module")
def start_coordinator(launch_service) -> Callable[..., ServiceProcess]:
    """``start_coordinator(stages, state, **env)``: a coordinator over ``stages`` keeping its jobs in
    ``state``, the SQLite file of that path or (a string) the database of that URL (``postgres_url``),
    plaintext on loopback, taking the tokens of ``TOKENS``."""

    def start(stages: dict[str, ServiceProcess], state: Path | str, **env: str) -> ServiceProcess:
        module, prefix = SERVICES["coordinator"]
        environ = {f"{prefix}{name.upper()}": stages[name].target for name in STAGE_NAMES}
        environ[f"{prefix}DATABASE_URL"] = sqlite_url(state) if isinstance(state, Path) else state
        environ[f"{prefix}ALLOW_PLAINTEXT"] = "1"
        environ[f"{prefix}TOKENS"] = ",".join(ENTRIES)
        return launch_service(module, prefix, {**environ, **env})

    return start


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text("\n".join(ENTRIES) + "\n")
    return path


@pytest.fixture(scope="module")
def coordinator(stages, start_coordinator, tmp_path_factory, tokens_file) -> ServiceProcess:
    state = tmp_path_factory.mktemp("coordinator") / "coordinator.sqlite"
    return start_coordinator(
        stages, state, TIRE_COORDINATOR_TOKENS="", TIRE_COORDINATOR_TOKENS_FILE=str(tokens_file)
    )


def coordinator_stub(
    service: ServiceProcess, principal: str = "alice"
) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    """A stub of ``service`` whose calls carry ``principal``'s token ("" for none)."""
    return client_stub(service.target, Credentials(token=TOKENS.get(principal, "")))


@pytest.fixture(scope="module")
def stub(coordinator) -> coordinator_pb2_grpc.CoordinatorServiceStub:
    return coordinator_stub(coordinator)


def uploaded_spec(stub) -> JOB.JobSpec:
    """The small job, its files uploaded through CreateUpload and presigned PUTs (as `tire submit` does)."""
    return small_spec(upload(stub, [MONKEY], "application/x-ply"), upload(stub, [REFERENCE], "image/png"))


@pytest.fixture(scope="module")
def spec(stub) -> JOB.JobSpec:
    return uploaded_spec(stub)


@pytest.fixture(scope="module")
def embedded_sha256() -> str:
    return embedded_repair_sha256()


def embedded_repair_sha256() -> str:
    """sha256 of the repaired .ply of the small job run embedded (in this process, in-memory store)."""
    store = MemoryStore()
    frames = [store.put_bytes(MONKEY.read_bytes(), suffix=".ply", media_type="application/x-ply")]
    references = [store.put_bytes(REFERENCE.read_bytes(), suffix=".png", media_type="image/png")]
    with JobStore(":memory:") as jobs:
        job, _ = jobs.create(frame_job(resolve_spec(small_spec(frames, references)), store))
        job = JobRunner(jobs, embedded_stages(store), store).run(job.id)
    assert job.state == JOB.JOB_STATE_SUCCEEDED, job.error
    return sha256(store.get_bytes(job.outputs.repaired.frames[0].uri))


# ----- helpers -----------------------------------------------------------------------------------


def watch(
    stub, job_id: str, after: int = 0, until: Callable[[JOB.JobEvent], bool] | None = None
) -> list[JOB.JobEvent]:
    """WatchJob from ``after`` to the job's end, or up to and including the first event ``until`` accepts."""
    events = []
    request = JOB.WatchJobRequest(job_id=job_id, after_sequence=after)
    stream = stub.WatchJob(request, timeout=WATCH_TIMEOUT_S)
    try:
        for response in stream:
            events.append(response.event)
            if until is not None and until(response.event):
                return events
    finally:
        stream.cancel()
    assert events and events[-1].HasField("finished"), f"the stream ended without JobFinished: {events[-1:]}"
    return events


def step_started(prefix: str) -> Callable[[JOB.JobEvent], bool]:
    return lambda event: event.HasField("step_started") and event.step_started.step.startswith(prefix)


def step_finished(prefix: str) -> Callable[[JOB.JobEvent], bool]:
    return lambda event: event.HasField("step_finished") and event.step_finished.step.startswith(prefix)


def steps(events: list[JOB.JobEvent], kind: str, *, resumed: bool | None = None) -> list[str]:
    """Step names of the ``kind`` ("step_started" or "step_finished") events, in order."""
    names = []
    for event in events:
        if event.WhichOneof("kind") == kind:
            message = getattr(event, kind)
            if resumed is None or message.resumed == resumed:
                names.append(message.step)
    return names


def download(stub, job_id: str, uri: str) -> bytes:
    """An object of the job through CreateDownload and a presigned GET."""
    answer = stub.CreateDownload(JOB.CreateDownloadRequest(job_id=job_id, uris=[uri]), timeout=30)
    (item,) = answer.downloads
    assert item.uri == uri
    with urllib.request.urlopen(item.get_url, timeout=60) as response:
        return response.read()


def calls(service: ServiceProcess) -> dict[str, float]:
    """Calls the service handled so far, by method, from its Prometheus endpoint."""
    url = f"http://127.0.0.1:{service.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "tire_grpc_requests":
            for sample in family.samples:
                if sample.name == "tire_grpc_requests_total":
                    method = sample.labels["method"]
                    counts[method] = counts.get(method, 0.0) + sample.value
    return counts


def repaired_sha256(stub, job: JOB.Job) -> str:
    (frame,) = job.outputs.repaired.frames
    data = download(stub, job.id, frame.uri)
    assert sha256(data) == frame.sha256
    return frame.sha256


# ----- 1. one job through the gRPC API -----------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(stub, spec) -> tuple[JOB.Job, list[JOB.JobEvent]]:
    """The small job submitted (with a request id) and watched to its end."""
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec, request_id="stack-test-1"), timeout=30).job
    assert job.state == JOB.JOB_STATE_QUEUED
    assert job.spec.resolution == 64 and list(job.spec.rings.fixed.limits_deg) == [20, 90, 180]
    return job, watch(stub, job.id)


def test_job_through_the_stack_matches_embedded_mode(stub, spec, finished_job, embedded_sha256):
    submitted, events = finished_job

    # The history: numbered from 1 without gaps, every started step finished, the end last.
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert all(event.job_id == submitted.id for event in events)
    started, finished = steps(events, "step_started"), steps(events, "step_finished")
    assert sorted(started) == sorted(finished)
    assert steps(events, "step_finished", resumed=True) == []
    assert started[0] == "models"  # the stages' models, pinned first
    assert sorted(started[1:3]) == ["fit_subject", "render"]  # they run side by side
    assert finished[-4:] == ["refine", "reconstruct", "after", "outputs"]
    assert {"ring1/locate/+", "ring1/locate/-", "ring2/locate/+", "ring2/locate/-"} <= set(finished)
    inpainted = [step for step in finished if "/inpaint/" in step]
    assert len(inpainted) == 7  # every view but the source

    fits = [event.fit.progress for event in events if event.HasField("fit")]
    assert fits, "no subject-fit progress was relayed"
    rings = [event.ring_progress for event in events if event.HasField("ring_progress")]
    assert len(rings) == 7
    for ring in (1, 2):
        progress = [r for r in rings if r.ring == ring]
        assert [r.targets_done for r in progress] == list(range(1, len(progress) + 1))
        assert all(r.targets_total == len(progress) and r.rings_total == 2 for r in progress)
        assert all(0.0 <= r.unobserved_fraction <= 1.0 for r in progress)

    end = events[-1].finished
    assert end.state == JOB.JOB_STATE_SUCCEEDED and end.error == ""

    # GetJob agrees with the stream.
    job = stub.GetJob(JOB.GetJobRequest(job_id=submitted.id), timeout=30).job
    assert job.state == JOB.JOB_STATE_SUCCEEDED
    assert job.outputs == end.outputs
    assert job.progress.steps_done == len(finished) == job.progress.steps_total
    assert [ring.ring for ring in job.outputs.rings] == [1, 2]

    # The repaired asset comes down over HTTP with the bytes of the embedded run: one code path.
    assert repaired_sha256(stub, job) == embedded_sha256
    report = download(stub, job.id, job.outputs.report.uri)
    assert b'"step_seconds"' in report and sha256(report) == job.outputs.report.sha256

    # The inputs are in the store now: asking to upload them again says there is nothing to send.
    (repeated,) = stub.CreateUpload(
        JOB.CreateUploadRequest(
            files=[
                JOB.UploadFile(
                    name="monkey.ply",
                    size_bytes=MONKEY.stat().st_size,
                    sha256=sha256(MONKEY.read_bytes()),
                    media_type="application/x-ply",
                )
            ]
        ),
        timeout=30,
    ).uploads
    assert not repeated.needs_upload and repeated.object == spec.asset.frames[0]
    assert repeated.put_url == ""  # nothing to write over what the first job reads

    # ListJobs shows it; the same request id gives the same job, not a new one.
    listed = stub.ListJobs(JOB.ListJobsRequest(), timeout=30).jobs
    assert submitted.id in [j.id for j in listed]
    again = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec, request_id="stack-test-1"), timeout=30).job
    assert again.id == submitted.id and again.state == JOB.JOB_STATE_SUCCEEDED
    assert len(stub.ListJobs(JOB.ListJobsRequest(), timeout=30).jobs) == len(listed)


# ----- 2. the coordinator killed mid-job -----------------------------------------------------------


def test_killed_coordinator_resumes_the_job(stages, start_coordinator, tmp_path, embedded_sha256):
    state = tmp_path / "coordinator.sqlite"
    calls_before = {name: calls(stages[name]) for name in ("renderer", "inpainter")}
    first = start_coordinator(stages, state)
    stub = coordinator_stub(first)
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=uploaded_spec(stub)), timeout=30).job
    seen = watch(stub, job.id, until=step_finished("ring1/inpaint/"))  # the fit is done by then
    first.process.kill()  # SIGKILL: no shutdown, whatever was in flight is lost
    first.process.wait()
    done_before = set(steps(seen, "step_finished"))
    assert {"fit_subject", "render"} <= done_before

    second = start_coordinator(stages, state)  # same state file, another port
    stub = coordinator_stub(second)
    events = watch(stub, job.id, after=seen[-1].sequence)
    assert events[0].sequence == seen[-1].sequence + 1
    assert [event.sequence for event in events] == list(range(events[0].sequence, events[-1].sequence + 1))
    assert events[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, events[-1].finished.error

    # What finished before the kill is handed back as resumed, and not started again.
    assert done_before <= set(steps(events, "step_finished", resumed=True))
    assert not done_before & set(steps(events, "step_started"))
    # The stages agree: one subject fit, and two renders (the orbit before and after), not three.
    calls_after = {name: calls(stages[name]) for name in ("renderer", "inpainter")}
    assert calls_after["inpainter"]["FitSubject"] - calls_before["inpainter"].get("FitSubject", 0) == 1
    assert calls_after["renderer"]["Render"] - calls_before["renderer"].get("Render", 0) == 2

    job = stub.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
    assert job.state == JOB.JOB_STATE_SUCCEEDED
    assert repaired_sha256(stub, job) == embedded_sha256


# ----- 2b. formats and webhooks through the API ---------------------------------------------------


def test_an_spz_job_returns_spz_and_glb_and_signs_its_webhooks(stages, start_coordinator, tmp_path):
    """A job submitted as `.spz` (uploaded with its media type) with a webhook on loopback: the receiver
    gets every state change once, each signed; the outputs hold the `.spz` and `.glb` asked for, whose
    bytes download with the sha256 the notification names."""
    receiver = WebhookReceiver()
    coordinator = start_coordinator(
        stages,
        tmp_path / "coordinator.sqlite",
        TIRE_COORDINATOR_WEBHOOK_SECRET=WEBHOOK_SECRET,
        TIRE_COORDINATOR_WEBHOOK_ALLOW_PRIVATE="1",
    )
    try:
        stub = coordinator_stub(coordinator)
        asset = tmp_path / "monkey.spz"
        asset.write_bytes(write_splats(read_ply(MONKEY), "spz"))
        spec = small_spec(upload(stub, [asset], "application/x-spz"), upload(stub, [REFERENCE], "image/png"))
        spec.output_formats.extend(["spz", "glb"])
        spec.webhook.url = receiver.url
        job = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec), timeout=30).job
        assert watch(stub, job.id)[-1].finished.state == JOB.JOB_STATE_SUCCEEDED
        assert receiver.wait_for(3, timeout=30)
        verifier = Webhook(WEBHOOK_SECRET)
        payloads = [verifier.verify(body, headers) for headers, body in receiver.posts]
        assert [p["type"] for p in payloads] == ["job.queued", "job.running", "job.succeeded"]
        delivered = payloads[-1]["data"]["outputs"]["repaired_formats"]
        assert [d["format"] for d in delivered] == ["spz", "glb"]
        for entry, extension in zip(delivered, (".spz", ".glb"), strict=True):
            (frame,) = entry["asset"]["frames"]
            assert frame["uri"].endswith(extension)
            data = download(stub, job.id, frame["uri"])
            assert sha256(data) == frame["sha256"] and len(read_splats(data)) == len(read_ply(MONKEY))
    finally:
        receiver.close()


# ----- 3. a stage killed mid-call ----------------------------------------------------------------


def test_killed_inpainter_is_retried_until_it_is_back(
    launch_service, stages, start_coordinator, tmp_path, embedded_sha256
):
    module, prefix = SERVICES["inpainter"]
    port = {f"{prefix}PORT": str(free_port())}
    inpainter = launch_service(module, prefix, port)
    # Retries back off 0.5, 1, 2, 4, 8, 15... s: ten attempts wait well over a minute for the inpainter.
    coordinator = start_coordinator(
        {**stages, "inpainter": inpainter},
        tmp_path / "coordinator.sqlite",
        TIRE_COORDINATOR_RETRY_ATTEMPTS="10",
    )
    stub = coordinator_stub(coordinator)
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=uploaded_spec(stub)), timeout=30).job
    seen = watch(stub, job.id, until=step_started("ring1/inpaint/"))
    inpainter.stop()  # SIGKILL while ring 1's inpaint calls are in flight; ring 2's are still to come

    # The channel's own retries (about 4 s) run out first; stay down until the coordinator retries too.
    deadline = time.monotonic() + 60
    while "failed with UNAVAILABLE" not in coordinator.log():
        assert time.monotonic() < deadline, "the coordinator never retried an inpaint call"
        time.sleep(0.2)
    restarted = launch_service(module, prefix, port)  # the same port: the coordinator's channel finds it
    assert restarted.target == inpainter.target

    events = watch(stub, job.id, after=seen[-1].sequence)
    assert events[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, events[-1].finished.error
    assert len([s for s in steps(seen + events, "step_finished") if "/inpaint/" in s]) == 7
    assert calls(restarted)["Inpaint"] >= 1  # the retried calls (and ring 2's) reached the new process
    job = stub.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
    assert repaired_sha256(stub, job) == embedded_sha256


# ----- 4. errors ---------------------------------------------------------------------------------


BAD_SPECS = {
    "spec.resolution": lambda spec: setattr(spec, "resolution", 7),
    "spec.references": lambda spec: spec.ClearField("references"),
    "spec.rings.fixed.limits_deg[2]": lambda spec: spec.rings.fixed.limits_deg.extend([20, 90, 170]),
    "spec.orbit_step_deg": lambda spec: setattr(spec, "orbit_step_deg", 7.0),
}


@pytest.mark.parametrize(("field", "change"), BAD_SPECS.items(), ids=list(BAD_SPECS))
def test_bad_spec_is_invalid_argument_naming_the_field(stub, spec, field, change):
    bad = JOB.JobSpec()
    bad.CopyFrom(spec)
    change(bad)
    listed = len(stub.ListJobs(JOB.ListJobsRequest(page_size=100), timeout=30).jobs)
    with pytest.raises(grpc.RpcError) as caught:
        stub.SubmitJob(JOB.SubmitJobRequest(spec=bad), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"`{field}` ")
    assert len(stub.ListJobs(JOB.ListJobsRequest(page_size=100), timeout=30).jobs) == listed


def test_unknown_job_is_not_found(stub):
    for call, request in (
        (stub.GetJob, JOB.GetJobRequest(job_id="job-000000000000")),
        (stub.CancelJob, JOB.CancelJobRequest(job_id="job-000000000000")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=30)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "job-000000000000" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.WatchJob(JOB.WatchJobRequest(job_id="job-000000000000"), timeout=30))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_download_of_another_object_is_invalid_argument(stub, finished_job):
    submitted, _ = finished_job
    job = stub.GetJob(JOB.GetJobRequest(job_id=submitted.id), timeout=30).job
    foreign = "s3://tire/" + "0" * 64 + ".ply"  # a well-formed URI of an object the job never named
    request = JOB.CreateDownloadRequest(job_id=job.id, uris=[job.outputs.report.uri, foreign])
    with pytest.raises(grpc.RpcError) as caught:
        stub.CreateDownload(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("`uris[1]` ")
    assert foreign in caught.value.details()


# ----- 5. cancelling ------------------------------------------------------------------------------


def test_cancel_running_job(stub, spec):
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec), timeout=30).job
    seen = watch(stub, job.id, until=step_started("render"))
    cancelled = stub.CancelJob(JOB.CancelJobRequest(job_id=job.id), timeout=30).job
    assert cancelled.state in (JOB.JOB_STATE_RUNNING, JOB.JOB_STATE_CANCELLED)

    events = seen + watch(stub, job.id, after=seen[-1].sequence)
    end = events[-1].finished
    assert end.state == JOB.JOB_STATE_CANCELLED and not end.HasField("outputs")
    assert "outputs" not in steps(events, "step_started")  # it stopped before the end
    job = stub.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
    assert job.state == JOB.JOB_STATE_CANCELLED
    # Cancelling a finished job changes nothing.
    again = stub.CancelJob(JOB.CancelJobRequest(job_id=job.id), timeout=30).job
    assert again.state == JOB.JOB_STATE_CANCELLED and again.updated_at == job.updated_at


# ----- 5. the object store down mid-job -----------------------------------------------------------


@pytest.mark.parametrize("outage_s", [5, 60])
def test_a_store_outage_mid_job_delays_it_but_changes_nothing(s3, stub, spec, embedded_sha256, outage_s):
    request = JOB.SubmitJobRequest(spec=spec, request_id=f"outage-{outage_s}")
    job = stub.SubmitJob(request, timeout=30).job
    seen = watch(stub, job.id, until=step_finished("ring1/inpaint/"))
    s3.stop()  # MinIO restarting under every running job
    time.sleep(outage_s)
    s3.start()  # same port, keys and data
    events = seen + watch(stub, job.id, after=seen[-1].sequence)
    assert events[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, events[-1].finished.error
    job = stub.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
    assert repaired_sha256(stub, job) == embedded_sha256
    failures = [event.step_failed for event in events if event.HasField("step_failed")]
    waits = [event.waiting for event in events if event.HasField("waiting")]
    assert all(failure.code == "UNAVAILABLE" for failure in failures)
    # The reason crossed the wire in the stage's rich error (or came from the coordinator's own reads).
    assert {failure.reason for failure in failures} <= {"STORE_UNAVAILABLE"}
    if outage_s == 60:  # longer than a stage call's retries: the job waited, then went on
        assert waits and failures
    finished = [
        e.step_finished.step for e in events if e.HasField("step_finished") and not e.step_finished.resumed
    ]
    assert len(finished) == len(set(finished))  # no step ran twice


# ----- 6. many principals on one deployment ------------------------------------------------------


def rpc_error(call: Callable[[], object]) -> grpc.RpcError:
    """The error ``call`` fails with (a stream is read to its end)."""
    with pytest.raises(grpc.RpcError) as caught:
        answer = call()
        if hasattr(answer, "__iter__"):
            list(answer)
    return caught.value


def put(url: str, data: bytes) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="PUT"), timeout=60) as reply:
        assert reply.status == 200


def test_principals_neither_see_nor_touch_each_others_jobs(coordinator, stub, finished_job):
    job = stub.GetJob(JOB.GetJobRequest(job_id=finished_job[0].id), timeout=30).job
    bob, root = coordinator_stub(coordinator, "bob"), coordinator_stub(coordinator, "root")
    asset = job.spec.asset.frames[0].uri
    for call in (
        lambda: bob.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30),
        lambda: bob.WatchJob(JOB.WatchJobRequest(job_id=job.id), timeout=30),
        lambda: bob.CancelJob(JOB.CancelJobRequest(job_id=job.id), timeout=30),
        lambda: bob.DeleteJob(JOB.DeleteJobRequest(job_id=job.id), timeout=30),
        lambda: bob.CreateDownload(JOB.CreateDownloadRequest(job_id=job.id, uris=[asset]), timeout=30),
    ):
        error = rpc_error(call)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.NOT_FOUND,
            f"no job with `job_id` {job.id!r}.",
        )
    assert job.id not in [j.id for j in bob.ListJobs(JOB.ListJobsRequest(page_size=100), timeout=30).jobs]
    assert job.id in [j.id for j in root.ListJobs(JOB.ListJobsRequest(page_size=100), timeout=30).jobs]
    # Bob names Alice's objects: he knows their sha256, not their bytes.
    error = rpc_error(lambda: bob.SubmitJob(JOB.SubmitJobRequest(spec=job.spec), timeout=30))
    assert (
        error.code() == grpc.StatusCode.PERMISSION_DENIED and "neither a file you uploaded" in error.details()
    )
    # No credential, or a made-up one.
    for stranger in (
        coordinator_stub(coordinator, ""),
        client_stub(coordinator.target, Credentials("tire_x")),
    ):
        error = rpc_error(lambda s=stranger: s.ListJobs(JOB.ListJobsRequest(), timeout=30))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED


def test_uploads_cannot_write_over_objects_nor_slip_other_bytes_in(coordinator, stub, finished_job):
    job = stub.GetJob(JOB.GetJobRequest(job_id=finished_job[0].id), timeout=30).job
    bob = coordinator_stub(coordinator, "bob")
    monkey = MONKEY.read_bytes()
    before = repaired_sha256(stub, job)

    def create_upload(data: bytes, size: int | None = None) -> JOB.Upload:
        file = JOB.UploadFile(
            name="monkey.ply",
            size_bytes=size or len(data),
            sha256=sha256(data),
            media_type="application/x-ply",
        )
        return bob.CreateUpload(JOB.CreateUploadRequest(files=[file]), timeout=30).uploads[0]

    # Bob's URL for bytes the store holds writes a staging key of his, never the object Alice's job read.
    upload_of_monkey = create_upload(monkey)
    assert upload_of_monkey.needs_upload and "/staging/bob/" in upload_of_monkey.put_url
    put(upload_of_monkey.put_url, b"garbage over the monkey")
    bad = small_spec([upload_of_monkey.object], list(job.spec.references))
    bad.references[0].CopyFrom(upload(bob, [REFERENCE], "image/png")[0])
    error = rpc_error(lambda: bob.SubmitJob(JOB.SubmitJobRequest(spec=bad), timeout=30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`spec.asset.frames[0].uri` does not hold the bytes announced" in error.details()
    # An oversized body on a URL issued for one byte, and a body of the right size but wrong bytes.
    tiny = create_upload(b"x")
    put(tiny.put_url, b"x" * (8 * 2**20))
    wrong = create_upload(b"y" * 1000)
    put(wrong.put_url, b"z" * 1000)
    for upload_, why in ((tiny, "over the limit of 1 bytes"), (wrong, "sha256")):
        bad.asset.frames[0].CopyFrom(upload_.object)
        error = rpc_error(lambda: bob.SubmitJob(JOB.SubmitJobRequest(spec=bad), timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and why in error.details()
    # Another bucket, a non-content key.
    for uri, why in (
        ("s3://otherbucket/private/secret.ply", "object of this deployment"),
        (upload_of_monkey.object.uri.replace("sha256/", "uploads/"), "content-addressed"),
    ):
        bad.asset.frames[0].uri = uri
        error = rpc_error(lambda: bob.SubmitJob(JOB.SubmitJobRequest(spec=bad), timeout=30))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and why in error.details()
    # Alice's outputs are untouched.
    assert repaired_sha256(stub, job) == before


def test_a_rotated_token_works_without_a_restart(coordinator, tokens_file):
    carol = new_token()
    tokens_file.write_text("\n".join([*ENTRIES, token_entry(carol, "carol")]) + "\n")
    stub = client_stub(coordinator.target, Credentials(carol))
    assert stub.ListJobs(JOB.ListJobsRequest(), timeout=30).jobs == []
    tokens_file.write_text("\n".join(ENTRIES) + "\n")  # carol's entry revoked
    assert rpc_error(lambda: stub.ListJobs(JOB.ListJobsRequest(), timeout=30)).code() == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert coordinator.process.poll() is None


def test_delete_job_removes_it_and_what_only_it_used(coordinator, stub, spec):
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec), timeout=30).job
    error = rpc_error(lambda: stub.DeleteJob(JOB.DeleteJobRequest(job_id=job.id), timeout=30))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "cancel it" in error.details()
    stub.CancelJob(JOB.CancelJobRequest(job_id=job.id), timeout=30)
    watch(stub, job.id)
    stub.DeleteJob(JOB.DeleteJobRequest(job_id=job.id), timeout=30)
    assert rpc_error(lambda: stub.GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30)).code() == (
        grpc.StatusCode.NOT_FOUND
    )
    # The inputs stay: Alice uploaded them, and her other jobs read them.
    assert upload(stub, [MONKEY], "application/x-ply")[0] == spec.asset.frames[0]


# ----- 7. a scaled inpainter ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def replicas(launch_service) -> list[ServiceProcess]:
    """Three inpainter processes, as three pods behind the chart's headless Service."""
    return [launch_service(*SERVICES["inpainter"]) for _ in range(3)]


def test_inpaint_calls_spread_over_replicas_and_survive_one_killed(
    replicas, stages, start_coordinator, tmp_path, embedded_sha256
):
    # One target for all three, as dns:/// gives in the cluster; the coordinator's channel balances
    # round-robin over the addresses.
    target = "ipv4:" + ",".join(replica.target for replica in replicas)
    state = tmp_path / "coordinator.sqlite"
    coordinator = start_coordinator(stages, state, TIRE_COORDINATOR_INPAINTER=target)
    stub = coordinator_stub(coordinator)

    # A whole job: its inpaint calls reach every replica.
    spec = uploaded_spec(stub)
    first = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec), timeout=30).job
    events = watch(stub, first.id)
    assert events[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, events[-1].finished.error
    per_replica = [calls(replica).get("Inpaint", 0) for replica in replicas]
    assert sum(per_replica) >= 7 and all(count >= 1 for count in per_replica), per_replica

    # A second job, one replica killed while ring 1 inpaints: the others take its calls.
    second = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec, request_id="scaled-2"), timeout=30).job
    seen = watch(stub, second.id, until=step_started("ring1/inpaint/"))
    replicas[0].stop()
    events = seen + watch(stub, second.id, after=seen[-1].sequence)
    assert events[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, events[-1].finished.error
    assert len([s for s in steps(events, "step_finished") if "/inpaint/" in s]) == 7
    job = stub.GetJob(JOB.GetJobRequest(job_id=second.id), timeout=30).job
    assert repaired_sha256(stub, job) == embedded_sha256
