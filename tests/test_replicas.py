"""Coordinator replicas on one PostgreSQL database, end to end: two coordinator processes over the same
five stage services and the same database, driven only through their gRPC API, as a scaled deployment is.

1. They share the queue: twenty jobs, each run once, by one replica or the other, both busy.
2. A replica killed (SIGKILL) mid-job keeps its leases until they expire; then the other resumes its jobs
   from their last finished step.
3. A rolling restart (SIGTERM, one replica at a time) hands the leases over at once and loses no job and
   no event: watches that resume on the other replica see each event once, in order.
4. A watch on one replica follows a job the other runs as it runs (LISTEN/NOTIFY), not at its end.
5. The database restarted mid-job: calls answer UNAVAILABLE meanwhile, the jobs wait, then go on.
6. A replica frozen past its lease (SIGSTOP) writes nothing more to the job once thawed (fencing).

Every job is the stack test's small one (``tests/test_stack.py``) and ends with the bytes of the same job
run embedded. Who ran a job is read from the database: a thread polls the jobs table's lease column
(``Leases``) while a test runs. Leases last ``LEASE_S`` (3 s, the least allowed) to keep the waits short.
"""

from __future__ import annotations

import collections
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import psycopg
import pytest
from test_stack import (
    ENTRIES,
    MONKEY,
    REFERENCE,
    SERVICES,
    TOKENS,
    WATCH_TIMEOUT_S,
    calls,
    coordinator_stub,
    embedded_repair_sha256,
    repaired_sha256,
    small_spec,
    step_finished,
    step_started,
    steps,
    watch,
)
from tire.v1 import coordinator_pb2, coordinator_pb2_grpc

from conftest import ServiceProcess
from services.client import upload
from services.common.clients import dial
from services.common.registry import STAGE_NAMES
from services.testing.postgres import LocalPostgres, require_postgres

pytestmark = pytest.mark.slow

JOB = coordinator_pb2
LEASE_S = 3
"""The replicas' lease (``TIRE_COORDINATOR_LEASE_S``), the least allowed: a dead replica's jobs wait this
long for another."""


# ----- the stack ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stages(launch_service) -> dict[str, ServiceProcess]:
    """The five stage services with their default (CPU) backends, shared by every replica."""
    return {name: launch_service(*SERVICES[name]) for name in STAGE_NAMES}


@pytest.fixture(scope="module")
def reference_sha256() -> str:
    """sha256 of the repaired .ply of the same job run embedded (``test_stack``'s reference)."""
    return embedded_repair_sha256()


class Replicas:
    """Coordinator processes on one database, by replica id: ``start("a")`` runs one as
    ``TIRE_COORDINATOR_REPLICA_ID=a`` (``env`` adds settings, kept for its restarts). Started again after
    a stop, a replica listens where it did (as behind a Service), so stubs made before still reach it."""

    def __init__(self, launch_service, stages: dict[str, ServiceProcess], url: str):
        self._launch = launch_service
        self._stages = stages
        self.url = url
        self.processes: dict[str, ServiceProcess] = {}
        self._env: dict[str, dict[str, str]] = {}
        self._started: list[ServiceProcess] = []

    def start(self, name: str, **env: str) -> ServiceProcess:
        module, prefix = SERVICES["coordinator"]
        environ = {f"{prefix}{stage.upper()}": self._stages[stage].target for stage in STAGE_NAMES}
        environ[f"{prefix}DATABASE_URL"] = self.url
        environ[f"{prefix}ALLOW_PLAINTEXT"] = "1"
        environ[f"{prefix}TOKENS"] = ",".join(ENTRIES)
        environ[f"{prefix}REPLICA_ID"] = name
        environ[f"{prefix}LEASE_S"] = str(LEASE_S)
        environ |= self._env.setdefault(name, env) | env
        before = self.processes.get(name)
        if before is not None:
            assert before.process.poll() is not None, f"replica {name} is still running"
            environ[f"{prefix}PORT"] = before.target.rsplit(":", 1)[1]
            environ[f"{prefix}METRICS_PORT"] = str(before.metrics_port)
        service = self._launch(module, prefix, environ)
        self.processes[name] = service
        self._started.append(service)
        return service

    def stub(self, name: str):
        """A stub of replica ``name`` (its calls carry alice's token)."""
        return coordinator_stub(self.processes[name])

    def terminate(self, name: str, timeout_s: float = 60) -> str:
        """SIGTERM, as a rolling update stops a pod, and wait for a clean exit; returns the replica's log."""
        service = self.processes[name]
        service.process.send_signal(signal.SIGTERM)
        try:
            code = service.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"replica {name} did not stop within {timeout_s} s:\n{service.log()[-3000:]}")
        assert code == 0, f"replica {name} exited with code {code}:\n{service.log()[-3000:]}"
        return service.log()

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown; the replica's leases stay until they expire."""
        self.processes[name].stop()

    def alive(self, name: str) -> bool:
        return self.processes[name].process.poll() is None

    def close(self) -> None:
        for service in self._started:
            service.stop()


@pytest.fixture
def replicas(launch_service, stages, postgres_url) -> Iterator[Replicas]:
    """Coordinators on this test's fresh database; all stopped at the test's end."""
    started = Replicas(launch_service, stages, postgres_url)
    yield started
    started.close()


class Leases:
    """Who held each job's lease, and since when: the jobs table polled every 50 ms from a thread while the
    ``with`` block runs (through the database's outages too)."""

    def __init__(self, url: str):
        self.url = url
        self._seen: dict[str, list[tuple[str, float]]] = collections.defaultdict(list)  # (holder, since)
        self._now: dict[str, str] = {}  # job -> holder, at the last look
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="lease-poll", daemon=True)

    def __enter__(self) -> Leases:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as connection:
                    while not self._stop.is_set():
                        rows = connection.execute(
                            "SELECT id, lease_holder FROM jobs WHERE lease_holder != ''"
                        ).fetchall()
                        now = time.monotonic()
                        with self._lock:
                            self._now = dict(rows)
                            for job_id, holder in rows:
                                if [holder] != [h for h, _ in self._seen[job_id][-1:]]:
                                    self._seen[job_id].append((holder, now))
                        self._stop.wait(0.05)
            except psycopg.Error:  # no jobs table yet, or the database is down
                self._stop.wait(0.2)

    def holders(self, job_id: str) -> list[str]:
        """The replicas that held ``job_id``, in turn."""
        with self._lock:
            return [holder for holder, _ in self._seen[job_id]]

    def since(self, job_id: str, holder: str) -> float:
        """When (``time.monotonic``) ``holder`` was first seen holding ``job_id``; inf if never."""
        with self._lock:
            return min((t for h, t in self._seen[job_id] if h == holder), default=float("inf"))

    def held_by(self, name: str) -> set[str]:
        """The jobs ``name`` holds now."""
        with self._lock:
            return {job_id for job_id, holder in self._now.items() if holder == name}

    def holder(self, job_id: str, timeout_s: float = 60) -> str:
        """Who holds ``job_id``'s lease, once someone does."""
        wait_until(lambda: job_id in self._now, f"a replica claims {job_id}", timeout_s)
        with self._lock:
            return self._now.get(job_id) or self._seen[job_id][-1][0]


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


# ----- helpers -----------------------------------------------------------------------------------


def uploaded_spec(stub) -> JOB.JobSpec:
    """The small job, its files uploaded through ``stub``'s replica."""
    return small_spec(upload(stub, [MONKEY], "application/x-ply"), upload(stub, [REFERENCE], "image/png"))


def submit(stub, spec: JOB.JobSpec, request_id: str) -> JOB.Job:
    job = stub.SubmitJob(JOB.SubmitJobRequest(spec=spec, request_id=request_id), timeout=30).job
    assert job.state == JOB.JOB_STATE_QUEUED
    return job


def watch_stub(service: ServiceProcess):
    """A stub of ``service`` for ``follow``: its channel does not retry (see ``follow``); calls pass
    ``metadata=ALICE``."""
    return coordinator_pb2_grpc.CoordinatorServiceStub(dial(service.target, retries=0))


ALICE = [("authorization", f"Bearer {TOKENS['alice']}")]


def follow(stubs: list, job_id: str, first: int = 0) -> tuple[list[JOB.JobEvent], int]:
    """WatchJob from the start to the job's end through replicas going away: when a stream breaks
    (UNAVAILABLE, CANCELLED), the watch resumes on the next of ``stubs`` (``watch_stub``s, from
    ``stubs[first]``) after the last event received. Returns the events and how many times it resumed.

    The stubs' channels must not retry: with a retry policy, grpcio (1.85) leaves a stream that has
    received nothing yet hanging forever, past its deadline, when the server goes away (a server-streaming
    call, its server killed before its first message: reproduced outside this suite)."""
    events: list[JOB.JobEvent] = []
    resumed, turn = 0, first
    deadline = time.monotonic() + WATCH_TIMEOUT_S
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"job {job_id} did not end within {WATCH_TIMEOUT_S} s: {events[-1:]}"
        after = events[-1].sequence if events else 0
        request = JOB.WatchJobRequest(job_id=job_id, after_sequence=after)
        try:
            for response in stubs[turn % len(stubs)].WatchJob(request, timeout=remaining, metadata=ALICE):
                events.append(response.event)
                if response.event.HasField("finished"):
                    return events, resumed
        except grpc.RpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
                raise
        resumed += 1
        turn += 1
        time.sleep(0.2)


def history(url: str, job_id: str) -> list[JOB.JobEvent]:
    """The job's events as the database holds them, in sequence order."""
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT event FROM events WHERE job_id = %s ORDER BY sequence", (job_id,)
        ).fetchall()
    return [JOB.JobEvent.FromString(row[0]) for row in rows]


def summary(events: list[JOB.JobEvent]) -> list[str]:
    """One line per event, for assertion messages: sequence, time, kind and step."""
    lines = []
    for event in events:
        kind = event.WhichOneof("kind")
        message = getattr(event, kind) if kind else None
        step = getattr(message, "step", "")
        resumed = " resumed" if getattr(message, "resumed", False) else ""
        code = f" {message.code}" if kind == "step_failed" else ""
        lines.append(f"{event.sequence} {event.time.ToDatetime():%H:%M:%S.%f} {kind} {step}{resumed}{code}")
    return lines


def check_history(events: list[JOB.JobEvent], job_id: str) -> None:
    """Numbered 1, 2, 3... without a gap or a repeat, every one the job's, exactly one JobFinished (the
    last), SUCCEEDED."""
    assert [event.sequence for event in events] == list(range(1, len(events) + 1)), job_id
    assert all(event.job_id == job_id for event in events)
    ends = [event.finished for event in events if event.HasField("finished")]
    assert len(ends) == 1 and events[-1].HasField("finished"), f"{job_id}: {len(ends)} JobFinished events"
    assert ends[0].state == JOB.JOB_STATE_SUCCEEDED, ends[0].error


def started_twice(events: list[JOB.JobEvent]) -> list[str]:
    """Steps started more than once: run again, not resumed."""
    counts = collections.Counter(steps(events, "step_started"))
    return sorted(step for step, n in counts.items() if n > 1)


def check_resumed(before: list[JOB.JobEvent], after: list[JOB.JobEvent]) -> None:
    """What finished before a hand-over (``before``) is handed back as resumed after it, and not started
    again."""
    done = set(steps(before, "step_finished"))
    assert done <= set(steps(after, "step_finished", resumed=True)), done - set(steps(after, "step_finished"))
    assert not done & set(steps(after, "step_started")), done & set(steps(after, "step_started"))


def stage_method(step: str) -> str:
    """The stage method a step calls: ``ring1/inpaint/45`` calls Inpaint."""
    name = step.split("/")[1] if "/" in step else step
    methods = {
        "fit_subject": "FitSubject",
        "render": "Render",
        "after": "Render",
        "locate": "LocateUnobserved",
        "inpaint": "Inpaint",
        "refine": "Refine",
        "reconstruct": "Reconstruct",
    }
    return methods.get(name, name)


def stage_calls(stages: dict[str, ServiceProcess]) -> collections.Counter:
    """Calls handled so far by every stage, by method."""
    total: collections.Counter = collections.Counter()
    for service in stages.values():
        total.update(calls(service))
    return total


# ----- 1. two replicas share the queue -----------------------------------------------------------


def test_two_replicas_share_twenty_jobs(replicas, postgres_url, reference_sha256):
    with Leases(postgres_url) as leases:
        replicas.start("a")
        replicas.start("b")
        stubs = [replicas.stub("a"), replicas.stub("b")]
        spec = uploaded_spec(stubs[0])  # uploaded through one, submitted through both: one database
        jobs = [submit(stubs[i % 2], spec, f"share-{i}") for i in range(20)]
        assert len({job.id for job in jobs}) == 20
        for i, job in enumerate(jobs):
            events = watch(stubs[(i + 1) % 2], job.id)  # each watched on the other replica
            check_history(events, job.id)
            assert started_twice(events) == [], job.id
    # Each job claimed once and never taken over; both replicas ran some.
    holders = {job.id: leases.holders(job.id) for job in jobs}
    assert all(len(held) == 1 for held in holders.values()), holders
    ran = collections.Counter(held[0] for held in holders.values())
    assert set(ran) == {"a", "b"}, ran
    for i, job in enumerate(jobs):
        job = stubs[i % 2].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
        assert job.state == JOB.JOB_STATE_SUCCEEDED
        assert repaired_sha256(stubs[i % 2], job) == reference_sha256


# ----- 2. a replica killed mid-job ---------------------------------------------------------------


def test_a_killed_replicas_jobs_finish_on_the_other(replicas, postgres_url, stages, reference_sha256):
    with Leases(postgres_url) as leases:
        replicas.start("a")
        replicas.start("b")
        stubs = {name: replicas.stub(name) for name in "ab"}
        spec = uploaded_spec(stubs["a"])
        calls_before = stage_calls(stages)
        jobs = [submit(stubs["ab"[i % 2]], spec, f"kill-{i}") for i in range(4)]
        victim = leases.holder(jobs[0].id)
        survivor = "b" if victim == "a" else "a"
        watch(stubs[survivor], jobs[0].id, until=step_finished("ring1/inpaint/"))  # its fit is done
        replicas.kill(victim)  # whatever was in flight is lost
        # Its leases stay (nobody writes to its jobs) until they expire, 2 to 3 s from now.
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            rows = connection.execute(
                "SELECT id, lease_expires_ns FROM jobs WHERE lease_holder = %s", (victim,)
            ).fetchall()
        now, now_ns = time.monotonic(), time.time_ns()
        expiry = {job_id: now + (expires_ns - now_ns) / 1e9 for job_id, expires_ns in rows}
        assert jobs[0].id in expiry
        before = {job_id: history(postgres_url, job_id) for job_id in expiry}

        ends = {job.id: watch(stubs[survivor], job.id) for job in jobs}
        for job_id, expires in expiry.items():
            assert leases.holders(job_id) == [victim, survivor]
            # Claimed once the lease expired, and soon after (idle workers look every second).
            claimed = leases.since(job_id, survivor) - expires
            assert -0.1 < claimed < 3.0, claimed

    for job in jobs:
        events = history(postgres_url, job.id)
        check_history(events, job.id)
        if job.id in before:  # the victim's: what it wrote stays as it was, and the survivor resumed
            split = len(before[job.id])
            assert events[:split] == before[job.id]
            check_resumed(before[job.id], events[split:])
        else:
            assert started_twice(events) == [], job.id
        assert ends[job.id][-1] == events[-1]
        job = stubs[survivor].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
        assert repaired_sha256(stubs[survivor], job) == reference_sha256

    # The stages agree: a call per step started, less at most the calls the victim had not sent yet.
    started = collections.Counter()
    for job in jobs:
        started.update(stage_method(step) for step in steps(history(postgres_url, job.id), "step_started"))
    in_flight = collections.Counter()  # at the kill
    for events in before.values():
        unfinished = collections.Counter(steps(events, "step_started"))
        unfinished.subtract(steps(events, "step_finished"))
        in_flight.update({stage_method(step): n for step, n in unfinished.items() if n > 0})
    made = stage_calls(stages) - calls_before
    for method in ("FitSubject", "Render", "LocateUnobserved", "Inpaint", "Refine", "Reconstruct"):
        assert started[method] - in_flight[method] <= made[method] <= started[method], (method, made, started)


# ----- 3. a rolling restart ----------------------------------------------------------------------


def test_a_rolling_restart_loses_no_job_and_no_event(replicas, postgres_url, reference_sha256):
    # Leases of 30 s: a job handed over sooner than that was handed back, not left to expire. One
    # worker each: jobs wait in the queue through the restarts.
    settings = {"TIRE_COORDINATOR_LEASE_S": "30", "TIRE_COORDINATOR_WORKERS": "1"}
    with Leases(postgres_url) as leases:
        replicas.start("a", **settings)
        replicas.start("b", **settings)
        stubs = [replicas.stub("a"), replicas.stub("b")]  # the same ports after the restarts
        watchers = [watch_stub(replicas.processes[name]) for name in "ab"]
        spec = uploaded_spec(stubs[0])
        jobs: list[JOB.Job] = []
        with ThreadPoolExecutor(12) as pool:
            watches = []
            for name in ("a", "b"):
                # Six jobs before each restart, so that the replica stopped is running one. Each watched
                # from its start through the restarts, on either replica.
                batch = [submit(stubs[i % 2], spec, f"rolling-{i}") for i in range(len(jobs), len(jobs) + 6)]
                watches += [
                    pool.submit(follow, watchers, job.id, len(jobs) + i) for i, job in enumerate(batch)
                ]
                jobs += batch
                wait_until(lambda name=name: leases.held_by(name), f"replica {name} runs a job")
                running = leases.held_by(name)
                stopped = time.monotonic()
                replicas.terminate(name)
                replicas.start(name)
                for job_id in running:  # the other replica took them at once, not after 30 s
                    taken = min(leases.since(job_id, other) for other in "ab" if other != name)
                    if taken == float("inf"):  # finished here during the shutdown's grace
                        assert leases.holders(job_id)[-1] == name
                        continue
                    assert taken - stopped < 15, (job_id, leases.holders(job_id))
            followed = {job.id: future.result() for job, future in zip(jobs, watches, strict=True)}

    taken_over = [job.id for job in jobs if len(set(leases.holders(job.id))) > 1]
    assert taken_over, "no job changed hands"
    resumes = sum(resumed for _, resumed in followed.values())
    assert resumes >= 1, "no watch was broken by a restart"
    # New channels: the old ones may still be backing off from the restarts (they fail fast meanwhile).
    stubs = [replicas.stub("a"), replicas.stub("b")]
    for i, job in enumerate(jobs):
        events, _ = followed[job.id]
        # The watch saw every event of the job once, in order: what the database holds.
        assert events == history(postgres_url, job.id)
        check_history(events, job.id)
        # Graceful: the steps in flight finished before the leases were handed back; none ran twice.
        assert started_twice(events) == [], (job.id, leases.holders(job.id))
        job = stubs[i % 2].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
        assert repaired_sha256(stubs[i % 2], job) == reference_sha256


# ----- 4. a watch on the other replica -----------------------------------------------------------


def test_a_watch_on_one_replica_follows_a_job_the_other_runs_live(replicas, postgres_url, reference_sha256):
    with Leases(postgres_url) as leases:
        replicas.start("a")
        replicas.start("b")
        stubs = {name: replicas.stub(name) for name in "ab"}
        spec = uploaded_spec(stubs["a"])
        job = submit(stubs["a"], spec, "live")
        runner = leases.holder(job.id)
        watcher = "b" if runner == "a" else "a"
        events, arrived = [], []
        opened = time.time()
        stream = stubs[watcher].WatchJob(JOB.WatchJobRequest(job_id=job.id), timeout=WATCH_TIMEOUT_S)
        for response in stream:
            arrived.append(time.time())
            events.append(response.event)
            if response.event.HasField("finished"):
                break
        assert leases.holders(job.id) == [runner]  # the watcher's replica never ran it

    check_history(events, job.id)
    appended = [event.time.ToNanoseconds() / 1e9 for event in events]
    # Live: the first event came well before the job ended, and each event appended after the watch
    # opened arrived within 2 s (woken by the other replica's notification; a watch that only
    # polled would see some up to 5 s late).
    assert arrived[0] < appended[-1] - 1.0, (arrived[0] - opened, appended[-1] - opened)
    delays = [a - t for a, t in zip(arrived, appended, strict=True) if t > opened]
    assert len(delays) >= 10, len(delays)
    assert max(delays) < 2.0, sorted(delays)[-5:]
    job = stubs[watcher].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
    assert repaired_sha256(stubs[watcher], job) == reference_sha256


# ----- 5. the database restarted mid-job ---------------------------------------------------------


OUTAGE_S = 8.0
"""How long the database stays down: longer than a lease (the replicas cannot renew theirs) and than a
call's wait for a connection (5 s)."""


def get_job_unavailable(service: ServiceProcess, job_id: str) -> tuple[grpc.StatusCode, str, float]:
    """GetJob's error code, details and how long it took to come (it must fail)."""
    start = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        watch_stub(service).GetJob(JOB.GetJobRequest(job_id=job_id), timeout=30, metadata=ALICE)
    return caught.value.code(), caught.value.details(), time.monotonic() - start


def test_a_database_restart_mid_job_delays_the_jobs_but_changes_nothing(
    launch_service, stages, reference_sha256
):
    require_postgres()
    with LocalPostgres(durable=False) as server:  # its own server: this test stops it
        replicas = Replicas(launch_service, stages, server.url)
        try:
            with Leases(server.url) as leases:
                replicas.start("a")
                replicas.start("b")
                stubs = [replicas.stub("a"), replicas.stub("b")]
                spec = uploaded_spec(stubs[0])
                jobs = [submit(stubs[i % 2], spec, f"outage-{i}") for i in range(3)]
                watch(stubs[0], jobs[0].id, until=step_finished("ring1/inpaint/"))
                server.stop()  # a fast shutdown: every connection is cut
                down = time.monotonic()
                # Both replicas answer at once that the database is unavailable (a call waits up to 5 s
                # for a connection), without the client's retries, to see the replica's own answer.
                with ThreadPoolExecutor(2) as pool:
                    answers = list(
                        pool.map(get_job_unavailable, replicas.processes.values(), [jobs[0].id] * 2)
                    )
                for code, details, seconds in answers:
                    assert code == grpc.StatusCode.UNAVAILABLE, details
                    assert "database" in details and seconds < 7, (details, seconds)
                time.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
                assert replicas.alive("a") and replicas.alive("b")
                server.start()  # the same port and data

                watchers = [watch_stub(replicas.processes[name]) for name in "ab"]
                followed = [follow(watchers, job.id, i) for i, job in enumerate(jobs)]
            for (events, _), job in zip(followed, jobs, strict=True):
                stored = history(server.url, job.id)
                assert events == stored, (job.id, leases.holders(job.id), "\n".join(summary(stored)))
                check_history(events, job.id)
                failures = [event.step_failed for event in events if event.HasField("step_failed")]
                assert all(failure.code == "UNAVAILABLE" for failure in failures), failures
                finished = steps(events, "step_finished", resumed=False)
                assert len(finished) == len(set(finished)), job.id  # no step finished twice
                job = stubs[0].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job
                assert repaired_sha256(stubs[0], job) == reference_sha256
            assert replicas.alive("a") and replicas.alive("b")
        finally:
            replicas.close()


# ----- 6. a replica paused past its lease --------------------------------------------------------


def test_a_replica_paused_past_its_lease_writes_nothing_more_to_the_job(replicas, postgres_url, stages):
    """A replica frozen mid-step (SIGSTOP: a long pause, a frozen VM) for longer than its lease loses the
    job to the other, which runs it to its end; thawed, its step in flight returns, and what it would
    write (the step's record, progress, StepFinished) is refused: the job ends as the other left it."""
    with Leases(postgres_url) as leases:
        replicas.start("a")
        replicas.start("b")
        stubs = {name: replicas.stub(name) for name in "ab"}
        job = submit(stubs["a"], uploaded_spec(stubs["a"]), "paused")
        holder = leases.holder(job.id)
        other = "b" if holder == "a" else "a"
        refiner = stages["refiner"].process
        watch(stubs[other], job.id, until=step_finished("models"))
        refiner.send_signal(signal.SIGSTOP)  # the holder's refine call will wait for it
        try:
            seen = watch(stubs[other], job.id, until=step_started("refine"))
            time.sleep(1.0)  # the call is on its way
            replicas.processes[holder].process.send_signal(signal.SIGSTOP)
        finally:
            refiner.send_signal(signal.SIGCONT)
        try:
            rest = watch(stubs[other], job.id, after=seen[-1].sequence)  # the other resumes it, to its end
            assert rest[-1].finished.state == JOB.JOB_STATE_SUCCEEDED, rest[-1].finished.error
            assert leases.holders(job.id) == [holder, other]
        finally:
            replicas.processes[holder].process.send_signal(signal.SIGCONT)
        # Thawed, its refine call returns and its writes are refused: its run stops there.
        thawed = replicas.processes[holder]
        wait_until(lambda: "left to its new holder" in thawed.log(), "the thawed replica's run stops", 10)
        time.sleep(1.0)  # anything else it might write
        assert replicas.alive(holder)
    events = history(postgres_url, job.id)
    progress = stubs[other].GetJob(JOB.GetJobRequest(job_id=job.id), timeout=30).job.progress
    wrong = []
    if not events[-1].HasField("finished"):
        wrong.append("events after JobFinished:\n" + "\n".join(summary(events[-6:])))
    if progress.steps_done != progress.steps_total:  # the job's progress, overwritten
        wrong.append(f"the finished job's progress: {progress}")
    assert not wrong, "\n".join(wrong)
