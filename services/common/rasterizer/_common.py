"""What the fast rasterizer and the dense reference share: the result type and argument checks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.cameras import Cameras
from services.common.gaussians import Gaussians


@dataclass(frozen=True, eq=False)
class RenderResult:
    """Images of V views, H x W pixels each.

    Attributes:
        rgb: ``[V, H, W, 3]`` float32 colour composited over the background:
            ``sum_i w_i c_i + T_final * background``.
        alpha: ``[V, H, W]`` float32 coverage ``1 - T_final``, in [0, 1).
        depth: ``[V, H, W]`` float32 expected camera-space depth (world units) of the Gaussian centres,
            ``sum_i w_i z_i / alpha``, 0 where alpha is 0 (gsplat's "ED").
        ids: ``[V, H, W, K]`` int32 indices into the Gaussians of the K contributors with the largest
            compositing weights, by decreasing weight, -1 where a pixel has fewer than K; None when
            K is 0.
        weights: ``[V, H, W, K]`` float32 their compositing weights ``w_i = alpha_i T_i`` (0 where
            unused); None when K is 0.
    """

    rgb: np.ndarray
    alpha: np.ndarray
    depth: np.ndarray
    ids: np.ndarray | None = None
    weights: np.ndarray | None = None


def check_arguments(gaussians: Gaussians, cameras: Cameras, background, contributors: int) -> np.ndarray:
    """Raise ValueError naming the argument at fault; return the background as ``[3]`` float64."""
    if not isinstance(gaussians, Gaussians):
        raise ValueError(f"gaussians must be a Gaussians, got {type(gaussians).__name__}")
    n = len(gaussians)
    shapes = {
        "means": (gaussians.means, (n, 3)),
        "log_scales": (gaussians.log_scales, (n, 3)),
        "quats": (gaussians.quats, (n, 4)),
        "opacity_logits": (gaussians.opacity_logits, (n,)),
    }
    for name, (array, shape) in shapes.items():
        if np.shape(array) != shape:
            raise ValueError(f"gaussians.{name} must have shape {shape}, got {np.shape(array)}")
    sh_shape = np.shape(gaussians.sh)
    if len(sh_shape) != 3 or sh_shape[0] != n or sh_shape[1] not in (1, 4, 9, 16) or sh_shape[2] != 3:
        raise ValueError(f"gaussians.sh must have shape [{n}, K, 3] with K in (1, 4, 9, 16), got {sh_shape}")
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        if not np.all(np.isfinite(getattr(gaussians, name))):
            raise ValueError(f"gaussians.{name} must be finite")
    if n and not np.all(gaussians.log_scales < 80.0):  # exp() overflows float32 beyond ~88
        raise ValueError("gaussians.log_scales must be below 80 (scales of e^80 world units)")
    if n and not np.all(np.einsum("ij,ij->i", gaussians.quats, gaussians.quats) > 0.0):
        raise ValueError("gaussians.quats must be non-zero")

    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a Cameras, got {type(cameras).__name__}")
    v = len(cameras)
    if v < 1 or np.shape(cameras.viewmats) != (v, 4, 4) or np.shape(cameras.Ks) != (v, 3, 3):
        raise ValueError(
            f"cameras must hold viewmats [V, 4, 4] and Ks [V, 3, 3] with V >= 1, "
            f"got {np.shape(cameras.viewmats)} and {np.shape(cameras.Ks)}"
        )
    if not (np.all(np.isfinite(cameras.viewmats)) and np.all(np.isfinite(cameras.Ks))):
        raise ValueError("cameras.viewmats and cameras.Ks must be finite")
    if not (np.all(cameras.Ks[:, 0, 0] > 0) and np.all(cameras.Ks[:, 1, 1] > 0)):
        raise ValueError("cameras.Ks must have positive focal lengths")
    for name in ("width", "height"):
        size = getattr(cameras, name)
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise ValueError(f"cameras.{name} must be a positive int, got {size!r}")

    try:
        bg = np.asarray(background, dtype=np.float64)
    except (TypeError, ValueError):
        bg = np.full(1, np.nan)
    if bg.shape != (3,) or not np.all(np.isfinite(bg)):
        raise ValueError(f"background must be 3 finite numbers, got {background!r}")
    if isinstance(contributors, bool) or not isinstance(contributors, int | np.integer) or contributors < 0:
        raise ValueError(f"contributors must be an int >= 0, got {contributors!r}")
    return bg
