"""The local stack of ``tire up``: an S3 server, the five stages and the coordinator, as processes.

    with local_stack(Path("out/stack"), local_ports()) as (s3, processes):
        ...   # every service SERVING; the coordinator at 127.0.0.1:50051

Each service runs as ``python -m <its server module>`` with its ``TIRE_<SERVICE>_*`` variables; the
services, their modules and their ports come from ``services.common.registry``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from services.common.clients import wait_serving
from services.common.registry import BASE_PORT, COORDINATOR, STAGES
from services.common.s3server import LocalS3

SERVICES = (*STAGES, COORDINATOR)
"""Started in this order: the stages, then the coordinator that calls them."""


def local_ports(base: int = BASE_PORT) -> dict[str, int]:
    """Each service's gRPC port when the coordinator listens on ``base`` (the stages on the next five)."""
    return {service.name: base + service.port_offset for service in SERVICES}


@contextmanager
def local_stack(
    state: Path, ports: Mapping[str, int], *, timeout_s: float = 300.0, metrics: bool = True
) -> Iterator[tuple[LocalS3, dict[str, subprocess.Popen]]]:
    """The S3 server, the five stages and the coordinator as processes, each SERVING; stopped on exit.

    Args:
        state: folder for the store, the coordinator's job state and each service's log.
        ports: each service's name (``SERVICES``) to its gRPC port; metrics go on the port + 1000.
        timeout_s: how long every service has to report SERVING.
        metrics: serve Prometheus metrics (False: none, so no metrics ports are taken).

    Yields:
        The S3 server and each service's process by name.

    Raises:
        SystemExit: a service did not start (naming its log).
    """
    state.mkdir(parents=True, exist_ok=True)
    targets = {name: f"127.0.0.1:{port}" for name, port in ports.items()}
    processes: dict[str, subprocess.Popen] = {}
    with LocalS3(state / "s3") as s3:
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
                if name == "coordinator":
                    env["TIRE_COORDINATOR_STATE_PATH"] = str(state / "coordinator.sqlite")
                    env.update({f"TIRE_COORDINATOR_{n.upper()}": t for n, t in targets.items() if n != name})
                with (state / f"{name}.log").open("a") as log:
                    processes[name] = subprocess.Popen(
                        [sys.executable, "-m", service.server], env=env, stdout=log, stderr=log
                    )
            deadline = time.monotonic() + timeout_s
            for name, process in processes.items():
                left = max(deadline - time.monotonic(), 0.0)
                if not wait_serving(targets[name], left, alive=lambda p=process: p.poll() is None):
                    raise SystemExit(f"tire: {name} did not start; see {state / (name + '.log')}")
            yield s3, processes
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
