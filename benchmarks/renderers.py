"""Renderer backends side by side: ms per ``render`` call of a 14-view orbit (what the coordinator asks).

    python -m benchmarks.renderers [--resolutions 256 512] [--repeats 5] [--quick]

The cpu backend always runs; the gsplat backend runs when CUDA is present (its time includes copying the
Gaussians to the GPU and the images back, as the service does). The warm-up call (JIT compilation,
CUDA start-up) is excluded; the median is reported.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numba
import numpy as np

from benchmarks.timing import cpu_name, median_ms
from services.common.cameras import orbit_cameras
from services.common.gaussians import Gaussians, random_gaussians, read_ply
from services.renderer.backends import cuda_available, make_backend

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"
VIEWS = 14


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolutions, args.sizes, args.repeats = [64], [2_000], 1

    scenes: list[tuple[str, Gaussians]] = [(f"random {n:,}", random_gaussians(n, seed=n)) for n in args.sizes]
    if not args.quick:
        monkey = read_ply(MONKEY)
        scenes.insert(0, (f"LGM monkey {len(monkey):,}", monkey))
    backends = {"cpu": make_backend("cpu")}
    if cuda_available():
        backends["gsplat"] = make_backend("gsplat")
    background = np.ones(3, np.float32)
    azimuths = np.linspace(0.0, 360.0, VIEWS, endpoint=False)

    print(f"Renderer backends, {VIEWS}-view orbit per call, ms per call (median of {args.repeats})")
    print(f"machine: {cpu_name()}, {numba.config.NUMBA_NUM_THREADS} CPU threads")
    for name, backend in backends.items():
        print(f"  {name}: {backend.device}")
    header = " | ".join(backends)
    ratio = " | speed-up of gsplat" if "gsplat" in backends else ""
    print(f"\n| scene | resolution | {header}{ratio} |")
    print("|---|---:|" + "---:|" * len(backends) + ("---:|" if ratio else ""))
    for scene, gaussians in scenes:
        for side in args.resolutions:
            cameras = orbit_cameras(azimuths, side, side, elevation_deg=-15.0)
            times = {
                name: median_ms(
                    lambda b=backend, g=gaussians, c=cameras: b.render(g, c, background), args.repeats
                )
                for name, backend in backends.items()
            }
            cells = " | ".join(f"{ms:,.1f}" for ms in times.values())
            speedup = f" | {times['cpu'] / times['gsplat']:,.1f}x" if ratio else ""
            print(f"| {scene} | {side}x{side} | {cells}{speedup} |")


if __name__ == "__main__":
    main()
