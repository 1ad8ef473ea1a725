"""``LocalPostgres``: a real server that starts, answers, keeps its data over a restart and a crash, and
hands out separate databases."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

from services.testing.postgres import (
    LocalPostgres,
    postgres_available,
    postgres_bin,
    require_postgres,
)


@pytest.fixture
def server():
    """A server of its own (the tests stop, kill and restart it): on the session's, they would disturb
    other tests."""
    require_postgres()
    with LocalPostgres(durable=False) as running:
        yield running


def test_it_answers_on_loopback_as_the_role_of_its_url(postgres_server: LocalPostgres) -> None:
    server = postgres_server
    assert server.url == f"postgresql://tire@127.0.0.1:{server.port}/tire"
    with psycopg.connect(server.url) as connection:
        row = connection.execute(
            "SELECT current_user, current_database(), inet_server_addr()::text, current_setting('fsync')"
        ).fetchone()
    assert row == ("tire", "tire", "127.0.0.1/32", "off")
    assert server.running and (server.data_dir / "PG_VERSION").is_file()


def test_a_restart_keeps_the_port_and_the_data(server: LocalPostgres) -> None:
    with server.connect() as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('before')")
    port, pid = server.port, server.pid
    server.restart()
    assert server.port == port and server.pid != pid
    with psycopg.connect(server.url) as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("before",)]


def test_after_a_kill_it_starts_again_with_what_was_committed(server: LocalPostgres) -> None:
    with server.connect() as connection:
        connection.execute("CREATE TABLE kept (value text)")
        connection.execute("INSERT INTO kept VALUES ('committed')")
    open_session = server.connect()
    open_session.execute("INSERT INTO kept VALUES ('never committed')")
    pid = server.pid
    server.kill()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no zombie either
    with pytest.raises(psycopg.OperationalError):
        open_session.execute("SELECT 1")
    open_session.close()
    server.start()  # crash recovery
    with server.connect() as connection:
        assert connection.execute("SELECT value FROM kept").fetchall() == [("committed",)]


def test_fresh_databases_are_empty_and_separate(postgres_server: LocalPostgres) -> None:
    server = postgres_server
    first, second = server.create_database("case_one"), server.create_database("case two")
    assert first.endswith("/case_one") and second.endswith("/case%20two")
    with psycopg.connect(first) as connection:
        connection.execute("CREATE TABLE only_here (x int)")
    with psycopg.connect(second) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)
        assert connection.execute("SELECT current_database()").fetchone() == ("case two",)
    lingering = psycopg.connect(first)
    server.drop_database("case_one")  # ends the sessions still on it
    with pytest.raises(psycopg.OperationalError):
        lingering.execute("SELECT 1")
    lingering.close()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(first)


def test_a_given_folder_is_initialised_once_and_reused() -> None:
    require_postgres()
    parent = Path(tempfile.mkdtemp(prefix="tire-postgres-test-"))
    try:
        parent.chmod(0o755)  # as root, the server's user must reach the folder
        folder = parent / "cluster"
        with LocalPostgres(folder, durable=False) as first:
            with first.connect() as connection:
                connection.execute("CREATE TABLE kept (x int)")
        assert folder.is_dir() and not first.running  # a given folder outlives the server
        with LocalPostgres(folder, durable=False) as second, second.connect() as connection:
            assert connection.execute("SELECT count(*) FROM kept").fetchone() == (0,)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def test_the_temporary_folder_goes_with_the_server() -> None:
    require_postgres()
    with LocalPostgres(durable=False) as server:
        folder = server.data_dir
        assert folder.is_dir()
    assert not folder.exists()


def test_a_server_that_cannot_start_says_why_with_its_log(server: LocalPostgres) -> None:
    # A second server on the same folder: PostgreSQL's lock file refuses it.
    twin = LocalPostgres(server.data_dir, durable=False, start_timeout_s=10)
    with pytest.raises(RuntimeError, match=r"postgres exited with code 1:\n.*lock file"):
        twin.start()
    assert not twin.running and server.running


def test_stop_is_a_fast_shutdown_even_with_sessions_open(server: LocalPostgres) -> None:
    idle = server.connect()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 10  # a smart shutdown would wait for the session
    assert not server.running
    idle.close()
    server.stop()  # twice is fine


def test_availability_names_a_reason_or_a_folder_of_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    available, why = postgres_available()
    assert available == (why == "")
    if available:
        assert (postgres_bin() / "initdb").is_file()
    monkeypatch.setenv("TIRE_POSTGRES_BIN", "/nonexistent")
    assert postgres_available() == (False, "TIRE_POSTGRES_BIN=/nonexistent holds no initdb and postgres")


def test_missing_postgres_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIRE_POSTGRES_BIN", "/nonexistent")
    monkeypatch.delenv("TIRE_REQUIRE_POSTGRES", raising=False)
    with pytest.raises(pytest.skip.Exception, match="holds no initdb"):
        require_postgres()
    monkeypatch.setenv("TIRE_REQUIRE_POSTGRES", "1")
    with pytest.raises(pytest.fail.Exception, match="holds no initdb"):
        require_postgres()


def test_the_postgres_url_fixture_gives_each_test_a_fresh_database(postgres_url: str) -> None:
    with psycopg.connect(postgres_url) as connection:
        assert connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone() == (0,)
        connection.execute("CREATE TABLE mine (x int)")  # the next test's database does not have it


def test_the_postgres_url_fixture_again(postgres_url: str, postgres_server: LocalPostgres) -> None:
    test_the_postgres_url_fixture_gives_each_test_a_fresh_database(postgres_url)
    assert postgres_url.startswith(f"postgresql://tire@127.0.0.1:{postgres_server.port}/")


@pytest.mark.skipif(os.geteuid() != 0, reason="as root only: the server then runs as the postgres user")
def test_as_root_a_folder_the_server_user_cannot_reach_is_refused_with_a_sentence(tmp_path: Path) -> None:
    require_postgres()
    tmp_path.chmod(0o700)
    server = LocalPostgres(tmp_path / "cluster")
    with pytest.raises(RuntimeError, match=r"that user cannot enter /\S*: choose a data folder") as info:
        server.start()
    unreachable = re.search(r"cannot enter (/\S*):", str(info.value)).group(1)
    assert tmp_path.is_relative_to(unreachable)
    assert not server.running
