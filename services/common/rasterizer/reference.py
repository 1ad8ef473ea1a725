"""The dense twin of gsplat's rasterizer: the specification the fast paths are tested against.

Projection, covariances and SH come from gsplat's own pure-PyTorch port (``gsplat.cuda._torch_impl``).
Compositing is dense: every pixel looks at every projected Gaussian, front to back, with gsplat's rules
(``splat_weights``, differentiable). It is slow (O(pixels x Gaussians)) and meant for tests; it needs
torch. Two entry points:

- ``rasterize_reference``: ``services.common.rasterizer.rasterize``'s call, in float64, for the numba path;
- ``rasterization_dense``: ``gsplat.rasterization``'s call, differentiable in the inputs' dtype, for the
  reconstructor's optimiser on a machine without CUDA.

Bounding box: this reference uses the 3.33-sigma per-axis box of ``_fully_fused_projection``, while
gsplat's CUDA kernel (and the fast path) use the tighter opacity-aware box
``min(3.33, sqrt(2 ln(255 opacity))) * sigma``. Both give the same images: outside the tighter box,
alpha < 1/255 for every pixel, so the alpha threshold skips the Gaussian anyway.
"""

from __future__ import annotations

import math

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
SIGMA_CLAMP = 20.0
"""Far from a Gaussian, exp(-sigma) and the running transmittance sink into subnormal floats, which make
CPU arithmetic 10 to 100 times slower. Both are clamped where the value no longer matters: exp(-20) is a
normal float32 far below ``ALPHA_MIN`` (skipped), and a transmittance below ``T_MIN`` ends the pixel."""


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
    """Composite the depth-sorted Gaussians over P pixel centres (``splat_weights``).

    Args:
        pixels: ``[P, 2]`` pixel centres (x, y).
        splat: M depth-sorted Gaussians: ``xy [M, 2]``, ``radii [M, 2]``, ``conic [M, 3]``,
            ``opacity [M]``, ``colour [M, 3]``, ``depth [M]``, ``id [M]`` (index into the input).
        background: ``[3]`` RGB.
        k_top: K, how many top contributors to return.

    Returns:
        rgb ``[P, 3]``, alpha ``[P]``, depth ``[P]``, ids ``[P, K]`` int64, weights ``[P, K]``.
    """
    weights = splat_weights(pixels, splat["xy"], splat["radii"], splat["conic"], splat["opacity"])  # [P, M]
    acc = weights.sum(dim=1)
    rgb = weights @ splat["colour"] + (1.0 - acc)[:, None] * background
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


def splat_weights(
    pixels: torch.Tensor, xy: torch.Tensor, radii: torch.Tensor, conic: torch.Tensor, opacity: torch.Tensor
) -> torch.Tensor:
    """Each pixel's compositing weight of each Gaussian, by gsplat's rules; differentiable.

    Per pixel, gsplat's loop is, front to back::

        if pixel centre outside the box, or sigma < 0, or alpha < 1/255: skip
        next_T = T * (1 - alpha); if next_T <= 1e-4: stop (this Gaussian excluded)
        w = alpha * T; accumulate; T = next_T

    Here all at once: with alpha set to 0 for skipped pairs (a factor of exactly 1), next_T is the
    running product of (1 - alpha), summed in log space; it only decreases, so the Gaussians before the
    stop are exactly those with next_T > ``T_MIN``, and each one's T is the product before it. The
    transmittance left behind a pixel is ``1 - weights.sum(1)``.

    Args:
        pixels: ``[P, 2]`` pixel centres (x, y), pixels.
        xy: ``[M, 2]`` projected centres of M Gaussians sorted front to back, pixels.
        radii: ``[M, 2]`` half-sizes of their boxes, pixels.
        conic: ``[M, 3]`` inverse 2D covariances (a, b, c), 1 / pixels^2.
        opacity: ``[M]`` in (0, 1).

    Returns:
        ``[P, M]`` weights ``alpha * T``, 0 for every Gaussian a pixel skips or never reaches; the
        inputs' dtype.
    """
    offset = xy[None] - pixels[:, None]  # [P, M, 2], Gaussian centre minus pixel centre
    dx, dy = offset.unbind(-1)
    a, b, c = conic.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = torch.clamp_max(opacity * torch.exp(-sigma.clamp_max(SIGMA_CLAMP)), ALPHA_MAX)
    in_box = (offset.abs() <= radii.to(xy.dtype)).all(dim=-1)
    alpha = torch.where(in_box & (sigma >= 0.0) & (alpha >= ALPHA_MIN), alpha, 0.0)
    log_after = torch.cumsum(torch.log1p(-alpha), dim=1).clamp_min(math.log(T_MIN) - 1.0)
    after = torch.exp(log_after)  # T after each Gaussian
    before = torch.cat([torch.ones_like(after[:, :1]), after[:, :-1]], dim=1)
    return torch.where(after > T_MIN, alpha * before, 0.0)


def rasterization_dense(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near_plane: float = NEAR_PLANE,
    far_plane: float = FAR_PLANE,
    eps2d: float = EPS2D,
    sh_degree: int | None = None,
    packed: bool = True,
    backgrounds: torch.Tensor | None = None,
    render_mode: str = "RGB",
    rasterize_mode: str = "classic",
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``gsplat.rasterization``'s CPU reference twin: differentiable, dense, slow; for tests.

    The same call and results for the subset the reconstructor uses: pinhole cameras, classic mode, no batch
    dimensions, SH colours, "RGB" or "RGB+ED". Projection and SH come from gsplat's pure-PyTorch port
    (``gsplat.cuda._torch_impl``); every pixel composites every projected Gaussian front to back with
    gsplat's rules, in the inputs' dtype. Memory and time are O(V x H x W x N). ``packed`` only
    changes gsplat's internal layout and is ignored. The box test uses the 3.33-sigma box (gsplat's
    kernel a tighter, opacity-aware one; outside it alpha < 1/255 anyway).

    Args:
        means: ``[N, 3]`` world positions.
        quats: ``[N, 4]`` rotations (w, x, y, z), any length (normalised here).
        scales: ``[N, 3]`` standard deviations, world units.
        opacities: ``[N]`` in (0, 1).
        colors: ``[N, K, 3]`` SH coefficients.
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV convention.
        Ks: ``[C, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        near_plane, far_plane, eps2d: as gsplat's.
        sh_degree: SH degree to evaluate, (degree + 1) ** 2 <= K.
        backgrounds: ``[C, 3]`` colour behind the splats; None for black.
        render_mode: "RGB", or "RGB+ED" for expected depth in a fourth channel.
        rasterize_mode: "classic".

    Returns:
        colours ``[C, H, W, 3 or 4]``, alphas ``[C, H, W, 1]``, and an empty dict (gsplat's meta).
    """
    if sh_degree is None or rasterize_mode != "classic" or render_mode not in ("RGB", "RGB+ED"):
        raise ValueError(
            "rasterization_dense supports SH colours, rasterize_mode 'classic' and render_mode 'RGB' or "
            f"'RGB+ED', got sh_degree={sh_degree!r}, rasterize_mode={rasterize_mode!r}, "
            f"render_mode={render_mode!r}"
        )
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)  # [N, 3, 3]
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        means, covars, viewmats, Ks, width, height, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane
    )  # radii [C, N, 2] int, means2d [C, N, 2], depths [C, N], conics [C, N, 3]
    campos = torch.linalg.inv(viewmats)[:, :3, 3]  # [C, 3]
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=means.dtype, device=means.device),
        torch.arange(width, dtype=means.dtype, device=means.device),
        indexing="ij",
    )
    pixels = torch.stack([cols.flatten() + 0.5, rows.flatten() + 0.5], dim=-1)  # [H * W, 2]
    if backgrounds is None:
        backgrounds = means.new_zeros(len(viewmats), 3)

    images, coverages = [], []
    for view in range(len(viewmats)):
        shown = torch.nonzero((radii[view] > 0).all(dim=-1)).flatten()
        shown = shown[torch.sort(depths[view, shown], stable=True).indices]  # front to back
        rgb = torch.clamp_min(
            _spherical_harmonics(sh_degree, means[shown] - campos[view], colors[shown]) + 0.5, 0.0
        )  # [M, 3]
        weights = splat_weights(
            pixels, means2d[view, shown], radii[view, shown], conics[view, shown], opacities[shown]
        )  # [P, M]
        coverage = weights.sum(dim=1)  # [P]
        channels = [weights @ rgb + (1.0 - coverage)[:, None] * backgrounds[view]]
        if render_mode == "RGB+ED":
            channels.append((weights @ depths[view, shown] / coverage.clamp_min(1e-10))[:, None])
        images.append(torch.cat(channels, dim=-1).reshape(height, width, -1))
        coverages.append(coverage.reshape(height, width, 1))
    return torch.stack(images), torch.stack(coverages), {}
