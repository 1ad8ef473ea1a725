"""Coordinator replicas on one PostgreSQL database: throughput against the number of replicas, the time
a surviving replica takes to resume a dead one's job, how late events reach 100 watchers, and our claim
against a queue library's.

    python -m benchmarks.replicas [--replicas 1 2 4] [--jobs 320] [--workers 8] [--steps 10]
        [--step-ms 200 50] [--leases 3 10] [--trials 3] [--watchers 100] [--claim-depth 2000]
        [--parts throughput resume watch claims]

Every replica is a coordinator process of its own, served as ``benchmarks.load`` serves one (grpc.aio,
the real servicer, admission and job store), claiming jobs with a ``JobQueue`` of ``--workers`` workers
under leases, all of them on one database of a ``LocalPostgres`` (a real server started for the run,
durable: fsync on; without PostgreSQL the benchmark says so and skips). **Benchmark-only: no stage is
called**; ``benchmarks.load.FixedLatencyRunner`` records ``--steps`` steps of ``--step-ms`` each per job
(a StepStarted and a StepFinished event per step, then JobFinished), so that what is measured is the
coordinator and its database.

1. Throughput: the same ``--jobs`` jobs (two callers, submitted up front, in turn to each replica, while
   the replicas' workers are held) run on 1, 2 and 4 replicas, and on one replica over SQLite, for each
   ``--step-ms``; the clock runs from releasing the workers to the last job's end (its ``updated_at``).
   Printed: jobs a minute, the ideal rate (workers / job time), the ratio to one replica and that ratio
   over the replicas (the efficiency; the goal is 0.8 or more), the CPU per job of the replicas and of
   PostgreSQL (``/proc``), and how busy the cores were: ours, the machine's, and what else ran.
2. Resumption: replica A runs a job (16 steps of 500 ms, each step's record kept as the real runner
   does, so a resumed job skips the finished ones), replica B idles; A is killed (SIGKILL) mid-job at a
   random point of its heartbeat, and the time from the kill to B's first event for the job, and to the
   job's end, is measured against ``lease_s`` (B's workers look for claimable jobs every second: an
   expired lease notifies nobody).
3. Watches: 1 and ``--watchers`` WatchJob streams of one job (20 steps of 250 ms, 41 events), opened
   before it starts, on the replica that runs it, split between it and a second replica, or all on the
   second (which hears the appends through LISTEN/NOTIFY); per event and watcher, the delay from the
   event's ``time`` (set by the job store as it appends it, before the commit) to its arrival.
4. Claims: 8 claimers drain ``--claim-depth`` queued jobs with ``JobStore.claim``, and with PgQueuer's
   dequeue when it is installed (``pip install pgqueuer``; not a project dependency), with and without
   the planner's statistics of the queue's table.

The driver (submissions, watchers, claimers) runs on the same machine, on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from tire.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from benchmarks.load import CALLERS, FINAL, SAMPLES, FixedLatencyRunner, serve_api, upload_inputs
from benchmarks.timing import cpu_name

ROOT = Path(__file__).parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RESUME_STEPS, RESUME_STEP_S = 16, 0.5
WATCH_STEPS, WATCH_STEP_S = 20, 0.25
PARTS = ["throughput", "resume", "watch", "claims"]


# ----- a replica's process -------------------------------------------------------------------------


class ResumableFixedLatencyRunner(FixedLatencyRunner):
    """``FixedLatencyRunner`` that keeps each finished step's record (``JobStore.record_step``, as the
    real runner keeps a stage's result) and skips the steps already recorded, so a replica resuming a
    dead one's job goes on from its last finished step; it stops before a step once its lease is lost."""

    def run(self, job_id: str, lease=None) -> coordinator_pb2.Job:
        from google.protobuf.empty_pb2 import Empty

        from services.common.errors import FailedPrecondition

        try:
            self.jobs.set_state(job_id, coordinator_pb2.JOB_STATE_RUNNING)
        except FailedPrecondition:
            return self.jobs.get(job_id)
        done = set(self.jobs.finished_steps(job_id))
        for i in range(self.steps):
            step = f"step{i}"
            if step in done:
                continue
            if lease is not None and not lease.held():
                return self.jobs.get(job_id)
            if self.jobs.cancel_requested(job_id):
                return self.jobs.finish(job_id, coordinator_pb2.JOB_STATE_CANCELLED)[0]
            started = coordinator_pb2.StepStarted(step=step)
            self.jobs.append_event(job_id, coordinator_pb2.JobEvent(step_started=started))
            time.sleep(self.step_s)
            self.jobs.record_step(job_id, step, Empty(), self.step_s)
            finished = coordinator_pb2.StepFinished(step=step, seconds=self.step_s)
            self.jobs.append_event(job_id, coordinator_pb2.JobEvent(step_finished=finished))
        return self.jobs.finish(job_id, coordinator_pb2.JOB_STATE_SUCCEEDED)[0]


def serve(state_dir: Path, options: dict) -> None:
    """One replica: its assets uploaded by both callers (in its own in-memory object store, in the shared
    job store); writes ``ready.json`` (port, pid, the specs' inputs), waits for a ``go`` file when held,
    then starts its workers and serves until killed."""
    from services.common.store import MemoryStore
    from services.coordinator.jobqueue import JobQueue
    from services.coordinator.jobstore import JobStore
    from services.coordinator.server import CoordinatorSettings

    workers = options["workers"]
    store = MemoryStore()
    jobs = JobStore(options["database"], pool_size=max(10, workers + 4))
    # The same upload rows from each replica: recorded again, the same.
    inputs = upload_inputs(
        store,
        jobs,
        [
            (SAMPLES / "monkey_lgm.ply", ".ply", "application/x-ply"),
            (SAMPLES / "monkey_front.png", ".png", "image/png"),
        ],
    )
    settings = CoordinatorSettings(
        database_url=options["database"],
        replica_id=options["holder"],
        lease_s=options["lease_s"],
        workers=workers,
        max_watches_per_caller=10_000,
        max_active_jobs_per_caller=100_000,
        max_submissions_per_s=1e6,
        submission_burst=100_000,
    )
    runner_class = ResumableFixedLatencyRunner if options["resumable"] else FixedLatencyRunner
    runner = runner_class(jobs, options["steps"], options["step_s"])
    queue = JobQueue(runner, workers, holder=options["holder"], lease_s=options["lease_s"])  # type: ignore[arg-type]
    running = serve_api(state_dir, jobs, queue, store, options["tokens"], settings, inputs)
    if options["hold"]:
        while not (state_dir / "go").exists():
            time.sleep(0.005)
    queue.start()
    while running:  # the server stops when nothing refers to it
        time.sleep(3600)


# ----- the driver's side ---------------------------------------------------------------------------


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of one process so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def postgres_cpu_s(postmaster: int) -> float:
    """CPU seconds of the PostgreSQL server and its processes (backends, writers) so far."""
    total = cpu_s(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                total += cpu_s(int(entry.name))
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core so far, from ``/proc/stat``."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values[:8]) - idle, sum(values[:8])


@dataclass
class CpuSnapshot:
    """The machine's CPU ticks (``/proc/stat``: user, nice, system, idle, iowait, irq, softirq, steal)
    and every process's (name, parent, ticks)."""

    machine: list[int]
    processes: dict[int, tuple[str, int, int]]

    @classmethod
    def take(cls) -> CpuSnapshot:
        machine = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        processes = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    text = (entry / "stat").read_text()
                except OSError:
                    continue
                name = text[text.index("(") + 1 : text.rindex(")")]
                fields = text.rsplit(")", 1)[1].split()
                processes[int(entry.name)] = (name, int(fields[1]), int(fields[11]) + int(fields[12]))
        return cls(machine, processes)


def others_busy(before: CpuSnapshot, after: CpuSnapshot, ours: set[int], postmaster: int | None) -> str:
    """What else kept the cores busy between two snapshots, in % of all the cores' time: interrupts,
    the hypervisor's steal, and the busiest processes that are not this benchmark's (by name; their own
    time only, so a process that started and ended between the snapshots is missed)."""
    total = sum(after.machine) - sum(before.machine)
    irq = sum(after.machine[5:7]) - sum(before.machine[5:7])
    steal = after.machine[7] - before.machine[7]
    by_name: dict[str, int] = {}
    for pid, (name, parent, ticks) in after.processes.items():
        if pid in ours or (postmaster is not None and parent == postmaster):
            continue
        earlier = before.processes.get(pid)
        spent = ticks - (earlier[2] if earlier else 0)
        if name.startswith("kworker"):  # the kernel's workers, named after their work of the moment
            name = "kworker"
        if spent > 0:
            by_name[name] = by_name.get(name, 0) + spent
    busiest = sorted(by_name.items(), key=lambda item: -item[1])[:3]
    parts = [f"irq {100 * irq / total:.0f}%", f"steal {100 * steal / total:.0f}%"]
    parts += [f"{name} {100 * ticks / total:.0f}%" for name, ticks in busiest]
    return ", ".join(parts)


class Replica:
    """A coordinator replica's process (``serve``), its log in its own folder."""

    def __init__(self, folder: Path, name: str, database: str, tokens: dict[str, str], **options):
        self.folder = folder / name
        self.folder.mkdir(parents=True)
        self.name = name
        options = {"database": database, "holder": name, "tokens": tokens, **options}
        self.log = (self.folder / "log").open("w")
        command = [sys.executable, "-m", "benchmarks.replicas", "--serve", str(self.folder),
                   "--options", json.dumps(options)]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.ready: dict = {}

    async def wait_ready(self, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not (self.folder / "ready.json").exists():
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"replica {self.name} did not start:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        self.ready = json.loads((self.folder / "ready.json").read_text())
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.ready['port']}")
        self.stub = coordinator_pb2_grpc.CoordinatorServiceStub(self.channel)

    def go(self) -> None:
        (self.folder / "go").touch()

    def cpu_s(self) -> float:
        return cpu_s(self.process.pid)

    def log_tail(self) -> str:
        self.log.flush()
        return "".join((self.folder / "log").read_text().splitlines(keepends=True)[-20:])

    async def close(self) -> None:
        if self.ready:
            await self.channel.close()
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


async def start_replicas(replicas: list[Replica]) -> list[Replica]:
    try:
        await asyncio.gather(*(replica.wait_ready() for replica in replicas))
    except BaseException:
        for replica in replicas:
            await replica.close()
        raise
    return replicas


def job_spec(replica: Replica) -> coordinator_pb2.JobSpec:
    asset, reference = (common_pb2.ObjectRef(**ref) for ref in replica.ready["inputs"])
    return coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[asset]), references=[reference], resolution=64
    )


async def submit(replica: Replica, caller: str, tokens: dict[str, str]) -> str:
    answer = await replica.stub.SubmitJob(
        coordinator_pb2.SubmitJobRequest(spec=job_spec(replica)),
        metadata=(("authorization", f"Bearer {tokens[caller]}"),),
        timeout=600,
    )
    return answer.job.id


def quantiles(values: list[float]) -> tuple[float, float, float]:
    """(p50, p95, max)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[round(0.95 * (len(ordered) - 1))], ordered[-1]


# ----- 1. throughput -------------------------------------------------------------------------------


@dataclass
class Throughput:
    database: str
    replicas: int
    jobs_per_min: float
    ideal_per_min: float
    replica_cpu_s_per_job: list[float]
    postgres_cpu_s_per_job: float
    ours_busy: float  # the replicas', PostgreSQL's and this driver's CPU, over every core
    machine_busy: float  # every process's, the kernel's and other work's on the machine
    others: str  # what else kept the cores busy (``others_busy``)
    succeeded: int


async def throughput(
    folder: Path, database: str, postmaster: int | None, k: int, step_s: float, args: argparse.Namespace
) -> Throughput:
    from services.coordinator.auth import new_token
    from services.coordinator.databases import open_database

    tokens = {name: new_token() for name in CALLERS}
    options = {"workers": args.workers, "lease_s": 30.0, "steps": args.steps,
               "step_s": step_s, "resumable": False, "hold": True}  # fmt: skip
    replicas = await start_replicas(
        [Replica(folder, f"replica-{i}", database, tokens, **options) for i in range(k)]
    )
    db = open_database(database)
    try:
        # One submission a replica first (each fits the asset's framing once), then the rest at once.
        job_ids = [await submit(replicas[i], CALLERS[i % 2], tokens) for i in range(k)]
        job_ids += await asyncio.gather(
            *(submit(replicas[i % k], CALLERS[i % 2], tokens) for i in range(k, args.jobs))
        )
        replica_cpu = [replica.cpu_s() for replica in replicas]
        postgres_cpu = postgres_cpu_s(postmaster) if postmaster else 0.0
        busy, ticks = machine_ticks()
        snapshot = CpuSnapshot.take()
        driver_cpu, clock = time.process_time(), time.monotonic()
        started_ns = time.time_ns()
        for replica in replicas:
            replica.go()
        deadline = time.monotonic() + 60 + 10 * args.jobs * args.steps * step_s / args.workers
        final = tuple(sorted(FINAL))
        while True:
            await asyncio.sleep(0.25)
            with db.read() as tx:
                ended, last_ns = tx.execute(
                    "SELECT COUNT(*), MAX(updated_ns) FROM jobs WHERE state IN (?, ?, ?)", final
                ).fetchone()
            if ended == len(job_ids):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ended} of {len(job_ids)} jobs ended in time")
        replica_cpu = [
            replica.cpu_s() - before for replica, before in zip(replicas, replica_cpu, strict=True)
        ]
        postgres_cpu = (postgres_cpu_s(postmaster) - postgres_cpu) if postmaster else 0.0
        busy_after, ticks_after = machine_ticks()
        ours = {
            os.getpid(),
            *(replica.process.pid for replica in replicas),
            *([postmaster] if postmaster else []),
        }
        others = others_busy(snapshot, CpuSnapshot.take(), ours, postmaster)
        driver_cpu, clock = time.process_time() - driver_cpu, time.monotonic() - clock
        with db.read() as tx:
            succeeded = tx.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (coordinator_pb2.JOB_STATE_SUCCEEDED,)
            ).fetchone()[0]
    finally:
        db.close()
        for replica in replicas:
            await replica.close()
    n = len(job_ids)
    job_s = args.steps * step_s
    return Throughput(
        database="PostgreSQL" if postmaster else "SQLite",
        replicas=k,
        jobs_per_min=60e9 * n / (last_ns - started_ns),
        ideal_per_min=60 * k * args.workers / job_s,
        replica_cpu_s_per_job=[c / n for c in replica_cpu],
        postgres_cpu_s_per_job=postgres_cpu / n,
        ours_busy=(sum(replica_cpu) + postgres_cpu + driver_cpu) / (clock * (os.cpu_count() or 1)),
        machine_busy=(busy_after - busy) / max(1, ticks_after - ticks),
        others=others,
        succeeded=succeeded,
    )


# ----- 2. resumption after a replica dies ----------------------------------------------------------


@dataclass
class Resumption:
    lease_s: float
    lease_left_s: float  # of A's lease at the kill
    resumed_s: float  # kill -> B's first event for the job
    finished_s: float  # kill -> the job's JobFinished
    steps_run_by_b: int
    succeeded: bool


async def resumption(folder: Path, database: str, lease_s: float, kill_after_s: float) -> Resumption:
    from services.coordinator.auth import new_token
    from services.coordinator.jobstore import JobStore

    tokens = {name: new_token() for name in CALLERS}
    options = {"workers": 2, "lease_s": lease_s, "steps": RESUME_STEPS, "step_s": RESUME_STEP_S,
               "resumable": True}  # fmt: skip
    a, b = await start_replicas(
        [
            Replica(folder, "replica-a", database, tokens, hold=False, **options),
            Replica(folder, "replica-b", database, tokens, hold=True, **options),
        ]
    )
    store = JobStore(database, pool_size=2)
    try:
        job_id = await submit(a, CALLERS[0], tokens)
        while sum(e.HasField("step_started") for e in store.events(job_id)) < 3:  # A is in its 3rd step
            await asyncio.sleep(0.02)
        b.go()  # B's workers look for jobs (none is claimable: A holds the one there is)
        await asyncio.sleep(kill_after_s)  # at another point of A's heartbeat each time
        killed_ns = time.time_ns()
        a.process.send_signal(signal.SIGKILL)
        a.process.wait()
        holder, expires_ns = store.lease_of(job_id)
        assert holder == a.name, holder
        last = store.events(job_id)[-1].sequence
        resumed_ns = None
        deadline = time.monotonic() + lease_s + 60
        while time.monotonic() < deadline:
            events = store.events(job_id, last)
            if events and resumed_ns is None:
                resumed_ns = events[0].time.ToNanoseconds()
            if events and events[-1].HasField("finished"):
                return Resumption(
                    lease_s,
                    (expires_ns - killed_ns) / 1e9,
                    (resumed_ns - killed_ns) / 1e9,
                    (events[-1].time.ToNanoseconds() - killed_ns) / 1e9,
                    sum(event.HasField("step_started") for event in events),
                    events[-1].finished.state == coordinator_pb2.JOB_STATE_SUCCEEDED,
                )
            await asyncio.sleep(0.02)
        raise RuntimeError(f"the job did not end on replica B:\n{b.log_tail()}")
    finally:
        store.close()
        await a.close()
        await b.close()


# ----- 3. watches ----------------------------------------------------------------------------------


async def watches(
    folder: Path, database: str, n_watchers: int, on_runner: int, replicas: int
) -> dict[str, list[float]]:
    """Delays (ms) from each event's ``time`` to its arrival at each watcher, by where the watcher was:
    ``on_runner`` watchers on the replica that runs the job, the others on a second replica."""
    from services.coordinator.auth import new_token

    tokens = {name: new_token() for name in CALLERS}
    options = {"workers": 2, "lease_s": 30.0, "steps": WATCH_STEPS, "step_s": WATCH_STEP_S,
               "resumable": False, "hold": True}  # fmt: skip
    started = await start_replicas(
        [Replica(folder, f"replica-{i}", database, tokens, **options) for i in range(replicas)]
    )
    runner, other = started[0], started[-1]
    delays: dict[str, list[float]] = {"same replica": [], "other replica": []}
    metadata = (("authorization", f"Bearer {tokens[CALLERS[0]]}"),)
    try:
        job_id = await submit(runner, CALLERS[0], tokens)
        opened = 0
        all_open = asyncio.Event()
        ends = 0

        async def watch(k: int) -> None:
            nonlocal opened, ends
            replica, where = (runner, "same replica") if k < on_runner else (other, "other replica")
            request = coordinator_pb2.WatchJobRequest(job_id=job_id, queue_positions=True)
            async for response in replica.stub.WatchJob(request, metadata=metadata, timeout=300):
                arrived_ns = time.time_ns()
                if not response.HasField("event"):  # its place in the queue: the stream is open
                    opened += 1
                    if opened == n_watchers:
                        all_open.set()
                    continue
                delays[where].append((arrived_ns - response.event.time.ToNanoseconds()) / 1e6)
                if response.event.HasField("finished"):
                    ends += 1

        tasks = [asyncio.create_task(watch(k)) for k in range(n_watchers)]
        await asyncio.wait_for(all_open.wait(), 120)
        runner.go()
        await asyncio.wait_for(asyncio.gather(*tasks), 300)
        expected = 2 * WATCH_STEPS + 1
        if ends != n_watchers or any(len(d) % expected for d in delays.values()):
            raise RuntimeError(f"{ends} of {n_watchers} watches saw the job's end")
    finally:
        for replica in started:
            await replica.close()
    return delays


# ----- 4. claims: our JobStore.claim against a queue library --------------------------------------


def analyze(database: str, table: str, now: bool) -> None:
    """Fresh planner statistics of ``table`` (what autovacuum does a while after a table grows), or,
    not ``now``, none until this run ends: autovacuum off for the table."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(database, autocommit=True) as connection:
        if now:
            connection.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
        else:
            connection.execute(
                sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(sql.Identifier(table))
            )


def our_claims(database: str, depth: int, claimers: int, complete: bool, analyzed: bool) -> float:
    """Claims a second of ``claimers`` threads draining ``depth`` queued jobs (two owners) with
    ``JobStore.claim`` (and, with ``complete``, ending each with ``finish``); ``analyzed``: with the
    planner's statistics of the jobs (else none: autovacuum held off)."""
    import threading

    from services.coordinator.jobstore import JobStore

    store = JobStore(database, pool_size=claimers + 2)
    try:
        if not analyzed:
            analyze(database, "jobs", now=False)
        for i in range(depth):
            store.create(coordinator_pb2.JobSpec(resolution=64), owner=CALLERS[i % 2])
        if analyzed:
            analyze(database, "jobs", now=True)

        def drain(holder: str) -> None:
            while (job_id := store.claim(holder, 30.0)) is not None:
                if complete:
                    store.finish(job_id, coordinator_pb2.JOB_STATE_SUCCEEDED)

        threads = [threading.Thread(target=drain, args=(f"claimer-{i}",)) for i in range(claimers)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return depth / (time.perf_counter() - start)
    finally:
        store.close()


async def pgqueuer_claims(database: str, depth: int, claimers: int, complete: bool, analyzed: bool) -> float:
    """The same with PgQueuer's ``Queries.dequeue`` (one job at a time; ``log_jobs`` to complete), each
    claimer on a connection of its own."""
    import uuid
    from datetime import timedelta

    import psycopg
    from pgqueuer.ports.repository import EntrypointExecutionParameter
    from pgqueuer.queries import Queries

    async with await psycopg.AsyncConnection.connect(database, autocommit=True) as connection:
        queries = Queries.from_psycopg_connection(connection)
        await queries.install()
        if not analyzed:
            analyze(database, "pgqueuer", now=False)
        await queries.enqueue(["bench"] * depth, [None] * depth, [0] * depth)
    if analyzed:
        analyze(database, "pgqueuer", now=True)

    async def drain() -> None:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as connection:
            queries = Queries.from_psycopg_connection(connection)
            manager = uuid.uuid4()
            entrypoints = {"bench": EntrypointExecutionParameter(concurrency_limit=0)}
            while jobs := await queries.dequeue(1, entrypoints, manager, None, timedelta(seconds=30)):
                if complete:
                    await queries.log_jobs([(job, "successful", None) for job in jobs])

    start = time.perf_counter()
    await asyncio.gather(*(drain() for _ in range(claimers)))
    return depth / (time.perf_counter() - start)


# ----- the tables ----------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    import random

    from services.testing.postgres import LocalPostgres, postgres_available

    available, why = postgres_available()
    if not available:
        print(f"Coordinator replicas on PostgreSQL: skipped ({why})")
        return
    cores = os.cpu_count() or 1
    print("Coordinator replicas on one PostgreSQL database. BENCHMARK-ONLY: no stage is called; a")
    print("fixed-latency stand-in for the job runner records N steps of a fixed time per job.")
    print(f"machine: {cpu_name()}, {cores} cores, shared by the replicas, PostgreSQL and this driver")
    with tempfile.TemporaryDirectory() as tmp, LocalPostgres(settings={"max_connections": "300"}) as pg:
        folder = Path(tmp)
        with pg.connect() as connection:
            version = connection.execute("SHOW server_version").fetchone()[0]
        print(f"PostgreSQL {version}, one local server, durable (fsync on)\n")

        if "throughput" in args.parts:
            header = (
                f"1. Throughput: {args.jobs} jobs submitted up front (2 callers, in turn to each replica),",
                f"{args.workers} workers a replica, {args.steps} steps a job; clock from releasing the",
                "workers to the last job's end. Ideal: workers / job time. CPU per job: the replicas'",
                "processes' together (each), and PostgreSQL's. Cores busy: ours (replicas, PostgreSQL,",
                "driver) / the machine's; the rest: interrupts, steal and the busiest other processes",
                "(% of all cores).\n",
            )
            print("\n".join(header))
            print("| step | database | replicas | jobs/min | ideal | ratio to 1 replica | efficiency "
                  "(ratio / k) | replicas' CPU ms/job (each) | PostgreSQL CPU ms/job | cores busy: ours / "
                  "machine | the rest | succeeded |")  # fmt: skip
            print("|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---|---:|")
            for step_ms in args.step_ms:
                base = None
                for kind, k in [("postgresql", k) for k in args.replicas] + [("sqlite", 1)]:
                    on_postgres = kind == "postgresql"
                    name = f"{kind}_{k}_{int(step_ms)}"
                    url = pg.create_database(name) if on_postgres else f"sqlite:///{folder}/{name}.sqlite"
                    postmaster = pg.pid if on_postgres else None
                    row = await throughput(folder / name, url, postmaster, k, step_ms / 1000, args)
                    if on_postgres and k == 1:
                        base = row.jobs_per_min
                    ratio = row.jobs_per_min / base if base else float("nan")
                    cells = [
                        f"{step_ms:g} ms",
                        row.database,
                        k,
                        f"{row.jobs_per_min:.0f}",
                        f"{row.ideal_per_min:.0f}",
                        f"{ratio:.2f}",
                        f"{ratio / k:.2f}",
                        f"{sum(row.replica_cpu_s_per_job) * 1000:.1f}"
                        + (
                            f" ({' / '.join(f'{c * 1000:.1f}' for c in row.replica_cpu_s_per_job)})"
                            if k > 1
                            else ""
                        ),
                        f"{row.postgres_cpu_s_per_job * 1000:.1f}" if on_postgres else "-",
                        f"{100 * row.ours_busy:.0f}% / {100 * row.machine_busy:.0f}%",
                        row.others,
                        f"{row.succeeded}/{args.jobs}",
                    ]
                    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)
            print()

        if "resume" in args.parts:
            header = (
                f"2. Resumption: a job of {RESUME_STEPS} steps of {RESUME_STEP_S * 1000:g} ms on replica A,",
                "replica B idle. A killed (SIGKILL) 0 to lease_s / 3 after its 3rd step started (a",
                "random point of its heartbeat, which renews every lease_s / 3); B's workers look for",
                "claimable jobs every 1 s (poll_s; an expired lease notifies nobody). B resumes after",
                "A's last finished step.\n",
            )
            print("\n".join(header))
            print("| lease_s | trial | A's lease left at the kill (s) | kill -> B's first event (s) "
                  "| of which after expiry (s) | kill -> job finished (s) | steps B ran "
                  "| succeeded |")  # fmt: skip
            print("|---:|---:|---:|---:|---:|---:|---:|---|")
            chance = random.Random(21)
            for lease_s in args.leases:
                for trial in range(args.trials):
                    name = f"resume_{int(lease_s * 1000)}_{trial}"
                    url = pg.create_database(name)
                    kill_after_s = chance.uniform(0, min(lease_s / 3, 4.0))
                    row = await resumption(folder / name, url, lease_s, kill_after_s)
                    cells = [
                        f"{lease_s:g}",
                        trial + 1,
                        f"{row.lease_left_s:.2f}",
                        f"{row.resumed_s:.2f}",
                        f"{row.resumed_s - row.lease_left_s:.2f}",
                        f"{row.finished_s:.2f}",
                        row.steps_run_by_b,
                        "yes" if row.succeeded else "NO",
                    ]
                    print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)
            print()

        if "watch" in args.parts:
            n = args.watchers
            print(f"3. Watches of one job ({WATCH_STEPS} steps x {WATCH_STEP_S * 1000:g} ms, "
                  f"{2 * WATCH_STEPS + 1} events), opened before it starts: delay from")  # fmt: skip
            print("each event's time (set at append) to its arrival at each watcher, in ms. The watchers")
            print("are one asyncio process here (the driver), on the same cores.\n")
            print("| watchers | where (job runs on the first replica) | events received | p50 | p95 | max |")
            print("|---|---|---:|---:|---:|---:|")
            for label, total, on_runner, replicas in [
                ("1 on the replica running the job", 1, 1, 1),
                ("1 on another replica", 1, 0, 2),
                (f"{n} on the replica running the job", n, n, 1),
                (f"{n // 2} + {n - n // 2} split over 2 replicas", n, n // 2, 2),
                (f"{n} on another replica", n, 0, 2),
            ]:
                name = f"watch_{total}_{on_runner}_{replicas}"
                url = pg.create_database(name)
                delays = await watches(folder / name, url, total, on_runner, replicas)
                for where, values in delays.items():
                    if values:
                        p50, p95, top = quantiles(values)
                        cells = [label, where, len(values), f"{p50:.1f}", f"{p95:.1f}", f"{top:.1f}"]
                        print("| " + " | ".join(str(cell) for cell in cells) + " |", flush=True)

        if "claims" in args.parts:
            print()
            depth, claimers = args.claim_depth, 8
            header = (
                f"4. Claims: {claimers} claimers (threads, or asyncio tasks for PgQueuer, each on a",
                f"connection of its own) drain {depth} queued jobs, one a transaction; claims a second.",
                "'complete' also ends each job (JobStore.finish: state and JobFinished event; PgQueuer:",
                "log_jobs). Planner statistics of the queue's table: none (just filled, autovacuum held off:",
                "as before autovacuum's analyze) or after ANALYZE. PgQueuer is optional (pip install).\n",
            )
            print("\n".join(header))
            has_pgqueuer = importlib.util.find_spec("pgqueuer") is not None  # not a project dependency
            print("| queue | planner statistics | claim only /s | claim + complete /s |")
            print("|---|---|---:|---:|")
            for analyzed in (False, True):
                rates = []
                for complete in (False, True):
                    url = pg.create_database(f"claims_ours_{int(analyzed)}_{int(complete)}")
                    rates.append(our_claims(url, depth, claimers, complete, analyzed))
                label = "after ANALYZE" if analyzed else "none"
                print(f"| JobStore.claim | {label} | {rates[0]:.0f} | {rates[1]:.0f} |", flush=True)
            for analyzed in (False, True):
                if not has_pgqueuer:
                    print("| PgQueuer | - | not installed | - |")
                    break
                rates = []
                for complete in (False, True):
                    url = pg.create_database(f"claims_pgqueuer_{int(analyzed)}_{int(complete)}")
                    rates.append(await pgqueuer_claims(url, depth, claimers, complete, analyzed))
                label = "after ANALYZE" if analyzed else "none"
                version = importlib.metadata.version("pgqueuer")
                print(f"| PgQueuer {version} | {label} | {rates[0]:.0f} | {rates[1]:.0f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--jobs", type=int, default=320)
    parser.add_argument("--workers", type=int, default=8, help="workers per replica")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-ms", type=float, nargs="+", default=[200.0, 50.0])
    parser.add_argument("--leases", type=float, nargs="+", default=[3.0, 10.0])
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--claim-depth", type=int, default=2000)
    parser.add_argument("--parts", nargs="+", default=PARTS, choices=PARTS)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), json.loads(args.options))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
