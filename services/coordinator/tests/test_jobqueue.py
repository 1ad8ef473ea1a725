"""The job queue: owners served in turn, places in line, at most ``workers`` jobs at once."""

from __future__ import annotations

import threading
import time

from tire.v1 import coordinator_pb2

from services.coordinator.jobqueue import FairQueue, JobQueue


def test_owners_are_served_in_turn_and_places_say_so() -> None:
    queue = FairQueue()
    for job_id in ("a1", "a2", "a3"):
        queue.put(job_id, "alice")
    queue.put("b1", "bob")
    queue.put("c1", "carol")
    queue.put("b2", "bob")
    expected = ["a1", "b1", "c1", "a2", "b2", "a3"]
    assert [queue.position(job_id) for job_id in expected] == list(range(6))
    assert queue.position("z9") is None and len(queue) == 6
    assert [queue.take() for _ in range(6)] == expected
    assert len(queue) == 0


def test_a_job_put_back_first_is_its_owners_next() -> None:
    queue = FairQueue()
    queue.put("a1", "alice")
    queue.put("b1", "bob")
    assert queue.take() == "a1"
    queue.put("a0", "alice", first=True)
    queue.put("a2", "alice")
    assert [queue.take() for _ in range(3)] == ["b1", "a0", "a2"]


class Recording:
    """A runner that records the order jobs start in, and how many run at once."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def run(self, job_id: str) -> coordinator_pb2.Job:
        with self.lock:
            self.started.append(job_id)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(0.01)
        with self.lock:
            self.running -= 1
        return coordinator_pb2.Job(id=job_id, state=coordinator_pb2.JOB_STATE_SUCCEEDED)


def test_queued_jobs_of_two_callers_start_alternately() -> None:
    runner = Recording()
    queue = JobQueue(runner, workers=1)  # type: ignore[arg-type]
    resume = [(f"a{i}", "alice") for i in range(4)] + [(f"b{i}", "bob") for i in range(2)]
    queue.start(resume)
    deadline = time.monotonic() + 10
    while len(runner.started) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert runner.started == ["a0", "b0", "a1", "b1", "a2", "a3"]


def test_at_most_workers_jobs_run_at_once() -> None:
    runner = Recording()
    queue = JobQueue(runner, workers=2)  # type: ignore[arg-type]
    queue.start([(f"j{i}", f"owner{i % 3}") for i in range(12)])
    deadline = time.monotonic() + 10
    while len(runner.started) < 12 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(runner.started) == 12 and runner.most_at_once == 2
