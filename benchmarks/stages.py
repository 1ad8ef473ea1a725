"""Stage backends at job size: seconds per call of each CPU backend on 14 views of 256x256.

    python -m benchmarks.stages [--repeats 3] [--quick]

Each scene is rendered once from 14 azimuths (every 25.7 degrees, elevation -15, white background);
the calls are the ones a job makes on it:

- tracker ``locate_unobserved``: the 7 odd views as targets, the 7 even ones as anchors;
- tracker ``track``: 4,096 queries on the first frame's foreground, through all 14 frames;
- inpainter ``fit_subject``: the front view and its alpha;
- inpainter ``inpaint``: every view but the front, the whole foreground masked (the worst case);
- refiner ``refine``: every view but the front free to move (mask 1), strength 0.3;
- reconstructor ``reconstruct``: from an asset whose colours were scrambled, default options.

The warm-up call (numba compilation) is excluded; the median is reported. Goal (issue 3): each
stage under 2 s at this size on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path

import numba
import numpy as np

from benchmarks.timing import cpu_name, median_ms
from services.common.cameras import orbit_cameras
from services.common.gaussians import Gaussians, random_gaussians, read_ply, recolour
from services.common.rasterizer import rasterize
from services.common.views import Views
from services.inpainter.backends import make_backend as make_inpainter
from services.inpainter.contract import FitConfig
from services.reconstructor.backends import make_backend as make_reconstructor
from services.reconstructor.contract import SolveOptions
from services.refiner.backends import make_backend as make_refiner
from services.tracker.backends import make_backend as make_tracker
from services.tracker.contract import LocateOptions

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"
VIEWS = 14
GOAL_MS = 2000.0


def render_views(gaussians: Gaussians, side: int) -> Views:
    """The scene from ``VIEWS`` azimuths: rgb uint8, alpha and depth float32, on white."""
    cameras = orbit_cameras(np.linspace(0.0, 360.0, VIEWS, endpoint=False), side, side, elevation_deg=-15.0)
    result = rasterize(gaussians, cameras, background=(1.0, 1.0, 1.0))
    rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)
    return Views(rgb, result.alpha, result.depth, cameras)


def stage_calls(gaussians: Gaussians, views: Views) -> dict[str, Callable[[], object]]:
    """Name -> a zero-argument call of one backend method on this scene."""
    tracker, inpainter = make_tracker("geometric"), make_inpainter("colour")
    refiner, reconstructor = make_refiner("consensus"), make_reconstructor("colour-solve")
    rng = np.random.default_rng(0)

    foreground = views.alpha > 0.5
    ys, xs = np.nonzero(foreground[0])
    pick = rng.choice(len(xs), size=min(4096, len(xs)), replace=False)
    queries = np.stack([np.zeros(len(pick)), xs[pick] + 0.5, ys[pick] + 0.5], axis=1).astype(np.float32)
    config = FitConfig(seed=0)
    subject = inpainter.fit_subject(views.rgb[:1], views.alpha[:1], config, lambda *_: None)
    masks = foreground.copy()
    masks[0] = False
    free = np.ones(views.alpha.shape, np.float32)
    free[0] = 0.0
    scrambled = recolour(gaussians, rng.uniform(0.0, 1.0, (len(gaussians), 3)))
    targets, anchors = list(range(1, VIEWS, 2)), list(range(0, VIEWS, 2))

    return {
        "tracker locate_unobserved": lambda: tracker.locate_unobserved(
            views, targets, anchors, LocateOptions()
        ),
        "tracker track (4,096 queries)": lambda: tracker.track(views, queries, True),
        "inpainter fit_subject": lambda: inpainter.fit_subject(
            views.rgb[:1], views.alpha[:1], config, lambda *_: None
        ),
        "inpainter inpaint": lambda: inpainter.inpaint(views.rgb, masks, views.alpha, subject, 0.3, 0),
        "refiner refine": lambda: refiner.refine(views, free, gaussians, 0, 0.3, 0),
        "reconstructor reconstruct": lambda: reconstructor.reconstruct(views, scrambled, SolveOptions()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--size", type=int, default=50_000, help="Gaussians in the random scene")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, one repeat (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.size, args.repeats = 48, 2_000, 1

    scenes = [(f"random {args.size:,}", random_gaussians(args.size, seed=0))]
    if not args.quick:
        monkey = read_ply(MONKEY)
        scenes.insert(0, (f"LGM monkey {len(monkey):,}", monkey))
    side = args.resolution
    print(f"Stage backends, {VIEWS} views of {side}x{side}, ms per call (median of {args.repeats})")
    print(f"machine: {cpu_name()}, {numba.config.NUMBA_NUM_THREADS} threads\n")

    table: dict[str, dict[str, float]] = {}
    for scene, gaussians in scenes:
        views = render_views(gaussians, side)
        for call, run in stage_calls(gaussians, views).items():
            table.setdefault(call, {})[scene] = median_ms(run, args.repeats)

    names = [scene for scene, _ in scenes]
    print("| call | " + " | ".join(names) + f" | under {GOAL_MS / 1000:.0f} s |")
    print("|---|" + "---:|" * len(names) + ":---:|")
    for call, times in table.items():
        cells = " | ".join(f"{times[name]:,.0f}" for name in names)
        met = "yes" if max(times.values()) < GOAL_MS else "**no**"
        print(f"| {call} | {cells} | {met} |")

    # What the reconstructor reaches on the scenes, beside its time.
    reconstructor = make_reconstructor("colour-solve")
    print("\n| scene | reconstruct: CG iterations | rms error of re-renders | PSNR (dB) |")
    print("|---|---:|---:|---:|")
    for scene, gaussians in scenes:
        views = render_views(gaussians, side)
        scrambled = dataclasses.replace(
            gaussians, sh=np.random.default_rng(1).normal(0.0, 1.0, gaussians.sh.shape).astype(np.float32)
        )
        result = reconstructor.reconstruct(views, scrambled, SolveOptions())
        psnr = -20.0 * np.log10(max(result.rms_error, 1e-12))
        print(f"| {scene} | {result.iterations} | {result.rms_error:.4f} | {psnr:.1f} |")


if __name__ == "__main__":
    main()
