"""Durable job state: jobs, their finished steps and their events, in one SQLite file.

A coordinator killed mid-job and started again opens the same file and finds everything it had
committed: ``unfinished()`` names the jobs to resume, ``step_result`` hands back what each finished step
produced (so it is not run again), and ``events`` replays a job's history for WatchJob from any sequence
number without gaps. Every method commits before it returns.

Tables (protobuf messages are stored serialized, next to the few columns that are queried):

    jobs    row (insertion order, newest = largest), id, request_id, state, cancel_requested,
            created_ns, updated_ns (Unix nanoseconds, UTC), spec, progress, outputs, error
    steps   job_id, step, result (bytes), seconds (wall time), row (finish order)
    events  job_id, sequence (1, 2, 3... per job, no gaps), event (a serialized JobEvent)

Job lifecycle: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED. The last three are final: a job never
leaves them. A QUEUED job is cancelled at once; a RUNNING one gets a flag that its runner polls
(``cancel_requested``) before each stage call, and the runner then marks it CANCELLED.

Concurrency: one connection shared by all threads (a gRPC thread pool, the job runners), every access
under one lock; writes run in ``BEGIN IMMEDIATE`` transactions, so a second JobStore on the same file
(another process) cannot interleave with a read-then-write such as assigning the next event sequence.
Watchers of this store are woken by a condition variable on append; appends made through another
JobStore on the same file are picked up by polling.

Errors: ``NotFound`` for an unknown job id (the message quotes the id), ``InvalidArgument`` for a bad
``page_size``, ``page_token`` or ``state``, ``FailedPrecondition`` for a move out of a final state or a
file written by a newer schema.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence

from google.protobuf.timestamp_pb2 import Timestamp
from tire.v1 import coordinator_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, NotFound

Job = coordinator_pb2.Job
JobEvent = coordinator_pb2.JobEvent
JobOutputs = coordinator_pb2.JobOutputs
JobProgress = coordinator_pb2.JobProgress
JobSpec = coordinator_pb2.JobSpec

FINAL_STATES = frozenset(
    {
        coordinator_pb2.JOB_STATE_SUCCEEDED,
        coordinator_pb2.JOB_STATE_FAILED,
        coordinator_pb2.JOB_STATE_CANCELLED,
    }
)
ACTIVE_STATES = frozenset({coordinator_pb2.JOB_STATE_QUEUED, coordinator_pb2.JOB_STATE_RUNNING})

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100

_SCHEMA_VERSION = 1
# How long a waiter sleeps between looks at the file, for events appended by another JobStore (another
# process); appends through this store wake it at once.
_POLL_SECONDS = 0.5
# A writer waits this long for another connection's write lock before SQLite gives up.
_BUSY_TIMEOUT_MS = 10_000
_TOKEN_PREFIX = "jobs1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL DEFAULT '',
    state INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    spec BLOB NOT NULL,
    progress BLOB NOT NULL DEFAULT x'',
    outputs BLOB NOT NULL DEFAULT x'',
    error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, row);
CREATE TABLE IF NOT EXISTS steps (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step TEXT NOT NULL,
    result BLOB NOT NULL,
    seconds REAL NOT NULL,
    UNIQUE (job_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""

_JOB_COLUMNS = "id, state, created_ns, updated_ns, spec, progress, outputs, error"


class JobStore:
    """Jobs, their finished steps and their events in one SQLite file (WAL mode); thread-safe.

    Args:
        path: the database file, created with its schema if missing; ``":memory:"`` keeps everything in
            memory (tests), gone on ``close``.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = os.fspath(path)
        # Autocommit mode (isolation_level=None): transactions are opened explicitly by ``_write``.
        self._db = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000
        )
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # ":memory:" stays "memory", which is fine
            # FULL: a commit is on disk when the call returns, even across a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        with self._write() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"job database {self.path!r} has schema version {version}; this coordinator reads "
                    f"up to {_SCHEMA_VERSION}."
                )
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")

    def close(self) -> None:
        """Closes the file; waiters are woken, and any later call raises ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._db.close()
            self._appended.notify_all()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- jobs -------------------------------------------------------------------------------------

    def create(self, spec: JobSpec, request_id: str = "") -> tuple[Job, bool]:
        """Queues a new job, or returns the job first submitted with the same non-empty ``request_id``.

        Returns:
            (job, created): a new job in JOB_STATE_QUEUED with a fresh id ("job-" + 12 hex characters)
            and ``created_at == updated_at == now``, and True; or the earlier job as it is now, and False.
        """
        with self._write() as db:
            if request_id:
                row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE request_id = ?", (request_id,))
                found = row.fetchone()
                if found is not None:
                    return _job_from_row(found), False
            now = time.time_ns()
            while True:
                job_id = "job-" + secrets.token_hex(6)
                if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    break
            db.execute(
                "INSERT INTO jobs (id, request_id, state, created_ns, updated_ns, spec)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, request_id, coordinator_pb2.JOB_STATE_QUEUED, now, now, spec.SerializeToString()),
            )
            return self._get(db, job_id), True

    def get(self, job_id: str) -> Job:
        """The job as stored now; ``NotFound`` naming ``job_id`` if there is none."""
        with self._lock:
            return self._get(self._db, job_id)

    def list(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        state: int = coordinator_pb2.JOB_STATE_UNSPECIFIED,
    ) -> tuple[list[Job], str]:
        """One page of jobs, newest first.

        Args:
            page_size: jobs per page, 1 to 100; 0 means 20.
            page_token: "" for the first page, else the token returned with the previous page (of a
                listing with the same ``state``).
            state: only jobs in this state; JOB_STATE_UNSPECIFIED means all.

        Returns:
            (jobs, next_page_token): the token is "" on the last page. Jobs created after the first page
            was read do not appear on later pages (the token is a position in submission order).
        """
        if page_size == 0:
            page_size = DEFAULT_PAGE_SIZE
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(
                "page_size", page_size, f"must be between 1 and {MAX_PAGE_SIZE} (0 means 20)"
            )
        if state not in coordinator_pb2.JobState.values():
            raise InvalidArgument("state", state, "must be a JobState")
        before = _decode_page_token(page_token, state) if page_token else None
        where, args = [], []
        if state != coordinator_pb2.JOB_STATE_UNSPECIFIED:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("row < ?")
            args.append(before)
        sql = f"SELECT row, {_JOB_COLUMNS} FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        # One row more than asked tells whether another page follows.
        sql += " ORDER BY row DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, page_size + 1)).fetchall()
        jobs = [_job_from_row(row[1:]) for row in rows[:page_size]]
        token = _encode_page_token(rows[page_size - 1][0], state) if len(rows) > page_size else ""
        return jobs, token

    def unfinished(self) -> list[str]:
        """Ids of QUEUED or RUNNING jobs, oldest first: what a starting coordinator resumes."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY row",
                tuple(sorted(ACTIVE_STATES)),
            ).fetchall()
        return [row[0] for row in rows]

    def set_state(
        self, job_id: str, state: int, *, error: str = "", outputs: JobOutputs | None = None
    ) -> Job:
        """Moves a job to ``state`` and sets ``updated_at`` to now; returns the job.

        ``error`` and ``outputs`` replace the stored ones when given (non-empty, not None). No event is
        appended: use ``finish`` to end a job and append its JobFinished event in one transaction.

        Raises:
            FailedPrecondition: the job is in a final state and ``state`` is another one (the same final
                state again is a no-op that returns the job unchanged).
            InvalidArgument: ``state`` is JOB_STATE_UNSPECIFIED or not a JobState.
        """
        _check_target_state(state)
        with self._write() as db:
            return self._set_state(db, job_id, state, error, outputs)

    def finish(
        self, job_id: str, state: int, *, error: str = "", outputs: JobOutputs | None = None
    ) -> tuple[Job, JobEvent]:
        """Ends a job: a final ``state`` and its JobFinished event, committed together.

        A coordinator killed between the two would otherwise leave a final job whose watchers never see
        the end, or a finished history on a job that is still RUNNING. Calling it again on a job already
        in the same final state changes nothing and returns that job's existing JobFinished event (or
        appends it, if the job was ended by ``set_state``).

        Returns:
            (job, event): the job after the change, and its JobFinished event with its sequence.

        Raises:
            InvalidArgument: ``state`` is not SUCCEEDED, FAILED or CANCELLED.
            FailedPrecondition: the job already ended in another final state.
        """
        if state not in FINAL_STATES:
            raise InvalidArgument("state", state, "must be a final JobState (SUCCEEDED, FAILED or CANCELLED)")
        with self._write() as db:
            return self._finish(db, job_id, state, error, outputs)

    def set_progress(self, job_id: str, progress: JobProgress) -> None:
        """Replaces the job's progress (``updated_at`` is left alone: it tracks state changes)."""
        with self._write() as db:
            self._require_job(db, job_id)
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress.SerializeToString(), job_id))

    def request_cancel(self, job_id: str) -> Job:
        """Cancels a job; returns it.

        QUEUED: becomes CANCELLED at once, and its JobFinished event is appended. RUNNING: the cancel flag
        is set; the runner sees it through ``cancel_requested``, stops issuing stage calls and ends the job
        with ``finish(job_id, JOB_STATE_CANCELLED)``. Final: returned unchanged.
        """
        with self._write() as db:
            job = self._get(db, job_id)
            if job.state in FINAL_STATES:
                return job
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            if job.state == coordinator_pb2.JOB_STATE_QUEUED:
                job, _ = self._finish(db, job_id, coordinator_pb2.JOB_STATE_CANCELLED, "", None)
            return job

    def cancel_requested(self, job_id: str) -> bool:
        """True once ``request_cancel`` was called on the job while it was QUEUED or RUNNING."""
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return bool(row[0])

    # ---- steps ------------------------------------------------------------------------------------

    def record_step(self, job_id: str, step: str, result: bytes, seconds: float) -> None:
        """Records that ``step`` finished with ``result`` (serialized) after ``seconds`` of wall time.

        Idempotent: recording a step again keeps the first result (a resumed runner may redo a step
        whose record it had not seen committed; the first result is the one events already point at).
        """
        with self._write() as db:
            self._require_job(db, job_id)
            db.execute(
                "INSERT OR IGNORE INTO steps (job_id, step, result, seconds) VALUES (?, ?, ?, ?)",
                (job_id, step, bytes(result), float(seconds)),
            )

    def step_result(self, job_id: str, step: str) -> bytes | None:
        """The serialized result of a finished step, or None if the step has not finished."""
        with self._lock:
            self._require_job(self._db, job_id)
            row = self._db.execute(
                "SELECT result FROM steps WHERE job_id = ? AND step = ?", (job_id, step)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def finished_steps(self, job_id: str) -> list[str]:
        """Names of the job's finished steps, in the order they were recorded."""
        return list(self.step_seconds(job_id))

    def step_seconds(self, job_id: str) -> dict[str, float]:
        """Wall time of each finished step, seconds, keyed by step name in the order recorded (for the
        job's report)."""
        with self._lock:
            self._require_job(self._db, job_id)
            rows = self._db.execute(
                "SELECT step, seconds FROM steps WHERE job_id = ? ORDER BY row", (job_id,)
            ).fetchall()
        return {step: seconds for step, seconds in rows}

    # ---- events -----------------------------------------------------------------------------------

    def append_event(self, job_id: str, event: JobEvent) -> JobEvent:
        """Stores a copy of ``event`` with ``job_id``, the next ``sequence`` and ``time = now``; wakes
        the job's watchers; returns the stored copy (``event`` itself is not modified)."""
        with self._write() as db:
            stored = self._append_event(db, job_id, event)
        return stored

    def events(self, job_id: str, after_sequence: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events with ``sequence > after_sequence``, in sequence order, at most ``limit``."""
        with self._lock:
            return self._events(job_id, after_sequence, limit)

    def wait_events(self, job_id: str, after_sequence: int, timeout: float) -> list[JobEvent]:
        """Like ``events``, but when there is nothing newer waits up to ``timeout`` seconds for an append.

        Returns at once with the newer events if there are any, else as soon as one is appended (through
        this store at once; through another store on the same file within ``_POLL_SECONDS``), else [] when
        ``timeout`` passes. Does not return early for a finished job: check its state first.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                found = self._events(job_id, after_sequence, 1000)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._appended.wait(min(remaining, _POLL_SECONDS))

    # ---- internals (callers hold self._lock) --------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """The lock and one write transaction; committed on normal exit, rolled back on an exception."""
        with self._lock:
            # IMMEDIATE takes the file's write lock now, so reads inside the transaction stay current
            # until the commit even with another JobStore on the same file.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _get(self, db: sqlite3.Connection, job_id: str) -> Job:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return _job_from_row(row)

    def _require_job(self, db: sqlite3.Connection, job_id: str) -> None:
        if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise _not_found(job_id)

    def _set_state(
        self, db: sqlite3.Connection, job_id: str, state: int, error: str, outputs: JobOutputs | None
    ) -> Job:
        job = self._get(db, job_id)
        if job.state in FINAL_STATES:
            if job.state == state:
                return job
            raise FailedPrecondition(
                f"job {job_id!r} is already {_state_name(job.state)}; it cannot become {_state_name(state)}."
            )
        sets, args = ["state = ?", "updated_ns = ?"], [state, time.time_ns()]
        if error:
            sets.append("error = ?")
            args.append(error)
        if outputs is not None:
            sets.append("outputs = ?")
            args.append(outputs.SerializeToString())
        db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
        return self._get(db, job_id)

    def _finish(
        self, db: sqlite3.Connection, job_id: str, state: int, error: str, outputs: JobOutputs | None
    ) -> tuple[Job, JobEvent]:
        already_final = self._get(db, job_id).state in FINAL_STATES
        job = self._set_state(db, job_id, state, error, outputs)
        if already_final:
            # Same final state again (another one raised above): hand back the event written then.
            rows = db.execute("SELECT event FROM events WHERE job_id = ? ORDER BY sequence DESC", (job_id,))
            for (blob,) in rows:
                event = JobEvent.FromString(blob)
                if event.HasField("finished"):
                    return job, event
            # Ended through ``set_state`` without its event: append the missing one now.
        finished = JobEvent(finished=coordinator_pb2.JobFinished(state=state, error=job.error))
        if job.HasField("outputs"):
            finished.finished.outputs.CopyFrom(job.outputs)
        return job, self._append_event(db, job_id, finished)

    def _append_event(self, db: sqlite3.Connection, job_id: str, event: JobEvent) -> JobEvent:
        self._require_job(db, job_id)
        last = db.execute("SELECT MAX(sequence) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0]
        stored = JobEvent()
        stored.CopyFrom(event)
        stored.job_id = job_id
        stored.sequence = (last or 0) + 1
        stored.time.FromNanoseconds(time.time_ns())
        db.execute(
            "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
            (job_id, stored.sequence, stored.SerializeToString()),
        )
        # Watchers wake once the lock is released, i.e. after the commit in ``_write``.
        self._appended.notify_all()
        return stored

    def _events(self, job_id: str, after_sequence: int, limit: int) -> list[JobEvent]:
        if limit < 1:
            raise InvalidArgument("limit", limit, "must be positive")
        self._require_job(self._db, job_id)
        rows = self._db.execute(
            "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after_sequence, limit),
        ).fetchall()
        return [JobEvent.FromString(row[0]) for row in rows]


def _job_from_row(row: Sequence) -> Job:
    job_id, state, created_ns, updated_ns, spec, progress, outputs, error = row
    job = Job(id=job_id, state=state, spec=JobSpec.FromString(spec), error=error)
    job.created_at.CopyFrom(_timestamp(created_ns))
    job.updated_at.CopyFrom(_timestamp(updated_ns))
    if progress:
        job.progress.CopyFrom(JobProgress.FromString(progress))
    if outputs:
        job.outputs.CopyFrom(JobOutputs.FromString(outputs))
    return job


def _timestamp(nanoseconds: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return stamp


def _not_found(job_id: str) -> NotFound:
    return NotFound(f"no job with `job_id` {job_id!r}.")


def _state_name(state: int) -> str:
    try:
        return coordinator_pb2.JobState.Name(state)
    except ValueError:
        return str(state)


def _check_target_state(state: int) -> None:
    if state == coordinator_pb2.JOB_STATE_UNSPECIFIED or state not in coordinator_pb2.JobState.values():
        raise InvalidArgument("state", state, "must be a JobState other than JOB_STATE_UNSPECIFIED")


def _encode_page_token(last_row: int, state: int) -> str:
    """An opaque token: the position after which the next page starts, and the filter it belongs to."""
    return base64.urlsafe_b64encode(f"{_TOKEN_PREFIX}:{last_row}:{state}".encode()).decode().rstrip("=")


def _decode_page_token(token: str, state: int) -> int:
    """The row the next page starts before; ``InvalidArgument`` naming ``page_token`` if it is not ours."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode("ascii")
        prefix, row, token_state = text.split(":")
        if prefix != _TOKEN_PREFIX or int(row) < 1:
            raise ValueError(text)
        token_state_value = int(token_state)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidArgument(
            "page_token", token, "is not a token from a previous ListJobs response"
        ) from exc
    if token_state_value != state:
        raise InvalidArgument(
            "page_token", token, f"belongs to a listing with `state` {_state_name(token_state_value)}"
        )
    return int(row)
