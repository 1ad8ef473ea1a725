"""The measures of ``benchmarks.quality``: renders at a framing that fills the view, and colour distances.

Every measure compares two assets through renders from the same cameras, or two assets' Gaussians
index by index; none compares mean colours of whole views (a colour-distribution match would satisfy
that while every pixel is wrong).

- ``MetricFraming``: the similarity that moves an asset's robust centre to the origin and scales its
  robust radius to ``FILL_RADIUS``, so the default orbit camera sees it fill most of the view. It is
  fitted on one asset (the truth, or a control's input) and applied to every asset compared with it.
  It is deliberately not the jobs' framing (``services.common.framing``, part of what is measured).
- ``render_views``: renders on white with the CPU rasterizer.
- ``score``: foreground PSNR (pooled over views), mean per-pixel CIELab Delta E 1976 on the back and the
  front, and the front view's PSNR, of one render set against another.
- ``palette_distance``: how far each pixel is from the nearest colour of a reference image.
- ``new_green_fraction``: pixels that turned lettuce green (hamburger control).
- ``cross_time_delta_e``: how much the Gaussians' base colours change between time steps (4D).

Colours are sRGB in [0, 1] (gamma-encoded, as renders and PNGs hold); CIELab is D65 via OpenCV, L* in
[0, 100]; Delta E is CIE76, the Euclidean distance in CIELab (about 2.3 is a just noticeable
difference; CIEDE2000 would read smaller on saturated colours).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from services.common.cameras import Cameras, orbit_cameras
from services.common.gaussians import SH_C0, Gaussians
from services.common.rasterizer import rasterize

HELD_OUT: tuple[tuple[float, float], ...] = (
    *((float(azimuth), 0.0) for azimuth in range(10, 360, 40)),
    *((float(azimuth), -30.0) for azimuth in range(45, 360, 90)),
)
"""(azimuth, elevation) of the held-out cameras, degrees, LGM convention (elevation -30 is above): every
40 degrees from 10 at elevation 0, each halfway between two views of the job's 20-degree orbit, and
every 90 degrees from 45 at elevation -30."""
FRONT = (0.0, 0.0)
"""The source view: (azimuth, elevation), degrees."""
VIEWS = (*HELD_OUT, FRONT)
"""Every metric render: the held-out views, then the front (its index is ``FRONT_INDEX``)."""
FRONT_INDEX = len(HELD_OUT)
BACK_AZIMUTHS = (130.0, 230.0)
"""A held-out view faces the back when its azimuth is in this range (inclusive), degrees."""
FRONT_AZIMUTHS = (330.0, 30.0)
"""A view faces the front when its azimuth is in this range (inclusive, across 0), degrees."""
SIDE_BACK_AZIMUTHS = (45.0, 315.0)
"""A held-out view shows the sides or the back when its azimuth is in this range (inclusive)."""
FOREGROUND_ALPHA = 0.9
"""A pixel is foreground where the reference render's alpha is at least this: edges blended with the
background are left out of every measure."""
FILL_RADIUS = 0.5
"""World radius the framing scales an asset's robust radius to: seen from the default orbit (radius 1.5,
vertical field of view 49.1°) such a sphere spans about 77% of the view's height."""
BACKGROUND = (1.0, 1.0, 1.0)


def in_azimuths(azimuth: float, bounds: tuple[float, float]) -> bool:
    """Whether ``azimuth`` (degrees) lies in ``[low, high]``, read counter-clockwise (it may cross 0)."""
    low, high = bounds
    return (azimuth - low) % 360.0 <= (high - low) % 360.0


BACK_VIEWS = tuple(i for i, (az, _) in enumerate(VIEWS) if in_azimuths(az, BACK_AZIMUTHS))
FRONT_VIEWS = tuple(i for i, (az, el) in enumerate(VIEWS) if el == 0.0 and in_azimuths(az, FRONT_AZIMUTHS))
SIDE_BACK_VIEWS = tuple(i for i, (az, _) in enumerate(HELD_OUT) if in_azimuths(az, SIDE_BACK_AZIMUTHS))


# ----- framing and renders --------------------------------------------------------------------


@dataclass(frozen=True)
class MetricFraming:
    """``x -> (x - centre) * scale`` on means (scales grow by ``scale``): a similarity, so a render of the
    framed asset from the default orbit is the asset seen from a camera moved and zoomed accordingly."""

    centre: np.ndarray  # [3] world units
    scale: float

    @classmethod
    def fit(cls, gaussians: Gaussians, min_opacity: float = 0.5, quantile: float = 0.97) -> MetricFraming:
        """The framing of ``gaussians``: centre the median of the means of the Gaussians with opacity at
        least ``min_opacity`` (all of them if none is), radius the ``quantile`` of their distances from
        it; both robust to a few stray Gaussians."""
        means = gaussians.means.astype(np.float64)
        solid = gaussians.opacities >= min_opacity
        if solid.any():
            means = means[solid]
        centre = np.median(means, axis=0)
        radius = float(np.quantile(np.linalg.norm(means - centre, axis=1), quantile))
        return cls(centre, FILL_RADIUS / max(radius, 1e-6))

    def apply(self, gaussians: Gaussians) -> Gaussians:
        means = (gaussians.means.astype(np.float64) - self.centre) * self.scale
        return dataclasses.replace(
            gaussians,
            means=means.astype(np.float32),
            log_scales=(gaussians.log_scales + np.float32(np.log(self.scale))).astype(np.float32),
        )


def cameras_at(views: Sequence[tuple[float, float]], resolution: int) -> Cameras:
    """Orbit cameras (default radius and field of view) at ``(azimuth, elevation)`` pairs, degrees."""
    parts = [orbit_cameras([azimuth], resolution, resolution, elevation_deg=el) for azimuth, el in views]
    return Cameras(
        viewmats=np.concatenate([c.viewmats for c in parts]),
        Ks=np.concatenate([c.Ks for c in parts]),
        width=resolution,
        height=resolution,
    )


@dataclass
class Views:
    """Renders of one asset: ``rgb`` ``[V, H, W, 3]`` float32 on white in [0, 1], ``alpha`` ``[V, H, W]``,
    ``lab`` ``[V, H, W, 3]`` float32 CIELab of ``rgb``."""

    rgb: np.ndarray
    alpha: np.ndarray
    lab: np.ndarray

    def uint8(self) -> np.ndarray:
        """``[V, H, W, 3]`` uint8."""
        return np.rint(self.rgb * 255.0).astype(np.uint8)


def render_views(gaussians: Gaussians, framing: MetricFraming, resolution: int, views=VIEWS) -> Views:
    """``gaussians`` framed by ``framing``, seen from ``views`` ((azimuth, elevation) pairs)."""
    result = rasterize(framing.apply(gaussians), cameras_at(views, resolution), background=BACKGROUND)
    rgb = np.clip(result.rgb, 0.0, 1.0)
    return Views(rgb, result.alpha, srgb_to_lab(rgb))


# ----- colour ---------------------------------------------------------------------------------


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELab (D65) of sRGB colours.

    Args:
        rgb: ``[..., 3]`` float sRGB in [0, 1] (gamma-encoded).

    Returns:
        ``[..., 3]`` float32: L* in [0, 100], a* and b* roughly in [-128, 127].
    """
    rgb = np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0)
    flat = np.ascontiguousarray(rgb.reshape(-1, 1, 3))
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def delta_e(lab_a: np.ndarray, lab_b: np.ndarray) -> np.ndarray:
    """CIE76 Delta E: ``[...]`` Euclidean distances between ``[..., 3]`` CIELab colours."""
    return np.linalg.norm(lab_a.astype(np.float64) - lab_b.astype(np.float64), axis=-1)


def base_colours(gaussians: Gaussians) -> np.ndarray:
    """``[N, 3]`` float64: the degree-0 colour ``0.5 + SH_C0 * f_dc``, clipped to [0, 1]."""
    return np.clip(0.5 + SH_C0 * gaussians.sh[:, 0].astype(np.float64), 0.0, 1.0)


# ----- scores ---------------------------------------------------------------------------------


def psnr(squared_error_sum: float, count: int) -> float:
    """``10 log10(1 / MSE)`` dB; 99 when the MSE is 0."""
    mse = squared_error_sum / max(count, 1)
    return 99.0 if mse == 0.0 else float(10.0 * np.log10(1.0 / mse))


@dataclass
class Score:
    """One asset's renders against a reference asset's (the truth, or a control's input).

    Attributes:
        psnr: foreground PSNR, dB, over every held-out view's foreground pixels pooled (one MSE).
        back_delta_e: mean per-pixel Delta E 1976 over the foreground pixels of the held-out views facing
            back (azimuth in ``BACK_AZIMUTHS``).
        front_delta_e: the same over the views facing front (azimuth in ``FRONT_AZIMUTHS`` at elevation 0,
            the front view included).
        front_psnr: foreground PSNR, dB, of the front view (azimuth 0, elevation 0).
    """

    psnr: float
    back_delta_e: float
    front_delta_e: float
    front_psnr: float


def score(views: Views, reference: Views) -> Score:
    """``views`` against ``reference`` (renders from ``VIEWS``); foreground where the reference's alpha is
    at least ``FOREGROUND_ALPHA``; RGB in [0, 1]."""
    foreground = reference.alpha >= FOREGROUND_ALPHA
    squared = ((views.rgb.astype(np.float64) - reference.rgb) ** 2).sum(axis=-1)  # [V, H, W]
    held = foreground[:FRONT_INDEX]
    pooled = psnr(float(squared[:FRONT_INDEX][held].sum()), 3 * int(held.sum()))
    front = foreground[FRONT_INDEX]
    front_psnr = psnr(float(squared[FRONT_INDEX][front].sum()), 3 * int(front.sum()))
    distances = delta_e(views.lab, reference.lab)  # [V, H, W]

    def mean_over(indices: Sequence[int]) -> float:
        return float(distances[list(indices)][foreground[list(indices)]].mean())

    return Score(pooled, mean_over(BACK_VIEWS), mean_over(FRONT_VIEWS), front_psnr)


def palette_distance(lab: np.ndarray, palette_lab: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """``[P]``: the Delta E 1976 of each of ``[P, 3]`` CIELab colours to the nearest of ``[Q, 3]``."""
    palette = palette_lab.astype(np.float32)
    out = np.empty(len(lab))
    for start in range(0, len(lab), chunk):
        part = lab[start : start + chunk].astype(np.float32)
        d2 = (part**2).sum(1)[:, None] - 2.0 * part @ palette.T + (palette**2).sum(1)[None]
        out[start : start + chunk] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


def reference_palette(rgba: np.ndarray, step: float = 6.0, min_share: float = 0.005) -> np.ndarray:
    """``[Q, 3]`` CIELab: the main colours of a straight-alpha RGBA image's foreground (alpha >= 0.9).

    The foreground's CIELab colours are binned on a grid of ``step`` units; the palette is the centres
    of the bins that hold at least ``min_share`` of the foreground, so rare colours (a highlight, an
    edge) do not count as the subject's. On monkey_lgm, the input's own front view lies 3.9 from its
    reference's palette and its drifted blue-grey back 19.4.
    """
    foreground = rgba[..., 3] >= round(FOREGROUND_ALPHA * 255)
    lab = srgb_to_lab(rgba[..., :3][foreground].astype(np.float32) / 255.0)
    bins, counts = np.unique(np.round(lab / step), axis=0, return_counts=True)
    return (bins[counts >= min_share * len(lab)] * step).astype(np.float32)


GREEN_HUE_DEG = (65.0, 160.0)
"""HSV hue range of lettuce green, degrees (yellow is 60, green 120, cyan 180)."""
GREEN_MIN_SATURATION = 0.35
GREEN_MIN_VALUE = 0.2


def is_green(rgb: np.ndarray) -> np.ndarray:
    """``[...]`` bool: HSV hue in ``GREEN_HUE_DEG``, saturation and value at least the minimums."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3).astype(np.float32)), cv2.COLOR_RGB2HSV)
    hue, saturation, value = hsv[:, 0, 0], hsv[:, 0, 1], hsv[:, 0, 2]  # degrees, [0, 1], [0, 1]
    green = (
        (hue >= GREEN_HUE_DEG[0])
        & (hue <= GREEN_HUE_DEG[1])
        & (saturation >= GREEN_MIN_SATURATION)
        & (value >= GREEN_MIN_VALUE)
    )
    return green.reshape(rgb.shape[:-1])


def new_green_fraction(views: Views, reference: Views, indices: Sequence[int]) -> float:
    """The fraction of foreground pixels in the top and bottom thirds of the views ``indices`` that are
    green in ``views`` and were not in ``reference`` (the thirds of each view's foreground rows, from
    the reference's foreground: alpha >= ``FOREGROUND_ALPHA``)."""
    new = total = 0
    for i in indices:
        foreground = reference.alpha[i] >= FOREGROUND_ALPHA
        rows = np.flatnonzero(foreground.any(axis=1))
        if rows.size == 0:
            continue
        top, bottom = rows[0], rows[-1] + 1
        third = (bottom - top) / 3.0
        band = np.zeros_like(foreground)
        band[top : round(top + third)] = True
        band[round(bottom - third) : bottom] = True
        region = foreground & band
        turned = is_green(views.rgb[i]) & ~is_green(reference.rgb[i]) & region
        new += int(turned.sum())
        total += int(region.sum())
    return new / max(total, 1)


def cross_time_delta_e(frames: Sequence[Gaussians], weights: np.ndarray, which: np.ndarray) -> float:
    """Mean Delta E 1976 of each Gaussian's base colour between consecutive time steps.

    Args:
        frames: T >= 2 time steps of the same N Gaussians, index by index.
        weights: ``[N]`` >= 0 (here: opacity).
        which: ``[N]`` bool, the Gaussians counted.

    Returns:
        ``sum_t sum_i w_i dE(c_i(t), c_i(t+1)) / ((T - 1) sum_i w_i)`` over the counted Gaussians.
    """
    labs = [srgb_to_lab(base_colours(g).astype(np.float32)) for g in frames]
    w = np.where(which, weights, 0.0).astype(np.float64)
    steps = [float((delta_e(a, b) * w).sum() / max(w.sum(), 1e-12)) for a, b in itertools.pairwise(labs)]
    return float(np.mean(steps))
