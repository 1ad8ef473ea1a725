"""CPU rasterizer benchmark: ms per view at 256x256, 1 thread and all, by phase, against the dense reference.

    python -m benchmarks.rasterizer [--sizes 10000 50000 200000] [--repeats 5] [--quick]

Scenes are random Gaussians in a cube of half-size 0.5 (LGM-like extent) seen from the orbit radius
1.5, plus the real LGM monkey. The warm-up call (JIT compilation) is excluded; the median is reported.
The phase table times ``rasterize``'s three kernels apart and counts the compositing's work.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from benchmarks.timing import cpu_name, median_ms
from services.common.cameras import Cameras, orbit_cameras
from services.common.gaussians import Gaussians, random_gaussians, read_ply
from services.common.rasterizer import _numba, rasterize
from services.common.rasterizer.reference import rasterize_reference

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"


@dataclass(frozen=True)
class Phases:
    """One view's phases, timed apart, and the compositing's work."""

    projection_ms: float
    tiles_ms: float  # depth sort and per-tile lists
    compositing_ms: float
    pairs_listed: int  # tile-Gaussian pairs in the tile lists
    pairs_composited: int  # those composited before their tile saturated
    evaluations: int  # pixels of the composited pairs' boxes


def time_phases(gaussians: Gaussians, cameras: Cameras, n_threads: int, repeats: int) -> Phases:
    """Time ``rasterize``'s kernels one by one on the first view, as ``_cpu`` calls them."""
    n, width, height = len(gaussians), int(cameras.width), int(cameras.height)
    tiles_x, tiles_y = -(-width // _numba.TILE_SIZE), -(-height // _numba.TILE_SIZE)
    inputs = [
        np.ascontiguousarray(array, dtype=np.float32)
        for array in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh)
    ]
    viewmat = np.ascontiguousarray(cameras.viewmats[0], dtype=np.float32)
    K = np.ascontiguousarray(cameras.Ks[0], dtype=np.float32)
    records, boxes = np.empty((n, _numba.N_FIELDS)), np.empty((n, 4), dtype=np.int32)
    outputs = (
        np.empty((height, width, 3), dtype=np.float32),
        np.empty((height, width), dtype=np.float32),
        np.empty((height, width), dtype=np.float32),
        np.empty((height, width, 0), dtype=np.int32),
        np.empty((height, width, 0), dtype=np.float32),
    )
    work = np.empty((n_threads, 2), dtype=np.int64)
    previous = numba.get_num_threads()
    numba.set_num_threads(n_threads)
    try:
        project = median_ms(
            lambda: _numba.project_view(*inputs, viewmat, K, width, height, records, boxes), repeats
        )
        tiles = median_ms(lambda: _numba.prepare_tiles(records, boxes, tiles_x, tiles_y), repeats)
        offsets, tile_lists = _numba.prepare_tiles(records, boxes, tiles_x, tiles_y)
        background = np.zeros(3)
        composite = median_ms(
            lambda: _numba.rasterize_tiles(
                records, boxes, offsets, tile_lists, tiles_x, background, n_threads, *outputs, work
            ),
            repeats,
        )
    finally:
        numba.set_num_threads(previous)
    total = work.sum(axis=0)
    return Phases(project, tiles, composite, len(tile_lists), int(total[0]), int(total[1]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-size", type=int, default=10_000, help="Gaussians, reference scene")
    parser.add_argument("--reference-resolution", type=int, default=64, help="the reference is slow")
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.resolution, args.repeats = [2_000], 64, 1
        args.reference_size, args.reference_resolution = 2_000, 32

    cameras = orbit_cameras([30.0], args.resolution, args.resolution, elevation_deg=-15.0)
    threads = numba.config.NUMBA_NUM_THREADS
    scenes: list[tuple[str, Gaussians]] = [(f"random {n:,}", random_gaussians(n, seed=n)) for n in args.sizes]
    if not args.quick:
        monkey = read_ply(MONKEY)
        scenes.insert(1, (f"LGM monkey {len(monkey):,}", monkey))

    print(f"CPU rasterizer, {args.resolution}x{args.resolution}, ms per view (median of {args.repeats})")
    print(f"machine: {cpu_name()}, {threads} threads, numba {numba.__version__}\n")
    print(f"| scene | 1 thread | {threads} threads | speed-up from threads |")
    print("|---|---:|---:|---:|")
    for name, gaussians in scenes:
        one = median_ms(lambda g=gaussians: rasterize(g, cameras, num_threads=1), args.repeats)
        every = median_ms(lambda g=gaussians: rasterize(g, cameras), args.repeats)
        print(f"| {name} | {one:.1f} | {every:.1f} | {one / every:.2f}x |")

    side = f"{args.resolution}x{args.resolution}"
    print(f"\nBy phase, {side}, ms (median of {args.repeats}); an evaluation is one pixel of the box of a")
    print("composited tile-Gaussian pair (the compositing loop's unit of work)\n")
    columns = ("projection", "sort + tile lists", "compositing", "pairs listed", "pairs composited")
    print(f"| scene | threads | {' | '.join(columns)} | evaluations | ns per evaluation |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, gaussians in scenes:
        for n_threads in sorted({1, threads}):
            phases = time_phases(gaussians, cameras, n_threads, args.repeats)
            ns = 1e6 * phases.compositing_ms / max(1, phases.evaluations)
            print(
                f"| {name} | {n_threads} | {phases.projection_ms:.2f} | {phases.tiles_ms:.2f} "
                f"| {phases.compositing_ms:.2f} | {phases.pairs_listed:,} | {phases.pairs_composited:,} "
                f"| {phases.evaluations / 1e6:.2f} M | {ns:.2f} |"
            )

    # The dense reference evaluates every Gaussian at every pixel: compare at a size it can finish.
    side, n = args.reference_resolution, args.reference_size
    small = orbit_cameras([30.0], side, side, elevation_deg=-15.0)
    gaussians = random_gaussians(n, seed=n)
    fast = median_ms(lambda: rasterize(gaussians, small, num_threads=1), args.repeats)
    dense = median_ms(lambda: rasterize_reference(gaussians, small), 1)
    print(f"\nAgainst the dense reference (random {n:,}, {side}x{side}, ms per view)\n")
    print("| numba, 1 thread | dense reference (torch) | speed-up |")
    print("|---:|---:|---:|")
    print(f"| {fast:.2f} | {dense:,.0f} | {dense / fast:,.0f}x |")


if __name__ == "__main__":
    main()
