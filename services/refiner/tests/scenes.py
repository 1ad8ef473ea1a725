"""Small scenes for the refiner's tests: a smooth-coloured card of Gaussians, its views, and
pixel correspondences between views."""

from __future__ import annotations

import numpy as np

from services.common.cameras import Cameras, orbit_cameras, project, unproject
from services.common.gaussians import SH_C0, Gaussians
from services.common.rasterizer import rasterize
from services.common.views import Views


def card(n: int = 6000, half: float = 0.4, sigma: float = 0.02, seed: int = 0) -> Gaussians:
    """N opaque, flat Gaussians (discs) filling the square ``|x|, |y| <= half`` of the plane z = 0, which
    faces the source camera (+z), coloured by a slowly varying function of position, so views from
    nearby azimuths show the same colours at corresponding pixels (up to splatting's order effects).

    Returns:
        Gaussians with ``sh [N, 1, 3]``, base colours in [0.25, 0.75].
    """
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-half, half, size=(n, 2))
    means = np.column_stack([xy, rng.normal(scale=0.002, size=n)])
    colours = 0.5 + 0.25 * np.sin(np.array([0.8, 0.6, 1.0]) * means / half + np.array([0.0, 1.0, 2.0]))
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=np.log(np.tile([sigma, sigma, 0.002], (n, 1))).astype(np.float32),
        quats=np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (n, 1)),
        opacity_logits=np.full(n, np.log(0.9 / 0.1), dtype=np.float32),
        sh=((colours - 0.5) / SH_C0).astype(np.float32)[:, None, :],
    )


def render_views(gaussians: Gaussians, cameras: Cameras, background=(1.0, 1.0, 1.0)) -> Views:
    """Views of ``gaussians`` as the renderer writes them (uint8 rgb, float32 alpha and depth)."""
    result = rasterize(gaussians, cameras, np.asarray(background, dtype=np.float32))
    rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)
    return Views(rgb, result.alpha, result.depth, cameras)


def orbit_views(gaussians: Gaussians, azimuths=(0.0, 30.0, -30.0), size: int = 64, background=(1, 1, 1)):
    """``render_views`` on an orbit (azimuth 0 first: the source view)."""
    return render_views(gaussians, orbit_cameras(list(azimuths), size, size), background)


def tint(views: Views, index: int, offset) -> Views:
    """``views`` with view ``index``'s foreground shifted by ``offset`` (RGB, 0..255 units), in
    proportion to its alpha, so the background stays as it is."""
    rgb = views.rgb.astype(np.float32)
    rgb[index] += views.alpha[index][..., None] * np.asarray(offset, dtype=np.float32)
    rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return Views(rgb, views.alpha, views.depth, views.cameras)


def correspondences(views: Views, a: int, b: int, tolerance: float = 0.02) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of view ``a`` and the pixels of view ``b`` that show the same surface point.

    Every well-covered pixel of ``a`` is unprojected with its depth and projected into ``b``; the pair
    is kept where ``b`` is well covered there and its depth agrees (the point is not hidden in ``b``).

    Returns:
        ``[P, 2]`` int (row, column) in ``a`` and ``[P, 2]`` int in ``b``.
    """
    cams = views.cameras
    rows, cols = np.nonzero(views.alpha[a] > 0.99)
    world = unproject(
        cams.viewmats[a], cams.Ks[a], np.stack([cols + 0.5, rows + 0.5], 1), views.depth[a, rows, cols]
    )
    xy_b, z_b = project(cams.viewmats[b], cams.Ks[b], world)
    col_b, row_b = np.floor(xy_b).astype(int).T
    inside = (col_b >= 0) & (col_b < cams.width) & (row_b >= 0) & (row_b < cams.height)
    rows, cols, row_b, col_b, zb = rows[inside], cols[inside], row_b[inside], col_b[inside], z_b[inside]
    visible = (views.alpha[b, row_b, col_b] > 0.99) & (np.abs(views.depth[b, row_b, col_b] - zb) < tolerance)
    return np.stack([rows, cols], 1)[visible], np.stack([row_b, col_b], 1)[visible]
