"""The job store's databases: SQLite (embedded, the default) and PostgreSQL (several coordinator replicas
on one database). ``JobStore`` writes its SQL once, with ``?`` placeholders; a database runs it.

    database = open_database("postgresql://tire@db:5432/tire", password_file="/run/secrets/db")
    database.migrate(migrations)            # at start-up; one process at a time
    with database.write() as tx:            # one transaction: committed on normal exit
        tx.lock_job(job_id)                 # the job's row is this transaction's until the commit
        tx.execute("UPDATE jobs SET state = ? WHERE id = ?", (state, job_id))
        tx.notify(EVENTS_CHANNEL, job_id)   # PostgreSQL: every replica hears it at the commit
    with database.read() as tx:
        rows = tx.execute("SELECT ...").fetchall()

URLs (``TIRE_COORDINATOR_DATABASE_URL``):
    sqlite:///var/lib/tire/coordinator.sqlite   an absolute path (the URL's path)
    sqlite:coordinator.sqlite                   a relative path; ``sqlite::memory:`` (tests); a bare path
    postgresql://user@host:5432/db?sslmode=verify-full   libpq's URL (``postgres://`` too); the password
                                                comes from ``password_file`` (a mounted Secret)

Concurrency: SQLite has one connection per ``SqliteDatabase``, every access under one lock, and writes in
``BEGIN IMMEDIATE`` transactions (another process on the same file waits for the file's write lock), so
its transactions never interleave. PostgreSQL runs transactions side by side (READ COMMITTED, a pool of
connections); a transaction that reads and then writes a job locks the job's row first (``lock_job``),
and one that counts an owner's jobs before adding one locks the owner (``lock_owner``).

Errors: the database unreachable, a connection lost mid-transaction, a deadlock or a timed-out pool wait
raise ``DatabaseUnavailable`` (UNAVAILABLE: retrying helps), after the transaction is rolled back. The
detail goes to the log, never to the caller; nothing logged names the URL or the password.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from services.common.errors import ConfigError, DatabaseUnavailable, FailedPrecondition

log = logging.getLogger(__name__)

EVENTS_CHANNEL = "tire_events"
"""Notified with a job id when events were appended to the job."""
JOBS_CHANNEL = "tire_jobs"
"""Notified (no payload) when a job may have become claimable: submitted, or its lease handed back."""

# A writer waits this long for another process's write lock on a SQLite file before giving up.
_SQLITE_BUSY_TIMEOUT_S = 10.0
# The key of PostgreSQL's advisory lock that one replica at a time holds while it migrates.
_MIGRATION_LOCK = int.from_bytes(
    hashlib.sha256(b"tire.coordinator.migrations").digest()[:8], "big", signed=True
)


class Transaction(Protocol):
    """One transaction (or, from ``read``, a consistent enough view for single statements)."""

    skip_locked: str
    """What ends a ``SELECT`` of claimable jobs: PostgreSQL's ``FOR UPDATE OF jobs SKIP LOCKED``
    (replicas claim side by side), "" for SQLite (its writers take turns)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        """Runs one statement (``?`` placeholders); returns a cursor (``fetchone``, ``fetchall``)."""

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def lock_job(self, job_id: str) -> bool:
        """Locks the job's row until the transaction ends; False when there is no such job."""

    def lock_owner(self, owner: str) -> None:
        """Serializes this transaction with others that lock the same owner (admission, request ids)."""

    def notify(self, channel: str, payload: str = "") -> None:
        """Tells every listener on ``channel`` at the commit (nothing for SQLite: in-process only)."""


@dataclass(frozen=True)
class Migration:
    """One schema version: its statements (separated by ";"), then ``backfill`` (data only Python can
    derive), in one transaction."""

    version: int
    sql: str
    backfill: Callable[[Transaction], None] | None = None


class Database(Protocol):
    kind: str  # "sqlite" or "postgresql"

    def write(self) -> contextlib.AbstractContextManager[Transaction]: ...
    def read(self) -> contextlib.AbstractContextManager[Transaction]: ...
    def migrate(self, migrations: Sequence[Migration]) -> None: ...
    def listen(self, callback: Callable[[str, str], None]) -> None: ...
    def close(self) -> None: ...


def open_database(url: str | os.PathLike[str], *, password_file: str = "", pool_size: int = 10) -> Database:
    """The database ``url`` names (see the module's docstring).

    Raises:
        ConfigError: a URL of another scheme, or a sqlite URL with a host (the URL itself is not quoted:
            it may hold a password).
        DatabaseUnavailable: PostgreSQL did not answer within its connect timeout.
    """
    text = os.fspath(url)
    scheme = text.split(":", 1)[0] if ":" in text else ""
    if scheme in ("postgresql", "postgres"):
        password = _read_password(password_file) if password_file else None
        return PostgresDatabase(text, password=password, pool_size=pool_size)
    if scheme == "sqlite":
        parts = urllib.parse.urlsplit(text)
        if parts.netloc or not parts.path:
            raise ConfigError(
                "TIRE_COORDINATOR_DATABASE_URL: a sqlite URL is sqlite:///absolute/path, "
                "sqlite:relative/path or sqlite::memory: (no host)."
            )
        return SqliteDatabase(urllib.parse.unquote(parts.path))
    if "://" in text:
        raise ConfigError(
            f"TIRE_COORDINATOR_DATABASE_URL must start with sqlite: or postgresql://, got scheme {scheme!r}."
        )
    return SqliteDatabase(text)  # a bare path, as before URLs


def _read_password(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"TIRE_COORDINATOR_DATABASE_PASSWORD_FILE {path!r} cannot be read ({exc.strerror})."
        ) from None


def replica_name() -> str:
    """A default name for this coordinator process: host and pid (a pod's name is its host name)."""
    return f"{socket.gethostname()}-{os.getpid()}"


# ---- SQLite ---------------------------------------------------------------------------------------------


class _SqliteTransaction:
    skip_locked = ""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def execute(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._db.executemany(sql, rows)

    def lock_job(self, job_id: str) -> bool:
        # BEGIN IMMEDIATE already holds the file's write lock: no other writer until the commit.
        return self._db.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone() is not None

    def lock_owner(self, owner: str) -> None:
        pass  # the file's write lock serializes every writer

    def notify(self, channel: str, payload: str = "") -> None:
        pass  # no other process listens; the store's own listeners are called after the commit


class SqliteDatabase:
    """One SQLite file (WAL mode, synchronous FULL), or ``":memory:"``; thread-safe."""

    kind = "sqlite"

    def __init__(self, path: str):
        self.path = path
        # Autocommit mode (isolation_level=None): transactions are opened explicitly by ``write``.
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=_SQLITE_BUSY_TIMEOUT_S
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")  # ":memory:" stays "memory", which is fine
            # FULL: a commit is on disk when the call returns, even across a power cut.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")

    @contextlib.contextmanager
    def write(self) -> Iterator[_SqliteTransaction]:
        with self._lock:
            # IMMEDIATE takes the file's write lock now, so reads inside the transaction stay current
            # until the commit even with another process on the same file.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTransaction(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def read(self) -> Iterator[_SqliteTransaction]:
        with self._lock:
            yield _SqliteTransaction(self._db)

    def migrate(self, migrations: Sequence[Migration]) -> None:
        """Applies the migrations newer than the file's ``user_version``, in one transaction."""
        with self.write() as tx:
            version = tx.execute("PRAGMA user_version").fetchone()[0]
            newest = _check_version(version, migrations, f"job database {self.path!r}")
            for migration in migrations:
                if migration.version > version:
                    for statement in _statements(migration.sql):
                        tx.execute(statement)
                    if migration.backfill is not None:
                        migration.backfill(tx)
            tx.execute(f"PRAGMA user_version={newest}")

    def listen(self, callback: Callable[[str, str], None]) -> None:
        """Nothing to listen to: another process on the same file is noticed by polling."""

    def close(self) -> None:
        """Closes the file; any later call raises ``sqlite3.ProgrammingError``."""
        with self._lock:
            self._db.close()


# ---- PostgreSQL -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (our SQL has no other ``?`` and no ``%``)."""
    return sql.replace("?", "%s")


class _PostgresTransaction:
    skip_locked = " FOR UPDATE OF jobs SKIP LOCKED"

    def __init__(self, cursor: Any):
        self._cursor = cursor

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._cursor.execute(_placeholders(sql), args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(_placeholders(sql), rows)

    def lock_job(self, job_id: str) -> bool:
        row = self._cursor.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        return row is not None

    def lock_owner(self, owner: str) -> None:
        self._cursor.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", ("owner:" + owner,))

    def notify(self, channel: str, payload: str = "") -> None:
        self._cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))


class PostgresDatabase:
    """A PostgreSQL database through a pool of connections (psycopg 3); thread-safe.

    Args:
        url: libpq's connection URL.
        password: the password, when it is not in the URL.
        pool_size: connections at most (the gRPC threads, the job workers and the sweeps share them).
        connect_timeout_s: how long a start waits for the database, and a call for a free connection.
    """

    kind = "postgresql"

    def __init__(
        self, url: str, *, password: str | None = None, pool_size: int = 10, connect_timeout_s: float = 30.0
    ):
        import psycopg
        import psycopg_pool

        self._psycopg = psycopg
        self._pool_errors = (psycopg_pool.PoolTimeout, psycopg_pool.TooManyRequests)
        self._kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": 5,
            "application_name": "tire-coordinator",
        }
        if password is not None:
            self._kwargs["password"] = password
        self._url = url
        self._closed = threading.Event()
        self._pool = psycopg_pool.ConnectionPool(
            url,
            kwargs=self._kwargs,
            min_size=1,
            max_size=max(1, pool_size),
            timeout=5.0,  # a call waits this long for a connection, then answers UNAVAILABLE
            check=psycopg_pool.ConnectionPool.check_connection,  # drop connections a restart broke
            open=False,
            name="tire-jobs",
        )
        self._pool.open(wait=False)
        try:
            self._pool.wait(timeout=connect_timeout_s)
        except psycopg_pool.PoolTimeout:
            self._pool.close()
            raise DatabaseUnavailable(
                f"the job database did not answer within {connect_timeout_s:.0f} s "
                "(TIRE_COORDINATOR_DATABASE_URL)."
            ) from None

    @contextlib.contextmanager
    def _unavailable_as_error(self) -> Iterator[None]:
        psycopg = self._psycopg
        try:
            yield
        except (
            psycopg.OperationalError,  # refused, lost, shut down; deadlocks and serialization failures
            psycopg.InterfaceError,  # a connection closed under us
            *self._pool_errors,
        ) as exc:
            first_line = next(iter(str(exc).splitlines()), "")
            log.warning("job database call failed: %s: %s", type(exc).__name__, first_line)
            raise DatabaseUnavailable(
                "the job database is unavailable or gave up the transaction; try again."
            ) from exc

    @contextlib.contextmanager
    def write(self) -> Iterator[_PostgresTransaction]:
        with self._unavailable_as_error(), self._pool.connection() as conn, conn.transaction():
            with conn.cursor() as cursor:
                yield _PostgresTransaction(cursor)

    @contextlib.contextmanager
    def read(self) -> Iterator[_PostgresTransaction]:
        with self._unavailable_as_error(), self._pool.connection() as conn, conn.cursor() as cursor:
            yield _PostgresTransaction(cursor)

    def migrate(self, migrations: Sequence[Migration]) -> None:
        """Applies the migrations not yet in ``schema_migrations``, each in its own transaction, while
        holding an advisory lock: replicas starting together migrate one at a time."""
        with self._unavailable_as_error(), self._pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations"
                    " (version INTEGER PRIMARY KEY, applied_ns BIGINT NOT NULL)"
                )
                version = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[
                    0
                ]
                _check_version(version, migrations, "the job database")
                for migration in migrations:
                    if migration.version <= version:
                        continue
                    with conn.transaction(), conn.cursor() as cursor:
                        tx = _PostgresTransaction(cursor)
                        for statement in _statements(migration.sql):
                            cursor.execute(statement)
                        if migration.backfill is not None:
                            migration.backfill(tx)
                        cursor.execute(
                            "INSERT INTO schema_migrations (version, applied_ns) VALUES (%s, %s)",
                            (migration.version, time.time_ns()),
                        )
                    log.info("job database migrated to schema version %d", migration.version)
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))

    def listen(self, callback: Callable[[str, str], None]) -> None:
        """Calls ``callback(channel, payload)`` for every notification on ``EVENTS_CHANNEL`` and
        ``JOBS_CHANNEL``, from a thread of its own with its own connection (reconnected after a loss;
        what was notified meanwhile is missed: listeners also poll)."""
        threading.Thread(target=self._listen, args=(callback,), name="db-listen", daemon=True).start()

    def _listen(self, callback: Callable[[str, str], None]) -> None:
        psycopg, wait_s = self._psycopg, 0.5
        while not self._closed.is_set():
            try:
                with psycopg.connect(self._url, **self._kwargs) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    wait_s = 0.5
                    while not self._closed.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            try:
                                callback(notice.channel, notice.payload)
                            except Exception:  # a listener's bug must not stop the others' wake-ups
                                log.exception("notification listener failed")
            except psycopg.Error as exc:
                if self._closed.is_set():
                    return
                log.warning("job database notifications lost (%s); reconnecting", type(exc).__name__)
                self._closed.wait(wait_s)
                wait_s = min(wait_s * 2, 10.0)

    def close(self) -> None:
        self._closed.set()
        self._pool.close()


# ---- both -----------------------------------------------------------------------------------------------


def _check_version(version: int, migrations: Sequence[Migration], what: str) -> int:
    newest = migrations[-1].version
    if version > newest:
        raise FailedPrecondition(
            f"{what} has schema version {version}; this coordinator reads up to {newest}."
        )
    return newest


def _statements(script: str) -> list[str]:
    return [statement for statement in script.split(";") if statement.strip()]
