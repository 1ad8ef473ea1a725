"""Dense reference rasterizer: the specification the fast CPU path is tested against.

Projection, covariances and SH come from gsplat's own pure-PyTorch port (``gsplat.cuda._torch_impl``),
run in float64. Compositing is dense: every pixel looks at every projected Gaussian, front to back,
with gsplat's rules. It is slow (O(pixels x Gaussians)) and meant for tests only; it needs torch.

Bounding box: this reference uses the 3.33-sigma per-axis box of ``_fully_fused_projection``, while
gsplat's CUDA kernel (and the fast path) use the tighter opacity-aware box
``min(3.33, sqrt(2 ln(255 opacity))) * sigma``. Both give the same images: outside the tighter box,
alpha < 1/255 for every pixel, so the alpha threshold skips the Gaussian anyway.
"""

from __future__ import annotations

import numpy as np
import torch
from gsplat.cuda._torch_impl import (
    _fully_fused_projection,
    _quat_scale_to_covar_preci,
    _spherical_harmonics,
)

from services.common.cameras import Cameras
from services.common.gaussians import Gaussians
from services.common.rasterizer._common import RenderResult, check_arguments
from services.common.rasterizer._numba import (
    ALPHA_MAX,
    ALPHA_MIN,
    EPS2D,
    FAR_PLANE,
    NEAR_PLANE,
    T_MIN,
)

# Pixel x Gaussian pairs per chunk: each [pixels, Gaussians] float64 temporary is then 16 MiB.
_CHUNK_PAIRS = 1 << 21


def rasterize_reference(
    gaussians: Gaussians,
    cameras: Cameras,
    background=(0.0, 0.0, 0.0),
    contributors: int = 0,
) -> RenderResult:
    """Render like ``services.common.rasterizer.rasterize``, densely, in float64.

    Args:
        gaussians: N Gaussians.
        cameras: V views, W x H pixels.
        background: RGB, 3 floats.
        contributors: K top contributors to report per pixel (0: none).

    Returns:
        ``RenderResult``: ``rgb [V, H, W, 3]``, ``alpha [V, H, W]``, ``depth [V, H, W]`` float32;
        ``ids [V, H, W, K]`` int32 and ``weights [V, H, W, K]`` float32 when K > 0.
    """
    bg = torch.from_numpy(check_arguments(gaussians, cameras, background, contributors))
    k_top = int(contributors)
    width, height = int(cameras.width), int(cameras.height)

    def f64(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float64))

    # The activated values gsplat.rasterization() would receive.
    means = f64(gaussians.means)  # [N, 3]
    opacities = f64(gaussians.opacities)  # [N]
    sh = f64(gaussians.sh)  # [N, K, 3]
    covars, _ = _quat_scale_to_covar_preci(f64(gaussians.quats), f64(gaussians.scales), compute_preci=False)

    # Pixel centres, row-major.
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    pixels = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5], dim=-1)  # [H * W, 2]

    outputs = []
    for view in range(len(cameras)):
        viewmat = f64(cameras.viewmats[view : view + 1])  # [1, 4, 4]
        radii, means2d, depths, conics, _ = _fully_fused_projection(
            means,
            covars,
            viewmat,
            f64(cameras.Ks[view : view + 1]),
            width,
            height,
            eps2d=EPS2D,
            near_plane=NEAR_PLANE,
            far_plane=FAR_PLANE,
        )  # radii [1, N, 2] int, means2d [1, N, 2], depths [1, N], conics [1, N, 3]
        campos = torch.inverse(viewmat)[0, :3, 3]
        colours = torch.clamp_min(_spherical_harmonics(gaussians.sh_degree, means - campos, sh) + 0.5, 0.0)

        # Visible Gaussians, front to back (stable: equal depths keep index order).
        visible = torch.nonzero((radii[0] > 0).all(dim=-1)).flatten()
        order = visible[torch.sort(depths[0, visible], stable=True).indices]
        splat = {
            "xy": means2d[0, order],  # [M, 2]
            "radii": radii[0, order].to(torch.float64),  # [M, 2]
            "conic": conics[0, order],  # [M, 3]
            "opacity": opacities[order],  # [M]
            "colour": colours[order],  # [M, 3]
            "depth": depths[0, order],  # [M]
            "id": order,  # [M]
        }
        chunk = max(1, _CHUNK_PAIRS // max(1, len(order)))
        parts = [
            _composite(pixels[start : start + chunk], splat, bg, k_top)
            for start in range(0, len(pixels), chunk)
        ]
        outputs.append([torch.cat(values) for values in zip(*parts, strict=True)])

    def stack(index: int, dtype, *shape: int) -> np.ndarray:
        return (
            torch.stack([out[index] for out in outputs])
            .reshape(len(cameras), height, width, *shape)
            .numpy()
            .astype(dtype)
        )

    return RenderResult(
        rgb=stack(0, np.float32, 3),
        alpha=stack(1, np.float32),
        depth=stack(2, np.float32),
        ids=stack(3, np.int32, k_top) if k_top else None,
        weights=stack(4, np.float32, k_top) if k_top else None,
    )


def _composite(
    pixels: torch.Tensor, splat: dict[str, torch.Tensor], background: torch.Tensor, k_top: int
) -> tuple[torch.Tensor, ...]:
    """Composite the depth-sorted Gaussians over P pixel centres.

    Per pixel, gsplat's loop is, front to back::

        if pixel centre outside the box, or sigma < 0, or alpha < 1/255: skip
        next_T = T * (1 - alpha); if next_T <= 1e-4: stop (this Gaussian excluded)
        w = alpha * T; accumulate; T = next_T

    Here all at once: with alpha set to 0 for skipped pairs (a factor of exactly 1), next_T is the
    running product of (1 - alpha); it only decreases, so the Gaussians before the stop are exactly
    those with next_T > 1e-4, and each one's T is the product before it.

    Args:
        pixels: ``[P, 2]`` pixel centres (x, y).
        splat: M depth-sorted Gaussians: ``xy [M, 2]``, ``radii [M, 2]``, ``conic [M, 3]``,
            ``opacity [M]``, ``colour [M, 3]``, ``depth [M]``, ``id [M]`` (index into the input).
        background: ``[3]`` RGB.
        k_top: K, how many top contributors to return.

    Returns:
        rgb ``[P, 3]``, alpha ``[P]``, depth ``[P]``, ids ``[P, K]`` int64, weights ``[P, K]``.
    """
    dx = splat["xy"][None, :, 0] - pixels[:, None, 0]  # [P, M], Gaussian centre minus pixel centre
    dy = splat["xy"][None, :, 1] - pixels[:, None, 1]
    a, b, c = splat["conic"].unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(splat["opacity"] * torch.exp(-sigma), ALPHA_MAX)
    in_box = (dx.abs() <= splat["radii"][:, 0]) & (dy.abs() <= splat["radii"][:, 1])
    alpha = torch.where(in_box & (sigma >= 0.0) & (alpha >= ALPHA_MIN), alpha, 0.0)

    next_t = torch.cumprod(1.0 - alpha, dim=1)  # [P, M]
    trans = torch.cat([torch.ones_like(next_t[:, :1]), next_t[:, :-1]], dim=1)  # T before each one
    included = (alpha > 0.0) & (next_t > T_MIN)
    weights = torch.where(included, alpha * trans, 0.0)  # [P, M]
    t_final = (
        torch.where(included, next_t, 1.0).min(dim=1).values
        if alpha.shape[1]
        else alpha.new_ones(len(pixels))
    )

    acc = 1.0 - t_final
    rgb = weights @ splat["colour"] + t_final[:, None] * background
    depth_sum = weights @ splat["depth"]
    depth = torch.where(acc > 0.0, depth_sum / torch.where(acc > 0.0, acc, 1.0), 0.0)

    if k_top == 0:
        return rgb, acc, depth, torch.empty(len(pixels), 0, dtype=torch.int64), weights[:, :0]
    # Largest weights first; a stable sort keeps the nearer Gaussian first among equal weights.
    top_w, top_index = torch.sort(weights, dim=1, descending=True, stable=True)
    top_w, top_index = top_w[:, :k_top], top_index[:, :k_top]
    top_ids = torch.where(top_w > 0.0, splat["id"][top_index], -1)
    pad = k_top - top_w.shape[1]  # fewer Gaussians than K
    top_w = torch.nn.functional.pad(top_w, (0, pad), value=0.0)
    top_ids = torch.nn.functional.pad(top_ids, (0, pad), value=-1)
    return rgb, acc, depth, top_ids, top_w
