"""Durable job state: jobs, their finished steps and their events, in SQLite (one file, the default) or
PostgreSQL (one database that several coordinator replicas share; ``services.coordinator.databases``).

A coordinator killed mid-job and started again (or another replica) finds everything it had
committed: ``unfinished()`` names the jobs to resume, ``step_result`` hands back what each finished step
produced (so it is not run again), and ``events`` replays a job's history for WatchJob from any sequence
number without gaps. Every method commits before it returns.

Tables (protobuf messages are stored serialized, next to the few columns that are queried):

    jobs    row (insertion order, newest = largest), id, owner (the principal that submitted it),
            request_id, state, cancel_requested, created_ns, updated_ns (Unix nanoseconds, UTC), spec,
            progress, outputs, error, failure (a serialized StepFailure: the error's step, code and
            sentence), lease_holder, lease_expires_ns (the replica running it, until when: see
            Leases), run_after_ns (a job waiting for the store or a stage is not claimed before)
    steps   job_id, step, result (bytes), seconds (wall time), row (finish order)
    events  job_id, sequence (1, 2, 3... per job, no gaps), event (a serialized JobEvent)
    objects job_id, uri: every object a job names (its spec, step results, events and outputs), so a
            deleted job's objects can be told from those another job still uses
    uploads owner, uri (the content-addressed object), sha256, size_bytes, staging_uri (where the
            presigned PUT writes; "" once verified), created_ns, expires_ns: what each principal
            uploaded, or is allowed to upload until ``expires_ns``
    doomed  uri, since_ns: objects nothing named any more when they were released (a deleted job's, an
            expired upload's, an old one no row names); removed from the store after a grace if still
            unnamed (``services.coordinator.retention``)
    owners  owner, claimed_ns: when a job of each owner was last claimed (whose turn is next)

Ownership: methods that take ``owner`` act only on that principal's jobs (another's is ``NotFound``,
as if it did not exist); ``owner=None`` is the coordinator itself, or an admin.

Job lifecycle: QUEUED -> RUNNING -> SUCCEEDED | FAILED | CANCELLED. The last three are final: a job never
leaves them. A QUEUED job is cancelled at once; a RUNNING one gets a flag that its runner polls
(``cancel_requested``) before each stage call, and the runner then marks it CANCELLED.

Leases: a queued or running job is run by the replica that holds its lease. ``claim`` leases the next
job to a replica (fairly: the owner with the fewest jobs running first, then the one served longest
ago, and its oldest job; on PostgreSQL with ``FOR UPDATE SKIP LOCKED``, so replicas claim side by side
without waiting on each other), ``renew`` extends a replica's leases (its heartbeat), ``hand_back``
returns one (run again at once, or after a wait). A lease that is not renewed expires, and the job is
claimable again: another replica resumes it from its last finished step. The runner's writes name its
holder (``Lease``), and are refused once another replica holds the job. ``services.coordinator.jobqueue``
runs this.

Concurrency: every write is one transaction that locks the rows it reads before writing them (the job,
or the owner for admission), so a second JobStore on the same database (another replica) cannot
interleave with a read-then-write such as assigning the next event sequence. Listeners of this store
(``on_events``, ``on_jobs_ready``) hear its own commits at once, and another replica's through
PostgreSQL's LISTEN/NOTIFY; SQLite's other processes are noticed by polling.

Errors: ``NotFound`` for an unknown job id (the message quotes the id), ``InvalidArgument`` for a bad
``page_size``, ``page_token`` or ``state``, ``FailedPrecondition`` for a move out of a final state or a
database written by a newer schema, ``DatabaseUnavailable`` when the database cannot be reached.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import heapq
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from tire.v1 import coordinator_pb2

from services.common.errors import FailedPrecondition, InvalidArgument, LeaseLost, NotFound
from services.coordinator.admission import ActiveJobLimitReached
from services.coordinator.databases import (
    EVENTS_CHANNEL,
    JOBS_CHANNEL,
    Migration,
    Transaction,
    open_database,
)

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
MAX_PAGE_BYTES = 4 * 2**20
"""A page of ``list`` holds fewer jobs than asked rather than more serialized bytes than this (a 4D job's
outputs name thousands of objects), so it fits any client's message limit."""

# How long a waiter sleeps between looks at the database, for events appended by another process that
# nothing told it about (SQLite's other processes; a lost PostgreSQL notification).
_POLL_SECONDS = 0.5
_TOKEN_PREFIX = "jobs1"

# ---- schema: numbered migrations, applied in order at start-up (``Database.migrate``) -------------------

# SQLite. 1: jobs, steps and events. 2: jobs gain their owner ("": submitted before principals; only
# admins see them) and failure; request ids become unique per owner; objects, uploads and doomed, with
# the objects of the jobs kept so far recorded. 3: leases.
_SQLITE_1 = """
CREATE TABLE jobs (
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
CREATE UNIQUE INDEX jobs_request_id ON jobs (request_id) WHERE request_id != '';
CREATE INDEX jobs_state ON jobs (state, row);
CREATE TABLE steps (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step TEXT NOT NULL,
    result BLOB NOT NULL,
    seconds REAL NOT NULL,
    UNIQUE (job_id, step)
);
CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID
"""
_SQLITE_2 = """
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN failure BLOB NOT NULL DEFAULT x'';
DROP INDEX jobs_request_id;
CREATE UNIQUE INDEX jobs_owner_request_id ON jobs (owner, request_id) WHERE request_id != '';
CREATE INDEX jobs_owner ON jobs (owner, state, row);
CREATE TABLE objects (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    uri TEXT NOT NULL,
    PRIMARY KEY (job_id, uri)
) WITHOUT ROWID;
CREATE INDEX objects_uri ON objects (uri);
CREATE TABLE uploads (
    owner TEXT NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    staging_uri TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    expires_ns INTEGER NOT NULL,
    PRIMARY KEY (owner, uri)
) WITHOUT ROWID;
CREATE INDEX uploads_uri ON uploads (uri);
CREATE INDEX uploads_staging_uri ON uploads (staging_uri);
CREATE INDEX uploads_expires ON uploads (expires_ns);
CREATE TABLE doomed (
    uri TEXT PRIMARY KEY,
    since_ns INTEGER NOT NULL
) WITHOUT ROWID
"""
_LEASES = """
ALTER TABLE jobs ADD COLUMN lease_holder TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN lease_expires_ns BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN run_after_ns BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_lease_holder ON jobs (lease_holder) WHERE lease_holder != '';
CREATE TABLE owners (
    owner TEXT PRIMARY KEY,
    claimed_ns BIGINT NOT NULL
)
"""

# PostgreSQL. 1: everything SQLite's 3 has.
_POSTGRES_1 = """
CREATE TABLE jobs (
    row BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL DEFAULT '',
    request_id TEXT NOT NULL DEFAULT '',
    state INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_ns BIGINT NOT NULL,
    updated_ns BIGINT NOT NULL,
    spec BYTEA NOT NULL,
    progress BYTEA NOT NULL DEFAULT '',
    outputs BYTEA NOT NULL DEFAULT '',
    error TEXT NOT NULL DEFAULT '',
    failure BYTEA NOT NULL DEFAULT '',
    lease_holder TEXT NOT NULL DEFAULT '',
    lease_expires_ns BIGINT NOT NULL DEFAULT 0,
    run_after_ns BIGINT NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX jobs_owner_request_id ON jobs (owner, request_id) WHERE request_id != '';
CREATE INDEX jobs_state ON jobs (state, row);
CREATE INDEX jobs_owner ON jobs (owner, state, row);
CREATE INDEX jobs_lease_holder ON jobs (lease_holder) WHERE lease_holder != '';
CREATE TABLE steps (
    row BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step TEXT NOT NULL,
    result BYTEA NOT NULL,
    seconds DOUBLE PRECISION NOT NULL,
    UNIQUE (job_id, step)
);
CREATE TABLE events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence BIGINT NOT NULL,
    event BYTEA NOT NULL,
    PRIMARY KEY (job_id, sequence)
);
CREATE TABLE objects (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    uri TEXT NOT NULL,
    PRIMARY KEY (job_id, uri)
);
CREATE INDEX objects_uri ON objects (uri);
CREATE TABLE uploads (
    owner TEXT NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    staging_uri TEXT NOT NULL,
    created_ns BIGINT NOT NULL,
    expires_ns BIGINT NOT NULL,
    PRIMARY KEY (owner, uri)
);
CREATE INDEX uploads_uri ON uploads (uri);
CREATE INDEX uploads_staging_uri ON uploads (staging_uri);
CREATE INDEX uploads_expires ON uploads (expires_ns);
CREATE TABLE doomed (
    uri TEXT PRIMARY KEY,
    since_ns BIGINT NOT NULL
);
CREATE TABLE owners (
    owner TEXT PRIMARY KEY,
    claimed_ns BIGINT NOT NULL
)
"""

_JOB_COLUMNS = "id, owner, state, created_ns, updated_ns, spec, progress, outputs, error, failure"
_URI_FIELDS = frozenset({"uri", "uris", "preview_uris"})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lease:
    """A replica's lease of one job, as the job's runner holds it (``services.coordinator.jobqueue``).

    The runner's writes name ``holder`` (the ``holder=`` of ``set_state``, ``finish``, ``set_progress``,
    ``record_step`` and ``append_event``): each is refused with ``LeaseLost``, in its transaction, once
    another replica holds the job, so a replica that lost the lease (paused, cut off) adds nothing to
    the job after the other took it. ``held()`` is the heartbeat's view, asked before each step without
    a database read.
    """

    holder: str
    held: Callable[[], bool]


class Upload(NamedTuple):
    """A principal's upload: the bytes announced, and where the presigned PUT writes them."""

    sha256: str
    size_bytes: int
    staging_uri: str  # "" once verified and moved to its content-addressed key

    @property
    def verified(self) -> bool:
        return not self.staging_uri


class JobStore:
    """Jobs, their finished steps, their events and their leases; thread-safe.

    Args:
        url: the database (``services.coordinator.databases``): ``sqlite:///path``, a bare path or
            ``":memory:"`` (tests; gone on ``close``), or ``postgresql://...``; created with its schema,
            or migrated to the newest, at open.
        password_file: PostgreSQL's password, when it is not in the URL.
        pool_size: PostgreSQL connections at most.
    """

    def __init__(self, url: str | os.PathLike[str], *, password_file: str = "", pool_size: int = 10):
        self.database = open_database(url, password_file=password_file, pool_size=pool_size)
        self._pending = threading.local()  # what the open write transaction of this thread changed
        self._woken = threading.Condition()  # ``wait_events``: notified on every append it hears of
        self._appends = 0
        self._state_listeners: list[Callable[[Job], None]] = []
        self._event_listeners: list[Callable[[str], None]] = []
        self._ready_listeners: list[Callable[[], None]] = []
        self.closed = False
        if self.database.kind == "postgresql":
            migrations = [Migration(1, _POSTGRES_1)]
        else:
            migrations = [
                Migration(1, _SQLITE_1),
                Migration(2, _SQLITE_2, backfill=_record_all_objects),
                Migration(3, _LEASES),
            ]
        try:
            self.database.migrate(migrations)
        except BaseException:
            self.database.close()
            raise
        self.database.listen(self._notified)

    def close(self) -> None:
        """Closes the database; waiters are woken, and later calls fail."""
        self.closed = True
        self.database.close()
        with self._woken:
            self._woken.notify_all()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- jobs -------------------------------------------------------------------------------------

    def create(
        self, spec: JobSpec, request_id: str = "", owner: str = "", max_active: int | None = None
    ) -> tuple[Job, bool]:
        """Queues a new job of ``owner``, or returns the job ``owner`` first submitted with the same
        non-empty ``request_id``.

        Args:
            max_active: refuse a new job while ``owner`` has this many queued or running, checked in the
                transaction that adds it (None: no limit).

        Returns:
            (job, created): a new job in JOB_STATE_QUEUED with a fresh id ("job-" + 12 hex characters)
            and ``created_at == updated_at == now``, and True; or the earlier job as it is now, and False.

        Raises:
            ActiveJobLimitReached: ``owner`` has ``max_active`` queued or running jobs.
        """
        with self._write() as db:
            db.lock_owner(owner)
            if request_id:
                row = db.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE owner = ? AND request_id = ?", (owner, request_id)
                )
                found = row.fetchone()
                if found is not None:
                    return _job_from_row(found), False
            if max_active is not None and (active := self._active(db, owner)) >= max_active:
                raise ActiveJobLimitReached(
                    f"{owner} has {active} queued or running jobs, the limit per caller "
                    "(TIRE_COORDINATOR_MAX_ACTIVE_JOBS_PER_CALLER); wait for one to end."
                )
            now = time.time_ns()
            while True:
                job_id = "job-" + secrets.token_hex(6)
                if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
                    break
            db.execute(
                "INSERT INTO jobs (id, owner, request_id, state, created_ns, updated_ns, spec)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    owner,
                    request_id,
                    coordinator_pb2.JOB_STATE_QUEUED,
                    now,
                    now,
                    spec.SerializeToString(),
                ),
            )
            _record_objects(db, job_id, spec)
            job = self._get(db, job_id)
            self._pending.changed.append(job)
            self._jobs_ready(db)
            return job, True

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job as stored now; ``NotFound`` naming ``job_id`` if there is none (of ``owner``'s)."""
        with self.database.read() as db:
            return self._get(db, job_id, owner)

    def list(
        self,
        page_size: int = DEFAULT_PAGE_SIZE,
        page_token: str = "",
        state: int = coordinator_pb2.JOB_STATE_UNSPECIFIED,
        owner: str | None = None,
    ) -> tuple[list[Job], str]:
        """One page of jobs (``owner``'s, or everybody's for None), newest first.

        Args:
            page_size: jobs per page, 1 to 100; 0 means 20.
            page_token: "" for the first page, else the token returned with the previous page (of a
                listing with the same ``state``).
            state: only jobs in this state; JOB_STATE_UNSPECIFIED means all.

        Returns:
            (jobs, next_page_token): the token is "" on the last page. A page stops early (at least one
            job) where the next job would take it past ``MAX_PAGE_BYTES``. Jobs created after the first
            page was read do not appear on later pages (the token is a position in submission order).
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
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
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
        with self.database.read() as db:
            rows = db.execute(sql, (*args, page_size + 1)).fetchall()
        jobs: list[Job] = []
        size = 0
        for i, row in enumerate(rows[:page_size]):
            job = _job_from_row(row[1:])
            size += job.ByteSize()
            if jobs and size > MAX_PAGE_BYTES:
                return jobs, _encode_page_token(rows[i - 1][0], state)
            jobs.append(job)
        token = _encode_page_token(rows[page_size - 1][0], state) if len(rows) > page_size else ""
        return jobs, token

    def state(self, job_id: str) -> int:
        """The job's state alone (a ``JobState``), without decoding the rest of it.

        Raises:
            NotFound: no such job.
        """
        with self.database.read() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return row[0]

    def active(self, owner: str) -> int:
        """How many of ``owner``'s jobs are queued or running."""
        with self.database.read() as db:
            return self._active(db, owner)

    def active_by_owner(self) -> dict[str, int]:
        """How many jobs each owner has queued or running (owners with none are left out)."""
        query = "SELECT owner, COUNT(*) FROM jobs WHERE state IN (?, ?) GROUP BY owner"
        with self.database.read() as db:
            return dict(db.execute(query, tuple(sorted(ACTIVE_STATES))).fetchall())

    def _active(self, db: Transaction, owner: str) -> int:
        query = "SELECT COUNT(*) FROM jobs WHERE owner = ? AND state IN (?, ?)"
        return db.execute(query, (owner, *sorted(ACTIVE_STATES))).fetchone()[0]

    def unfinished(self) -> list[str]:
        """Ids of QUEUED or RUNNING jobs, oldest first: what a starting coordinator resumes."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?) ORDER BY row",
                tuple(sorted(ACTIVE_STATES)),
            ).fetchall()
        return [row[0] for row in rows]

    def set_state(
        self,
        job_id: str,
        state: int,
        *,
        error: str = "",
        outputs: JobOutputs | None = None,
        holder: str | None = None,
    ) -> Job:
        """Moves a job to ``state`` and sets ``updated_at`` to now; returns the job.

        ``error`` and ``outputs`` replace the stored ones when given (non-empty, not None). No event is
        appended: use ``finish`` to end a job and append its JobFinished event in one transaction.

        Raises:
            FailedPrecondition: the job is in a final state and ``state`` is another one (the same final
                state again is a no-op that returns the job unchanged).
            InvalidArgument: ``state`` is JOB_STATE_UNSPECIFIED or not a JobState.
            LeaseLost: ``holder`` is given and does not hold the job's lease (``Lease``).
        """
        _check_target_state(state)
        with self._write() as db:
            self._check_holder(db, job_id, holder)
            return self._set_state(db, job_id, state, error, outputs)

    def finish(
        self,
        job_id: str,
        state: int,
        *,
        error: str = "",
        outputs: JobOutputs | None = None,
        failure: coordinator_pb2.StepFailure | None = None,
        holder: str | None = None,
    ) -> tuple[Job, JobEvent]:
        """Ends a job: a final ``state`` and its JobFinished event, committed together. A ``failure``
        sets ``error`` to its sentence unless ``error`` is given.

        A coordinator killed between the two would otherwise leave a final job whose watchers never see
        the end, or a finished history on a job that is still RUNNING. Calling it again on a job already
        in the same final state changes nothing and returns that job's existing JobFinished event (or
        appends it, if the job was ended by ``set_state``).

        Returns:
            (job, event): the job after the change, and its JobFinished event with its sequence.

        Raises:
            InvalidArgument: ``state`` is not SUCCEEDED, FAILED or CANCELLED.
            FailedPrecondition: the job already ended in another final state.
            LeaseLost: ``holder`` is given and does not hold the job's lease.
        """
        if state not in FINAL_STATES:
            raise InvalidArgument("state", state, "must be a final JobState (SUCCEEDED, FAILED or CANCELLED)")
        error = error or (failure.message if failure else "")
        with self._write() as db:
            self._check_holder(db, job_id, holder)
            return self._finish(db, job_id, state, error, outputs, failure)

    def set_progress(self, job_id: str, progress: JobProgress, *, holder: str | None = None) -> None:
        """Replaces the job's progress (``updated_at`` is left alone: it tracks state changes); ``holder``:
        as ``set_state``'s."""
        with self._write() as db:
            self._check_holder(db, job_id, holder)
            db.execute("UPDATE jobs SET progress = ? WHERE id = ?", (progress.SerializeToString(), job_id))

    def request_cancel(self, job_id: str, owner: str | None = None) -> Job:
        """Cancels a job; returns it.

        QUEUED: becomes CANCELLED at once, and its JobFinished event is appended. RUNNING: the cancel flag
        is set; the runner sees it through ``cancel_requested``, stops issuing stage calls and ends the job
        with ``finish(job_id, JOB_STATE_CANCELLED)``. Final: returned unchanged.
        """
        with self._write() as db:
            db.lock_job(job_id)
            job = self._get(db, job_id, owner)
            if job.state in FINAL_STATES:
                return job
            # A job waiting to be run again is claimable at once, so that it ends now, not after the wait.
            db.execute("UPDATE jobs SET cancel_requested = 1, run_after_ns = 0 WHERE id = ?", (job_id,))
            self._jobs_ready(db)
            if job.state == coordinator_pb2.JOB_STATE_QUEUED:
                job, _ = self._finish(db, job_id, coordinator_pb2.JOB_STATE_CANCELLED, "", None)
            return job

    def cancel_requested(self, job_id: str) -> bool:
        """True once ``request_cancel`` was called on the job while it was QUEUED or RUNNING."""
        with self.database.read() as db:
            row = db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise _not_found(job_id)
        return bool(row[0])

    # ---- steps ------------------------------------------------------------------------------------

    def record_step(
        self, job_id: str, step: str, result: Message, seconds: float, *, holder: str | None = None
    ) -> None:
        """Records that ``step`` finished with ``result`` after ``seconds`` of wall time, and the objects
        ``result`` names as the job's.

        Idempotent: recording a step again keeps the first result (a resumed runner may redo a step
        whose record it had not seen committed; the first result is the one events already point at).
        ``holder``: as ``set_state``'s.
        """
        with self._write() as db:
            self._check_holder(db, job_id, holder)
            db.execute(
                "INSERT INTO steps (job_id, step, result, seconds) VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (job_id, step, result.SerializeToString(), float(seconds)),
            )
            _record_objects(db, job_id, result)

    def step_result(self, job_id: str, step: str) -> bytes | None:
        """The serialized result of a finished step, or None if the step has not finished."""
        with self.database.read() as db:
            self._require_job(db, job_id)
            row = db.execute(
                "SELECT result FROM steps WHERE job_id = ? AND step = ?", (job_id, step)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def finished_steps(self, job_id: str) -> list[str]:
        """Names of the job's finished steps, in the order they were recorded."""
        return list(self.step_seconds(job_id))

    def step_seconds(self, job_id: str) -> dict[str, float]:
        """Wall time of each finished step, seconds, keyed by step name in the order recorded (for the
        job's report)."""
        with self.database.read() as db:
            self._require_job(db, job_id)
            rows = db.execute(
                "SELECT step, seconds FROM steps WHERE job_id = ? ORDER BY row", (job_id,)
            ).fetchall()
        return {step: seconds for step, seconds in rows}

    # ---- events -----------------------------------------------------------------------------------

    def append_event(self, job_id: str, event: JobEvent, *, holder: str | None = None) -> JobEvent:
        """Stores a copy of ``event`` with ``job_id``, the next ``sequence`` and ``time = now``; wakes
        the job's watchers; returns the stored copy (``event`` itself is not modified). ``holder``: as
        ``set_state``'s."""
        with self._write() as db:
            self._check_holder(db, job_id, holder)
            stored = self._append_event(db, job_id, event)
        return stored

    def events(self, job_id: str, after_sequence: int = 0, limit: int = 1000) -> list[JobEvent]:
        """The job's events with ``sequence > after_sequence``, in sequence order, at most ``limit``."""
        with self.database.read() as db:
            return self._events(db, job_id, after_sequence, limit)

    def wait_events(self, job_id: str, after_sequence: int, timeout: float) -> list[JobEvent]:
        """Like ``events``, but when there is nothing newer waits up to ``timeout`` seconds for an append.

        Returns at once with the newer events if there are any, else as soon as one is appended (through
        this store or a notified one at once; through another process on a SQLite file within
        ``_POLL_SECONDS``), else [] when
        ``timeout`` passes. Does not return early for a finished job: check its state first.
        """
        deadline = time.monotonic() + timeout
        while True:
            with self._woken:
                seen = self._appends
            found = self.events(job_id, after_sequence)
            remaining = deadline - time.monotonic()
            if found or remaining <= 0:
                return found
            with self._woken:
                if self._appends == seen:  # nothing heard since the read: wait for the next append
                    self._woken.wait(min(remaining, _POLL_SECONDS))

    # ---- deletion and retention --------------------------------------------------------------------

    def delete(self, job_id: str, owner: str | None = None, now_ns: int | None = None) -> int:
        """Deletes a finished job of ``owner``'s: its record, steps, events and objects rows; the URIs it
        named that nothing else names (no other job, no upload) are released (``release``) as of
        ``now_ns`` (default: now).

        Returns:
            How many objects were released.

        Raises:
            NotFound: no such job (of ``owner``'s).
            FailedPrecondition: the job is queued or running.
        """
        with self._write() as db:
            db.lock_job(job_id)
            job = self._get(db, job_id, owner)
            if job.state not in FINAL_STATES:
                raise FailedPrecondition(
                    f"job {job_id!r} is {_state_name(job.state)}: cancel it (CancelJob) before deleting it."
                )
            uris = [row[0] for row in db.execute("SELECT uri FROM objects WHERE job_id = ?", (job_id,))]
            for table in ("objects", "events", "steps"):
                db.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return _release(db, uris, now_ns)

    def finished_before(self, before_ns: int, limit: int = 100) -> list[str]:
        """Ids of jobs that ended (SUCCEEDED, FAILED, CANCELLED) before ``before_ns`` (Unix ns), oldest
        first, at most ``limit``: what retention deletes."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?, ?) AND updated_ns < ? ORDER BY row LIMIT ?",
                (*sorted(FINAL_STATES), before_ns, limit),
            ).fetchall()
        return [row[0] for row in rows]

    def finished_since(self, since_ns: int) -> list[str]:
        """Ids of jobs that ended (SUCCEEDED, FAILED, CANCELLED) at or after ``since_ns`` (Unix ns),
        oldest first: whose final webhook a starting coordinator may still owe."""
        with self.database.read() as db:
            rows = db.execute(
                "SELECT id FROM jobs WHERE state IN (?, ?, ?) AND updated_ns >= ? ORDER BY row",
                (*sorted(FINAL_STATES), since_ns),
            ).fetchall()
        return [row[0] for row in rows]

    def objects_of(self, job_id: str) -> set[str]:
        """Every object URI the job names: its inputs, step results, events and outputs."""
        with self.database.read() as db:
            rows = db.execute("SELECT uri FROM objects WHERE job_id = ?", (job_id,)).fetchall()
        return {row[0] for row in rows}

    def in_use(self, uris: Sequence[str]) -> set[str]:
        """Those of ``uris`` a job or an upload names."""
        with self.database.read() as db:
            return {uri for uri in uris if _in_use(db, uri)}

    def release(self, uris: Sequence[str], now_ns: int | None = None) -> int:
        """Marks those of ``uris`` that no job and no upload names as released at ``now_ns`` (default:
        now; an earlier release keeps its time); returns how many are released."""
        with self._write() as db:
            return _release(db, uris, now_ns)

    def released_before(self, before_ns: int) -> list[str]:
        """URIs released before ``before_ns`` that nothing names still: what to remove from the store
        (then ``forget``). Released URIs named again (a job stored the same bytes) are kept, unreleased."""
        with self._write() as db:
            rows = db.execute(
                "SELECT uri FROM doomed WHERE since_ns < ? ORDER BY uri", (before_ns,)
            ).fetchall()
            named = [row[0] for row in rows if _in_use(db, row[0])]
            db.executemany("DELETE FROM doomed WHERE uri = ?", [(uri,) for uri in named])
            return [row[0] for row in rows if row[0] not in set(named)]

    def forget(self, uris: Sequence[str]) -> None:
        """Drops released URIs (removed from the store)."""
        with self._write() as db:
            db.executemany("DELETE FROM doomed WHERE uri = ?", [(uri,) for uri in uris])

    # ---- uploads ----------------------------------------------------------------------------------

    def expect_upload(
        self, owner: str, uri: str, sha256: str, size_bytes: int, staging_uri: str, expires_ns: int
    ) -> None:
        """Notes that ``owner`` may upload the bytes of ``uri`` (``sha256``, ``size_bytes``) to
        ``staging_uri`` until ``expires_ns``; replaces an earlier pending upload of the same object."""
        with self._write() as db:
            db.execute(
                "INSERT INTO uploads (owner, uri, sha256, size_bytes, staging_uri, created_ns, expires_ns)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (owner, uri) DO UPDATE SET"
                " staging_uri = excluded.staging_uri, expires_ns = excluded.expires_ns,"
                " sha256 = excluded.sha256, size_bytes = excluded.size_bytes",
                (owner, uri, sha256, size_bytes, staging_uri, time.time_ns(), expires_ns),
            )

    def upload(self, owner: str, uri: str) -> Upload | None:
        """``owner``'s upload of ``uri``; None if ``owner`` has none."""
        with self.database.read() as db:
            row = db.execute(
                "SELECT sha256, size_bytes, staging_uri FROM uploads WHERE owner = ? AND uri = ?",
                (owner, uri),
            ).fetchone()
        return None if row is None else Upload(row[0], int(row[1]), row[2])

    def mark_uploaded(self, owner: str, uri: str, keep_until_ns: int) -> None:
        """``owner``'s upload of ``uri`` is verified and in place: no staging URI any more, kept (for
        ``owner``'s next jobs) until ``keep_until_ns``."""
        with self._write() as db:
            db.execute(
                "UPDATE uploads SET staging_uri = '', expires_ns = ? WHERE owner = ? AND uri = ?",
                (keep_until_ns, owner, uri),
            )

    def produced_for(self, owner: str, uri: str) -> bool:
        """Whether one of ``owner``'s jobs names ``uri`` (so ``owner`` may read it in a new job)."""
        with self.database.read() as db:
            row = db.execute(
                "SELECT 1 FROM objects JOIN jobs ON jobs.id = objects.job_id"
                " WHERE objects.uri = ? AND jobs.owner = ? LIMIT 1",
                (uri, owner),
            ).fetchone()
        return row is not None

    def drop_expired_uploads(self, now_ns: int) -> tuple[list[str], int]:
        """Forgets uploads past their expiry; the objects of verified ones are released.

        Returns:
            (staging, released): the staging URIs of uploads never verified, to delete from the store
            at once (nobody else writes there, so no grace is needed); how many objects were released.
        """
        with self._write() as db:
            rows = db.execute(
                "SELECT owner, uri, staging_uri FROM uploads WHERE expires_ns < ?", (now_ns,)
            ).fetchall()
            db.execute("DELETE FROM uploads WHERE expires_ns < ?", (now_ns,))
            released = _release(db, sorted({row[1] for row in rows if not row[2]}), now_ns)
            return [row[2] for row in rows if row[2]], released

    # ---- leases -----------------------------------------------------------------------------------

    def claim(self, holder: str, lease_s: float) -> str | None:
        """Leases the next claimable job to ``holder`` for ``lease_s`` seconds; returns its id, or None.

        Claimable: QUEUED or RUNNING, its lease free or expired, its wait over. Next: the owners with the
        fewest jobs leased now first, then the one served longest ago (so owners take turns), and of its
        jobs the oldest (``claim_order`` predicts the same order).
        """
        now = time.time_ns()
        active = tuple(sorted(ACTIVE_STATES))
        claimable = "state IN (?, ?) AND lease_expires_ns < ? AND run_after_ns <= ?"
        with self._write() as db:
            # The owners in turn (a small set, each with its oldest claimable job), then the owner's
            # oldest job through the (owner, state, row) index: no sort of every claimable job.
            turn = db.execute(
                "WITH busy AS MATERIALIZED (SELECT owner, COUNT(*) AS n FROM jobs"
                " WHERE state IN (?, ?) AND lease_expires_ns >= ? GROUP BY owner)"
                " SELECT waiting.owner FROM"
                f" (SELECT owner, MIN(row) AS oldest FROM jobs WHERE {claimable} GROUP BY owner) AS waiting"
                " LEFT JOIN busy ON busy.owner = waiting.owner"
                " LEFT JOIN owners ON owners.owner = waiting.owner"
                " ORDER BY COALESCE(busy.n, 0), COALESCE(owners.claimed_ns, 0), waiting.oldest",
                (*active, now, *active, now, now),
            ).fetchall()
            for (owner,) in turn:
                # Another replica may hold the owner's jobs locked this instant: skip them, and on to
                # the next owner if that leaves none.
                row = db.execute(
                    f"SELECT id FROM jobs WHERE owner = ? AND {claimable}"
                    f" ORDER BY row LIMIT 1{db.skip_locked}",
                    (owner, *active, now, now),
                ).fetchone()
                if row is None:
                    continue
                db.execute(
                    "UPDATE jobs SET lease_holder = ?, lease_expires_ns = ? WHERE id = ?",
                    (holder, now + int(lease_s * 1e9), row[0]),
                )
                db.execute(
                    "INSERT INTO owners (owner, claimed_ns) VALUES (?, ?)"
                    " ON CONFLICT (owner) DO UPDATE SET claimed_ns = excluded.claimed_ns",
                    (owner, now),
                )
                return row[0]
            return None

    def renew(self, holder: str, lease_s: float) -> set[str]:
        """Extends every lease ``holder`` has by ``lease_s`` seconds from now; returns the ids of the
        jobs it leases (a job another replica claimed after ``holder``'s lease expired is not among
        them: its runner must stop)."""
        active = tuple(sorted(ACTIVE_STATES))
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET lease_expires_ns = ? WHERE lease_holder = ? AND state IN (?, ?)",
                (time.time_ns() + int(lease_s * 1e9), holder, *active),
            )
            rows = db.execute(
                "SELECT id FROM jobs WHERE lease_holder = ? AND state IN (?, ?)", (holder, *active)
            ).fetchall()
        return {row[0] for row in rows}

    def hand_back(self, job_id: str, holder: str, run_after_s: float = 0.0) -> None:
        """Ends ``holder``'s lease of the job (nothing if another holds it): it can be claimed again at
        once, or after ``run_after_s`` seconds (a job waiting for the store or a stage)."""
        run_after = time.time_ns() + int(run_after_s * 1e9) if run_after_s > 0 else 0
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET lease_holder = '', lease_expires_ns = 0, run_after_ns = ?"
                " WHERE id = ? AND lease_holder = ?",
                (run_after, job_id, holder),
            )
            self._jobs_ready(db)

    def hand_back_all(self, holder: str | None) -> int:
        """Ends every lease of ``holder`` (a replica shutting down, or starting again under the same
        name), or every lease of anyone's (None); returns how many."""
        sql = "UPDATE jobs SET lease_holder = '', lease_expires_ns = 0 WHERE lease_holder != ''"
        with self._write() as db:
            if holder is None:
                ended = db.execute(sql).rowcount
            else:
                ended = db.execute(sql + " AND lease_holder = ?", (holder,)).rowcount
            if ended:
                self._jobs_ready(db)
        return ended

    def lease_of(self, job_id: str) -> tuple[str, int]:
        """(holder, expiry in Unix ns) of the job's lease; ("", 0) when free."""
        with self.database.read() as db:
            row = db.execute(
                "SELECT lease_holder, lease_expires_ns FROM jobs WHERE id = ?", (job_id,)
            ).fetchone()
        if row is None:
            raise _not_found(job_id)
        return row[0], int(row[1])

    def queue_positions(self, job_ids: Sequence[str]) -> dict[str, int]:
        """How many claimable jobs go before each of ``job_ids`` that is QUEUED and waiting to be
        claimed, if nothing else changes (one read for all); the others (leased, waiting to run again,
        finished, unknown) are left out."""
        if not job_ids:
            return {}
        now = time.time_ns()
        active = tuple(sorted(ACTIVE_STATES))
        with self.database.read() as db:
            waiting = db.execute(
                "SELECT id, owner, state FROM jobs WHERE state IN (?, ?) AND lease_expires_ns < ?"
                " AND run_after_ns <= ? ORDER BY row",
                (*active, now, now),
            ).fetchall()
            busy = db.execute(
                "SELECT owner, COUNT(*) FROM jobs WHERE state IN (?, ?) AND lease_expires_ns >= ?"
                " GROUP BY owner",
                (*active, now),
            ).fetchall()
            served = db.execute("SELECT owner, claimed_ns FROM owners").fetchall()
        asked = {row[0] for row in waiting if row[2] == coordinator_pb2.JOB_STATE_QUEUED} & set(job_ids)
        if not asked:
            return {}
        order = claim_order([(row[0], row[1]) for row in waiting], dict(busy), dict(served))
        return {job_id: place for place, job_id in enumerate(order) if job_id in asked}

    def queue_position(self, job_id: str) -> int | None:
        """``queue_positions`` of one job: None when it is not waiting to be claimed."""
        return self.queue_positions([job_id]).get(job_id)

    def waiting_count(self) -> int:
        """How many jobs are waiting to be claimed (QUEUED, no lease)."""
        with self.database.read() as db:
            row = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND lease_expires_ns < ?",
                (coordinator_pb2.JOB_STATE_QUEUED, time.time_ns()),
            ).fetchone()
        return int(row[0])

    # ---- internals ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Transaction]:
        """One write transaction: committed on normal exit, rolled back on an exception. After the
        commit, the listeners hear what it changed (outside the transaction)."""
        pending = self._pending
        pending.changed, pending.appended_to, pending.ready = [], [], False
        try:
            with self.database.write() as db:
                yield db
            changed, appended_to, ready = pending.changed, dict.fromkeys(pending.appended_to), pending.ready
        finally:
            pending.changed, pending.appended_to, pending.ready = [], [], False
        for job in changed:
            for listener in self._state_listeners:
                try:
                    listener(job)
                except Exception:  # a listener's bug must not fail the change, which is committed
                    log.exception("state listener failed for job %s", job.id)
        for job_id in appended_to:
            self._heard(EVENTS_CHANNEL, job_id)
        if ready:
            self._heard(JOBS_CHANNEL, "")

    def _notified(self, channel: str, payload: str) -> None:
        """A notification from the database (another replica's commit, or our own)."""
        self._heard(channel, payload)

    def _heard(self, channel: str, payload: str) -> None:
        if channel == EVENTS_CHANNEL:
            with self._woken:
                self._appends += 1
                self._woken.notify_all()
            listeners: list[Callable[..., None]] = self._event_listeners
            args: tuple[str, ...] = (payload,)
        else:
            listeners, args = self._ready_listeners, ()
        for listener in listeners:
            try:
                listener(*args)
            except Exception:
                log.exception("listener failed for a notification on %s", channel)

    def _jobs_ready(self, db: Transaction) -> None:
        """This transaction may make a job claimable: tell the replicas at the commit."""
        self._pending.ready = True
        db.notify(JOBS_CHANNEL)

    def on_state_change(self, listener: Callable[[Job], None]) -> None:
        """Call ``listener(job)`` after every committed change of a job's state (a new job included),
        made through this store, from the thread that made it. It must return quickly (queue work, not
        do it)."""
        self._state_listeners.append(listener)

    def on_events(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(job_id)`` after every commit that appended events to a job: at once for this
        store's, and on notification for another replica's (PostgreSQL). The async watches' wake-up; it
        must return quickly, and may be called twice for one commit."""
        self._event_listeners.append(listener)

    def on_jobs_ready(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when a job may have become claimable (submitted, handed back, cancelled
        while waiting), here or on another replica (PostgreSQL). It must return quickly."""
        self._ready_listeners.append(listener)

    def _lock_job(self, db: Transaction, job_id: str) -> None:
        if not db.lock_job(job_id):
            raise _not_found(job_id)

    def _check_holder(self, db: Transaction, job_id: str, holder: str | None) -> None:
        """Locks the job; ``LeaseLost`` when ``holder`` is given and another holds (or nobody holds) its
        lease."""
        self._lock_job(db, job_id)
        if holder is None:
            return
        row = db.execute("SELECT lease_holder FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row[0] != holder:
            raise LeaseLost(f"job {job_id} is not leased to {holder} any more")

    def _require_job(self, db: Transaction, job_id: str) -> None:
        if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is None:
            raise _not_found(job_id)

    def _get(self, db: Transaction, job_id: str, owner: str | None = None) -> Job:
        row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None or (owner is not None and row[1] != owner):
            raise _not_found(job_id)  # another principal's job does not exist for this caller
        return _job_from_row(row)

    def _set_state(
        self,
        db: Transaction,
        job_id: str,
        state: int,
        error: str,
        outputs: JobOutputs | None,
        failure: coordinator_pb2.StepFailure | None = None,
    ) -> Job:
        self._lock_job(db, job_id)
        job = self._get(db, job_id)
        if job.state in FINAL_STATES:
            if job.state == state:
                return job
            raise FailedPrecondition(
                f"job {job_id!r} is already {_state_name(job.state)}; it cannot become {_state_name(state)}."
            )
        sets, args = ["state = ?", "updated_ns = ?"], [state, time.time_ns()]
        if state in FINAL_STATES:
            sets.append("lease_holder = '', lease_expires_ns = 0")
        if error:
            sets.append("error = ?")
            args.append(error)
        if failure is not None:
            sets.append("failure = ?")
            args.append(failure.SerializeToString())
        if outputs is not None:
            sets.append("outputs = ?")
            args.append(outputs.SerializeToString())
            _record_objects(db, job_id, outputs)
        db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
        changed = self._get(db, job_id)
        if changed.state != job.state:
            self._pending.changed.append(changed)
        return changed

    def _finish(
        self,
        db: Transaction,
        job_id: str,
        state: int,
        error: str,
        outputs: JobOutputs | None,
        failure: coordinator_pb2.StepFailure | None = None,
    ) -> tuple[Job, JobEvent]:
        self._lock_job(db, job_id)
        already_final = self._get(db, job_id).state in FINAL_STATES
        job = self._set_state(db, job_id, state, error, outputs, failure)
        if already_final:
            # Same final state again (another one raised above): hand back the event written then.
            rows = db.execute("SELECT event FROM events WHERE job_id = ? ORDER BY sequence DESC", (job_id,))
            for (blob,) in rows:
                event = JobEvent.FromString(blob)
                if event.HasField("finished"):
                    return job, event
            # Ended through ``set_state`` without its event: append the missing one now.
        finished = JobEvent(finished=coordinator_pb2.JobFinished(state=state, error=job.error))
        if job.HasField("failure"):
            finished.finished.failure.CopyFrom(job.failure)
        if job.HasField("outputs"):
            finished.finished.outputs.CopyFrom(job.outputs)
        return job, self._append_event(db, job_id, finished)

    def _append_event(self, db: Transaction, job_id: str, event: JobEvent) -> JobEvent:
        self._lock_job(db, job_id)  # the next sequence is this transaction's until the commit
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
        _record_objects(db, job_id, stored)
        # Watchers wake after the commit: ``_write`` here, the notification on every other replica.
        self._pending.appended_to.append(job_id)
        db.notify(EVENTS_CHANNEL, job_id)
        return stored

    def _events(self, db: Transaction, job_id: str, after_sequence: int, limit: int) -> list[JobEvent]:
        if limit < 1:
            raise InvalidArgument("limit", limit, "must be positive")
        self._require_job(db, job_id)
        rows = db.execute(
            "SELECT event FROM events WHERE job_id = ? AND sequence > ? ORDER BY sequence LIMIT ?",
            (job_id, after_sequence, limit),
        ).fetchall()
        return [JobEvent.FromString(row[0]) for row in rows]


def object_uris(message: Message) -> set[str]:
    """Every object URI in ``message``, at any depth: the ``uri``, ``uris`` and ``preview_uris`` fields of
    its ObjectRefs, TensorRefs and requests."""
    found: set[str] = set()
    for field, value in message.ListFields():
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                continue  # labels: strings of the client's, not references
            for item in value if field.is_repeated else (value,):
                found |= object_uris(item)
        elif field.name in _URI_FIELDS:
            found |= set(value) if field.is_repeated else {value}
    return found - {""}


def _record_objects(db: Transaction, job_id: str, message: Message) -> None:
    db.executemany(
        "INSERT INTO objects (job_id, uri) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(job_id, uri) for uri in sorted(object_uris(message))],
    )


def _in_use(db: Transaction, uri: str) -> bool:
    """Whether a job or an upload (pending or verified, its object or its staging key) names ``uri``."""
    return any(
        db.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (uri,)).fetchone() is not None
        for table, column in (("objects", "uri"), ("uploads", "uri"), ("uploads", "staging_uri"))
    )


def _release(db: Transaction, uris: Sequence[str], now_ns: int | None) -> int:
    """Releases the unnamed ones of ``uris`` not released yet; returns how many."""
    now = time.time_ns() if now_ns is None else now_ns
    fresh = [
        uri
        for uri in sorted(set(uris))  # one order for every transaction: two releasing alike cannot deadlock
        if not _in_use(db, uri)
        and db.execute("SELECT 1 FROM doomed WHERE uri = ?", (uri,)).fetchone() is None
    ]
    db.executemany(
        "INSERT INTO doomed (uri, since_ns) VALUES (?, ?) ON CONFLICT DO NOTHING",
        [(uri, now) for uri in fresh],
    )
    return len(fresh)


def _record_all_objects(db: Transaction) -> None:
    """The objects rows of every job kept so far (a file written by schema 1 has none)."""
    for job_id, spec, outputs in db.execute("SELECT id, spec, outputs FROM jobs").fetchall():
        _record_objects(db, job_id, JobSpec.FromString(spec))
        _record_objects(db, job_id, JobOutputs.FromString(outputs))
    for job_id, event in db.execute("SELECT job_id, event FROM events").fetchall():
        _record_objects(db, job_id, JobEvent.FromString(event))


def claim_order(
    waiting: Sequence[tuple[str, str]], busy: dict[str, int], served: dict[str, int] | None = None
) -> list[str]:
    """The order ``JobStore.claim`` takes ``waiting`` jobs in, if no job ends or arrives meanwhile.

    Args:
        waiting: (job id, owner) of the claimable jobs, oldest first.
        busy: how many jobs each owner has leased now.
        served: when each owner last had a job claimed (Unix ns; absent: never).

    Returns:
        The job ids: each next one is the oldest job of the owner with the fewest jobs leased, counting
        the ones taken before it, and of those the one served longest ago.
    """
    served = served or {}
    lines: dict[str, list[int]] = {}
    for index, (_, owner) in enumerate(waiting):
        lines.setdefault(owner, []).append(index)
    heap = [(busy.get(owner, 0), served.get(owner, 0), ix[0], owner, 0) for owner, ix in lines.items()]
    heapq.heapify(heap)
    order: list[str] = []
    latest = max(served.values(), default=0)
    while heap:
        taken, _, index, owner, position = heapq.heappop(heap)
        order.append(waiting[index][0])
        latest += 1  # served now: after every earlier claim
        if position + 1 < len(lines[owner]):
            heapq.heappush(heap, (taken + 1, latest, lines[owner][position + 1], owner, position + 1))
    return order


def _job_from_row(row: Sequence) -> Job:
    job_id, owner, state, created_ns, updated_ns, spec, progress, outputs, error, failure = row
    job = Job(id=job_id, owner=owner, state=state, spec=JobSpec.FromString(spec), error=error)
    if failure:
        job.failure.CopyFrom(coordinator_pb2.StepFailure.FromString(failure))
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
