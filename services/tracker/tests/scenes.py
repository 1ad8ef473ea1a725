"""Test scenes for the tracker: spheres of small opaque Gaussians, their renders, and the exact spheres
to compare with (ray casting)."""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.cameras import Cameras, orbit_cameras
from services.common.gaussians import SH_C0, Gaussians
from services.common.rasterizer import rasterize
from services.common.views import Views


def sphere_gaussians(
    n: int = 30_000,
    radius: float = 0.4,
    centre=(0.0, 0.0, 0.0),
    scale: float = 0.007,
    colour=(0.8, 0.8, 0.8),
    colour_negative_x=None,
) -> Gaussians:
    """N isotropic, nearly opaque Gaussians evenly spread (Fibonacci lattice) on a sphere's surface.

    ``colour`` is RGB in [0, 1]; ``colour_negative_x`` paints the half with x below the centre's.
    At the default density (spacing about 0.8 scale) they form a closed, opaque surface.
    """
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    turn = np.pi * (1.0 + 5**0.5) * i
    unit = np.stack([np.cos(turn) * np.sin(polar), np.cos(polar), np.sin(turn) * np.sin(polar)], axis=1)
    colours = np.tile(np.asarray(colour, dtype=np.float64), (n, 1))
    if colour_negative_x is not None:
        colours[unit[:, 0] < 0] = colour_negative_x
    return Gaussians(
        means=(unit * radius + np.asarray(centre)).astype(np.float32),
        log_scales=np.full((n, 3), np.log(scale), dtype=np.float32),
        quats=np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (n, 1)),
        opacity_logits=np.full(n, 5.0, dtype=np.float32),  # opacity 0.993
        sh=((colours - 0.5) / SH_C0)[:, None, :].astype(np.float32),
    )


def merge(*parts: Gaussians) -> Gaussians:
    """One set of Gaussians from several (SH degree 0)."""
    return Gaussians(
        **{
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(Gaussians)
            if f.name != "extra"
        }
    )


def render_views(gaussians: Gaussians, cameras: Cameras) -> Views:
    """Views as the renderer would send them: rgb uint8 over black, alpha, expected depth."""
    result = rasterize(gaussians, cameras)
    rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)
    return Views(rgb, result.alpha, result.depth, cameras)


def orbit_views(gaussians: Gaussians, azimuths, size: int = 96, elevation_deg: float = 0.0) -> Views:
    return render_views(gaussians, orbit_cameras(azimuths, size, size, elevation_deg))


def ray_cast_sphere(
    cameras: Cameras, view: int, radius: float, centre=(0.0, 0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Cast the ray through every pixel centre of one view at an exact sphere.

    Returns:
        hit ``[H, W]`` bool, and ``[H, W, 3]`` float64 the first intersection (NaN where no hit).
    """
    viewmat = cameras.viewmats[view].astype(np.float64)
    K = cameras.Ks[view].astype(np.float64)
    origin = cameras.positions[view].astype(np.float64) - np.asarray(centre, dtype=np.float64)
    ys, xs = np.mgrid[0 : cameras.height, 0 : cameras.width] + 0.5
    rays = np.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], np.ones_like(xs)], axis=-1)
    rays = rays @ viewmat[:3, :3]  # camera to world: R^T d, as row vectors
    rays /= np.linalg.norm(rays, axis=-1, keepdims=True)
    b = rays @ origin
    disc = b * b - (origin @ origin - radius * radius)
    hit = disc > 0
    distance = -b - np.sqrt(np.where(hit, disc, 0.0))
    points = origin + distance[..., None] * rays + np.asarray(centre)
    points[~hit] = np.nan
    return hit, points


def silhouette_radius(alpha: np.ndarray, cameras: Cameras, view: int, threshold: float = 0.5) -> float:
    """The radius of the centred sphere whose projected disc has the area of the view's foreground.

    The renderer's anti-aliasing (gsplat's eps2d low-pass, 0.3 px^2) and the Gaussians' own extent draw
    a sphere of Gaussians about a pixel wider than their centres' sphere; the exact sphere to compare a
    render with is the one with the same silhouette.
    """
    area = float(np.count_nonzero(alpha > threshold))
    distance = float(np.linalg.norm(cameras.positions[view]))
    tan_angle = np.sqrt(area / np.pi) / float(cameras.Ks[view, 0, 0])
    return distance * float(np.sin(np.arctan(tan_angle)))


def plane_views(alphas: np.ndarray, depth: float = 1.5, azimuth_deg: float = 0.0) -> Views:
    """Hand-made views that all share one pose and see a fronto-parallel plane at ``depth``.

    Args:
        alphas: ``[V, H, W]`` coverage of each view (the plane's rgb is a gradient of the pixel position).
    """
    v, h, w = alphas.shape
    ys, xs = np.mgrid[0:h, 0:w]
    rgb = np.stack([xs * 255 // max(w - 1, 1), ys * 255 // max(h - 1, 1), np.full_like(xs, 128)], axis=-1)
    alpha = alphas.astype(np.float32)
    return Views(
        rgb=np.where(alpha[..., None] > 0, rgb, 0).astype(np.uint8),
        alpha=alpha,
        depth=np.where(alpha > 0, depth, 0.0).astype(np.float32),
        cameras=orbit_cameras([azimuth_deg] * v, w, h),
    )
