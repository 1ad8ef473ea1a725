"""The coordinator's fan-out: throughput of concurrent jobs against inpainter replicas behind one target.

    python -m benchmarks.fanout [--replicas 1 2 4 8] [--jobs-per-replica 3] [--latency-s 1.0]

The inpainter is the bottleneck a deployment scales out. Here each replica is a real inpainter gRPC
server (``services.common.server``, the real ``InpainterServicer``: requests validated, tensors read from
and written to the store) whose backend is **a benchmark-only stand-in, FixedLatencyInpainter**: it fits
subjects with the colour backend, and for each Inpaint call holds its one "device" for ``--latency-s``
seconds and returns the views unchanged, as a GPU-bound replica would hold its GPU. It is defined in
this file only and is no backend of any service or profile.

For k replicas, k x ``--jobs-per-replica`` jobs (the LGM monkey at 64 x 64 every 45 degrees, fixed rings)
are started at once and run to their end by the real ``JobRunner`` (at most 4 calls in flight per job's
fan-out, as deployed), whose inpainter stub dials all k servers as one round-robin target
(``ipv4:127.0.0.1:p1,127.0.0.1:p2,...``); the other four stages run in this process (embedded), on
one in-memory store shared with the servers. Throughput is jobs per second over the wall time from the
first submission to the last job's end; efficiency is throughput with k replicas over k times the
throughput with one. Goal (issue 17): efficiency >= 0.8 for every k.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tire.v1 import common_pb2, coordinator_pb2, inpainter_pb2_grpc

from benchmarks.timing import cpu_name
from services.common.clients import dial
from services.common.config import ServerSettings
from services.common.server import ServiceSpec, start_server
from services.common.store import MemoryStore
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.embedded import embedded_stages
from services.inpainter.server import SERVICE_NAME, InpainterServicer, InpainterSettings, build_servicer

SAMPLES = Path(__file__).parents[1] / "samples"
GOAL_EFFICIENCY = 0.8


class FixedLatencyInpainter:
    """BENCHMARK-ONLY STAND-IN for one GPU-bound inpainter replica; no service or profile uses it.

    Fits with the colour backend it wraps; ``inpaint`` holds the replica's one device for ``latency_s``
    seconds (one call at a time, as one GPU runs one batch) and returns ``images`` unchanged.
    """

    name = "fixed-latency-stand-in"
    base_model = ""

    def __init__(self, colour, latency_s: float):
        self._colour = colour
        self.latency_s = latency_s
        self.default_strength = colour.default_strength
        self.subject_cache_size = colour.subject_cache_size
        self._device = threading.Lock()
        self.calls = 0

    @property
    def device(self) -> str:
        return f"none (a stand-in holding a lock for {self.latency_s} s per call)"

    def fit_subject(self, images, masks, config, progress) -> bytes:
        return self._colour.fit_subject(images, masks, config, progress)

    def inpaint(self, images, masks, alpha, subject, strength, seed, **sampling) -> np.ndarray:
        with self._device:
            self.calls += 1
            time.sleep(self.latency_s)
        return images.copy()


def start_replicas(store: MemoryStore, k: int, latency_s: float) -> tuple[list, list[FixedLatencyInpainter]]:
    """k inpainter gRPC servers on free loopback ports, each with its own stand-in; returns the running
    servers and their backends."""
    colour = build_servicer(InpainterSettings(), store).backend
    servers, backends = [], []
    for _ in range(k):
        backend = FixedLatencyInpainter(colour, latency_s)
        servicer = InpainterServicer(backend, store)
        spec = ServiceSpec(
            name=SERVICE_NAME,
            register=lambda server, s=servicer: inpainter_pb2_grpc.add_InpainterServiceServicer_to_server(
                s, server
            ),
            asynchronous=True,  # as its main serves it
        )
        running = start_server(
            spec, ServerSettings(port=0, host="127.0.0.1", metrics_port=-1, max_workers=16)
        )
        running.set_serving()
        servers.append(running)
        backends.append(backend)
    return servers, backends


def run_jobs(store: MemoryStore, k: int, jobs_per_replica: int, latency_s: float) -> dict:
    """Start k replicas, run k x jobs_per_replica jobs at once to their end; return the figures."""
    servers, backends = start_replicas(store, k, latency_s)
    target = "ipv4:" + ",".join(f"127.0.0.1:{server.port}" for server in servers)
    channel = dial(target, retries=0)
    stages = dataclasses.replace(
        embedded_stages(store, "cpu"), inpainter=inpainter_pb2_grpc.InpainterServiceStub(channel)
    )
    frame = store.put_bytes((SAMPLES / "monkey_lgm.ply").read_bytes(), suffix=".ply")
    reference = store.put_bytes((SAMPLES / "monkey_front.png").read_bytes(), suffix=".png")
    n = k * jobs_per_replica
    try:
        with JobStore(":memory:") as jobs:
            runner = JobRunner(jobs, stages, store)
            ids = []
            for seed in range(n):
                spec = coordinator_pb2.JobSpec(
                    asset=common_pb2.AssetRef(frames=[frame]),
                    references=[reference],
                    resolution=64,
                    orbit_step_deg=45.0,
                    seed=seed,
                )
                ids.append(jobs.create(frame_job(resolve_spec(spec), store))[0].id)
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                finished = list(pool.map(runner.run_to_end, ids))
            seconds = time.perf_counter() - start
            failed = [job.error for job in finished if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED]
            if failed:
                raise SystemExit(f"benchmarks.fanout: {len(failed)} of {n} jobs failed, first: {failed[0]}")
            calls_per_job = Counter(
                sum(
                    1
                    for event in jobs.events(job_id, limit=100_000)
                    if event.HasField("step_finished") and "/inpaint/" in event.step_finished.step
                )
                for job_id in ids
            )
    finally:
        channel.close()
        for server in servers:
            server.stop(0)
    calls = [backend.calls for backend in backends]
    (per_job,) = calls_per_job  # every job makes the same calls
    return {"jobs": n, "seconds": seconds, "calls": calls, "per_job": per_job}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--jobs-per-replica", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores; inpainter: the fixed-latency stand-in, "
        f"{args.latency_s} s per call, one call at a time per replica"
    )
    store = MemoryStore()
    run_jobs(store, 1, 1, 0.0)  # warm-up: kernels, first calls
    rows = []
    for k in args.replicas:
        figures = run_jobs(store, k, args.jobs_per_replica, args.latency_s)
        rows.append((k, figures))
        print(f"  {k} replicas: {figures['jobs']} jobs in {figures['seconds']:.1f} s", flush=True)

    one = next((figures for k, figures in rows if k == 1), None)
    base = one["jobs"] / one["seconds"] if one else None
    print("\n| replicas | jobs | seconds | jobs/s | efficiency | ideal seconds | calls per replica |")
    print("|---:|---:|---:|---:|---:|---:|---|")
    for k, figures in rows:
        throughput = figures["jobs"] / figures["seconds"]
        efficiency = f"{throughput / (k * base):.2f}" if base else "-"
        # Replicas busy all the time: every call's latency, spread evenly.
        ideal = figures["jobs"] * figures["per_job"] * args.latency_s / k
        spread = ", ".join(map(str, figures["calls"]))
        print(
            f"| {k} | {figures['jobs']} | {figures['seconds']:.1f} | {throughput:.3f} | {efficiency} | "
            f"{ideal:.1f} | {spread} |"
        )
    print(
        f"\n{rows[0][1]['per_job']} inpaint calls per job; goal: efficiency >= {GOAL_EFFICIENCY} for every k"
    )


if __name__ == "__main__":
    main()
