"""The coordinator's workers: threads that take queued jobs, round-robin across their owners, and run
each to its end.

    queue = JobQueue(runner, workers=2)
    queue.start(resume=[(job_id, owner), ...])   # jobs the last run left unfinished go first
    queue.put(job_id, owner)                     # SubmitJob
    queue.position(job_id)                       # how many queued jobs start before it

A job runs on one worker at a time, and at most ``workers`` jobs run at once; its stage calls fan out
inside the runner (``JobRunner.max_parallel_calls``). The next job is the oldest of the next owner in
turn, so one owner's thousand jobs do not hold back another's one. A job the runner hands back
unfinished (waiting for the store or a stage) is queued again after ``JobRunner.retry_in_s``, at the
head of its owner's line, without holding a worker meanwhile.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterable

from services.coordinator.jobstore import FINAL_STATES
from services.coordinator.pipeline import JobRunner

log = logging.getLogger(__name__)


class FairQueue:
    """Job ids in one line per owner; ``take`` serves the owners in turn (round-robin), each line in
    order. Thread-safe."""

    def __init__(self) -> None:
        self._lines: collections.OrderedDict[str, collections.deque[str]] = collections.OrderedDict()
        self._ready = threading.Condition()

    def put(self, job_id: str, owner: str, *, first: bool = False) -> None:
        """Queue ``job_id`` at the end of ``owner``'s line (at its head when ``first``)."""
        with self._ready:
            line = self._lines.get(owner)
            if line is None:
                line = self._lines[owner] = collections.deque()
            line.appendleft(job_id) if first else line.append(job_id)
            self._ready.notify()

    def take(self) -> str:
        """The next job: the head of the next owner's line, waiting for one."""
        with self._ready:
            while not self._lines:
                self._ready.wait()
            owner, line = next(iter(self._lines.items()))
            job_id = line.popleft()
            del self._lines[owner]
            if line:
                self._lines[owner] = line  # to the back of the turn
            return job_id

    def position(self, job_id: str) -> int | None:
        """How many queued jobs ``take`` returns before ``job_id``; None when it is not queued."""
        with self._ready:
            lines = list(self._lines.values())
            mine = next((i for i, line in enumerate(lines) if job_id in line), None)
            if mine is None:
                return None
            index = lines[mine].index(job_id)
            # Round-robin: in every turn before the job's (index turns), each line gives one job; in its
            # own turn, the lines served before its own.
            return index + sum(
                min(len(line), index + (i < mine)) for i, line in enumerate(lines) if i != mine
            )

    def __len__(self) -> int:
        with self._ready:
            return sum(len(line) for line in self._lines.values())


class JobQueue:
    """Worker threads that run queued jobs, one job per worker at a time (``FairQueue`` order)."""

    def __init__(self, runner: JobRunner, workers: int):
        self.runner = runner
        self.queued = FairQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True) for i in range(workers)
        ]

    def start(self, resume: Iterable[tuple[str, str]]) -> None:
        """Start the workers; queue ``resume`` ((job id, owner) of the jobs the last run left unfinished)
        first."""
        for job_id, owner in resume:
            self.queued.put(job_id, owner)
        for thread in self._threads:
            thread.start()

    def put(self, job_id: str, owner: str = "") -> None:
        self.queued.put(job_id, owner)

    def position(self, job_id: str) -> int | None:
        """How many queued jobs start before ``job_id``; None when it is not queued (running, waiting
        to be retried, or finished)."""
        return self.queued.position(job_id)

    def _work(self) -> None:
        while True:
            job_id = self.queued.take()
            try:
                job = self.runner.run(job_id)
            except Exception:  # the runner records failures; this is a last resort
                log.exception("running job %s failed", job_id, extra={"job_id": job_id})
                continue
            if job.state not in FINAL_STATES:  # waiting for the store or a stage: try again later
                again = threading.Timer(
                    self.runner.retry_in_s(job_id),
                    self.queued.put,
                    args=(job_id, job.owner),
                    kwargs={"first": True},
                )
                again.daemon = True
                again.start()
