"""What the servers this project starts for development and tests share (``rclone serve s3``:
``services.common.s3server.LocalS3``; ``tritonserver``: ``services.common.triton.LocalTriton``;
``postgres``: ``services.testing.postgres.LocalPostgres``): a free loopback port, a process in its own
session writing to a log, and stopping it."""

from __future__ import annotations

import socket
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Any, Self

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback now (another process could take it before a server binds it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    """Stop a local server process: SIGTERM, then SIGKILL after ``timeout_s`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LocalServer(ABC):
    """A server process on loopback; a subclass's ``start`` runs it with ``_spawn``.

    Args:
        log: where the server's output goes; None keeps it in a temporary file whose tail errors quote.
        stop_timeout_s: how long ``stop`` waits after SIGTERM before SIGKILL.
    """

    def __init__(self, log: IO[str] | None, stop_timeout_s: float):
        self._log = log
        self._stop_timeout_s = stop_timeout_s
        self._own_log: IO[str] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    @abstractmethod
    def start(self) -> Self:
        """Run the server (``_spawn``) and return once it answers."""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL). Safe to call twice."""
        process, self._process = self._process, None
        if process is not None:
            stop_process(process, self._stop_timeout_s)
        if self._own_log is not None:
            self._own_log.close()
            self._own_log = None

    def tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (when it owns its log)."""
        if self._own_log is None:
            return ""
        self._own_log.flush()
        self._own_log.seek(0)
        return "".join(self._own_log.readlines()[-lines:])

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(
        self, command: Sequence[str], env: Mapping[str, str], log_prefix: str, **options: Any
    ) -> subprocess.Popen[bytes]:
        """Run ``command`` as the server: no stdin, its output to the log, in its own session (a Ctrl-C
        meant for the parent must not kill the server before ``stop``); ``options`` go to ``Popen``
        (``cwd``, ``user``...)."""
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        if self._log is None:
            self._own_log = tempfile.TemporaryFile("w+", prefix=log_prefix, suffix=".log")
        self._process = subprocess.Popen(
            list(command),
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log or self._own_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **options,
        )
        return self._process
