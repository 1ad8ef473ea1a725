"""The job queue: workers claim jobs from the job store under leases, owners in turn, at most
``workers`` at once; a lost lease stops a run; a stop hands every lease back."""

from __future__ import annotations

import threading
import time

import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import LeaseLost
from services.coordinator.jobqueue import JobQueue
from services.coordinator.jobstore import JobStore
from services.coordinator.stages import RetryPolicy

SUCCEEDED = coordinator_pb2.JOB_STATE_SUCCEEDED
RUNNING = coordinator_pb2.JOB_STATE_RUNNING


def spec(seed: int) -> coordinator_pb2.JobSpec:
    frames = [common_pb2.ObjectRef(uri="s3://tire/sha256/ab/asset.ply")]
    return coordinator_pb2.JobSpec(asset=common_pb2.AssetRef(frames=frames), seed=seed)


class Recording:
    """A runner that records the order jobs start in and how many run at once; each job takes
    ``steps`` steps of ``step_s``, asking ``lease.held()`` before each, as ``JobRunner`` does."""

    retry = RetryPolicy()

    def __init__(self, jobs: JobStore, steps: int = 1, step_s: float = 0.01, wait_first: bool = False):
        self.jobs, self.steps, self.step_s, self.wait_first = jobs, steps, step_s, wait_first
        self.started: list[str] = []
        self.lost: list[str] = []
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def run(self, job_id: str, lease=None) -> coordinator_pb2.Job:
        with self.lock:
            first = job_id not in self.started
            self.started.append(job_id)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.jobs.set_state(job_id, RUNNING)
            if self.wait_first and first:
                return self.jobs.get(job_id)  # waiting for a stage: run again after retry_in_s
            for _ in range(self.steps):
                if lease is not None and not lease.held():
                    raise LeaseLost(job_id)
                time.sleep(self.step_s)
            return self.jobs.finish(job_id, SUCCEEDED)[0]
        except LeaseLost:
            self.lost.append(job_id)
            return self.jobs.get(job_id)
        finally:
            with self.lock:
                self.running -= 1

    def retry_in_s(self, job_id: str) -> float:
        return 0.2


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def jobs():
    with JobStore(":memory:") as store:
        yield store


@pytest.fixture
def start(jobs):
    """``start(runner, **options)``: a started JobQueue of replica "r1" (one worker unless told), stopped
    when the test ends."""
    queues = []

    def start_queue(runner: Recording, **options) -> JobQueue:
        queue = JobQueue(runner, **{"workers": 1, "holder": "r1", **options})  # type: ignore[arg-type]
        queue.start()
        queues.append(queue)
        return queue

    yield start_queue
    for queue in queues:
        queue.stop(grace_s=1.0)


def test_queued_jobs_of_two_callers_start_alternately(jobs, start) -> None:
    names = {}
    for i in range(4):
        names[jobs.create(spec(i), owner="alice")[0].id] = f"a{i}"
    for i in range(2):
        names[jobs.create(spec(10 + i), owner="bob")[0].id] = f"b{i}"
    runner = Recording(jobs)
    start(runner)
    wait_for(lambda: len(runner.started) == 6)
    assert [names[job_id] for job_id in runner.started] == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_at_most_workers_jobs_run_at_once(jobs, start) -> None:
    runner = Recording(jobs)
    start(runner, workers=2)
    for i in range(12):
        jobs.create(spec(i), owner=f"owner{i % 3}")
    wait_for(lambda: all(job.state == SUCCEEDED for job in jobs.list(page_size=100)[0]))
    assert len(runner.started) == 12 and runner.most_at_once == 2


def test_a_submitted_job_wakes_an_idle_worker_at_once(jobs, start) -> None:
    runner = Recording(jobs)
    start(runner, poll_s=60)
    time.sleep(0.05)  # the worker found nothing and waits
    job, _ = jobs.create(spec(0))
    wait_for(lambda: jobs.get(job.id).state == SUCCEEDED, timeout=2.0)


def test_a_waiting_job_is_handed_back_and_run_again_after_its_wait(jobs, start) -> None:
    runner = Recording(jobs, wait_first=True)
    start(runner, poll_s=0.05)
    job, _ = jobs.create(spec(0))
    wait_for(lambda: jobs.get(job.id).state == SUCCEEDED)
    assert runner.started == [job.id, job.id]


def test_a_lost_lease_stops_the_run_and_leaves_the_job_to_its_new_holder(jobs, start) -> None:
    runner = Recording(jobs, steps=200, step_s=0.01)
    start(runner, workers=1, lease_s=3.0)
    job, _ = jobs.create(spec(0))
    wait_for(lambda: runner.started == [job.id])
    # Another replica took the job (r1's lease expired while r1 could not renew it).
    jobs.hand_back(job.id, "r1")
    assert jobs.claim("r2", lease_s=30) == job.id
    wait_for(lambda: runner.lost == [job.id], timeout=5.0)  # at the next heartbeat, then the next step
    assert jobs.get(job.id).state == RUNNING and jobs.lease_of(job.id)[0] == "r2"


def test_stop_hands_running_jobs_back_for_another_replica(jobs, start) -> None:
    runner = Recording(jobs, steps=1000, step_s=0.01)
    queue = start(runner, workers=1)
    job, _ = jobs.create(spec(0))
    wait_for(lambda: runner.started == [job.id])
    start = time.monotonic()
    queue.stop(grace_s=5.0)
    assert time.monotonic() - start < 1.0  # the run stopped at its next step, well before its end
    assert runner.lost == [job.id] and jobs.lease_of(job.id) == ("", 0)
    assert jobs.claim("r2", lease_s=30) == job.id


def test_a_new_process_under_the_same_name_hands_back_its_predecessors_leases(jobs, start) -> None:
    job, _ = jobs.create(spec(0))
    assert jobs.claim("r1", lease_s=3600) == job.id  # then r1 was killed
    runner = Recording(jobs)
    start(runner)
    wait_for(lambda: jobs.get(job.id).state == SUCCEEDED)


def test_on_sqlite_a_start_takes_back_every_lease(jobs, start) -> None:
    job, _ = jobs.create(spec(0))
    assert jobs.claim("host-41", lease_s=3600) == job.id  # the coordinator before, killed
    start(Recording(jobs), holder="host-42")
    wait_for(lambda: jobs.get(job.id).state == SUCCEEDED)


def test_a_job_claimed_back_while_it_still_runs_here_is_not_run_twice(jobs, start) -> None:
    runner = Recording(jobs, steps=100, step_s=0.01)
    queue = start(runner, workers=2, lease_s=3.0)
    job, _ = jobs.create(spec(0))
    wait_for(lambda: runner.started == [job.id])
    # The lease expired while the database was away; the other worker claims the job back.
    jobs.hand_back(job.id, "r1")
    queue.wake()
    wait_for(lambda: jobs.get(job.id).state == SUCCEEDED)
    assert runner.started == [job.id] and runner.most_at_once == 1 and runner.lost == []
