"""Synthetic identity benchmark: how close repaired assets come to a known ground truth, per ring mode.

    python -m benchmarks.quality [--resolution 256] [--objects 3] [--gaussians 12000] [--quick]

The ground truth of object k is ``textured_blob(seed=k)`` moved by ``deform`` to t = 0, 0.5, 1, 0, ...
(a still blob, then twisted and swaying ones). The asset to repair is ``corrupt_unseen(truth, seed=k)``
(back and sides blurred and drifted toward steel blue-grey), and the reference image is the truth's
front view as an RGBA PNG (``samples.make_samples.front_reference``). Each asset is repaired by a whole
job, run in this process with the CPU profile (``services.embedded.PROFILES["cpu"]``: its strengths,
its backends), once per ring mode: the paper's fixed rings [20, 90, 180], adaptive rings (default
threshold 0.35), and source only (every target anchored on the front view, no progressive rings).

Metrics compare renders of an asset with renders of the truth from held-out cameras (``HELD_OUT``: none
lies on the job's 20-degree orbit at elevation 0), on white, with the CPU rasterizer:

- foreground PSNR: over the pixels where the truth's alpha is at least ``FOREGROUND_ALPHA``, RGB in
  [0, 1]; the background is left out (it is equal in every render and would inflate the figure);
- sliced Wasserstein distance (``sliced_wasserstein``) between the CIELab colours of the asset view's
  foreground pixels and those of the truth view's: the colour identity, whatever the pixel layout;
- mean-colour distance: the CIELab distance (Delta E 1976) between the two foregrounds' mean colours.

Each figure is the mean over held-out views and objects; "before" is the corrupted asset, "after" the
repaired one. The front view (azimuth 0, elevation 0, on the orbit) is reported apart: the repair must
keep it. The seconds per job are the wall time of ``JobRunner.run`` (mean over objects) after an
untimed warm-up job (numba compilation).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numba
import numpy as np
from tire.v1 import common_pb2, coordinator_pb2

from benchmarks.rasterizer import cpu_name
from samples.make_samples import front_reference
from services.common.cameras import Cameras, orbit_cameras
from services.common.gaussians import Gaussians, read_ply, write_ply
from services.common.rasterizer import rasterize
from services.common.store import MemoryStore
from services.common.synthetic import corrupt_unseen, deform, textured_blob
from services.common.tensors import png_bytes
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import MAX_RESOLUTION, MIN_RESOLUTION, resolve_spec
from services.coordinator.stages import Stages
from services.embedded import PROFILES, embedded_stages

HELD_OUT: tuple[tuple[float, float], ...] = (
    *((float(azimuth), 0.0) for azimuth in range(10, 360, 40)),
    *((float(azimuth), -30.0) for azimuth in range(45, 360, 90)),
)
"""(azimuth, elevation) of the held-out cameras, degrees, LGM convention (elevation -30 is above): every
40 degrees from 10 at elevation 0, each halfway between two views of the job's 20-degree orbit, and
every 90 degrees from 45 at elevation -30."""
FRONT = (0.0, 0.0)
"""The source view: (azimuth, elevation), degrees."""
FOREGROUND_ALPHA = 0.9
"""A pixel is foreground where the truth's alpha is at least this: edges blended with the background
are left out of every metric."""
DEFORM_TIMES = (0.0, 0.5, 1.0)
"""``deform`` time of object k: ``DEFORM_TIMES[k % 3]``."""
BACKGROUND = (1.0, 1.0, 1.0)
PROFILE = "cpu"
MODES = {
    "fixed rings [20, 90, 180]": "fixed",
    "adaptive rings (max unobserved 0.35)": "adaptive",
    "source only (no progressive rings)": "source_only",
}
"""Table label -> the ``RingSchedule`` oneof field set (to its defaults) for that mode."""


# ----- metrics --------------------------------------------------------------------------------


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELab (D65) of sRGB colours.

    Args:
        rgb: ``[..., 3]`` float sRGB in [0, 1] (gamma-encoded, as renders and PNGs hold).

    Returns:
        ``[..., 3]`` float32: L* in [0, 100], a* and b* roughly in [-128, 127].
    """
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    flat = np.ascontiguousarray(rgb.reshape(-1, 1, 3))
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def foreground_psnr(image: np.ndarray, truth: np.ndarray, foreground: np.ndarray) -> float:
    """PSNR in dB of ``image`` against ``truth`` over the foreground pixels only.

    Args:
        image, truth: ``[H, W, 3]`` float RGB in [0, 1].
        foreground: ``[H, W]`` bool, at least one pixel set.

    Returns:
        ``10 log10(1 / MSE)`` with the MSE over the foreground pixels and channels; 99 dB if they agree
        exactly.
    """
    if not foreground.any():
        raise ValueError("foreground has no pixels")
    difference = image[foreground].astype(np.float64) - truth[foreground]
    mse = float(np.mean(difference**2))
    return 99.0 if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


def sliced_wasserstein(
    a: np.ndarray, b: np.ndarray, projections: int = 64, quantiles: int = 256, seed: int = 0
) -> float:
    """Sliced 1-Wasserstein distance between two point clouds (here: CIELab colours of two foregrounds).

    Both clouds are projected on ``projections`` unit directions drawn from ``seed`` (the same
    directions on every call with equal arguments); per direction, the 1-Wasserstein distance of the
    two projected distributions is the mean absolute difference of their quantiles at the levels
    ``(i + 0.5) / quantiles``, so the clouds may differ in size. The result is the mean over directions,
    in the points' units (Lab units for colours: 0 for equal colour distributions, tens for a colour
    cast). Symmetric, >= 0.

    Args:
        a: ``[P, D]`` float points, P >= 1.
        b: ``[Q, D]`` float points, Q >= 1.
        projections: how many directions, >= 1.
        quantiles: quantile levels per direction, >= 1.
        seed: seed of the directions.

    Returns:
        The distance, float.
    """
    if len(a) == 0 or len(b) == 0:
        raise ValueError(f"both clouds need points, got {len(a)} and {len(b)}")
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need [P, D] and [Q, D] points, got {list(a.shape)} and {list(b.shape)}")
    directions = np.random.default_rng(seed).normal(size=(projections, a.shape[1]))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    levels = (np.arange(quantiles) + 0.5) / quantiles
    qa = np.quantile(a.astype(np.float64) @ directions.T, levels, axis=0)  # [quantiles, projections]
    qb = np.quantile(b.astype(np.float64) @ directions.T, levels, axis=0)
    return float(np.mean(np.abs(qa - qb)))


def mean_colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance (Delta E 1976) between the mean colours of ``[P, 3]`` and ``[Q, 3]`` Lab colours."""
    return float(np.linalg.norm(a.astype(np.float64).mean(axis=0) - b.astype(np.float64).mean(axis=0)))


@dataclass
class ViewMetrics:
    """Per-view metrics of one asset against the truth; each array ``[V]`` float64, views in camera order."""

    psnr: np.ndarray
    sliced_wasserstein: np.ndarray
    mean_colour: np.ndarray


def view_metrics(
    rgb: np.ndarray, alpha: np.ndarray, truth_rgb: np.ndarray, truth_alpha: np.ndarray
) -> ViewMetrics:
    """Metrics of renders of an asset against renders of the truth from the same cameras.

    PSNR is over the truth's foreground (alpha >= ``FOREGROUND_ALPHA``); the colour distances compare
    each render's own foreground pixels (equal masks here: the repair keeps the geometry).

    Args:
        rgb, truth_rgb: ``[V, H, W, 3]`` float32 RGB in [0, 1].
        alpha, truth_alpha: ``[V, H, W]`` float32 in [0, 1].
    """
    psnr, swd, mean = [], [], []
    for image, a, truth, ta in zip(rgb, alpha, truth_rgb, truth_alpha, strict=True):
        foreground, truth_foreground = a >= FOREGROUND_ALPHA, ta >= FOREGROUND_ALPHA
        psnr.append(foreground_psnr(image, truth, truth_foreground))
        lab, truth_lab = srgb_to_lab(image[foreground]), srgb_to_lab(truth[truth_foreground])
        swd.append(sliced_wasserstein(lab, truth_lab))
        mean.append(mean_colour_distance(lab, truth_lab))
    return ViewMetrics(np.array(psnr), np.array(swd), np.array(mean))


# ----- objects, renders, jobs ------------------------------------------------------------------


def ground_truth(k: int, gaussians: int) -> Gaussians:
    """Object k: ``textured_blob(gaussians, seed=k)`` at ``deform`` time ``DEFORM_TIMES[k % 3]``."""
    return deform(textured_blob(gaussians, seed=k), DEFORM_TIMES[k % len(DEFORM_TIMES)])


def cameras_at(views: Sequence[tuple[float, float]], resolution: int) -> Cameras:
    """Orbit cameras (default radius and field of view) at ``(azimuth, elevation)`` pairs, degrees."""
    parts = [orbit_cameras([azimuth], resolution, resolution, elevation_deg=el) for azimuth, el in views]
    return Cameras(
        viewmats=np.concatenate([c.viewmats for c in parts]),
        Ks=np.concatenate([c.Ks for c in parts]),
        width=resolution,
        height=resolution,
    )


def render(gaussians: Gaussians, cameras: Cameras) -> tuple[np.ndarray, np.ndarray]:
    """``([V, H, W, 3] float32 RGB on white in [0, 1], [V, H, W] float32 alpha)``."""
    result = rasterize(gaussians, cameras, background=BACKGROUND)
    return np.clip(result.rgb, 0.0, 1.0), result.alpha


@dataclass
class Repair:
    """One finished job: the repaired asset, the job's wall time in seconds, how many rings it ran."""

    gaussians: Gaussians
    seconds: float
    rings: int


def repair(
    store: MemoryStore,
    stages: Stages,
    jobs: JobStore,
    asset: Gaussians,
    reference: np.ndarray,
    mode: str,
    resolution: int,
) -> Repair:
    """Repair ``asset`` with a whole job in this process, as ``tire run`` does.

    Args:
        asset: the Gaussians to repair (written as an INRIA .ply into ``store``).
        reference: ``[R, R, 4]`` uint8 straight-alpha RGBA front view of the subject.
        mode: the ``RingSchedule`` field to set: "fixed", "adaptive" or "source_only" (their defaults).
        resolution: job view size, pixels.

    Raises:
        SystemExit: the job did not succeed (its error is quoted).
    """
    profile = PROFILES[PROFILE]
    ply = store.put_bytes(write_ply(asset), suffix=".ply", media_type="application/x-ply")
    png = store.put_bytes(png_bytes(reference), suffix=".png", media_type="image/png")
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[ply]),
        references=[png],
        resolution=resolution,
        strength=profile.strength,
        refine_strength=profile.refine_strength,
    )
    getattr(spec.rings, mode).SetInParent()
    job, _ = jobs.create(resolve_spec(spec))
    start = time.perf_counter()
    job = JobRunner(jobs, stages, store).run(job.id)
    seconds = time.perf_counter() - start
    if job.state != coordinator_pb2.JOB_STATE_SUCCEEDED:
        raise SystemExit(f"quality: the {mode} job failed: {job.error}")
    repaired = read_ply(store.get_object(job.outputs.repaired.frames[0]))
    return Repair(repaired, seconds, len(job.outputs.rings))


# ----- the benchmark ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256, help="job and metric view size, pixels")
    parser.add_argument("--objects", type=int, default=3, help="ground-truth objects")
    parser.add_argument("--gaussians", type=int, default=12_000, help="Gaussians per object")
    parser.add_argument("--quick", action="store_true", help="64x64, one small object (smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolution, args.objects, args.gaussians = 64, 1, 3_000
    if not (MIN_RESOLUTION <= args.resolution <= MAX_RESOLUTION and args.resolution % 8 == 0):
        parser.error(
            f"--resolution must be a multiple of 8 from {MIN_RESOLUTION} to {MAX_RESOLUTION}, "
            f"got {args.resolution}"
        )
    if args.objects < 1:
        parser.error(f"--objects must be at least 1, got {args.objects}")
    if args.gaussians < 100:
        parser.error(f"--gaussians must be at least 100, got {args.gaussians}")

    side = args.resolution
    profile = PROFILES[PROFILE]
    store, jobs = MemoryStore(), JobStore(":memory:")
    stages = embedded_stages(store, PROFILE)
    held_out, front = cameras_at(HELD_OUT, side), cameras_at([FRONT], side)
    times = ", ".join(f"{DEFORM_TIMES[k % len(DEFORM_TIMES)]:g}" for k in range(args.objects))
    print(f"Quality: subject identity, {args.objects} object(s), {side}x{side}, mean over objects")
    print(
        f"objects: textured_blob({args.gaussians:,}, seed=k) for k < {args.objects}, deform t = {times}; "
        f"asset: corrupt_unseen(seed=k)"
    )
    print(
        f"jobs: embedded, {PROFILE} profile (strength {profile.strength:g}, "
        f"refine strength {profile.refine_strength:g}), orbit step 20, seed 0"
    )
    held_out_text = ", ".join(f"{a:g}" if e == 0 else f"{a:g}@{e:g}" for a, e in HELD_OUT)
    print(f"held-out views (azimuth[@elevation], degrees): {held_out_text}")
    print(f"foreground: truth alpha >= {FOREGROUND_ALPHA:g}, renders on white")
    print(f"machine: {cpu_name()}, {numba.config.NUMBA_NUM_THREADS} threads\n")

    # Warm-up (untimed): numba compiles or loads every kernel the stages use.
    warm = textured_blob(1_000, seed=99)
    repair(store, stages, jobs, corrupt_unseen(warm), front_reference(warm, 64), "fixed", 64)

    # 1. Per object: truth, corrupted asset, one repair per mode; metrics against the truth.
    start = time.perf_counter()
    before: list[ViewMetrics] = []
    before_front: list[float] = []
    after: dict[str, list[ViewMetrics]] = {label: [] for label in MODES}
    after_front: dict[str, list[float]] = {label: [] for label in MODES}
    seconds: dict[str, list[float]] = {label: [] for label in MODES}
    rings: dict[str, list[int]] = {label: [] for label in MODES}
    for k in range(args.objects):
        truth = ground_truth(k, args.gaussians)
        asset = corrupt_unseen(truth, seed=k)
        reference = front_reference(truth, side)
        truth_views, truth_front = render(truth, held_out), render(truth, front)
        before.append(view_metrics(*render(asset, held_out), *truth_views))
        before_front.append(float(view_metrics(*render(asset, front), *truth_front).psnr[0]))
        for label, mode in MODES.items():
            result = repair(store, stages, jobs, asset, reference, mode, side)
            after[label].append(view_metrics(*render(result.gaussians, held_out), *truth_views))
            after_front[label].append(
                float(view_metrics(*render(result.gaussians, front), *truth_front).psnr[0])
            )
            seconds[label].append(result.seconds)
            rings[label].append(result.rings)

    # 2. The tables.
    def mean(metrics: list[ViewMetrics], name: str) -> float:
        return float(np.mean([getattr(m, name) for m in metrics]))

    print("| asset | held-out PSNR (dB) | sliced W. Lab | mean-colour ΔE | front PSNR (dB) | rings | s/job |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| before: the corrupted asset | {mean(before, 'psnr'):.2f} | "
        f"{mean(before, 'sliced_wasserstein'):.2f} | {mean(before, 'mean_colour'):.2f} | "
        f"{np.mean(before_front):.2f} | | |"
    )
    for label in MODES:
        counts = sorted(set(rings[label]))
        ring_text = str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"
        print(
            f"| after: {label} | {mean(after[label], 'psnr'):.2f} | "
            f"{mean(after[label], 'sliced_wasserstein'):.2f} | {mean(after[label], 'mean_colour'):.2f} | "
            f"{np.mean(after_front[label]):.2f} | {ring_text} | {np.mean(seconds[label]):.1f} |"
        )

    names = ["before", *(MODES[label] for label in MODES)]
    print("\nPer held-out view, mean over objects: foreground PSNR (dB), then sliced W. Lab")
    print(
        "| view | "
        + " | ".join(f"PSNR {n}" for n in names)
        + " | "
        + " | ".join(f"SW {n}" for n in names)
        + " |"
    )
    print("|---|" + "---:|" * (2 * len(names)))
    for v, (azimuth, elevation) in enumerate(HELD_OUT):
        rows = [before, *after.values()]
        psnr = " | ".join(f"{np.mean([m.psnr[v] for m in r]):.2f}" for r in rows)
        swd = " | ".join(f"{np.mean([m.sliced_wasserstein[v] for m in r]):.2f}" for r in rows)
        print(f"| {azimuth:g}° @ {elevation:g}° | {psnr} | {swd} |")
    print(f"\nTotal {time.perf_counter() - start:.0f} s (warm-up excluded).")


if __name__ == "__main__":
    main()
