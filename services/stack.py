"""The local stack of ``tire up``: an S3 server, the five stages and the coordinator, as processes.

    with local_stack(Path("out/stack"), local_ports()) as stack:
        ...   # every service SERVING; the coordinator at 127.0.0.1:50051; stack.processes by name

Each service runs as ``python -m <its server module>`` with its ``TIRE_<SERVICE>_*`` variables; the
services, their modules and their ports come from ``services.common.registry``.

With ``triton=True`` (``tire up --triton``) a ``tritonserver`` (``make triton``) runs beside them on the
repository ``s3://<bucket>/triton`` of the local store, and the stages whose models Triton serves call
it (``TIRE_<STAGE>_BACKEND=triton``). On the first start, version 1 of each of those stages' models is
published with tiny random weights of the real architectures (``services.testing.random_models``), so
the stack runs anywhere; publish real weights with ``tire models publish``.

The coordinator keeps its jobs in the SQLite file ``<state>/coordinator.sqlite``, or with
``postgres=True`` (``tire up --postgres``) in a PostgreSQL server the stack runs on loopback
(``services.testing.postgres.LocalPostgres``), its cluster in ``<state>/postgres``: either way they
outlive the stack, and the next start finds them.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from services.common.clients import wait_serving
from services.common.local_server import free_port
from services.common.registry import BASE_PORT, COORDINATOR, STAGES, TRITON_STAGES, stage
from services.common.s3server import LocalS3
from services.coordinator.auth import new_token, token_entry

SERVICES = (*STAGES, COORDINATOR)
"""Started in this order: the stages, then the coordinator that calls them."""
WEB = "web"
"""The web console, started last (``web_port``): an HTTP service, not a gRPC one."""
_MODULES = {**{service.name: service.server for service in SERVICES}, WEB: "services.web.server"}


def wait_http(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether ``url`` answers 200 within ``timeout_s`` (polled; False as soon as ``alive()`` is not)."""
    deadline = time.monotonic() + timeout_s
    while alive():
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return False


def local_ports(base: int = BASE_PORT) -> dict[str, int]:
    """Each service's gRPC port when the coordinator listens on ``base`` (the stages on the next five)."""
    return {service.name: base + service.port_offset for service in SERVICES}


def _tiny_weights() -> dict[str, Callable[[Path], Path]]:
    """Each Triton stage's tiny random weights of its real architecture, written into a folder."""
    from services.testing import random_models

    return {
        "inpainter": lambda folder: random_models.save_sd_inpainting(folder, "tiny"),
        "refiner": lambda folder: random_models.save_mv_refiner(folder, "tiny"),
    }


@dataclass
class LocalStack:
    """A running local stack: the S3 server, each service's process by name, Triton's gRPC address ("" for
    none), ``store_env``: the file of the store's ``TIRE_S3_*`` variables (readable by its owner
    only; ``set -a; . FILE`` lets ``tire models ...`` use the stack's store), and ``token_file``: the
    bearer token of the stack's principal, ``local`` (``TIRE_TOKEN_FILE``), and ``web_url``: the web
    console's address ("" when not started)."""

    s3: LocalS3
    processes: dict[str, subprocess.Popen]
    triton_url: str
    store_env: Path
    token_file: Path
    environments: dict[str, dict[str, str]]
    state: Path
    web_url: str = ""
    postgres_url: str = ""
    """The coordinator's PostgreSQL database (no password: trust on loopback); "" when it uses SQLite."""

    def restart(self, name: str) -> subprocess.Popen:
        """Start service ``name`` again, as it was started (its log goes on)."""
        self.processes[name] = _spawn(name, self.environments[name], self.state)
        return self.processes[name]


TRITON_REPOSITORY = "triton"
"""Where ``tire up --triton`` keeps Triton's repository: this key prefix of the local store's bucket."""


def sqlite_url(path: Path) -> str:
    """``TIRE_COORDINATOR_DATABASE_URL`` of a SQLite file: ``sqlite:///abs/path`` (quoted as a URL)."""
    return "sqlite:" + path.absolute().as_uri().removeprefix("file:")


@contextmanager
def local_postgres(state: Path) -> Iterator[str]:
    """A PostgreSQL server on loopback, its cluster in ``state/postgres`` (made on the first start, kept),
    its log appended to ``state/postgres.log``; stopped on exit.

    Yields:
        The URL of its database (no password: trust authentication on 127.0.0.1).

    Raises:
        SystemExit: PostgreSQL is not installed, or did not start (naming its log).
    """
    from services.testing.postgres import LocalPostgres, postgres_available

    available, why = postgres_available()
    if not available:
        raise SystemExit(f"tire: --postgres needs PostgreSQL: {why}")
    with (state / "postgres.log").open("a") as log:
        server = LocalPostgres(state / "postgres", log=log)
        try:
            server.start()
        except RuntimeError as exc:
            raise SystemExit(f"tire: PostgreSQL did not start: {exc}; see {state / 'postgres.log'}") from None
        try:
            yield server.url
        finally:
            server.stop()


@contextmanager
def local_triton(state: Path, s3: LocalS3) -> Iterator[tuple[str, tuple[str, ...]]]:
    """``tritonserver`` on the local store's repository, each Triton stage's models loaded (version 1
    published with tiny random weights when the repository has none); stopped on exit.

    Yields:
        Triton's gRPC address and the stages it serves.
    """
    from services.common import model_repository
    from services.common.store import ObjectStore
    from services.common.triton import LocalTriton, load_model, triton_repository

    store = ObjectStore(s3.settings)
    repository = f"s3://{s3.bucket}/{TRITON_REPOSITORY}"
    model_repository.ensure_repository(store, repository)
    makers = _tiny_weights()
    served = tuple(name for name in TRITON_STAGES if name in makers)
    with (
        (state / "triton.log").open("a") as log,
        LocalTriton(triton_repository(s3.settings, repository), log=log, store=s3.settings) as triton,
    ):
        for name in served:
            declared = importlib.import_module(stage(name).triton_models)
            if model_repository.published_versions(store, repository, declared.MODELS):
                for model in declared.MODELS:
                    load_model(triton.url, model.name)
                continue
            weights = f"s3://{s3.bucket}/models/tiny-{name}"
            with tempfile.TemporaryDirectory() as folder:
                store.upload_folder(makers[name](Path(folder) / name), weights)
            settings = declared.version_settings(weights)
            model_repository.publish(store, repository, declared.MODELS, settings, triton.url)
        yield triton.url, served


def _spawn(name: str, env: dict[str, str], state: Path) -> subprocess.Popen:
    """``python -m <the service's server>`` with ``env``, its output appended to ``state/<name>.log``."""
    with (state / f"{name}.log").open("a") as log:
        return subprocess.Popen([sys.executable, "-m", _MODULES[name]], env=env, stdout=log, stderr=log)


LOCAL_PRINCIPAL = "local"


def local_tokens(state: Path) -> tuple[Path, Path]:
    """The local stack's credentials in ``state``: ``token`` (the bearer token of principal ``local``,
    made on the first start and kept, so its jobs stay its own) and ``tokens`` (its entry, what the
    coordinator reads). Both are readable by their owner only."""
    token_file, tokens_file = state / "token", state / "tokens"
    if not token_file.is_file():
        token_file.touch(mode=0o600)
        token_file.write_text(new_token() + "\n")
    tokens_file.touch(mode=0o600)
    tokens_file.write_text(token_entry(token_file.read_text().strip(), LOCAL_PRINCIPAL) + "\n")
    return token_file, tokens_file


@contextmanager
def local_stack(
    state: Path,
    ports: Mapping[str, int],
    *,
    timeout_s: float = 300.0,
    metrics: bool = True,
    triton: bool = False,
    web_port: int | None = None,
    postgres: bool = False,
) -> Iterator[LocalStack]:
    """The S3 server, the five stages and the coordinator as processes, each SERVING; stopped on exit.

    Args:
        state: folder for the store, the coordinator's job state and each service's log.
        ports: each service's name (``SERVICES``) to its gRPC port; metrics go on the port + 1000.
        timeout_s: how long every service has to report SERVING.
        metrics: serve Prometheus metrics (False: none, so no metrics ports are taken).
        triton: run ``tritonserver`` too (``local_triton``), and the stages it serves on it.
        web_port: run the web console on this port of 127.0.0.1 too (0: any free one; None: no console),
            the store allowing its pages to upload straight to it (CORS).
        postgres: keep the coordinator's jobs in a PostgreSQL server the stack runs (``local_postgres``),
            not in ``state/coordinator.sqlite``.

    Yields:
        The running stack.

    Raises:
        SystemExit: a service did not start (naming its log).
    """
    state.mkdir(parents=True, exist_ok=True)
    token_file, tokens_file = local_tokens(state)
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    processes: dict[str, subprocess.Popen] = {}
    environments: dict[str, dict[str, str]] = {}
    if web_port == 0:
        web_port = free_port()
    web_url = f"http://127.0.0.1:{web_port}" if web_port is not None else ""
    with (
        LocalS3(state / "s3", allow_origin=web_url) as s3,
        local_triton(state, s3) if triton else nullcontext(("", ())) as (triton_url, on_triton),
        local_postgres(state) if postgres else nullcontext("") as postgres_url,
    ):
        try:
            for service in SERVICES:
                name, prefix = service.name, service.env_prefix
                env = {
                    **os.environ,
                    **s3.env,
                    f"{prefix}PORT": str(ports[name]),
                    f"{prefix}HOST": "127.0.0.1",
                    f"{prefix}METRICS_PORT": str(ports[name] + 1000 if metrics else 0),
                }
                if name in on_triton:
                    env.update({f"{prefix}BACKEND": "triton", f"{prefix}TRITON_URL": triton_url})
                if name == "coordinator":
                    env["TIRE_COORDINATOR_DATABASE_URL"] = postgres_url or sqlite_url(
                        state / "coordinator.sqlite"
                    )
                    # Plaintext on loopback only: the services listen on 127.0.0.1.
                    env["TIRE_COORDINATOR_ALLOW_PLAINTEXT"] = "1"
                    env["TIRE_COORDINATOR_TOKENS_FILE"] = str(tokens_file)
                    env.update({f"TIRE_COORDINATOR_{n.upper()}": t for n, t in targets.items() if n != name})
                environments[name] = env
                processes[name] = _spawn(name, env, state)
            deadline = time.monotonic() + timeout_s
            for name, process in processes.items():
                left = max(deadline - time.monotonic(), 0.0)
                if not wait_serving(targets[name], left, alive=lambda p=process: p.poll() is None):
                    raise SystemExit(f"tire: {name} did not start; see {state / (name + '.log')}")
            if web_port is not None:
                environments[WEB] = {
                    **os.environ,
                    "TIRE_WEB_PORT": str(web_port),
                    "TIRE_WEB_METRICS_PORT": str(web_port + 1000 if metrics else -1),
                    "TIRE_WEB_HOST": "127.0.0.1",
                    "TIRE_WEB_COORDINATOR": targets[COORDINATOR.name],
                    "TIRE_WEB_PUBLIC_URL": web_url,
                    "TIRE_WEB_STORE_ORIGIN": s3.env["TIRE_S3_ENDPOINT"],
                }
                processes[WEB] = _spawn(WEB, environments[WEB], state)
                left = max(deadline - time.monotonic(), 0.0)
                if not wait_http(f"{web_url}/readyz", left, alive=lambda: processes[WEB].poll() is None):
                    raise SystemExit(f"tire: the web console did not start; see {state / 'web.log'}")
            store_env = state / "store.env"
            store_env.touch(mode=0o600)
            store_env.write_text("".join(f"{k}={v}\n" for k, v in s3.env.items()))
            yield LocalStack(
                s3, processes, triton_url, store_env, token_file, environments, state, web_url, postgres_url
            )
        finally:
            for process in reversed(processes.values()):
                if process.poll() is None:
                    process.terminate()
            for process in processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
