"""What report.json measures, and the change map beside the contact sheet.

Every figure compares the repaired asset's renders with the input's renders on the job's orbit, which
the framing fits to the asset (so the foreground fills the views and a figure over the foreground is
not diluted by empty background). Colours are CIELab (D65, OpenCV's float convention); ΔE is CIE76,
per pixel, then averaged: never a distance between mean colours, which any colour-distribution match
satisfies.

- ``source_view``: the source view (azimuth 0), foreground PSNR (dB) and mean ΔE against the input's.
  The repair must keep it: expect PSNR above 45 dB and ΔE near 0.
- ``observed``: foreground pixels of every view that no ring marked unobserved: mean and 95th
  percentile ΔE. They carry the change of the anchor that saw them (the repair of an earlier ring),
  nothing else: on an asset that needs no repair, expect about 0.
- ``unobserved``: the pixels the rings marked: mean ΔE, the repair itself.
- ``cross_time_delta_e`` (4D): the mean ΔE of a Gaussian's base colour between consecutive time steps,
  input and output, opacity-weighted; only when the frames correspond index by index (equal counts).
  The output's should not exceed the input's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import cv2
import numpy as np

from services.common.gaussians import SH_C0, Gaussians, frames_correspond

FOREGROUND_ALPHA = 0.9
"""A pixel is foreground where the input's alpha is at least this (edges blend with the background)."""
CHANGE_MAP_FULL_SCALE = 20.0
"""ΔE shown at the top of the change map's colour scale (and above)."""


def lab(rgb: np.ndarray) -> np.ndarray:
    """``[..., 3]`` uint8 sRGB to ``[..., 3]`` float32 CIELab."""
    flat = rgb.reshape(-1, 1, 3).astype(np.float32) / np.float32(255.0)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel CIE76 ΔE of two ``[..., 3]`` uint8 sRGB arrays: ``[...]`` float32."""
    return np.linalg.norm(lab(a) - lab(b), axis=-1)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 arrays of one shape, 0..255 scale; 99 when equal."""
    mse = float(np.mean((a.astype(np.float64) - b) ** 2)) if a.size else 0.0
    return 99.0 if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def frame_metrics(
    before: np.ndarray, after: np.ndarray, alpha: np.ndarray, unobserved: np.ndarray
) -> dict[str, dict[str, float]]:
    """The source view, observed and unobserved figures of one time step (see the module docstring).

    Args:
        before: ``[V, H, W, 3]`` uint8 the input's views (view 0 is the source).
        after: ``[V, H, W, 3]`` uint8 the repaired asset's views, same cameras.
        alpha: ``[V, H, W]`` float32 the input's coverage.
        unobserved: ``[V, H, W]`` bool, the pixels any ring marked unobserved (none on the source).
    """
    foreground = alpha >= FOREGROUND_ALPHA
    change = delta_e(before, after)
    observed = foreground & ~unobserved
    repaired = foreground & unobserved
    front = foreground[0]
    return {
        "source_view": {
            "foreground_psnr_db": round(psnr(before[0][front], after[0][front]), 2),
            "mean_delta_e": _mean(change[0][front]),
        },
        "observed": {
            "mean_delta_e": _mean(change[observed]),
            "p95_delta_e": round(float(np.percentile(change[observed], 95)), 3) if observed.any() else 0.0,
            "foreground_share": round(float(observed.sum() / max(foreground.sum(), 1)), 4),
        },
        "unobserved": {
            "mean_delta_e": _mean(change[repaired]),
            "foreground_share": round(float(repaired.sum() / max(foreground.sum(), 1)), 4),
        },
    }


def cross_time_delta_e(frames: Sequence[Gaussians]) -> float | None:
    """Mean ΔE of each Gaussian's base colour between consecutive time steps, opacity-weighted.

    Args:
        frames: the T >= 2 time steps of one 4D asset.

    Returns:
        The mean over consecutive pairs, or None when Gaussian i is not one surface point in every
        frame (``frames_correspond``) or there is one frame.
    """
    if len(frames) < 2 or not frames_correspond(frames):
        return None
    colours = [
        np.rint(np.clip(0.5 + SH_C0 * f.sh[:, 0].astype(np.float64), 0, 1) * 255).astype(np.uint8)
        for f in frames
    ]
    weights = 1.0 / (1.0 + np.exp(-frames[0].opacity_logits.astype(np.float64)))
    steps = [
        float(np.average(delta_e(a[:, None], b[:, None])[:, 0], weights=weights))
        for a, b in itertools.pairwise(colours)
    ]
    return round(float(np.mean(steps)), 3)


def change_map(before: np.ndarray, after: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Per-pixel ΔE between the views, as pictures: black (0) through red and yellow to white
    (``CHANGE_MAP_FULL_SCALE`` and above) over the foreground, light grey elsewhere.

    Args:
        before, after: ``[V, H, W, 3]`` uint8; alpha: ``[V, H, W]`` float32 the input's coverage.

    Returns:
        ``[V, H, W, 3]`` uint8.
    """
    change = np.clip(delta_e(before, after) / CHANGE_MAP_FULL_SCALE, 0.0, 1.0)
    scaled = np.rint(change * 255).astype(np.uint8).reshape(-1, 1)
    coloured = cv2.applyColorMap(scaled, cv2.COLORMAP_HOT).reshape(*change.shape, 3)[..., ::-1]
    out = np.full_like(before, 230)
    covered = alpha >= 0.5
    out[covered] = coloured[covered]
    return out


def _mean(values: np.ndarray) -> float:
    return round(float(values.mean()), 3) if values.size else 0.0
