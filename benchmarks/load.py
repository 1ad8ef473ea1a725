"""The coordinator under load: many jobs submitted at once, many open watches, and how fast the unary
calls still answer.

    python -m benchmarks.load [--jobs 10 100 1000] [--watches 0 100 1000] [--steps 20] [--step-ms 250]

Each scenario starts a coordinator in a process of its own, served as ``main`` serves it (grpc.aio,
8 threads for unary calls), with its job state in a fresh SQLite file. **Benchmark-only: the stages'
work is replaced** by ``FixedLatencyRunner``, which records ``--steps`` steps of ``--step-ms`` each per
job (a StepStarted and a StepFinished event per step, then JobFinished), so that the coordinator is
what is measured: the API, admission, the job store, the queue and the watches. SubmitJob does its
real work (checks, the framing fit on the real asset), and 100 jobs run at once.

Two callers submit N jobs at once (half each, the four real assets in turn where they are present, else
the monkey); then W watches open at once (half each, on their own jobs, with ``queue_positions``, so a
queued job answers at once); while the jobs run, GetJob and ListJobs are called back to back and a
tenth of the jobs are cancelled. Printed: p50 and p99 of each call in ms, the time to a watch's first
response, jobs lost (submitted, but not ended SUCCEEDED or CANCELLED: must be 0), watches that did not
see JobFinished, and the coordinator's resident memory per open watch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from benchmarks.timing import cpu_name
from services.common.errors import FailedPrecondition
from services.coordinator.stages import RetryPolicy

ROOT = Path(__file__).parents[1]
SAMPLES = ROOT / "samples"
FINAL = {
    coordinator_pb2.JOB_STATE_SUCCEEDED,
    coordinator_pb2.JOB_STATE_FAILED,
    coordinator_pb2.JOB_STATE_CANCELLED,
}
CALLERS = ("alice", "bob")
RUNNING_AT_ONCE = 100
WATCHES_PER_CHANNEL = 100  # as if from many clients: each connection carries at most this many streams


# ----- the coordinator's process ------------------------------------------------------------------


class FixedLatencyRunner:
    """Benchmark-only stand-in for ``JobRunner``: no stage is called; each job records ``steps`` steps
    of ``step_s`` seconds each (StepStarted, a sleep, StepFinished), then ends SUCCEEDED, or CANCELLED
    once a cancel is requested."""

    def __init__(self, jobs, steps: int, step_s: float):
        self.jobs, self.steps, self.step_s = jobs, steps, step_s

    retry = RetryPolicy()

    def run(self, job_id: str, lease=None) -> coordinator_pb2.Job:
        try:
            self.jobs.set_state(job_id, coordinator_pb2.JOB_STATE_RUNNING)
        except FailedPrecondition:  # cancelled (or ended) while it waited in the queue
            return self.jobs.get(job_id)
        for i in range(self.steps):
            if self.jobs.cancel_requested(job_id):
                return self.jobs.finish(job_id, coordinator_pb2.JOB_STATE_CANCELLED)[0]
            step = f"step{i}"
            self.jobs.append_event(
                job_id, coordinator_pb2.JobEvent(step_started=coordinator_pb2.StepStarted(step=step))
            )
            time.sleep(self.step_s)
            finished = coordinator_pb2.StepFinished(step=step, seconds=self.step_s)
            self.jobs.append_event(job_id, coordinator_pb2.JobEvent(step_finished=finished))
        return self.jobs.finish(job_id, coordinator_pb2.JOB_STATE_SUCCEEDED)[0]

    def retry_in_s(self, job_id: str) -> float:
        return 1.0


def upload_inputs(store, jobs, files: list[tuple[Path, str, str]]) -> list[dict]:
    """Puts each (path, suffix, media type) into ``store`` and records it as uploaded by both callers (as
    CreateUpload and a verified PUT leave it); returns the specs' inputs (uri, sha256, size, type)."""
    from services.common.store import content_key, content_sha256

    inputs = []
    for path, suffix, media_type in files:
        data = path.read_bytes()
        sha256 = content_sha256(data)
        uri = store.uri_for(content_key(sha256, suffix))
        store.put_at(uri, data)
        for caller in CALLERS:
            jobs.expect_upload(caller, uri, sha256, len(data), "", time.time_ns() + 10**13)
            jobs.mark_uploaded(caller, uri, time.time_ns() + 10**13)
        inputs.append({"uri": uri, "sha256": sha256, "size_bytes": len(data), "media_type": media_type})
    return inputs


def serve_api(state_dir: Path, jobs, queue, store, tokens: dict[str, str], settings, inputs: list[dict]):
    """The coordinator's API over ``jobs`` and ``queue`` on a free loopback port (``grpc.aio``, no
    metrics); writes ``ready.json`` (port, pid, the specs' inputs) once it listens. Returns the server."""
    from services.common.config import ServerSettings
    from services.common.server import ServiceSpec, start_server
    from services.coordinator.auth import TokenBook, token_entry
    from services.coordinator.server import SERVICE_NAME, CoordinatorServicer

    entries = ",".join(token_entry(token, name) for name, token in tokens.items())
    servicer = CoordinatorServicer(jobs, queue, store, TokenBook(inline=entries), settings)
    spec = ServiceSpec(
        SERVICE_NAME,
        lambda server: coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(servicer, server),
        asynchronous=True,
    )
    running = start_server(spec, ServerSettings(port=0, host="127.0.0.1", metrics_port=-1))
    ready = {"port": running.port, "pid": os.getpid(), "inputs": inputs}
    (state_dir / "ready.json.partial").write_text(json.dumps(ready))
    (state_dir / "ready.json.partial").replace(state_dir / "ready.json")
    return running


def serve(state_dir: Path, steps: int, step_s: float, tokens: dict[str, str]) -> None:
    """The coordinator of one scenario: its assets already uploaded by both callers; writes
    ``ready.json`` (port, pid, the specs' inputs) and serves until killed."""
    from services.common.store import MemoryStore
    from services.coordinator.jobqueue import JobQueue
    from services.coordinator.jobstore import JobStore
    from services.coordinator.server import CoordinatorSettings
    from services.testing.synthetic import SHARED_ASSETS

    store, jobs = MemoryStore(), JobStore(state_dir / "coordinator.sqlite")
    assets = [SAMPLES / "monkey_lgm.ply"] + [
        path
        for name in ("hamburger_lgm.ply", "donut_unnormalized_quats.ply")
        if (path := SHARED_ASSETS / name).exists()
    ]
    files = [(a, ".ply", "application/x-ply") for a in assets]
    inputs = upload_inputs(store, jobs, [*files, (SAMPLES / "monkey_front.png", ".png", "image/png")])
    settings = CoordinatorSettings(
        workers=RUNNING_AT_ONCE,
        max_watches_per_caller=10_000,
        max_active_jobs_per_caller=100_000,
        max_submissions_per_s=1e6,
        submission_burst=100_000,
    )
    queue = JobQueue(FixedLatencyRunner(jobs, steps, step_s), settings.workers)  # type: ignore[arg-type]
    queue.start()
    running = serve_api(state_dir, jobs, queue, store, tokens, settings, inputs)
    while running:  # the server stops when nothing refers to it
        time.sleep(3600)


# ----- the load ------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentiles(values: list[float]) -> str:
    """Two table cells: the median and the 99th percentile."""
    if not values:
        return "- | -"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"{statistics.median(ordered):.1f} | {p99:.1f}"


async def scenario(n_jobs: int, n_watches: int, steps: int, step_s: float) -> dict:
    from services.coordinator.auth import new_token

    tokens = {name: new_token() for name in CALLERS}
    with tempfile.TemporaryDirectory() as folder:
        state = Path(folder)
        command = [sys.executable, "-m", "benchmarks.load", "--serve", folder, "--steps", str(steps),
                   "--step-ms", str(step_s * 1000), "--tokens", json.dumps(tokens)]  # fmt: skip
        server = subprocess.Popen(command, cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while not (state / "ready.json").exists():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the coordinator did not start")
                await asyncio.sleep(0.05)
            ready = json.loads((state / "ready.json").read_text())
            return await load(ready, tokens, n_jobs, n_watches, steps * step_s)
        finally:
            server.kill()
            server.wait()


async def load(ready: dict, tokens: dict[str, str], n_jobs: int, n_watches: int, job_s: float) -> dict:
    target = f"127.0.0.1:{ready['port']}"
    metadata = {name: (("authorization", f"Bearer {token}"),) for name, token in tokens.items()}
    channels = [grpc.aio.insecure_channel(target) for _ in range(1 + n_watches // WATCHES_PER_CHANNEL)]
    stubs = [coordinator_pb2_grpc.CoordinatorServiceStub(channel) for channel in channels]
    api = stubs[0]
    *assets, reference = ready["inputs"]

    def spec(i: int) -> coordinator_pb2.JobSpec:
        asset = assets[i % len(assets)]
        frame, image = common_pb2.ObjectRef(**asset), common_pb2.ObjectRef(**reference)
        return coordinator_pb2.JobSpec(
            asset=common_pb2.AssetRef(frames=[frame]), references=[image], resolution=64
        )

    results: dict[str, list[float]] = {
        name: [] for name in ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "first")
    }
    owners = [CALLERS[i % 2] for i in range(n_jobs)]

    async def submit(i: int) -> str:
        start = time.perf_counter()
        answer = await api.SubmitJob(
            coordinator_pb2.SubmitJobRequest(spec=spec(i)), metadata=metadata[owners[i]], timeout=600
        )
        results["SubmitJob"].append(1000.0 * (time.perf_counter() - start))
        return answer.job.id

    burst = time.perf_counter()
    job_ids = await asyncio.gather(*(submit(i) for i in range(n_jobs)))
    submitted_per_s = n_jobs / (time.perf_counter() - burst)

    finished_watches = 0
    opened = asyncio.Event()
    first_responses = 0

    async def watch(k: int) -> None:
        nonlocal finished_watches, first_responses
        i = k % n_jobs
        stub = stubs[k // WATCHES_PER_CHANNEL if n_watches else 0]
        request = coordinator_pb2.WatchJobRequest(job_id=job_ids[i], queue_positions=True)
        start = time.perf_counter()
        first = True
        async for response in stub.WatchJob(
            request, metadata=metadata[owners[i]], timeout=job_s * n_jobs + 600
        ):
            if first:
                results["first"].append(1000.0 * (time.perf_counter() - start))
                first, first_responses = False, first_responses + 1
                if first_responses == n_watches:
                    opened.set()
            if response.event.HasField("finished"):
                finished_watches += 1

    rss_before = rss_mib(ready["pid"])
    watchers = [asyncio.create_task(watch(k)) for k in range(n_watches)]
    if n_watches:
        await asyncio.wait_for(opened.wait(), 300)
    rss_after = rss_mib(ready["pid"])

    async def call_until_done(name: str, make) -> None:
        while not done.is_set():
            start = time.perf_counter()
            await make()
            results[name].append(1000.0 * (time.perf_counter() - start))
            await asyncio.sleep(0.01)

    done = asyncio.Event()
    last = coordinator_pb2.GetJobRequest(job_id=job_ids[-1])
    page = coordinator_pb2.ListJobsRequest(page_size=50)
    pollers = [
        asyncio.create_task(
            call_until_done("GetJob", lambda: api.GetJob(last, metadata=metadata[owners[-1]], timeout=60))
        ),
        asyncio.create_task(
            call_until_done("ListJobs", lambda: api.ListJobs(page, metadata=metadata["alice"], timeout=60))
        ),
    ]
    for i in range(n_jobs - max(1, n_jobs // 10), n_jobs):  # the last tenth: queued or running
        start = time.perf_counter()
        await api.CancelJob(
            coordinator_pb2.CancelJobRequest(job_id=job_ids[i]), metadata=metadata[owners[i]], timeout=60
        )
        results["CancelJob"].append(1000.0 * (time.perf_counter() - start))
        await asyncio.sleep(0.01)

    # Every job to its end (the API says), then every watch.
    deadline = time.monotonic() + job_s * n_jobs / RUNNING_AT_ONCE + 300
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        for i in range(0, n_jobs, 1):
            if states.get(job_ids[i]) not in FINAL:
                answer = await api.GetJob(
                    coordinator_pb2.GetJobRequest(job_id=job_ids[i]), metadata=metadata[owners[i]], timeout=60
                )
                states[job_ids[i]] = answer.job.state
        if all(state in FINAL for state in states.values()):
            break
        await asyncio.sleep(0.5)
    done.set()
    await asyncio.gather(*pollers)
    await asyncio.wait_for(asyncio.gather(*watchers, return_exceptions=True), 120)
    for channel in channels:
        await channel.close()
    ended = {coordinator_pb2.JOB_STATE_SUCCEEDED, coordinator_pb2.JOB_STATE_CANCELLED}
    return {
        "calls": results,
        "lost": sum(1 for job_id in job_ids if states.get(job_id) not in ended),
        "watches_without_end": n_watches - finished_watches,
        "kib_per_watch": 1024 * (rss_after - rss_before) / n_watches if n_watches else None,
        "submitted_per_s": submitted_per_s,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--watches", type=int, nargs="+", default=[0, 100, 1000])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-ms", type=float, default=250.0)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--tokens", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), args.steps, args.step_ms / 1000, json.loads(args.tokens))
        return

    events_per_s = 2 * RUNNING_AT_ONCE / (args.step_ms / 1000)
    print("The coordinator under load (benchmark-only: the stages' work replaced by a fixed latency of")
    print(f"{args.steps} steps x {args.step_ms:g} ms per job; {RUNNING_AT_ONCE} jobs run at once, appending")
    print(f"{events_per_s:.0f} events a second between them)")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; latencies in ms, p50 | p99\n")
    calls = ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "watch's first response")
    print("| jobs | watches | " + " | ".join(f"{name} p50 | p99" for name in calls), end="")
    print(" | submitted a second | lost | watches without JobFinished | KiB per watch |")
    print("|---:|---:|" + "---:|" * (2 * len(calls) + 4))
    for n_jobs in args.jobs:
        for n_watches in args.watches:
            outcome = asyncio.run(scenario(n_jobs, n_watches, args.steps, args.step_ms / 1000))
            calls = outcome["calls"]
            memory = f"{outcome['kib_per_watch']:.1f}" if outcome["kib_per_watch"] is not None else "-"
            cells = [
                percentiles(calls[name]) for name in ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "first")
            ]
            cells += [
                f"{outcome['submitted_per_s']:.0f}",
                str(outcome["lost"]),
                str(outcome["watches_without_end"]),
            ]
            cells.append(memory)
            print(f"| {n_jobs} | {n_watches} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
