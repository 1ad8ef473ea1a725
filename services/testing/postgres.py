"""A real PostgreSQL server for tests and ``tire up --postgres``: ``initdb`` into a folder, ``postgres`` on a
free loopback port, trust authentication (loopback only, no password), a role and a database.

    with LocalPostgres() as server:                  # a temporary cluster, removed on exit
        url = server.url                             # postgresql://tire@127.0.0.1:PORT/tire
        other = server.create_database("case_1")     # a fresh empty database's URL
        server.kill()                                # SIGKILL, as a crash; server.start() recovers
        server.restart()                             # a fast shutdown, then the same port and data

The binaries are found on ``PATH`` (``initdb``), else under ``/usr/lib/postgresql/<version>/bin``
(Debian's ``postgresql`` package), the newest version first; ``TIRE_POSTGRES_BIN`` names their folder
instead. PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` system user (the
package creates it), its folder owned by that user, and every folder above it must be searchable by it
(a pytest ``tmp_path`` is not: the default temporary folder is).

Without the binaries, a test using ``require_postgres`` (the ``postgres_server`` and ``postgres_url``
fixtures) is skipped, unless ``TIRE_REQUIRE_POSTGRES=1`` (``.ci/run`` sets it), where it fails instead.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

from services.common.local_server import HOST, LocalServer, free_port

SYSTEM_USER = "postgres"
"""Who runs the server when this process is root (Debian's package creates this user)."""
DEBIAN_BIN = "/usr/lib/postgresql"
_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0
# A Unix socket's path holds at most 107 bytes (sun_path); longer, the server listens on TCP only.
_MAX_SOCKET_PATH = 107
_INSTALL = "apt-get install postgresql"


def postgres_bin() -> Path:
    """The folder of PostgreSQL's server binaries (``initdb``, ``postgres``).

    Raises:
        FileNotFoundError: none found (the sentence says how to install them).
    """
    candidates: list[Path] = []
    override = os.environ.get("TIRE_POSTGRES_BIN")
    if override:
        candidates.append(Path(override))
    else:
        on_path = shutil.which("initdb")
        if on_path:
            # Debian's /usr/local/bin or alternatives links lead to the folder of the other binaries.
            candidates.append(Path(on_path).resolve().parent)
        versions = [p for p in Path(DEBIAN_BIN).glob("*/bin") if p.parent.name.isdigit()]
        candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "postgres")):
            return folder
    if override:
        raise FileNotFoundError(f"TIRE_POSTGRES_BIN={override} holds no initdb and postgres")
    raise FileNotFoundError(
        f"PostgreSQL is not installed: no initdb on PATH nor under {DEBIAN_BIN}/*/bin ({_INSTALL})"
    )


def postgres_available() -> tuple[bool, str]:
    """Whether a ``LocalPostgres`` can run here, and if not, a sentence saying why."""
    try:
        postgres_bin()
    except FileNotFoundError as exc:
        return False, str(exc)
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return False, (
                f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} user to run it as "
                f"({_INSTALL} creates it)"
            )
    return True, ""


def require_postgres() -> None:
    """Skips the calling test (or fixture) when PostgreSQL cannot run here; fails instead with
    ``TIRE_REQUIRE_POSTGRES=1``."""
    import pytest

    available, why = postgres_available()
    if available:
        return
    if os.environ.get("TIRE_REQUIRE_POSTGRES") == "1":
        pytest.fail(why)
    pytest.skip(why)


class LocalPostgres(LocalServer):
    """A PostgreSQL server on ``127.0.0.1`` over a data folder of its own, trust authentication.

    Args:
        data_dir: the cluster's folder: initialised when empty or missing, reused when already a cluster.
            None: a temporary folder, removed by ``close`` (and on leaving the ``with`` block).
        port: TCP port on 127.0.0.1 (kept by ``restart``); 0 picks a free one.
        role: the superuser ``initdb`` makes, whom ``url`` names.
        database: created on start when missing; what ``url`` names.
        durable: False trades the data's safety from a crash of the machine for speed: ``fsync`` and
            ``full_page_writes`` off, ``initdb --no-sync``. For tests. What a commit wrote still survives
            a crash of the server (``kill``): it is in the operating system's cache. Not
            ``synchronous_commit=off``, which would lose the last commits to a ``kill`` (give it in
            ``settings`` where that is wanted).
        settings: more server settings (``-c name=value``), e.g. ``{"max_connections": "200"}``.
        log: where the server's output goes; None keeps it in a temporary file whose tail goes into errors.
        start_timeout_s: how long ``start`` waits for connections to be accepted (crash recovery included).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        port: int = 0,
        *,
        role: str = "tire",
        database: str = "tire",
        durable: bool = True,
        settings: Mapping[str, str] | None = None,
        log: IO[str] | None = None,
        start_timeout_s: float = _START_TIMEOUT_S,
    ):
        self._temporary = data_dir is None
        self.data_dir = Path(data_dir or tempfile.mkdtemp(prefix="tire-postgres-")).absolute()
        self.port = port or free_port()
        self.role = role
        self.database = database
        self.durable = durable
        self.settings = dict(settings or {})
        self.start_timeout_s = start_timeout_s
        # As root, the server runs as the system user (it refuses root); else as this process's user.
        self._user = pwd.getpwnam(SYSTEM_USER) if os.geteuid() == 0 else None
        super().__init__(log, _STOP_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"LocalPostgres({self.data_dir}, {HOST}:{self.port})"

    @property
    def url(self) -> str:
        """The libpq URL of the role's database: ``postgresql://tire@127.0.0.1:PORT/tire`` (no password)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """The libpq URL of another database of this server, as the role."""
        name = urllib.parse.quote(database, safe="")
        return f"postgresql://{urllib.parse.quote(self.role, safe='')}@{HOST}:{self.port}/{name}"

    # ----- the server --------------------------------------------------------------------------------

    def start(self) -> Self:
        """Initialise the folder unless it holds a cluster, start the server, wait until it accepts
        connections (after any crash recovery) and create the database when missing.

        Raises:
            FileNotFoundError: no PostgreSQL binaries.
            RuntimeError: already started, the folder is out of the server user's reach, or ``initdb`` or
                the server failed or did not answer in time (with the tail of its log).
        """
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        binaries = postgres_bin()
        self._prepare_folder()
        if not (self.data_dir / "PG_VERSION").is_file():
            self._initdb(binaries)
        self._spawn(self._command(binaries), self._environment(), "postgres-", **self._run_as())
        try:
            self._wait_ready()
            self._ensure_database(self.database)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """A fast shutdown (SIGINT: open sessions are ended, everything is written), SIGKILL if it takes
        over 30 s. The data stays. Safe to call twice."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._close_log()

    def kill(self) -> None:
        """A crash: SIGKILL to the server and every process it started (each is a session leader of its
        own, so one signal to the group would miss them). Returns once they are gone; ``start`` then runs
        crash recovery on the same folder."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # Stopped first, the server forks no process between the listing and the kill.
            os.kill(process.pid, signal.SIGSTOP)
            children = _children(process.pid)
            process.kill()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            process.wait()
            _wait_gone(children, timeout_s=10.0)
        self._close_log()

    def restart(self) -> Self:
        """``stop`` then ``start``: the same port, folder and data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """``stop``, and remove the folder when it is the temporary one this server made."""
        self.stop()
        if self._temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    # ----- databases ---------------------------------------------------------------------------------

    def connect(self, database: str | None = None, **kwargs: Any):
        """A ``psycopg.Connection`` to ``database`` (default: the role's), as the role."""
        import psycopg

        return psycopg.connect(self.url_for(database or self.database), **kwargs)

    def create_database(self, name: str) -> str:
        """A new, empty database; returns its URL.

        Raises:
            psycopg.errors.DuplicateDatabase: one of that name exists.
        """
        from psycopg import sql

        with self.connect("postgres", autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop the database if it exists, ending the sessions still connected to it."""
        from psycopg import sql

        with self.connect("postgres", autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # ----- internals ---------------------------------------------------------------------------------

    def _close_log(self) -> None:
        if self._own_log is not None:
            self._own_log.close()
            self._own_log = None

    def _log_tail(self) -> str:
        tail = self.tail(20)
        return f":\n{tail}" if tail else ""

    def _prepare_folder(self) -> None:
        """Create the data folder (mode 0700, owned by the server's user); as root, check that user can
        reach it."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._user is None:
            return
        uid, gid = self._user.pw_uid, self._user.pw_gid
        groups = {gid} | {g.gr_gid for g in grp.getgrall() if self._user.pw_name in g.gr_mem}
        for folder in reversed(self.data_dir.parents):
            if not _searchable(folder.stat(), uid, groups):
                raise RuntimeError(
                    f"PostgreSQL runs as the {SYSTEM_USER!r} user here (it refuses root), and that user "
                    f"cannot enter {folder}: choose a data folder it can reach (under /tmp, say)"
                )
        if not (self.data_dir / "PG_VERSION").is_file():
            os.chown(self.data_dir, uid, gid)
            self.data_dir.chmod(0o700)

    def _run_as(self) -> dict[str, Any]:
        """``subprocess`` arguments that run a binary as the server's user, from the data folder."""
        if self._user is None:
            return {"cwd": self.data_dir}
        return {
            "cwd": self.data_dir,
            "user": self._user.pw_uid,
            "group": self._user.pw_gid,
            "extra_groups": [],
        }

    def _environment(self) -> dict[str, str]:
        """This process's environment without libpq's ``PG*`` settings (a ``PGDATA``, ``PGPORT``... of
        the developer's must not steer the server), in the C locale."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self._user is not None:
            env["HOME"] = self._user.pw_dir
            env["USER"] = env["LOGNAME"] = self._user.pw_name
        return env

    def _initdb(self, binaries: Path) -> None:
        command = [
            str(binaries / "initdb"),
            "--pgdata",
            str(self.data_dir),
            "--auth",
            "trust",
            "--username",
            self.role,
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            *([] if self.durable else ["--no-sync"]),
        ]
        done = subprocess.run(
            command,
            env=self._environment(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            **self._run_as(),
        )
        if done.returncode != 0:
            output = "".join((done.stdout + done.stderr).splitlines(keepends=True)[-20:])
            raise RuntimeError(f"initdb exited with code {done.returncode}:\n{output}")

    def _command(self, binaries: Path) -> list[str]:
        socket_dir = str(self.data_dir)
        if len(f"{socket_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            socket_dir = ""
        settings = {
            "listen_addresses": HOST,
            "port": str(self.port),
            "unix_socket_directories": socket_dir,
            **({} if self.durable else {"fsync": "off", "full_page_writes": "off"}),
            **self.settings,
        }
        command = [str(binaries / "postgres"), "-D", str(self.data_dir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        return command

    def _wait_ready(self) -> None:
        """Until a connection succeeds: the server also refuses them while it starts or recovers."""
        import psycopg

        process = self._process
        assert process is not None
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with code {process.returncode}{self._log_tail()}")
            try:
                with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:
                error = exc
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres did not accept connections on {HOST}:{self.port} within "
                    f"{self.start_timeout_s:.0f} s ({str(error).strip()}){self._log_tail()}"
                )
            time.sleep(0.05)

    def _ensure_database(self, name: str) -> None:
        with self.connect("postgres", autocommit=True) as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return
        self.create_database(name)


def _searchable(info: os.stat_result, uid: int, groups: set[int]) -> bool:
    """Whether a user may enter a folder (its mode bits; ACLs are not read)."""
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid in groups:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


_STAT = re.compile(rb"^\d+ \(.*\) (\S) (\d+) ", re.DOTALL)


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent id from ``/proc`` (None: gone)."""
    try:
        match = _STAT.match(Path(f"/proc/{pid}/stat").read_bytes())
    except OSError:
        return None
    return (match.group(1).decode(), int(match.group(2))) if match else None


def _children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (info := _proc_stat(int(entry.name))) and info[1] == pid:
            found.append(int(entry.name))
    return found


def _wait_gone(pids: list[int], timeout_s: float) -> None:
    """Until none of ``pids`` runs (a zombie waiting to be reaped holds no memory: gone enough)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = [_proc_stat(pid) for pid in pids]
        if all(state is None or state[0] in "ZX" for state in states):
            return
        time.sleep(0.02)
