"""Framing: where the orbit looks and how far it stands, fitted to the asset, and the checks that
refuse an asset the orbit cannot see. The one owner of these facts.

LGM's convention (an orbit of radius 1.5 around the origin) assumes what LGM makes: an object centred
near the origin with an extent of about 1. Other assets are not there. An off-centre asset of extent
0.2 (``donut_unnormalized_quats.ply``) covers 2% of a default view; a flat label 2.2 units from the
origin (``fruit_drops_full_sh.ply``) leaves 13 of 18 views empty with the cameras among the scene. A
repair of such views "succeeds" and means nothing, so the orbit is fitted, or the job refused.

The fit (``fit_framing``), from the means of the visible Gaussians (opacity at least ``MIN_OPACITY``),
each weighted by its opacity; for 4D all time steps together (one orbit for the whole asset: the
camera does not zoom between time steps):
1. Centre: the middle of the robust bounding box, per axis the midpoint of the weighted
   ``1 - QUANTILE`` and ``QUANTILE`` quantiles of the means. Not the (weighted) median or mean: they
   lean toward where the Gaussians are dense (the monkey's median is 0.13 in front of its box's
   middle, toward its face), which pushes the silhouette off-centre in the side views; the box's
   middle balances every view.
2. Radius: a view has unit vectors ``b`` (centre to camera), ``r`` (right) and ``u`` (up). A point
   at offset ``q`` from the centre, of reach ``s = SIZE_SIGMAS * (largest standard deviation)``,
   projects inside the share ``FILL`` of the half frame (``t = tan(fovy / 2)``) when the distance
   ``d`` of the camera from the centre satisfies

       d >= q·b + (max(|q·r|, |q·u|) + s) / (FILL * t)

   The radius is the largest, over the orbit's views, of the weighted ``QUANTILE`` of that bound
   over the points: in the view where the asset is largest, its robust silhouette spans ``FILL`` of
   the frame's height or width, and ``1 - FILL`` is the margin. The robust bounding sphere
   (``extent * sqrt(1 + 1 / (FILL * t)**2)``) would stand farther off than any view needs: 1.64
   against 1.54 for the monkey, 1.59 against 1.38 for the hamburger.
3. Extent (for the record and the checks): the robust bounding sphere's radius, the weighted
   ``QUANTILE`` of ``|q| + s``.

The checks (``Framing.problems``; ``Framing.require`` raises them, or returns them as warnings), each
a sentence with its numbers:
- empty: no Gaussian has an opacity of at least ``MIN_OPACITY`` (``FailedPrecondition`` from
  ``fit_framing`` at once: there is nothing to frame or repair, and ``force`` does not change that);
- flat or thin: the thinnest principal span of the weighted means (``principal_spans``: the span of
  the middle half of the opacity along the axis) is below ``MIN_THICKNESS_RATIO`` of the widest (a
  card or a stick, not an object): the views in its plane see it edge-on;
- camera inside: more than ``MAX_BEHIND_FRACTION`` of the asset's opacity lies behind a camera (the
  camera is inside the asset, or the asset is outside the orbit): only a pinned framing does this;
- nearly empty views: the asset covers less than ``MIN_VIEW_COVERAGE`` of a view's frame, measured by
  a coarse splat of the means (``view_coverage``, ``COVERAGE_GRID`` pixels a side), no render needed.

Measured on the real assets (``/work/shared/data/assets``): the thinnest over the widest principal
span, and the share of the frame the CPU rasterizer covers (alpha > 0.5, mean over the 18 views of
the default 20-degree orbit, 128 pixels), at LGM's orbit and at the fitted one:

    asset                      thinnest/widest     coverage, LGM -> fitted   fitted radius
    monkey_lgm                 0.548 (0.26/0.47)   0.29 -> 0.27              1.54
    hamburger_lgm              0.720 (0.39/0.54)   0.47 -> 0.57              1.38
    donut_unnormalized_quats   0.432 (0.046/0.11)  0.020 -> 0.43            0.29
    fruit_drops_full_sh        0.037 (0.008/0.22)  0.005, 13 views empty     refused: flat

So ``MIN_THICKNESS_RATIO = 0.15`` lies a factor of 4 above the card and 2.9 below the flattest
object (the donut). The middle half, not the 1st to 99th percentile, measures the spans because
the label has droplets standing off its face: over 1-99% its ratio is 0.21, too close to the donut's
0.42 to separate them with a margin.

Units: world units for positions and lengths, degrees for angles. Shapes: ``[N, 3]`` means, ``[3]``
centres, ``[V]`` per-view values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from services.common.cameras import DEFAULT_FOVY_DEG, Cameras, orbit_cameras, project_points
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.gaussians import Gaussians

MIN_OPACITY = 0.05  # a Gaussian fainter than this is not part of what the views show
QUANTILE = 0.99  # robust extremes: the outermost 1% of the opacity (floaters) is left out
SIZE_SIGMAS = 2.0  # a Gaussian's visible reach, in standard deviations of its largest axis
FILL = 0.88  # the robust silhouette's share of the frame (height or width), in its largest view
THICKNESS_QUANTILES = (0.25, 0.75)  # a principal span holds the middle half of the opacity
MIN_THICKNESS_RATIO = 0.15  # thinnest / widest principal span below this: a card or a stick
MAX_BEHIND_FRACTION = 0.01  # share of the opacity behind a camera above this: the camera is inside
MIN_VIEW_COVERAGE = 0.01  # share of a view's frame the asset must cover, or the view is "empty"
COVERAGE_GRID = 64  # cells a side of the coarse splat that measures coverage
MAX_FOOTPRINT_CELLS = 4  # a splat's disc in the coarse grid is at most this radius, in cells
MAX_POINTS = 100_000  # Gaussians used (an even subsample beyond this): the cost stays bounded
FIT_AZIMUTHS_DEG = tuple(float(a) for a in range(0, 360, 10))  # the views a fit frames by default


@dataclass(frozen=True, eq=False)
class Framing:
    """An orbit fitted to an asset (or pinned), and what it sees.

    Attributes:
        center: ``[3]`` float64, the orbit's target point, world units.
        radius: distance of the cameras from ``center``, world units.
        extent: radius of the asset's robust bounding sphere around ``center``, world units.
        asset_center: ``[3]`` float64, the middle of the asset's robust bounding box (the fitted
            centre, whether or not the orbit's is pinned), world units.
        asset_extent: the robust bounding sphere's radius around ``asset_center``, world units.
        thinnest, widest: the asset's thinnest and widest principal spans, world units
            (``principal_spans``).
        azimuths_deg: ``[V]`` float64, the views checked, degrees.
        elevation_deg: the orbit's elevation, degrees (LGM sign).
        fovy_deg: the vertical field of view, degrees.
        coverage: ``[V]`` float64, the share of each view's frame the asset covers (``view_coverage``).
        behind: ``[V]`` float64, the share of the asset's opacity behind each camera.
        pinned: True when the caller gave the centre or the radius.
        problems: the failed checks, one sentence each; empty when the orbit sees the asset well.
    """

    center: np.ndarray
    radius: float
    extent: float
    asset_center: np.ndarray
    asset_extent: float
    thinnest: float
    widest: float
    azimuths_deg: np.ndarray
    elevation_deg: float
    fovy_deg: float
    coverage: np.ndarray
    behind: np.ndarray
    pinned: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def thickness_ratio(self) -> float:
        """``thinnest / widest`` in [0, 1]; 0 when every visible Gaussian sits at one point."""
        return self.thinnest / self.widest if self.widest > 0 else 0.0

    def require(self, force: bool = False) -> list[str]:
        """The problems, as warnings, when there are none or ``force``; otherwise raise.

        Raises:
            FailedPrecondition: the problems' sentences, and how to go ahead anyway.
        """
        if self.problems and not force:
            raise FailedPrecondition(
                "The orbit cannot frame this asset. "
                + " ".join(self.problems)
                + " Set `force` (`tire run --force`) to repair it anyway."
            )
        return list(self.problems)


@dataclass(frozen=True, eq=False)
class VisiblePoints:
    """The visible Gaussians of one or more frames, reduced to what framing needs.

    Attributes:
        means: ``[P, 3]`` float64 world positions.
        sizes: ``[P]`` float64 reach, ``SIZE_SIGMAS`` times the largest standard deviation, world units.
        weights: ``[P]`` float64 opacities in [MIN_OPACITY, 1).
    """

    means: np.ndarray
    sizes: np.ndarray
    weights: np.ndarray


def visible_points(frames: Gaussians | Sequence[Gaussians]) -> VisiblePoints:
    """The Gaussians of ``frames`` (one, or the time steps of a 4D asset) with opacity >= MIN_OPACITY.

    Beyond ``MAX_POINTS`` visible Gaussians, an even subsample (every k-th) is kept.

    Raises:
        FailedPrecondition: no Gaussian of any frame is visible.
    """
    frames = [frames] if isinstance(frames, Gaussians) else list(frames)
    if not frames:
        raise InvalidArgument("frames", [], "must hold at least one frame")
    means, sizes, weights = [], [], []
    for g in frames:
        opacity = g.opacities.astype(np.float64)
        keep = opacity >= MIN_OPACITY
        means.append(g.means[keep].astype(np.float64))
        sizes.append(SIZE_SIGMAS * np.exp(g.log_scales[keep].astype(np.float64).max(axis=1)))
        weights.append(opacity[keep])
    visible = sum(len(w) for w in weights)
    if visible == 0:
        total = sum(len(g) for g in frames)
        best = max(float(g.opacities.max()) for g in frames)
        raise FailedPrecondition(
            f"The asset is empty: none of its {total} Gaussians has an opacity of at least "
            f"{MIN_OPACITY:g} (the largest is {best:.3g}), so no view would show anything to repair."
        )
    stride = -(-visible // MAX_POINTS)
    return VisiblePoints(
        np.concatenate(means)[::stride], np.concatenate(sizes)[::stride], np.concatenate(weights)[::stride]
    )


def fit_framing(
    frames: Gaussians | Sequence[Gaussians],
    azimuths_deg: Sequence[float] = FIT_AZIMUTHS_DEG,
    elevation_deg: float = 0.0,
    fovy_deg: float = DEFAULT_FOVY_DEG,
    *,
    center: Sequence[float] | None = None,
    radius: float | None = None,
) -> Framing:
    """Fit the orbit to the asset (the parts not pinned), and check what it sees.

    Args:
        frames: the asset: one ``Gaussians`` (3D) or one per time step (4D, framed together).
        azimuths_deg: ``[V]`` the orbit's views, degrees: the radius frames these, the checks
            measure these.
        elevation_deg: the orbit's elevation, degrees, LGM sign (negative is above).
        fovy_deg: vertical field of view, degrees (square views).
        center: ``[3]`` world units, pinned; None fits it.
        radius: world units, pinned; None fits it.

    Returns:
        The framing, with ``problems`` listing the failed checks (see the module docstring).

    Raises:
        FailedPrecondition: the asset is empty (no visible Gaussian).
        InvalidArgument: a pinned centre that is not 3 finite values, a pinned radius that is not
            finite and positive, no azimuths or a bad field of view.
    """
    azimuths = np.asarray(azimuths_deg, dtype=np.float64).reshape(-1)
    if azimuths.size == 0 or not np.isfinite(azimuths).all():
        raise InvalidArgument("azimuths_deg", azimuths.tolist(), "must hold at least one finite azimuth")
    if not (np.isfinite(fovy_deg) and 1.0 <= fovy_deg <= 170.0):
        raise InvalidArgument("fovy_deg", fovy_deg, "must be within [1, 170] degrees")
    if center is not None:
        center = np.asarray(center, dtype=np.float64).reshape(-1)
        if center.size != 3 or not np.isfinite(center).all():
            raise InvalidArgument("framing.center", center.tolist(), "must hold 3 finite values (x, y, z)")
    if radius is not None and not (np.isfinite(radius) and radius > 0):
        raise InvalidArgument("framing.radius", radius, "must be a finite positive distance")
    pinned = center is not None or radius is not None
    points = visible_points(frames)

    # 1. The centre: the middle of the robust bounding box.
    low = [weighted_quantile(points.means[:, i], points.weights, 1.0 - QUANTILE) for i in range(3)]
    high = [weighted_quantile(points.means[:, i], points.weights, QUANTILE) for i in range(3)]
    asset_center = (np.asarray(low) + np.asarray(high)) / 2.0
    asset_extent = _extent(points, asset_center)
    if center is None:
        center = asset_center
    offsets = points.means - center

    # 2. The radius: the robust silhouette fills FILL of the frame in its largest view.
    right, up, back = _view_axes(azimuths, elevation_deg)
    if radius is None:
        t = np.tan(np.deg2rad(fovy_deg) / 2.0)
        lateral = np.maximum(np.abs(offsets @ right.T), np.abs(offsets @ up.T))  # [P, V]
        needed = offsets @ back.T + (lateral + points.sizes[:, None]) / (FILL * t)  # [P, V]
        radius = max(weighted_quantile(column, points.weights, QUANTILE) for column in needed.T)
        radius = max(float(radius), 1e-6)

    # 3. What the orbit sees.
    depth = radius - offsets @ back.T  # [P, V] camera-space depth of every point in every view
    behind = (points.weights[:, None] * (depth <= 0.0)).sum(axis=0) / points.weights.sum()
    cameras = orbit_cameras(azimuths, COVERAGE_GRID, COVERAGE_GRID, elevation_deg, radius, fovy_deg, center)
    thinnest, widest = principal_spans(points, asset_center, asset_extent)
    framing = Framing(
        center=np.asarray(center, dtype=np.float64),
        radius=float(radius),
        extent=_extent(points, center),
        asset_center=asset_center,
        asset_extent=asset_extent,
        thinnest=thinnest,
        widest=widest,
        azimuths_deg=azimuths,
        elevation_deg=float(elevation_deg),
        fovy_deg=float(fovy_deg),
        coverage=view_coverage(points, cameras),
        behind=behind,
        pinned=pinned,
    )
    return dataclasses.replace(framing, problems=_problems(framing))


def _problems(framing: Framing) -> list[str]:
    """The failed checks of ``framing``, one sentence each (see the module docstring)."""
    problems = []
    ratio = framing.thickness_ratio
    if ratio < MIN_THICKNESS_RATIO:
        problems.append(
            f"The asset is flat or thin (a card or a stick, not an object): the middle half of its "
            f"Gaussians spans {framing.thinnest:.3g} along its thinnest axis against {framing.widest:.3g} "
            f"along its widest (ratio {ratio:.3f}, below {MIN_THICKNESS_RATIO:g}), so the views in its plane "
            f"see it edge-on."
        )
    orbit = f"orbit centre {_vector(framing.center)}, radius {framing.radius:.3g}"
    asset = f"the asset's centre is {_vector(framing.asset_center)}, extent {framing.asset_extent:.3g}"
    inside = framing.behind > MAX_BEHIND_FRACTION
    if inside.any():
        problems.append(
            f"The camera is inside the asset or past it at {_azimuths(framing.azimuths_deg[inside])}: up "
            f"to {framing.behind.max():.0%} of the asset's opacity lies behind it ({orbit}; {asset})."
        )
    empty = framing.coverage < MIN_VIEW_COVERAGE
    if empty.any():
        problems.append(
            f"{int(empty.sum())} of {len(empty)} views would be (nearly) empty: at "
            f"{_azimuths(framing.azimuths_deg[empty])} the asset covers less than {MIN_VIEW_COVERAGE:.0%} "
            f"of the frame (least {framing.coverage.min():.1%}; {orbit}; {asset})."
        )
    return problems


def _extent(points: VisiblePoints, center: np.ndarray) -> float:
    """The robust bounding sphere's radius around ``center``: weighted QUANTILE of ``|q| + size``."""
    reach = np.linalg.norm(points.means - center, axis=1) + points.sizes
    return weighted_quantile(reach, points.weights, QUANTILE)


def principal_spans(points: VisiblePoints, center: np.ndarray, extent: float) -> tuple[float, float]:
    """The thinnest and the widest principal span of the weighted means, world units.

    The principal axes are those of the weighted covariance of the means within the robust bounding
    sphere (``extent`` around ``center``: floaters left out). An axis's span holds the middle half
    of the opacity along it (``THICKNESS_QUANTILES``): a card with droplets in front of it is thin
    where most of it is, though its full span is not.

    Returns:
        (thinnest, widest), world units.
    """
    offsets = points.means - center
    inside = np.linalg.norm(offsets, axis=1) <= extent
    if inside.sum() < 4:
        inside[:] = True
    q, w = offsets[inside], points.weights[inside]
    d = q - (w[:, None] * q).sum(axis=0) / w.sum()
    _, axes = np.linalg.eigh((w[:, None] * d).T @ d / w.sum())
    along = d @ axes  # [P, 3]
    lo, hi = THICKNESS_QUANTILES
    spans = [weighted_quantile(a, w, hi) - weighted_quantile(a, w, lo) for a in along.T]
    return float(min(spans)), float(max(spans))


def view_coverage(points: VisiblePoints, cameras: Cameras) -> np.ndarray:
    """The share of each view's frame the points cover, by a coarse splat (no render).

    Each point is a disc of radius ``size * focal / depth`` pixels (rounded, at most
    ``MAX_FOOTPRINT_CELLS``); a pixel is covered where the discs over it reach an opacity of one half,
    ``sum(-log(1 - opacity)) >= log 2``, a disc smaller than a pixel adding its share of the pixel's
    area. Points behind a camera do not count. Measured against the CPU rasterizer's alpha > 0.5 on
    the real assets, it is within 0.1 of the rendered share (a little above: sizes are 2 sigma).

    Args:
        cameras: V views; coarse ones (``COVERAGE_GRID`` pixels a side) are plenty.

    Returns:
        ``[V]`` float64 in [0, 1].
    """
    views, height, width, pad = len(cameras), cameras.height, cameras.width, MAX_FOOTPRINT_CELLS
    pixels, depth = project_points(cameras, points.means)  # [V, P, 2], [V, P]
    front = depth > 1e-9
    focal = cameras.Ks[:, 1, 1].astype(np.float64)[:, None]
    reach = np.where(front, points.sizes * focal / np.where(front, depth, 1.0), 0.0)
    reach = np.minimum(reach, MAX_FOOTPRINT_CELLS)
    optical = -np.log1p(-np.clip(points.weights, 0.0, 0.999))
    deposit = optical * np.minimum(1.0, np.pi * reach**2)  # [V, P]
    disc = np.rint(reach).astype(np.int64)
    col = np.floor(np.clip(pixels[..., 0], -pad - 1, width + pad)).astype(np.int64) + pad
    row = np.floor(np.clip(pixels[..., 1], -pad - 1, height + pad)).astype(np.int64) + pad
    rows, cols = height + 2 * pad, width + 2 * pad
    view = np.broadcast_to(np.arange(views)[:, None], disc.shape)
    total = np.zeros((views, rows, cols))
    for k in range(MAX_FOOTPRINT_CELLS + 1):
        # A disc of radius k centred in the padded grid stays inside it.
        hit = front & (disc == k) & (row >= pad - k) & (row < pad + height + k)
        hit &= (col >= pad - k) & (col < pad + width + k)
        if not hit.any():
            continue
        cells = (view[hit] * rows + row[hit]) * cols + col[hit]
        grid = np.bincount(cells, weights=deposit[hit], minlength=views * rows * cols)
        grid = grid.reshape(views, rows, cols)
        for dy in range(-k, k + 1):
            for dx in range(-k, k + 1):
                if dx * dx + dy * dy <= k * k:
                    total[:, max(dy, 0) : rows + min(dy, 0), max(dx, 0) : cols + min(dx, 0)] += grid[
                        :, max(-dy, 0) : rows - max(dy, 0), max(-dx, 0) : cols - max(dx, 0)
                    ]
    covered = total[:, pad : pad + height, pad : pad + width] >= np.log(2.0)
    return covered.mean(axis=(1, 2)).astype(np.float64)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The value below which the share ``q`` of the total weight lies.

    Args:
        values, weights: ``[P]``; weights non-negative with a positive sum.
    """
    order = np.argsort(values)
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(values[order][min(index, len(values) - 1)])


def _view_axes(azimuths_deg: np.ndarray, elevation_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit right, up and backward (centre to camera) vectors of each orbit view, ``[V, 3]`` each.

    Read from the cameras' rotations (rows of an OpenCV world-to-camera rotation are the camera's x
    right, y down and z forward axes in world coordinates), so the convention stays in ``cameras``.
    """
    rotation = orbit_cameras(azimuths_deg, 1, 1, elevation_deg).viewmats[:, :3, :3].astype(np.float64)
    return rotation[:, 0], -rotation[:, 1], -rotation[:, 2]


def _vector(v: np.ndarray) -> str:
    return "(" + ", ".join(f"{x:.3f}" for x in v) + ")"


def _azimuths(values: np.ndarray) -> str:
    listed = ", ".join(f"{a:g}" for a in values[:8]) + (", ..." if len(values) > 8 else "")
    return f"azimuth{'s' if len(values) > 1 else ''} {listed} degrees"
