"""A coordinator replica's workers: threads that claim jobs from the job store, each under a lease, and
run them to their end.

    queue = JobQueue(runner, workers=2, holder="coordinator-7f9c", lease_s=30)
    queue.start()          # claim and run; renew this replica's leases every lease_s / 3
    queue.positions([job_id])  # {job_id: how many waiting jobs are claimed before it}
    queue.stop(grace_s=10) # shutting down: stop at the next step, hand every lease back

The job store is the queue, shared by every replica on the database: a worker claims the next job
(``JobStore.claim``: owners in turn, each in submission order), runs it, and hands its lease back; a
job the runner returns unfinished (waiting for the store or a stage) is handed back to be claimed again
after ``JobRunner.retry_in_s``, by any replica, without holding a worker meanwhile. A heartbeat renews
the leases of the jobs running here; a lease it could not renew (this replica was cut off from the
database past ``lease_s``, and another claimed the job) is lost: its runner stops before its next step
(``LeaseLost``), leaving the job to the other. A replica that dies keeps its leases until they expire;
then another resumes its jobs from their last finished step (or it does, started again under the same
name, at once; on SQLite, one coordinator per file, a start takes back every lease).

Workers wait for a job on a condition that ``JobStore.on_jobs_ready`` rings (a job submitted or handed
back, here or, with PostgreSQL, on another replica), and look again every ``poll_s`` regardless.
"""

from __future__ import annotations

import logging
import threading
import time

from services.coordinator.databases import replica_name
from services.coordinator.jobstore import FINAL_STATES, Lease
from services.coordinator.pipeline import JobRunner

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 30.0
"""How long a claim holds without a renewal (``TIRE_COORDINATOR_LEASE_S``): how long a dead replica's
jobs wait before another resumes them."""


class JobQueue:
    """Worker threads that claim and run jobs, at most ``workers`` at once on this replica.

    Args:
        runner: runs one job (its ``jobs`` is the job store claimed from).
        workers: jobs run at once.
        holder: this replica's name in the leases (default: host and pid).
        lease_s: the lease's length; renewed every third of it.
        poll_s: how often an idle worker looks for a job without being told.
    """

    def __init__(
        self,
        runner: JobRunner,
        workers: int,
        *,
        holder: str = "",
        lease_s: float = DEFAULT_LEASE_S,
        poll_s: float = 1.0,
    ):
        self.runner = runner
        self.jobs = runner.jobs
        self.holder = holder or replica_name()
        self.lease_s = lease_s
        self.poll_s = poll_s
        self._ready = threading.Condition()  # guards _held, _lost, _rung
        self._rung = 0  # times a job was announced claimable: a worker that saw none waits for the next
        self._held: set[str] = set()  # jobs running here
        self._lost: set[str] = set()  # of those, the ones whose lease this replica no longer holds
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"job-worker-{i}", daemon=True) for i in range(workers)
        ]
        self._threads.append(threading.Thread(target=self._heartbeat, name="job-leases", daemon=True))
        self.jobs.on_jobs_ready(self.wake)

    def start(self) -> None:
        """Hands back any lease still under this replica's name (a process before it, killed), or on
        SQLite every lease (one coordinator per file: any lease is a dead predecessor's), then starts the
        workers and the heartbeat."""
        sqlite = self.jobs.database.kind == "sqlite"
        stale = self.jobs.hand_back_all(None if sqlite else self.holder)
        if stale:
            log.info("took back %d leases of a coordinator that stopped", stale)
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        """A job may be claimable: idle workers look now."""
        with self._ready:
            self._rung += 1
            self._ready.notify_all()

    def positions(self, job_ids: list[str]) -> dict[str, int]:
        """How many waiting jobs are claimed before each of ``job_ids`` that is waiting (the others, running,
        waiting to run again or finished, are left out)."""
        return self.jobs.queue_positions(job_ids)

    def holds(self, job_id: str) -> bool:
        """Whether this replica still holds the lease of ``job_id``, which runs here."""
        with self._ready:
            return job_id not in self._lost

    def running(self) -> set[str]:
        """The jobs running on this replica now."""
        with self._ready:
            return set(self._held)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stops claiming; every job running here stops before its next step, which it is given up to
        ``grace_s`` seconds to reach; then every lease is handed back, so other replicas resume the jobs
        at once instead of after the leases expire."""
        self._stopping.set()
        with self._ready:
            self._lost |= self._held
            self._ready.notify_all()
        deadline = time.monotonic() + grace_s
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            handed = self.jobs.hand_back_all(self.holder)
        except Exception as exc:  # the database is down: the leases expire instead
            log.warning("could not hand back the leases (%s); they expire in %.0f s", exc, self.lease_s)
            return
        log.info("handed back %d leases", handed)

    def _work(self) -> None:
        while not self._stopping.is_set():
            with self._ready:
                seen = self._rung
            try:
                job_id = self.jobs.claim(self.holder, self.lease_s)
            except Exception as exc:  # the database is down: look again later
                if self.jobs.closed:
                    return
                log.warning("claiming a job failed: %s", exc)
                job_id = None
            if job_id is None:
                with self._ready:
                    if self._rung == seen and not self._stopping.is_set():
                        self._ready.wait(self.poll_s)
                continue
            self._run(job_id)

    def _run(self, job_id: str) -> None:
        """Runs one claimed job, then hands its lease back (to run again after its wait, if it waits)."""
        with self._ready:
            if job_id in self._held:
                # Still running here: its lease expired while the database was away, and this replica
                # claimed it back. That run goes on under the renewed lease; a second would run it twice.
                self._lost.discard(job_id)
                return
            self._held.add(job_id)
            self._lost.discard(job_id)
        wait_s = 0.0
        try:
            job = self.runner.run(job_id, Lease(self.holder, lambda: self.holds(job_id)))
            if job.state not in FINAL_STATES:
                wait_s = self.runner.retry_in_s(job_id)
        except Exception:  # the runner records failures; this is the job database gone mid-run
            log.exception("running job %s failed", job_id, extra={"job_id": job_id})
            wait_s = self.runner.retry.initial_wait_s
        finally:
            with self._ready:
                self._held.discard(job_id)
                if job_id in self._lost:  # stopping (else the hand-back finds another holder): at once
                    wait_s = 0.0
                self._lost.discard(job_id)
        try:
            self.jobs.hand_back(job_id, self.holder, wait_s)
        except Exception as exc:
            log.warning("could not hand back job %s (%s); its lease expires", job_id, exc)

    def _heartbeat(self) -> None:
        """Renews this replica's leases every third of ``lease_s``; marks lost the ones it no longer has,
        and all of them once renewing has failed for a whole lease (another replica may have them)."""
        renewed = time.monotonic()
        while not self._stopping.wait(self.lease_s / 3):
            running = self.running()
            if not running:
                renewed = time.monotonic()
                continue
            try:
                gone = running - self.jobs.renew(self.holder, self.lease_s)
                renewed = time.monotonic()
            except Exception as exc:
                log.warning("renewing leases failed: %s", exc)
                gone = running if time.monotonic() - renewed > self.lease_s else set()
            with self._ready:
                gone &= self._held  # a job that ended meanwhile is not lost, just done
                self._lost |= gone
            for job_id in sorted(gone):
                log.warning(
                    "job %s: lease lost; it stops before its next step", job_id, extra={"job_id": job_id}
                )
