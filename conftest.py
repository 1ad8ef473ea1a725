"""Fixtures shared by every test: a local S3 server (``rclone serve s3``), a store on it, service
processes started on loopback against it, and a PostgreSQL server with a fresh database per test."""

import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from services.common.clients import wait_serving
from services.common.local_server import free_port
from services.common.s3server import LocalS3
from services.common.store import ObjectStore
from services.testing.postgres import LocalPostgres, require_postgres


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalS3]:
    """One server for the session, serving a temporary folder; its bucket is ``s3.bucket``."""
    with LocalS3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def store(s3: LocalS3) -> ObjectStore:
    """An ``ObjectStore`` with the server's credentials."""
    return ObjectStore(s3.settings)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    """One PostgreSQL server for the session (``services.testing.postgres``), in a temporary folder, fast
    rather than crash-safe (``durable=False``). Without PostgreSQL its tests are skipped, unless
    ``TIRE_REQUIRE_POSTGRES=1``, where they fail. Tests that stop or kill a server start their own."""
    require_postgres()
    with LocalPostgres(durable=False, settings={"max_connections": "300"}) as server:
        yield server


_databases = itertools.count(1)


@pytest.fixture
def postgres_url(postgres_server: LocalPostgres, request: pytest.FixtureRequest) -> Iterator[str]:
    """The URL of a fresh, empty database of ``postgres_server`` for this test only
    (``postgresql://tire@127.0.0.1:PORT/t<n>_<test>``, no password); dropped after it."""
    name = f"t{next(_databases)}_{re.sub(r'[^a-z0-9]+', '_', request.node.name.lower())}"[:63]
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)


@dataclass
class ServiceProcess:
    """A service started by ``launch_service``: dial ``target``; its output is in ``log_path``."""

    target: str
    metrics_port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def launch_service(
    s3: LocalS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``python -m MODULE`` on free loopback ports with the S3 server's credentials and wait until
    its health check says SERVING.

        tracker = launch_service("services.tracker.server", "TIRE_TRACKER_", {"TIRE_TRACKER_BACKEND": ...})

    ``prefix`` is the service's environment prefix; ``env`` adds or overrides variables; a ``{prefix}PORT``
    or ``{prefix}METRICS_PORT`` in it is used instead of a free port (to restart a service where its
    clients dial it). Every process is killed at the end of the session (tests that stop one themselves
    are fine).
    """
    started: list[ServiceProcess] = []

    def launch(module: str, prefix: str, env: dict[str, str] | None = None) -> ServiceProcess:
        env = env or {}
        port = int(env.get(f"{prefix}PORT") or free_port())
        metrics_port = int(env.get(f"{prefix}METRICS_PORT") or free_port())
        log_path = tmp_path_factory.mktemp(module.split(".")[-2]) / "service.log"
        environ = {
            **os.environ,
            **s3.env,
            f"{prefix}PORT": str(port),
            f"{prefix}HOST": "127.0.0.1",
            f"{prefix}METRICS_PORT": str(metrics_port),
            f"{prefix}GRACE_S": "5",
            **env,
        }
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", module], env=environ, stdout=log, stderr=subprocess.STDOUT
            )
        service = ServiceProcess(f"127.0.0.1:{port}", metrics_port, process, log_path)
        started.append(service)
        # A first start may compile the numba kernels.
        if not wait_serving(service.target, 180, alive=lambda: process.poll() is None):
            pytest.fail(
                f"{module} did not become healthy (exit code {process.poll()}):\n{service.log()[-3000:]}"
            )
        return service

    yield launch
    for service in started:
        service.stop()


def free_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports, and free ports 1000 above them (metrics)."""
    for base in range(42_000, 48_000, 10):
        try:
            for port in [*range(base, base + size), *range(base + 1000, base + 1000 + size)]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free block of ports")


@pytest.fixture(scope="session")
def tire_up() -> Callable:
    """``tire_up(state, *options)``: a context running ``tire up`` as a user does, on free ports, until it
    says it is up; yields the coordinator's target, the process and what it printed."""

    @contextmanager
    def run(
        state: Path, *options: str, timeout_s: float = 240
    ) -> Iterator[tuple[str, subprocess.Popen, str]]:
        base = free_block(6)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "up",
                "--state",
                str(state),
                "--port",
                str(base),
                # The web console on a free port too, unless the test chooses (8080 may be taken).
                *([] if "--web-port" in options else ["--web-port", str(free_port())]),
                *options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        lines = []
        deadline = time.monotonic() + timeout_s
        try:
            while not any("Ctrl-C stops everything" in line for line in lines):
                line = process.stdout.readline()
                if not line or time.monotonic() > deadline:
                    pytest.fail("tire up did not come up:\n" + "".join(lines))
                lines.append(line)
            yield f"127.0.0.1:{base}", process, "".join(lines)
        finally:
            if process.poll() is None:
                # As Ctrl-C: tire up stops what it started (services, S3, Triton); a kill would orphan them.
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            process.stdout.close()

    return run
