"""The coordinator's workers: threads that take job ids from a queue and run each job to its end.

    queue = JobQueue(runner, workers=2)
    queue.start(resume=jobs.unfinished())   # jobs the last run left unfinished go first
    queue.put(job_id)                       # SubmitJob

A job runs on one worker at a time; its stage calls fan out inside the runner
(``JobRunner.max_parallel_calls``). A job the runner hands back unfinished (waiting for the store or a
stage) is queued again after ``JobRunner.retry_in_s``, without holding a worker meanwhile.
"""

from __future__ import annotations

import logging
import queue
import threading

from services.coordinator.jobstore import FINAL_STATES
from services.coordinator.pipeline import JobRunner

log = logging.getLogger(__name__)


class JobQueue:
    """Worker threads that run queued jobs, one job per worker at a time."""

    def __init__(self, runner: JobRunner, workers: int):
        self.runner = runner
        self._queue: queue.Queue[str] = queue.Queue()
        self._threads = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True) for i in range(workers)
        ]

    def start(self, resume: list[str]) -> None:
        """Start the workers; queue ``resume`` (unfinished jobs from the last run) first."""
        for job_id in resume:
            self._queue.put(job_id)
        for thread in self._threads:
            thread.start()

    def put(self, job_id: str) -> None:
        self._queue.put(job_id)

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                job = self.runner.run(job_id)
            except Exception:  # the runner records failures; this is a last resort
                log.exception("running job %s failed", job_id, extra={"job_id": job_id})
                continue
            if job.state not in FINAL_STATES:  # waiting for the store or a stage: try again later
                retry = threading.Timer(self.runner.retry_in_s(job_id), self._queue.put, args=(job_id,))
                retry.daemon = True
                retry.start()
