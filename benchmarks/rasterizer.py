"""CPU rasterizer benchmark: ms per view at 256x256, 1 thread and all threads, against the dense reference.

    python -m benchmarks.rasterizer [--sizes 10000 50000 200000] [--repeats 5] [--quick]

Scenes are random Gaussians in a cube of half-size 0.5 (LGM-like extent) seen from the orbit radius
1.5, plus the real LGM monkey. The warm-up call (JIT compilation) is excluded; the median is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numba

from services.common.cameras import orbit_cameras
from services.common.gaussians import Gaussians, random_gaussians, read_ply
from services.common.rasterizer import rasterize
from services.common.rasterizer.reference import rasterize_reference

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"


def median_ms(render, repeats: int) -> float:
    render()  # warm-up: compilation, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        render()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
