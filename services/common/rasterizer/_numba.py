"""Numba kernels of the tile-based CPU rasterizer, following gsplat 1.5.3's CUDA kernels.

Everything is computed in float64 from the float32 inputs. gsplat's kernels run in float32, but the
alpha threshold (1/255) is a discontinuity: in float32, a pixel whose alpha lies within rounding of it
flips between "skipped" and "composited" (an error of up to 1/255), so float64 is what lets this path
agree with the float64 reference to 1e-3 on every pixel.

The constants below are read by the kernels at compile time. Numba's cache is keyed on this file,
so they live here (and not in another module) to keep the cache from going stale when one changes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

TILE_SIZE = 16
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3  # low-pass filter added to the 2D covariance's diagonal, pixels^2
ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: fainter contributions are skipped
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring its transmittance to this or below
EXTEND_MAX = 3.33  # gsplat's bounding box half-size in standard deviations, before the opacity bound

# Margin on the shortcut "sigma > log(255 * opacity) => alpha < 1/255": the shortcut must never skip
# a pair that the exact test (computing alpha) would keep; exp/log are accurate to ~1e-16.
_SIGMA_MARGIN = 1e-9
# Margin (pixels) when intersecting a row with the sigma <= sigma_max ellipse; the per-pixel test is
# exact, so the margin only adds a few tested pixels.
_ROW_MARGIN = 1e-6


@njit(cache=True, parallel=True)
def covariances_3d(quats: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """World-space covariances R S S R^T, as gsplat's ``quat_scale_to_covar_preci``.

    Args:
        quats: ``[N, 4]`` (w, x, y, z), normalised here.
        scales: ``[N, 3]`` activated standard deviations, world units.

    Returns:
        ``[N, 3, 3]`` float64, world units^2.
    """
    n = quats.shape[0]
    covars = np.empty((n, 3, 3))
    for g in prange(n):
        w, x, y, z = (float(quats[g, 0]), float(quats[g, 1]), float(quats[g, 2]), float(quats[g, 3]))
        inv_norm = 1.0 / math.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w * inv_norm, x * inv_norm, y * inv_norm, z * inv_norm
        sx, sy, sz = float(scales[g, 0]), float(scales[g, 1]), float(scales[g, 2])
        # Columns of M = R S; the covariance is M M^T.
        m00, m01, m02 = (
            (1.0 - 2.0 * (y * y + z * z)) * sx,
            2.0 * (x * y - w * z) * sy,
            2.0 * (x * z + w * y) * sz,
        )
        m10, m11, m12 = (
            2.0 * (x * y + w * z) * sx,
            (1.0 - 2.0 * (x * x + z * z)) * sy,
            2.0 * (y * z - w * x) * sz,
        )
        m20, m21, m22 = (
            2.0 * (x * z - w * y) * sx,
            2.0 * (y * z + w * x) * sy,
            (1.0 - 2.0 * (x * x + y * y)) * sz,
        )
        covars[g, 0, 0] = m00 * m00 + m01 * m01 + m02 * m02
        covars[g, 0, 1] = covars[g, 1, 0] = m00 * m10 + m01 * m11 + m02 * m12
        covars[g, 0, 2] = covars[g, 2, 0] = m00 * m20 + m01 * m21 + m02 * m22
        covars[g, 1, 1] = m10 * m10 + m11 * m11 + m12 * m12
        covars[g, 1, 2] = covars[g, 2, 1] = m10 * m20 + m11 * m21 + m12 * m22
        covars[g, 2, 2] = m20 * m20 + m21 * m21 + m22 * m22
    return covars


@njit(cache=True, inline="always")
def _sh_colour(sh: np.ndarray, g: int, degree: int, x: float, y: float, z: float, out: np.ndarray) -> None:
    """``out[:] = max(0, 0.5 + sum_k sh[g, k] * Y_k(x, y, z))``, gsplat's SH basis and signs.

    ``(x, y, z)`` is the unit direction from the camera centre to the Gaussian.
    """
    for ch in range(3):
        out[ch] = 0.2820947917738781 * sh[g, 0, ch]
    if degree >= 1:
        for ch in range(3):
            out[ch] += 0.48860251190292 * (-y * sh[g, 1, ch] + z * sh[g, 2, ch] - x * sh[g, 3, ch])
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        b4 = 0.5462742152960395 * s1
        b5 = tmp_b * y
        b6 = 0.9461746957575601 * z2 - 0.3153915652525201
        b7 = tmp_b * x
        b8 = 0.5462742152960395 * c1
        for ch in range(3):
            out[ch] += (
                b4 * sh[g, 4, ch]
                + b5 * sh[g, 5, ch]
                + b6 * sh[g, 6, ch]
                + b7 * sh[g, 7, ch]
                + b8 * sh[g, 8, ch]
            )
        if degree >= 3:
            tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
            tmp_b3 = 1.445305721320277 * z
            c2 = x * c1 - y * s1
            s2 = x * s1 + y * c1
            b9 = -0.5900435899266435 * s2
            b10 = tmp_b3 * s1
            b11 = tmp_c * y
            b12 = z * (1.865881662950577 * z2 - 1.119528997770346)
            b13 = tmp_c * x
            b14 = tmp_b3 * c1
            b15 = -0.5900435899266435 * c2
            for ch in range(3):
                out[ch] += (
                    b9 * sh[g, 9, ch]
                    + b10 * sh[g, 10, ch]
                    + b11 * sh[g, 11, ch]
                    + b12 * sh[g, 12, ch]
                    + b13 * sh[g, 13, ch]
                    + b14 * sh[g, 14, ch]
                    + b15 * sh[g, 15, ch]
                )
    for ch in range(3):
        out[ch] = max(0.0, out[ch] + 0.5)


@njit(cache=True, parallel=True)
def project_view(
    means: np.ndarray,
    covars: np.ndarray,
    opacities: np.ndarray,
    sh: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    splats: np.ndarray,
    colours: np.ndarray,
    boxes: np.ndarray,
) -> None:
    """Project every Gaussian into one view (gsplat's ``projection_ewa_3dgs_fused_fwd_kernel``).

    Args:
        means: ``[N, 3]`` world units.
        covars: ``[N, 3, 3]`` float64 world-space covariances.
        opacities: ``[N]`` in (0, 1).
        sh: ``[N, K, 3]`` SH coefficients, K in {1, 4, 9, 16}.
        viewmat: ``[4, 4]`` OpenCV world-to-camera.
        K: ``[3, 3]`` intrinsics in pixels (skew ignored, as gsplat's kernel does).
        width, height: image size in pixels.

    Outputs (written in place, rows of culled Gaussians are left undefined except ``boxes``):
        splats: ``[N, 7]`` float64: mean x, mean y (pixels), conic a, b, c (1/pixels^2),
            camera depth z (world units), sigma_max = log(255 * opacity).
        colours: ``[N, 3]`` float64 view-dependent RGB, >= 0.
        boxes: ``[N, 4]`` int32: first and last pixel column, first and last pixel row whose centre
            lies in the Gaussian's bounding box, clipped to the image; ``boxes[g, 0] > boxes[g, 1]``
            marks a culled Gaussian.
    """
    n = means.shape[0]
    degree = round(math.sqrt(sh.shape[1])) - 1
    rot = viewmat[:3, :3].astype(np.float64)
    t = viewmat[:3, 3].astype(np.float64)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    # Camera centre -R^T t, for the SH view directions.
    cam = np.empty(3)
    for i in range(3):
        cam[i] = -(rot[0, i] * t[0] + rot[1, i] * t[1] + rot[2, i] * t[2])
    # gsplat clamps x/z and y/z to 30% beyond the frustum before building the Jacobian, so that
    # Gaussians far off-screen do not get huge footprints.
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy

    for g in prange(n):
        boxes[g, 0] = 1
        boxes[g, 1] = 0
        mx, my, mz = float(means[g, 0]), float(means[g, 1]), float(means[g, 2])
        x = rot[0, 0] * mx + rot[0, 1] * my + rot[0, 2] * mz + t[0]
        y = rot[1, 0] * mx + rot[1, 1] * my + rot[1, 2] * mz + t[1]
        z = rot[2, 0] * mx + rot[2, 1] * my + rot[2, 2] * mz + t[2]
        if z < NEAR_PLANE or z > FAR_PLANE:
            continue
        opacity = float(opacities[g])
        if opacity < ALPHA_MIN:  # can never reach the alpha threshold
            continue

        # EWA: cov2d = J (R Sigma R^T) J^T with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]],
        # computed as A Sigma A^T with A = J R [2, 3].
        tx = z * min(lim_x_pos, max(-lim_x_neg, x / z))
        ty = z * min(lim_y_pos, max(-lim_y_neg, y / z))
        j00 = fx / z
        j02 = -fx * tx / (z * z)
        j11 = fy / z
        j12 = -fy * ty / (z * z)
        a0 = (
            j00 * rot[0, 0] + j02 * rot[2, 0],
            j00 * rot[0, 1] + j02 * rot[2, 1],
            j00 * rot[0, 2] + j02 * rot[2, 2],
        )
        a1 = (
            j11 * rot[1, 0] + j12 * rot[2, 0],
            j11 * rot[1, 1] + j12 * rot[2, 1],
            j11 * rot[1, 2] + j12 * rot[2, 2],
        )
        s0 = (  # Sigma a0
            covars[g, 0, 0] * a0[0] + covars[g, 0, 1] * a0[1] + covars[g, 0, 2] * a0[2],
            covars[g, 1, 0] * a0[0] + covars[g, 1, 1] * a0[1] + covars[g, 1, 2] * a0[2],
            covars[g, 2, 0] * a0[0] + covars[g, 2, 1] * a0[1] + covars[g, 2, 2] * a0[2],
        )
        s1 = (  # Sigma a1
            covars[g, 0, 0] * a1[0] + covars[g, 0, 1] * a1[1] + covars[g, 0, 2] * a1[2],
            covars[g, 1, 0] * a1[0] + covars[g, 1, 1] * a1[1] + covars[g, 1, 2] * a1[2],
            covars[g, 2, 0] * a1[0] + covars[g, 2, 1] * a1[1] + covars[g, 2, 2] * a1[2],
        )
        c00 = a0[0] * s0[0] + a0[1] * s0[1] + a0[2] * s0[2]
        c01 = a0[0] * s1[0] + a0[1] * s1[1] + a0[2] * s1[2]
        c11 = a1[0] * s1[0] + a1[1] * s1[1] + a1[2] * s1[2]
        c00 += EPS2D
        c11 += EPS2D
        det = c00 * c11 - c01 * c01
        if det <= 0.0:
            continue

        # Opacity-aware box (gsplat 1.5.3, https://arxiv.org/pdf/2402.00525 B.2): outside
        # extend * sqrt(cov_ii) along an axis, alpha < 1/255 whatever the other coordinate.
        extend = min(EXTEND_MAX, math.sqrt(2.0 * math.log(opacity / ALPHA_MIN)))
        radius_x = np.ceil(extend * math.sqrt(c00))
        radius_y = np.ceil(extend * math.sqrt(c11))
        u = fx * x / z + cx
        v = fy * y / z + cy
        # Pixel j (centre j + 0.5) is in the box when |u - (j + 0.5)| <= radius_x.
        # (np.ceil and np.floor stay float, so a far off-screen Gaussian does not overflow int64.)
        col0 = max(0.0, np.ceil(u - radius_x - 0.5))
        col1 = min(width - 1.0, np.floor(u + radius_x - 0.5))
        row0 = max(0.0, np.ceil(v - radius_y - 0.5))
        row1 = min(height - 1.0, np.floor(v + radius_y - 0.5))
        if col0 > col1 or row0 > row1:  # off-screen
            continue

        splats[g, 0] = u
        splats[g, 1] = v
        splats[g, 2] = c11 / det
        splats[g, 3] = -c01 / det
        splats[g, 4] = c00 / det
        splats[g, 5] = z
        splats[g, 6] = math.log(opacity / ALPHA_MIN)
        dx, dy, dz = mx - cam[0], my - cam[1], mz - cam[2]
        inv_len = 1.0 / math.sqrt(dx * dx + dy * dy + dz * dz)
        _sh_colour(sh, g, degree, dx * inv_len, dy * inv_len, dz * inv_len, colours[g])
        boxes[g, 0] = int(col0)
        boxes[g, 1] = int(col1)
        boxes[g, 2] = int(row0)
        boxes[g, 3] = int(row1)


@njit(cache=True)
def bin_tiles(
    order: np.ndarray, boxes: np.ndarray, tiles_x: int, tiles_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-tile lists of Gaussians, in the order given (front to back).

    Args:
        order: ``[M]`` int64 indices of the visible Gaussians, sorted by depth.
        boxes: ``[N, 4]`` int32 pixel boxes from ``project_view``.
        tiles_x, tiles_y: tile grid size.

    Returns:
        offsets: ``[tiles_y * tiles_x + 1]`` int64; tile t's Gaussians are
            ``gaussian_ids[offsets[t]:offsets[t + 1]]``.
        gaussian_ids: ``[total]`` int32 Gaussian indices.
    """
    n_tiles = tiles_x * tiles_y
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    for g in order:
        for ty in range(boxes[g, 2] // TILE_SIZE, boxes[g, 3] // TILE_SIZE + 1):
            for tx in range(boxes[g, 0] // TILE_SIZE, boxes[g, 1] // TILE_SIZE + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    gaussian_ids = np.empty(offsets[-1], dtype=np.int32)
    for g in order:
        for ty in range(boxes[g, 2] // TILE_SIZE, boxes[g, 3] // TILE_SIZE + 1):
            for tx in range(boxes[g, 0] // TILE_SIZE, boxes[g, 1] // TILE_SIZE + 1):
                tile = ty * tiles_x + tx
                gaussian_ids[cursor[tile]] = g
                cursor[tile] += 1
    return offsets, gaussian_ids


@njit(cache=True, inline="always")
def _keep_top(ids: np.ndarray, weights: np.ndarray, base: int, k: int, g: int, w: float) -> None:
    """Insert (g, w) into the pixel's list ``[base, base + k)``, kept sorted by decreasing weight.

    Equal weights keep the earlier (nearer) Gaussian first, like a stable sort.
    """
    last = base + k - 1
    if w <= weights[last]:
        return
    i = last
    while i > base and weights[i - 1] < w:
        weights[i] = weights[i - 1]
        ids[i] = ids[i - 1]
        i -= 1
    weights[i] = w
    ids[i] = g


@njit(cache=True, parallel=True)
def rasterize_tiles(
    splats: np.ndarray,
    colours: np.ndarray,
    opacities: np.ndarray,
    boxes: np.ndarray,
    offsets: np.ndarray,
    gaussian_ids: np.ndarray,
    tiles_x: int,
    background: np.ndarray,
    n_workers: int,
    out_rgb: np.ndarray,
    out_alpha: np.ndarray,
    out_depth: np.ndarray,
    out_ids: np.ndarray,
    out_weights: np.ndarray,
) -> None:
    """Composite each tile's Gaussians front to back (gsplat's ``rasterize_to_pixels_3dgs_fwd_kernel``).

    Args:
        splats, colours, boxes: per-Gaussian data from ``project_view``.
        opacities: ``[N]`` in (0, 1).
        offsets, gaussian_ids: per-tile depth-sorted lists from ``bin_tiles``.
        tiles_x: tiles per image row.
        background: ``[3]`` float64 RGB.
        n_workers: how many interleaved groups of tiles to run in parallel (the thread count).

    Outputs (written in place):
        out_rgb: ``[H, W, 3]`` float32; out_alpha, out_depth: ``[H, W]`` float32.
        out_ids: ``[H, W, K]`` int32, out_weights: ``[H, W, K]`` float32, the K largest compositing
            weights per pixel (K may be 0).
    """
    height, width = out_alpha.shape
    k_top = out_ids.shape[2]
    n_tiles = offsets.shape[0] - 1
    n_pix = TILE_SIZE * TILE_SIZE
    # Static prange scheduling hands each thread one contiguous block of iterations; dealing the tiles
    # out round-robin instead spreads the expensive centre of the image over all threads. Every
    # tile's result is independent of which thread computes it, so the output does not depend on the
    # thread count. (numba.get_num_threads() is not called here: it would stop the caching.)
    for worker in prange(min(n_workers, n_tiles)):
        trans = np.empty(n_pix)
        rgb = np.empty((n_pix, 3))
        depth = np.empty(n_pix)
        done = np.empty(n_pix, dtype=np.bool_)
        top_ids = np.empty(n_pix * k_top, dtype=np.int32)
        top_w = np.empty(n_pix * k_top)
        for tile in range(worker, n_tiles, min(n_workers, n_tiles)):
            tile_col0 = (tile % tiles_x) * TILE_SIZE
            tile_row0 = (tile // tiles_x) * TILE_SIZE
            tile_col1 = min(tile_col0 + TILE_SIZE, width) - 1
            tile_row1 = min(tile_row0 + TILE_SIZE, height) - 1
            n_live = (tile_col1 - tile_col0 + 1) * (tile_row1 - tile_row0 + 1)
            trans[:] = 1.0
            rgb[:] = 0.0
            depth[:] = 0.0
            done[:] = False
            top_ids[:] = -1
            top_w[:] = 0.0
            for s in range(offsets[tile], offsets[tile + 1]):
                g = gaussian_ids[s]
                u, v = splats[g, 0], splats[g, 1]
                ca, cb, cc = splats[g, 2], splats[g, 3], splats[g, 4]
                z = splats[g, 5]
                sigma_max = splats[g, 6] + _SIGMA_MARGIN
                opacity = float(opacities[g])
                col0 = max(tile_col0, boxes[g, 0])
                col1 = min(tile_col1, boxes[g, 1])
                for row in range(max(tile_row0, boxes[g, 2]), min(tile_row1, boxes[g, 3]) + 1):
                    dy = v - (row + 0.5)
                    # Columns where sigma(dx, dy) <= sigma_max: the quadratic
                    # 0.5 a dx^2 + b dy dx + (0.5 c dy^2 - sigma_max) <= 0 in dx (a > 0).
                    disc = cb * cb * dy * dy - ca * (cc * dy * dy - 2.0 * sigma_max)
                    if disc < 0.0:
                        continue
                    root = math.sqrt(disc)
                    dx_lo = (-cb * dy - root) / ca - _ROW_MARGIN
                    dx_hi = (-cb * dy + root) / ca + _ROW_MARGIN
                    # dx = u - (col + 0.5), so col ranges over [u - dx_hi - 0.5, u - dx_lo - 0.5].
                    # (Clamped while still float: a far off-centre Gaussian must not overflow int64.)
                    c0 = max(col0, int(np.ceil(min(max(u - dx_hi - 0.5, -1.0), width))))
                    c1 = min(col1, int(np.floor(min(max(u - dx_lo - 0.5, -1.0), width))))
                    p = (row - tile_row0) * TILE_SIZE + (c0 - tile_col0)
                    for col in range(c0, c1 + 1):
                        if not done[p]:
                            dx = u - (col + 0.5)
                            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
                            if sigma >= 0.0 and sigma <= sigma_max:
                                alpha = min(ALPHA_MAX, opacity * math.exp(-sigma))
                                if alpha >= ALPHA_MIN:
                                    t = trans[p]
                                    next_t = t * (1.0 - alpha)
                                    if next_t <= T_MIN:
                                        done[p] = True
                                        n_live -= 1
                                    else:
                                        w = alpha * t
                                        rgb[p, 0] += w * colours[g, 0]
                                        rgb[p, 1] += w * colours[g, 1]
                                        rgb[p, 2] += w * colours[g, 2]
                                        depth[p] += w * z
                                        if k_top > 0:
                                            _keep_top(top_ids, top_w, p * k_top, k_top, g, w)
                                        trans[p] = next_t
                        p += 1
                if n_live == 0:  # every pixel of the tile is saturated
                    break

            for row in range(tile_row0, tile_row1 + 1):
                for col in range(tile_col0, tile_col1 + 1):
                    p = (row - tile_row0) * TILE_SIZE + (col - tile_col0)
                    t = trans[p]
                    alpha = 1.0 - t
                    out_alpha[row, col] = alpha
                    for ch in range(3):
                        out_rgb[row, col, ch] = rgb[p, ch] + t * background[ch]
                    out_depth[row, col] = depth[p] / alpha if alpha > 0.0 else 0.0
                    for k in range(k_top):
                        out_ids[row, col, k] = top_ids[p * k_top + k]
                        out_weights[row, col, k] = top_w[p * k_top + k]
