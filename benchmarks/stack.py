"""The local stack against embedded mode: the same job, seconds from submission to its end.

    python -m benchmarks.stack [--repeats 3] [--quick]

The job is the bundled LGM monkey at the default settings (256x256 views every 20 degrees, the
paper's fixed rings [20, 90, 180]) with the CPU profile's strengths, as ``tire run`` repairs it:

- embedded: the five stages in this process (``services.embedded``), an in-memory store and an
  in-memory job store, the runner called directly, as ``tire run`` does; timed from creating the job
  to the runner's return (which writes the JobFinished event);
- stack: an S3 server (rclone), the five stage services and the coordinator, each its own process,
  started as ``tire up`` starts them (on free ports); the inputs are uploaded once through
  CreateUpload, and each job is timed from SubmitJob to the JobFinished event of WatchJob.

Each mode first runs a warm-up job (numba caches, first calls, process start-up are excluded), then
the modes take turns, one job each per repeat, so that drift on a shared machine hits both alike.
Repeat r uses seed r in both modes: the inpainted views, and so every object after them, are new in
each repeat rather than already in the store. The table gives the median; a second table splits the
time by step (a step's seconds as its StepFinished event reports them, summed over the step's calls;
the inpaint calls of a ring overlap, so their sum exceeds their share of the wall time); a third gives
each process's CPU seconds per job and its peak resident memory since it started (``VmHWM``; in
embedded mode the benchmark's own process, which also holds the stack's client). Goal (issue 4): the
stack within 10% of embedded mode.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numba
from tire.v1 import common_pb2, coordinator_pb2

from benchmarks.timing import cpu_name
from services.client import Credentials, coordinator_stub, upload
from services.common.local_server import free_port
from services.common.store import MemoryStore
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.embedded import embedded_stages
from services.stack import SERVICES, local_stack

SAMPLES = Path(__file__).parents[1] / "samples"
MONKEY = SAMPLES / "monkey_lgm.ply"
REFERENCE = SAMPLES / "monkey_front.png"
GOAL_RATIO = 1.10
START_TIMEOUT_S = 300.0
JOB_TIMEOUT_S = 1800.0
# Steps grouped for the breakdown: "ring2/inpaint/140" counts under "inpaint".
GROUPS = ("fit_subject", "render", "locate", "inpaint", "refine", "reconstruct", "after", "outputs")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux ``/proc``; 0 where unreadable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the command name: state is field 3 of stat(5), utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_mib(pid: int) -> float:
    """The most resident memory a process has held since it started, MiB (``VmHWM``; 0 where unreadable)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return 0.0


def children(pid: int) -> list[int]:
    """Ids of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def job_spec(
    frames: list[common_pb2.ObjectRef], references: list[common_pb2.ObjectRef], seed: int, quick: bool
) -> coordinator_pb2.JobSpec:
    """The benchmark job: defaults (resolution 256, orbit step 20, fixed rings, the backends' strengths)."""
    spec = coordinator_pb2.JobSpec(asset=common_pb2.AssetRef(frames=frames), references=references, seed=seed)
    if quick:
        spec.resolution, spec.orbit_step_deg = 64, 45.0
    return spec


def step_seconds(events: list[coordinator_pb2.JobEvent]) -> dict[str, float]:
    """Seconds per step group, summed over the job's StepFinished events."""
    totals = dict.fromkeys(GROUPS, 0.0)
    for event in events:
        if event.HasField("step_finished"):
            name = event.step_finished.step
            group = name.split("/")[1] if "/" in name else name
            totals[group] = totals.get(group, 0.0) + event.step_finished.seconds
    return totals


# ----- embedded ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One timed job: wall seconds, its events, CPU seconds by process over the job, and each process's
    peak memory so far (MiB)."""

    seconds: float
    events: list[coordinator_pb2.JobEvent]
    cpu: dict[str, float]
    peak: dict[str, float]


class Embedded:
    """Jobs run in this process, as ``tire run`` runs them."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.stages = embedded_stages(self.store, "cpu")
        self.frames = [
            self.store.put_bytes(MONKEY.read_bytes(), suffix=".ply", media_type="application/x-ply")
        ]
        self.references = [
            self.store.put_bytes(REFERENCE.read_bytes(), suffix=".png", media_type="image/png")
        ]

    def run(self, seed: int, quick: bool) -> Run:
        """Times one job from creating it to the runner's return."""
        with JobStore(":memory:") as jobs:
            cpu = cpu_seconds(os.getpid())
            start = time.perf_counter()
            spec = frame_job(resolve_spec(job_spec(self.frames, self.references, seed, quick)), self.store)
            job, _ = jobs.create(spec)
            job = JobRunner(jobs, self.stages, self.store).run(job.id)
            seconds = time.perf_counter() - start
            cpu = cpu_seconds(os.getpid()) - cpu
            if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
                raise SystemExit(f"benchmarks.stack: the embedded job failed: {job.error}")
            events = jobs.events(job.id, limit=100_000)
            return Run(seconds, events, {"this process": cpu}, {"this process": peak_mib(os.getpid())})


# ----- the local stack ---------------------------------------------------------------------------


@contextmanager
def stack_processes(folder: Path) -> Iterator[tuple[str, Credentials, dict[str, int]]]:
    """The local stack as ``tire up`` starts it (``services.stack.local_stack``), on free ports, without
    metrics; yields the coordinator's target, its principal's credentials and each process's id by name
    (rclone's too)."""
    ports = {service.name: free_port() for service in SERVICES}
    with local_stack(folder, ports, timeout_s=START_TIMEOUT_S, metrics=False) as stack:
        pids = {name: process.pid for name, process in stack.processes.items()}
        rclone = set(children(os.getpid())) - set(pids.values())  # the S3 server: the other child
        if len(rclone) == 1:
            pids["s3 (rclone)"] = rclone.pop()
        credentials = Credentials(token=stack.token_file.read_text().strip())
        yield f"127.0.0.1:{ports['coordinator']}", credentials, pids


class Stack:
    """Jobs submitted to a coordinator of the local stack, as ``tire submit --watch`` submits them."""

    def __init__(self, target: str, credentials: Credentials, pids: dict[str, int]) -> None:
        self.stub = coordinator_stub(target, credentials)
        self.pids = {**pids, "this process (client)": os.getpid()}
        self.frames = upload(self.stub, [MONKEY], "application/x-ply")
        self.references = upload(self.stub, [REFERENCE], "image/png")

    def run(self, seed: int, quick: bool) -> Run:
        """Times one job from SubmitJob to the JobFinished event of WatchJob."""
        request = coordinator_pb2.SubmitJobRequest(spec=job_spec(self.frames, self.references, seed, quick))
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        start = time.perf_counter()
        job = self.stub.SubmitJob(request, timeout=30).job
        events = []
        watch = coordinator_pb2.WatchJobRequest(job_id=job.id)
        for response in self.stub.WatchJob(watch, timeout=JOB_TIMEOUT_S):
            events.append(response.event)
            if response.event.HasField("finished"):
                break
        seconds = time.perf_counter() - start
        cpu = {name: cpu_seconds(pid) - cpu[name] for name, pid in self.pids.items()}
        if not events or events[-1].finished.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
            error = events[-1].finished.error if events else "no events"
            raise SystemExit(f"benchmarks.stack: the stack's job failed: {error}")
        # The client is this process, whose peak is embedded mode's: not the stack's.
        peak = {name: peak_mib(pid) for name, pid in self.pids.items() if pid != os.getpid()}
        return Run(seconds, events, cpu, peak)


# ----- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="64x64 views every 45 degrees, one repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1

    size = "64x64 every 45 degrees" if args.quick else "256x256 every 20 degrees"
    print(f"One job on the LGM monkey ({size}, fixed rings), seconds, median of {args.repeats}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {numba.config.NUMBA_NUM_THREADS} numba threads\n")

    runs: dict[str, list[Run]] = {"embedded": [], "stack": []}
    with tempfile.TemporaryDirectory(prefix="tire-bench-stack-") as folder:
        with stack_processes(Path(folder)) as (target, credentials, pids):
            modes = {"embedded": Embedded(), "stack": Stack(target, credentials, pids)}
            for mode in modes.values():
                mode.run(0, args.quick)  # warm-up
            for repeat in range(1, args.repeats + 1):
                for name, mode in modes.items():
                    run = mode.run(repeat, args.quick)
                    runs[name].append(run)
                    print(f"  repeat {repeat}: {name:<8} {run.seconds:7.2f} s", flush=True)

    embedded = statistics.median(run.seconds for run in runs["embedded"])
    print(f"\n| mode | seconds (median) | runs | ratio stack/embedded | within {GOAL_RATIO - 1:.0%} |")
    print("|---|---:|---|---:|:---:|")
    for name, mode_runs in runs.items():
        median = statistics.median(run.seconds for run in mode_runs)
        ratio = median / embedded
        met = "" if name == "embedded" else ("yes" if ratio <= GOAL_RATIO else "**no**")
        listed = ", ".join(f"{run.seconds:.1f}" for run in mode_runs)
        print(f"| {name} | {median:.2f} | {listed} | {ratio:.3f} | {met} |")

    print("\n| step (seconds summed over its calls, median) | embedded | stack | stack - embedded |")
    print("|---|---:|---:|---:|")
    steps = {name: [step_seconds(run.events) for run in mode_runs] for name, mode_runs in runs.items()}
    for group in GROUPS:
        a = statistics.median(s[group] for s in steps["embedded"])
        b = statistics.median(s[group] for s in steps["stack"])
        print(f"| {group} | {a:.2f} | {b:.2f} | {b - a:+.2f} |")

    print("\n| mode | process | CPU seconds per job (median) | peak memory, MiB |")
    print("|---|---|---:|---:|")
    for name, mode_runs in runs.items():
        for process in mode_runs[0].cpu:
            cpu = statistics.median(run.cpu[process] for run in mode_runs)
            peak = mode_runs[-1].peak.get(process)
            print(f"| {name} | {process} | {cpu:.2f} | {'-' if peak is None else f'{peak:.0f}'} |")
        total = statistics.median(sum(run.cpu.values()) for run in mode_runs)
        print(f"| {name} | **all** | **{total:.2f}** | {sum(mode_runs[-1].peak.values()):.0f} |")


if __name__ == "__main__":
    main()
