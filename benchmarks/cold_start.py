"""How long a stage service takes from its start to SERVING: with numba's cache empty, and started from
the seed an image carries (``services.common.kernel_cache``).

    python -m benchmarks.cold_start [--repeats 3]

For each stage (its default CPU backend), a seed is compiled first as an image's build does it
(``tire-<stage> --warm-up-only`` into an empty folder, timed: the compilation the seed saves). Then the
service is started ``--repeats`` times each way, taking turns, on a local S3 server:

- cold: an empty ``NUMBA_CACHE_DIR``, as a new pod before this change: the warm-up compiles;
- seeded: an empty ``NUMBA_CACHE_DIR`` and ``TIRE_NUMBA_CACHE_SEED`` naming the seed, as a new pod of
  an image built with it.

Timed from ``Popen`` to the first health answer SERVING (polled every 20 ms). Every run uses the images'
``NUMBA_CPU_NAME=x86-64-v3`` with no extra features. Goal (issue 17): SERVING within 5 s of start.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.timing import cpu_name
from services.common.kernel_cache import SEED_ENV
from services.common.local_server import free_port
from services.common.registry import STAGES
from services.common.s3server import LocalS3

IMAGE_CPU = {"NUMBA_CPU_NAME": "x86-64-v3", "NUMBA_CPU_FEATURES": ""}
GOAL_S = 5.0
TIMEOUT_S = 300.0


def seconds_to_serving(module: str, prefix: str, env: dict[str, str]) -> float:
    """Start ``python -m module`` with ``env``, return the seconds until its health says SERVING, stop it."""
    port = free_port()
    environ = {**env, f"{prefix}PORT": str(port), f"{prefix}HOST": "127.0.0.1", f"{prefix}METRICS_PORT": "-1"}
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", module], env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.perf_counter() - start < TIMEOUT_S:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{module} exited {process.returncode}: {process.stderr.read()[-2000:]}"
                    )
                try:
                    answer = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return time.perf_counter() - start
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        raise RuntimeError(f"{module} was not SERVING within {TIMEOUT_S:.0f} s")
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"Machine: {cpu_name()}, {os.cpu_count()} cores; {args.repeats} starts each way, taking turns\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, LocalS3(Path(tmp) / "s3") as s3:
        base = {**os.environ, **s3.env, **IMAGE_CPU}
        for stage in STAGES:
            seed = Path(tmp) / stage.name / "seed"
            start = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", stage.server, "--warm-up-only"],
                env={**base, "NUMBA_CACHE_DIR": str(seed)},
                check=True,
                capture_output=True,
            )
            compile_s = time.perf_counter() - start
            times: dict[str, list[float]] = {"cold": [], "seeded": []}
            for repeat in range(args.repeats):
                for way in times:
                    cache = Path(tmp) / stage.name / f"{way}-{repeat}"
                    env = {**base, "NUMBA_CACHE_DIR": str(cache)}
                    if way == "seeded":
                        env[SEED_ENV] = str(seed)
                    times[way].append(seconds_to_serving(stage.server, stage.env_prefix, env))
            files = sum(1 for path in seed.rglob("*") if path.is_file())
            rows.append((stage.name, compile_s, files, statistics.median(times["cold"]), times))
            print(f"{stage.name}: done", flush=True)

    print(
        "\n| stage | seed build, s (files) | cold start, s | seeded start, s | runs cold / seeded | < 5 s |"
    )
    print("|---|---:|---:|---:|---|---|")
    for name, compile_s, files, cold, times in rows:
        seeded = statistics.median(times["seeded"])
        runs = " / ".join(", ".join(f"{t:.1f}" for t in times[way]) for way in ("cold", "seeded"))
        print(
            f"| {name} | {compile_s:.1f} ({files}) | {cold:.2f} | {seeded:.2f} | {runs} | "
            f"{'met' if seeded < GOAL_S else 'not met'} |"
        )


if __name__ == "__main__":
    main()
