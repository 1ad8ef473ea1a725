"""The diffusion backends at job size: subject fit, inpainting of every ring view, joint refinement.

    python -m benchmarks.neural [--size real|tiny] [--resolution 512] [--orbit-step 20] [--fit-steps 400]

Models are built with random weights in the real architectures (``--size real``: the Stable Diffusion 2
inpainting pipeline, about 1.3 B parameters, and an MVDream-size multi-view refiner; ``tiny``: the
test models, for a smoke run on a CPU) and loaded through the backends' own loading code. Weights do not
change the amount of work, so the timings are those of real models.

The views are the LGM monkey rendered from the job's orbit (every ``--orbit-step`` degrees, on white);
the inpainting masks are each view's foreground that the front view does not observe (the geometric
tracker, one ring anchored on the front). The calls are the ones a job makes:

- ``fit_subject``: ``--fit-steps`` LoRA steps on the front view at the model's resolution;
- ``inpaint``: every view but the front, strength 0.3 of a 50-step schedule (15 denoising steps), in
  batches of the backend's ``batch_size``;
- ``refine``: all views jointly (MVDream at 256 x 256 per view), strength 0.3 of 50 steps, the front fixed.

Goal (issue 5): fit + inpainting + refinement under 90 s on one H100. Model loading is reported apart.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.rasterizer import cpu_name
from services.common.cameras import orbit_cameras
from services.common.gaussians import read_ply
from services.common.rasterizer import rasterize
from services.common.views import Views
from services.inpainter.contract import FitConfig
from services.inpainter.sd_lora import SdLoraBackend
from services.refiner.mv_diffusion import MvDiffusionBackend
from services.testing.random_models import save_mv_refiner, save_sd_inpainting
from services.tracker.backends import make_backend
from services.tracker.contract import LocateOptions

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"
GOAL_S = 90.0


def job_views(side: int, orbit_step: float) -> tuple[Views, np.ndarray]:
    """The monkey's orbit views on white, and ``[V, H, W]`` bool masks of what the front does not see."""
    azimuths = np.arange(0.0, 360.0, orbit_step)
    cameras = orbit_cameras(azimuths, side, side)
    result = rasterize(read_ply(MONKEY), cameras, background=(1.0, 1.0, 1.0))
    rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)
    views = Views(rgb, result.alpha, result.depth, cameras)
    targets = list(range(1, len(azimuths)))
    located = make_backend("geometric").locate_unobserved(views, targets, [0], LocateOptions())
    masks = np.zeros(rgb.shape[:3], bool)
    masks[1:] = located.unobserved
    return views, masks


def timed(call) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = call()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("real", "tiny"), default="real")
    parser.add_argument("--resolution", type=int, default=512, help="view size, pixels")
    parser.add_argument("--orbit-step", type=float, default=20.0, help="degrees between views")
    parser.add_argument("--fit-steps", type=int, default=400, help="LoRA steps")
    args = parser.parse_args()

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu_name()})"
    views, masks = job_views(args.resolution, args.orbit_step)
    print(f"{len(views.rgb)} views of {args.resolution}^2, {args.size} models, {device}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        sd = save_sd_inpainting(Path(folder, "sd"), "sd2" if args.size == "real" else "tiny")
        mv = save_mv_refiner(Path(folder, "mv"), "mvdream" if args.size == "real" else "tiny")
        load_inpainter, inpainter = timed(lambda: SdLoraBackend(str(sd)))
        # MVDream works at 256 x 256 per view; the tiny model at its own 64.
        resolution = 256 if args.size == "real" else 64
        load_refiner, refiner = timed(lambda: MvDiffusionBackend(str(mv), resolution=resolution))
    rows.append(("load both models (not in the goal)", load_inpainter + load_refiner))

    front = views.rgb[:1]
    config = FitConfig(steps=args.fit_steps, seed=0)
    fit_s, subject = timed(lambda: inpainter.fit_subject(front, views.alpha[:1], config, lambda *_: None))
    rows.append((f"fit_subject ({args.fit_steps} LoRA steps at {inpainter.resolution}^2)", fit_s))
    inpaint_s, inpainted = timed(
        lambda: inpainter.inpaint(views.rgb[1:], masks[1:], None, subject, 0.3, seed=0)
    )
    rows.append((f"inpaint ({len(views.rgb) - 1} views, 15 of 50 steps)", inpaint_s))
    ring_views = Views(np.concatenate([front, inpainted]), views.alpha, views.depth, views.cameras)
    update = masks.astype(np.float32)
    refine_s, _ = timed(lambda: refiner.refine(ring_views, update, read_ply(MONKEY), 0, 0.3, seed=0))
    rows.append((f"refine ({len(views.rgb)} views jointly at {resolution}^2, 15 of 50 steps)", refine_s))

    total = fit_s + inpaint_s + refine_s
    width = max(len(name) for name, _ in rows) + 2
    print(f"{'call':<{width}}{'seconds':>10}")
    for name, seconds in rows:
        print(f"{name:<{width}}{seconds:>10.1f}")
    print(f"{'fit + inpaint + refine':<{width}}{total:>10.1f}   goal {GOAL_S:.0f} s: {total / GOAL_S:.2f}x")


if __name__ == "__main__":
    main()
