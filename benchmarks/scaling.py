"""How a job's time grows with its size: view resolution, orbit step and Gaussian count.

    python -m benchmarks.scaling [--repeats 1]

Every row is one job run as ``tire run`` runs it (the five stages in this process with the CPU profile,
an in-memory store), timed from creating the job to the runner's return, after one warm-up job. Rows
change one thing from the base job, the LGM monkey (36,295 Gaussians) at 256 x 256 every 20 degrees
with the fixed rings [20, 90, 180]:

- resolution 128, 256, 512;
- orbit step 30, 20, 10 degrees (12, 18, 36 views);
- Gaussians: the monkey (36,295), the LGM hamburger (52,709; its reference is its own front render),
  and the monkey densified to 200,000 (each Gaussian copied about 5.5 times, jittered within its
  footprint, its scales shrunk by the cube root of that, so the asset covers what the monkey covers).

Besides the seconds, each row gives the ratio to the base job and to the growth of its parameter
(pixels, views, Gaussians): below 1, the job grows slower than its size (fixed costs); near 1, in
proportion.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import numpy as np
from tire.v1 import common_pb2, coordinator_pb2

from benchmarks.timing import cpu_name
from services.common.cameras import orbit_cameras
from services.common.gaussians import Gaussians, read_ply, write_ply
from services.common.pictures import straight_rgba
from services.common.rasterizer import rasterize
from services.common.store import MemoryStore
from services.common.tensors import png_bytes
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.embedded import embedded_stages

SAMPLES = Path(__file__).parents[1] / "samples"
HAMBURGER = Path(__file__).parents[2] / "shared" / "data" / "assets" / "hamburger_lgm.ply"
DENSE_COUNT = 200_000


@dataclasses.dataclass(frozen=True)
class Row:
    """One job of the table: what changed, its size relative to the base job, and its settings."""

    what: str
    size: float  # the changed parameter's value over the base job's (pixels, views, Gaussians)
    asset: str = "monkey"
    resolution: int = 256
    orbit_step: float = 20.0


ROWS = (
    Row("base: monkey, 256², 20°", 1.0),
    Row("resolution 128²", 0.25, resolution=128),
    Row("resolution 512²", 4.0, resolution=512),
    Row("orbit step 30° (12 views)", 12 / 18, orbit_step=30.0),
    Row("orbit step 10° (36 views)", 2.0, orbit_step=10.0),
    Row("hamburger, 52,709 Gaussians", 52_709 / 36_295, asset="hamburger"),
    Row(f"monkey densified, {DENSE_COUNT:,} Gaussians", DENSE_COUNT / 36_295, asset="dense"),
)


def densify(gaussians: Gaussians, count: int, seed: int = 0) -> Gaussians:
    """``count`` Gaussians covering what ``gaussians`` cover: each copied about ``count / N`` times, its
    copies' means jittered by half its mean scale, their scales shrunk by the cube root of the factor."""
    rng = np.random.default_rng(seed)
    n = len(gaussians)
    picked = np.concatenate([np.arange(n), rng.integers(0, n, count - n)])
    scale = np.exp(gaussians.log_scales[picked]).mean(axis=1, keepdims=True)
    jitter = rng.normal(0.0, 0.5, (count, 3)) * scale
    shrink = np.float32(np.log(count / n) / 3.0)
    return Gaussians(
        means=(gaussians.means[picked] + jitter).astype(np.float32),
        log_scales=gaussians.log_scales[picked] - shrink,
        quats=gaussians.quats[picked],
        opacity_logits=gaussians.opacity_logits[picked],
        sh=gaussians.sh[picked],
    )


def front_reference(gaussians: Gaussians, side: int = 256) -> bytes:
    """The asset's front view (azimuth 0, the default orbit) as a straight-alpha RGBA PNG."""
    render = rasterize(gaussians, orbit_cameras([0.0], side, side))  # over black: premultiplied
    return png_bytes(straight_rgba(render.rgb[0], render.alpha[0]))


def assets() -> dict[str, tuple[bytes, bytes]]:
    """Each asset's ``.ply`` bytes and reference PNG bytes, by the name ``Row.asset`` uses."""
    monkey = (SAMPLES / "monkey_lgm.ply").read_bytes()
    reference = (SAMPLES / "monkey_front.png").read_bytes()
    found = {"monkey": (monkey, reference)}
    found["dense"] = (write_ply(densify(read_ply(monkey), DENSE_COUNT)), reference)
    if HAMBURGER.is_file():
        hamburger = HAMBURGER.read_bytes()
        found["hamburger"] = (hamburger, front_reference(read_ply(hamburger)))
    return found


def run_job(store: MemoryStore, stages, asset: tuple[bytes, bytes], row: Row, seed: int) -> float:
    """Seconds of one job of ``row``, from creating it to the runner's return."""
    ply, png = asset
    frame = store.put_bytes(ply, suffix=".ply", media_type="application/x-ply")
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[frame]),
        references=[store.put_bytes(png, suffix=".png", media_type="image/png")],
        resolution=row.resolution,
        orbit_step_deg=row.orbit_step,
        seed=seed,
    )
    with JobStore(":memory:") as jobs:
        start = time.perf_counter()
        job, _ = jobs.create(frame_job(resolve_spec(spec), store))
        job = JobRunner(jobs, stages, store).run(job.id)
        seconds = time.perf_counter() - start
    if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"benchmarks.scaling: the job {row.what!r} failed: {job.error}")
    return seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    import numba

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, {numba.config.NUMBA_NUM_THREADS} numba threads")
    found = assets()
    store = MemoryStore()
    stages = embedded_stages(store, "cpu")
    run_job(store, stages, found["monkey"], ROWS[0], seed=0)  # warm-up: first calls, caches
    rows = [row for row in ROWS if row.asset in found]
    times: dict[Row, list[float]] = {row: [] for row in rows}
    for repeat in range(1, args.repeats + 1):
        for row in rows:
            times[row].append(run_job(store, stages, found[row.asset], row, seed=repeat))
            print(f"  repeat {repeat}: {row.what}: {times[row][-1]:.2f} s", flush=True)

    base = statistics.median(times[rows[0]])
    print(
        f"\n| job (one change from the base) | seconds (median of {args.repeats}) | x base | size x | "
        "time growth / size growth |"
    )
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        seconds = statistics.median(times[row])
        ratio = seconds / base
        per_size = "" if row.size == 1.0 else f"{ratio / row.size:.2f}"
        print(f"| {row.what} | {seconds:.2f} | {ratio:.2f} | {row.size:.2f} | {per_size} |")
    missing = [row.what for row in ROWS if row.asset not in found]
    if missing:
        print(f"\nnot run (no {HAMBURGER}): {', '.join(missing)}")


if __name__ == "__main__":
    main()
