"""Numba kernels of the tile-based CPU rasterizer, following gsplat 1.5.3's CUDA kernels.

Per view: ``project_view`` (one record per Gaussian), ``prepare_tiles`` (depth sort, then per-tile
lists), ``rasterize_tiles`` (front-to-back compositing, tiles in parallel).

Everything is computed in float64 from the float32 inputs. gsplat's kernels run in float32, but the
alpha threshold (1/255) is a discontinuity: in float32, a pixel whose alpha lies within rounding of it
flips between "skipped" and "composited" (an error of up to 1/255), so float64 is what lets this path
agree with the float64 reference to 1e-3 on every pixel. (Inputs are widened with np.float64():
numba's float() keeps a float32 a float32.)

The constants below are read by the kernels at compile time. Numba's cache is keyed on this file,
so they live here (and not in another module) to keep the cache from going stale when one changes.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

TILE_SHIFT = 4
TILE_SIZE = 1 << TILE_SHIFT  # 16; a power of two (tile indices are shifts, lane masks need it)
# gsplat 1.5.3's rasterization() defaults and kernel constants (classic mode); the dense reference
# (``reference.py``) and the reconstructor's optimiser read them from here.
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3  # low-pass filter added to the 2D covariance's diagonal, pixels^2
ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: fainter contributions are skipped
ALPHA_MAX = 0.999
T_MIN = 1e-4  # a pixel stops before the Gaussian that would bring its transmittance to this or below
EXTEND_MAX = 3.33  # gsplat's bounding box half-size in standard deviations, before the opacity bound

# Fields of a projected Gaussian's record, ``[N_FIELDS]`` float64.
U, V = 0, 1  # mean in pixels
CONIC_A, CONIC_B, CONIC_C = 2, 3, 4  # inverse 2D covariance [[a, b], [b, c]], 1/pixels^2
DEPTH = 5  # camera-space z, world units
SIGMA_MAX = 6  # log(255 * opacity): alpha >= 1/255 needs sigma <= this
EXP_A, EXP_B, EXP_C = 7, 8, 9  # exp(-a), exp(-b), exp(-c): steps of the exp(-sigma) recurrences
RED, GREEN, BLUE = 10, 11, 12  # view-dependent colour, >= 0
OPACITY = 13
N_FIELDS = 14

# A tile's pixel state lives in one flat float64 buffer: transmittance, weighted sums of red, green,
# blue and depth, and (when contributors are kept) each pixel's K-th largest weight so far (each
# TILE_SIZE^2, column-major: pixel (row, col) of the tile at col * TILE_SIZE + row), then three
# TILE_SIZE columns for the current Gaussian: exp(-sigma), the factor to the next column, and the
# compositing weights. One buffer with constant offsets lets LLVM
# prove that _composite_column's accesses never overlap, so it vectorizes the loop without the
# run-time overlap checks that separate arrays cost on every call.
_PIXELS = TILE_SIZE * TILE_SIZE
_TRANS, _RED, _GREEN, _BLUE, _DEPTH, _KTH = (k * _PIXELS for k in range(6))
_E, _RX, _W = 6 * _PIXELS, 6 * _PIXELS + TILE_SIZE, 6 * _PIXELS + 2 * TILE_SIZE
_TILE_BUFFER = 6 * _PIXELS + 3 * TILE_SIZE

# The compositing loop gets exp(-sigma) on a pixel grid by recurrences (products of exp of the
# first and second differences of sigma); it stays finite, and accurate to ~1e-13, when sigma stays
# below this on the rectangle it walks. Beyond it, pixels are evaluated one by one.
_RECURRENCE_SIGMA = 600.0
# Margin on the shortcut "sigma > log(255 * opacity) => alpha < 1/255" of the one-by-one path: the
# shortcut must never skip a pair that the exact test keeps; exp and log are accurate to ~1e-16.
_SIGMA_MARGIN = 1e-9


@njit(cache=True, inline="always")
def _rotation(
    quats: np.ndarray, g: int
) -> tuple[float, float, float, float, float, float, float, float, float]:
    """Row-major rotation matrix of quaternion g (w, x, y, z), normalised first, as gsplat's."""
    w, x, y, z = (
        np.float64(quats[g, 0]),
        np.float64(quats[g, 1]),
        np.float64(quats[g, 2]),
        np.float64(quats[g, 3]),
    )
    inv_norm = 1.0 / math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w * inv_norm, x * inv_norm, y * inv_norm, z * inv_norm
    return (
        1.0 - 2.0 * (y * y + z * z),
        2.0 * (x * y - w * z),
        2.0 * (x * z + w * y),
        2.0 * (x * y + w * z),
        1.0 - 2.0 * (x * x + z * z),
        2.0 * (y * z - w * x),
        2.0 * (x * z - w * y),
        2.0 * (y * z + w * x),
        1.0 - 2.0 * (x * x + y * y),
    )


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
    quats: np.ndarray,
    scales: np.ndarray,
    opacities: np.ndarray,
    sh: np.ndarray,
    viewmat: np.ndarray,
    K: np.ndarray,
    width: int,
    height: int,
    records: np.ndarray,
    boxes: np.ndarray,
) -> None:
    """Project every Gaussian into one view (gsplat's ``projection_ewa_3dgs_fused_fwd_kernel``).

    Inlined twins it must agree with (a compiled kernel cannot call them; ``test_rasterizer`` checks
    both): the centre (``U``, ``V``, ``DEPTH``) is ``services.common.cameras.project``, and the whole
    record is gsplat's ``_fully_fused_projection`` and SH, which ``reference.rasterize_reference`` runs.

    Args:
        means: ``[N, 3]`` world units.
        quats: ``[N, 4]`` (w, x, y, z), normalised here.
        scales: ``[N, 3]`` activated standard deviations, world units.
        opacities: ``[N]`` in (0, 1).
        sh: ``[N, K, 3]`` SH coefficients, K in {1, 4, 9, 16}.
        viewmat: ``[4, 4]`` OpenCV world-to-camera.
        K: ``[3, 3]`` intrinsics in pixels (skew ignored, as gsplat's kernel does).
        width, height: image size in pixels.

    Outputs (written in place; the records of culled Gaussians are left undefined):
        records: ``[N, N_FIELDS]`` float64, fields ``U`` ... ``OPACITY``.
        boxes: ``[N, 4]`` int32: first and last pixel column, first and last pixel row whose centre
            lies in the Gaussian's bounding box, clipped to the image; ``boxes[g, 0] > boxes[g, 1]``
            marks a culled Gaussian (behind the near plane, beyond the far plane, too faint, or
            off-screen).
    """
    n = means.shape[0]
    degree = round(math.sqrt(sh.shape[1])) - 1
    rot = viewmat[:3, :3].astype(np.float64)
    t = viewmat[:3, 3].astype(np.float64)
    fx, fy, cx, cy = np.float64(K[0, 0]), np.float64(K[1, 1]), np.float64(K[0, 2]), np.float64(K[1, 2])
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
        mx, my, mz = np.float64(means[g, 0]), np.float64(means[g, 1]), np.float64(means[g, 2])
        x = rot[0, 0] * mx + rot[0, 1] * my + rot[0, 2] * mz + t[0]
        y = rot[1, 0] * mx + rot[1, 1] * my + rot[1, 2] * mz + t[1]
        z = rot[2, 0] * mx + rot[2, 1] * my + rot[2, 2] * mz + t[2]
        if not NEAR_PLANE <= z <= FAR_PLANE:
            continue
        opacity = np.float64(opacities[g])
        if opacity < ALPHA_MIN:  # can never reach the alpha threshold
            continue

        # EWA: cov2d = J W Sigma W^T J^T, with W the view rotation, J = [[fx/z, 0, -fx tx/z^2],
        # [0, fy/z, -fy ty/z^2]] and Sigma = R S^2 R^T; computed as B S^2 B^T with B = J W R [2, 3].
        tx = z * min(lim_x_pos, max(-lim_x_neg, x / z))
        ty = z * min(lim_y_pos, max(-lim_y_neg, y / z))
        j00 = fx / z
        j02 = -fx * tx / (z * z)
        j11 = fy / z
        j12 = -fy * ty / (z * z)
        a00 = j00 * rot[0, 0] + j02 * rot[2, 0]
        a01 = j00 * rot[0, 1] + j02 * rot[2, 1]
        a02 = j00 * rot[0, 2] + j02 * rot[2, 2]
        a10 = j11 * rot[1, 0] + j12 * rot[2, 0]
        a11 = j11 * rot[1, 1] + j12 * rot[2, 1]
        a12 = j11 * rot[1, 2] + j12 * rot[2, 2]
        r00, r01, r02, r10, r11, r12, r20, r21, r22 = _rotation(quats, g)
        b00 = a00 * r00 + a01 * r10 + a02 * r20
        b01 = a00 * r01 + a01 * r11 + a02 * r21
        b02 = a00 * r02 + a01 * r12 + a02 * r22
        b10 = a10 * r00 + a11 * r10 + a12 * r20
        b11 = a10 * r01 + a11 * r11 + a12 * r21
        b12 = a10 * r02 + a11 * r12 + a12 * r22
        s0, s1, s2 = (
            np.float64(scales[g, 0]) ** 2,
            np.float64(scales[g, 1]) ** 2,
            np.float64(scales[g, 2]) ** 2,
        )
        c00 = b00 * b00 * s0 + b01 * b01 * s1 + b02 * b02 * s2
        c01 = b00 * b10 * s0 + b01 * b11 * s1 + b02 * b12 * s2
        c11 = b10 * b10 * s0 + b11 * b11 * s1 + b12 * b12 * s2
        c00 += EPS2D
        c11 += EPS2D
        det = c00 * c11 - c01 * c01
        if not det > 0.0:  # (written so that NaN, from overflowing scales, is culled too)
            continue

        # Opacity-aware box (gsplat 1.5.3, https://arxiv.org/pdf/2402.00525 B.2): outside
        # extend * sqrt(cov_ii) along an axis, sigma > log(255 opacity), so alpha < 1/255 whatever
        # the other coordinate.
        sigma_max = math.log(opacity / ALPHA_MIN)
        extend = min(EXTEND_MAX, math.sqrt(2.0 * sigma_max))
        radius_x = np.ceil(extend * math.sqrt(c00))
        radius_y = np.ceil(extend * math.sqrt(c11))
        u = fx * x / z + cx
        v = fy * y / z + cy
        # Pixel j (centre j + 0.5) is in the box when |u - (j + 0.5)| <= radius_x. A box with no pixel
        # centre on the image is culled (gsplat culls boxes off the image; the ones it keeps beyond
        # these reach no pixel centre). np.ceil and np.floor stay float, so that a far off-screen
        # Gaussian cannot overflow int64.
        col0 = max(0.0, np.ceil(u - radius_x - 0.5))
        col1 = min(width - 1.0, np.floor(u + radius_x - 0.5))
        row0 = max(0.0, np.ceil(v - radius_y - 0.5))
        row1 = min(height - 1.0, np.floor(v + radius_y - 0.5))
        if not (col0 <= col1 and row0 <= row1):
            continue

        rec = records[g]
        rec[U] = u
        rec[V] = v
        rec[CONIC_A] = c11 / det
        rec[CONIC_B] = -c01 / det
        rec[CONIC_C] = c00 / det
        rec[DEPTH] = z
        rec[SIGMA_MAX] = sigma_max
        rec[EXP_A] = math.exp(-rec[CONIC_A])
        rec[EXP_B] = math.exp(-rec[CONIC_B])
        rec[EXP_C] = math.exp(-rec[CONIC_C])
        dx, dy, dz = mx - cam[0], my - cam[1], mz - cam[2]
        inv_len = 1.0 / math.sqrt(dx * dx + dy * dy + dz * dz)
        _sh_colour(sh, g, degree, dx * inv_len, dy * inv_len, dz * inv_len, rec[RED : BLUE + 1])
        rec[OPACITY] = opacity
        boxes[g, 0] = int(col0)
        boxes[g, 1] = int(col1)
        boxes[g, 2] = int(row0)
        boxes[g, 3] = int(row1)


@njit(cache=True)
def _stable_argsort(depths: np.ndarray) -> np.ndarray:
    """Stable argsort of positive float64 values: LSD radix sort of their bit patterns.

    Positive IEEE doubles order like their bit patterns read as unsigned integers, and a stable
    sort keeps equal depths in index order, as gsplat's radix sort of (tile, depth) keys does.
    Digits that are equal in every key (the top of the exponent, usually) are not sorted on.

    Args:
        depths: ``[M]`` float64, all > 0, contiguous.

    Returns:
        ``[M]`` int64 permutation.
    """
    n = depths.shape[0]
    keys = depths.view(np.uint64).copy()
    order = np.arange(n)
    # Each pass moves keys with their indices, so that it reads both sequentially.
    keys_next = np.empty(n, dtype=np.uint64)
    order_next = np.empty(n, dtype=np.int64)
    digit_bits = 11  # 6 passes over 64 bits, with 2048 counters that stay in L1
    mask = np.uint64((1 << digit_bits) - 1)
    counts = np.empty(1 << digit_bits, dtype=np.int64)
    for shift in range(0, 64, digit_bits):
        shift_u = np.uint64(shift)
        counts[:] = 0
        for i in range(n):
            counts[(keys[i] >> shift_u) & mask] += 1
        if counts.max() == n:
            continue
        start = 0
        for b in range(counts.shape[0]):
            start, counts[b] = start + counts[b], start
        for i in range(n):
            b = (keys[i] >> shift_u) & mask
            keys_next[counts[b]] = keys[i]
            order_next[counts[b]] = order[i]
            counts[b] += 1
        keys, keys_next = keys_next, keys
        order, order_next = order_next, order
    return order


@njit(cache=True)
def prepare_tiles(
    records: np.ndarray, boxes: np.ndarray, tiles_x: int, tiles_y: int
) -> tuple[np.ndarray, np.ndarray]:
    """List the visible Gaussians per tile, front to back.

    Args:
        records: ``[N, N_FIELDS]`` and boxes: ``[N, 4]`` int32 from ``project_view``.
        tiles_x, tiles_y: tile grid size.

    Returns:
        offsets: ``[tiles_y * tiles_x + 1]`` int64; tile t's Gaussians are
            ``tile_lists[offsets[t]:offsets[t + 1]]``.
        tile_lists: ``[total]`` int32 Gaussian indices, nearest first within each tile.
    """
    visible = np.flatnonzero(boxes[:, 0] <= boxes[:, 1])
    n_visible = visible.shape[0]
    depths = np.empty(n_visible)
    for m in range(n_visible):
        depths[m] = records[visible[m], DEPTH]
    order = visible[_stable_argsort(depths)]

    # Each Gaussian's tile span, in depth order. (A loop of its own: its scattered reads of boxes
    # overlap, where the branchy loops below would wait for each. Boxes are >= 0, so shifts divide
    # by TILE_SIZE, cheaper than numba's floor division.)
    spans = np.empty((n_visible, 4), dtype=np.int64)
    for m in range(n_visible):
        for k in range(4):
            spans[m, k] = np.int64(boxes[order[m], k]) >> TILE_SHIFT
    # Two passes, counting then filling, so that the lists are one flat array.
    counts = np.zeros(tiles_x * tiles_y + 1, dtype=np.int64)
    for m in range(n_visible):
        for ty in range(spans[m, 2], spans[m, 3] + 1):
            for tx in range(spans[m, 0], spans[m, 1] + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    cursor = offsets[:-1].copy()
    tile_lists = np.empty(offsets[-1], dtype=np.int32)
    for m in range(n_visible):
        for ty in range(spans[m, 2], spans[m, 3] + 1):
            for tx in range(spans[m, 0], spans[m, 1] + 1):
                tile = ty * tiles_x + tx
                tile_lists[cursor[tile]] = order[m]
                cursor[tile] += 1
    return offsets, tile_lists


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


@njit(cache=True, inline="always")
def _composite_column(buf: np.ndarray, col: int, row_lo: int, row_hi: int, rec: np.ndarray) -> int:
    """Composite one Gaussian into rows [row_lo, row_hi) of one tile column, with SIMD, no branches.

    ``buf`` is the tile buffer (see ``_TILE_BUFFER``): its exp(-sigma) column (0 for rows outside
    the Gaussian's rectangle) and factor column are advanced one column; the weights are written to
    its weight column. A transmittance <= 0 marks a saturated pixel (storing -T). The rows are
    widened to multiples of 4 (whole AVX2 registers); the extra rows have exp(-sigma) = 0.

    Returns:
        How many pixels saturated.
    """
    # The masks keep every index provably inside its section of buf (see _TILE_BUFFER).
    row0 = row_lo & (TILE_SIZE - 4)
    base = (col & (TILE_SIZE - 1)) * TILE_SIZE + row0
    n = min(row_hi - row0, TILE_SIZE - row0)
    opacity, step = rec[OPACITY], rec[EXP_A]
    red, green, blue, z = rec[RED], rec[GREEN], rec[BLUE], rec[DEPTH]
    n_stop = 0
    for j in range(n):
        e = buf[_E + row0 + j]
        alpha = min(ALPHA_MAX, opacity * e)
        t = buf[_TRANS + base + j]
        next_t = t * (1.0 - alpha)
        live = (alpha >= ALPHA_MIN) & (t > 0.0)
        stop = live & (next_t <= T_MIN)
        take = live & (next_t > T_MIN)
        w = alpha * t if take else 0.0
        buf[_RED + base + j] += w * red
        buf[_GREEN + base + j] += w * green
        buf[_BLUE + base + j] += w * blue
        buf[_DEPTH + base + j] += w * z
        buf[_TRANS + base + j] = next_t if take else (-t if stop else t)
        n_stop += np.int64(stop)
        buf[_W + row0 + j] = w
        buf[_E + row0 + j] = e * buf[_RX + row0 + j]
        buf[_RX + row0 + j] *= step
    return n_stop


@njit(cache=True)
def _composite_pixels(
    buf: np.ndarray,
    top_ids: np.ndarray,
    top_w: np.ndarray,
    k_top: int,
    gaussian_id: int,
    rec: np.ndarray,
    i0: int,
    i1: int,
    j0: int,
    j1: int,
    dx0: float,
    dy0: float,
) -> int:
    """Composite one Gaussian into tile columns i0..i1, rows j0..j1, one pixel at a time.

    For Gaussians too elongated for the recurrences of ``rasterize_tiles`` (rare). ``dx0, dy0`` are
    the offsets from the pixel centre (i0, j0) to the Gaussian's mean. Returns how many pixels
    saturated.
    """
    ca, cb, cc = rec[CONIC_A], rec[CONIC_B], rec[CONIC_C]
    sigma_max = rec[SIGMA_MAX] + _SIGMA_MARGIN
    n_stop = 0
    for i in range(i0, i1 + 1):
        dx = dx0 - (i - i0)
        for j in range(j0, j1 + 1):
            dy = dy0 - (j - j0)
            sigma = 0.5 * (ca * dx * dx + cc * dy * dy) + cb * dx * dy
            if sigma < 0.0 or sigma > sigma_max:
                continue
            alpha = min(ALPHA_MAX, rec[OPACITY] * math.exp(-sigma))
            p = i * TILE_SIZE + j
            t = buf[_TRANS + p]
            if alpha < ALPHA_MIN or t <= 0.0:
                continue
            next_t = t * (1.0 - alpha)
            if next_t <= T_MIN:
                buf[_TRANS + p] = -t
                n_stop += 1
                continue
            w = alpha * t
            buf[_RED + p] += w * rec[RED]
            buf[_GREEN + p] += w * rec[GREEN]
            buf[_BLUE + p] += w * rec[BLUE]
            buf[_DEPTH + p] += w * rec[DEPTH]
            buf[_TRANS + p] = next_t
            if k_top > 0:
                _keep_top(top_ids, top_w, p * k_top, k_top, gaussian_id, w)
                buf[_KTH + p] = top_w[(p + 1) * k_top - 1]
    return n_stop


@njit(cache=True, parallel=True)
def rasterize_tiles(
    records: np.ndarray,
    boxes: np.ndarray,
    offsets: np.ndarray,
    tile_lists: np.ndarray,
    tiles_x: int,
    background: np.ndarray,
    n_workers: int,
    out_rgb: np.ndarray,
    out_alpha: np.ndarray,
    out_depth: np.ndarray,
    out_ids: np.ndarray,
    out_weights: np.ndarray,
    out_work: np.ndarray,
) -> None:
    """Composite each tile's Gaussians front to back (gsplat's ``rasterize_to_pixels_3dgs_fwd_kernel``).

    Per pixel and Gaussian: alpha = min(0.999, opacity exp(-sigma)); skipped when alpha < 1/255 or
    the pixel centre is outside the Gaussian's box; the pixel stops before a Gaussian that would bring
    its transmittance T to 1e-4 or below; otherwise weight w = alpha T is accumulated and T *= 1 - alpha.

    Args:
        records, boxes: from ``project_view``.
        offsets, tile_lists: from ``prepare_tiles``.
        tiles_x: tiles per image row.
        background: ``[3]`` float64 RGB.
        n_workers: how many interleaved groups of tiles to run in parallel (the thread count).

    Outputs (written in place):
        out_rgb: ``[H, W, 3]`` float32; out_alpha, out_depth: ``[H, W]`` float32.
        out_ids: ``[H, W, K]`` int32, out_weights: ``[H, W, K]`` float32, the K largest compositing
            weights per pixel (K may be 0).
        out_work: ``[n_workers, 2]`` int64: per group of tiles, the tile-Gaussian pairs composited (a
            tile stops before its next pair once every pixel is saturated) and the pixels of their
            boxes within the tile, each one Gaussian-pixel evaluation; rows past the groups are 0.
            Counted for benchmarks.
    """
    height, width = out_alpha.shape
    k_top = out_ids.shape[2]
    n_tiles = offsets.shape[0] - 1
    # Static prange scheduling hands each thread one contiguous block of iterations; dealing the tiles
    # out round-robin instead spreads the expensive centre of the image over all threads. Every
    # tile's result is independent of which thread computes it, so the output does not depend on the
    # thread count. (numba.get_num_threads() is not called here: it would stop the caching.)
    n_groups = min(n_workers, n_tiles)
    out_work[:] = 0
    for group in prange(n_groups):
        buf = np.empty(_TILE_BUFFER)
        top_ids = np.empty(_PIXELS * k_top, dtype=np.int32)  # per pixel, sorted by weight
        top_w = np.empty(_PIXELS * k_top)
        n_pairs = 0
        n_evaluations = 0
        for tile in range(group, n_tiles, n_groups):
            tile_col0 = (tile % tiles_x) * TILE_SIZE
            tile_row0 = (tile // tiles_x) * TILE_SIZE
            tile_col1 = min(tile_col0 + TILE_SIZE, width) - 1
            tile_row1 = min(tile_row0 + TILE_SIZE, height) - 1
            n_live = (tile_col1 - tile_col0 + 1) * (tile_row1 - tile_row0 + 1)
            buf[_TRANS : _TRANS + _PIXELS] = 1.0
            buf[_RED : _KTH + _PIXELS] = 0.0
            top_ids[:] = -1
            top_w[:] = 0.0
            for s in range(offsets[tile], offsets[tile + 1]):
                g = tile_lists[s]
                rec = records[g]
                ca, cb, cc = rec[CONIC_A], rec[CONIC_B], rec[CONIC_C]
                # The Gaussian's box within the tile, in tile coordinates.
                i0 = max(tile_col0, boxes[g, 0]) - tile_col0
                i1 = min(tile_col1, boxes[g, 1]) - tile_col0
                j0 = max(tile_row0, boxes[g, 2]) - tile_row0
                j1 = min(tile_row1, boxes[g, 3]) - tile_row0
                # Offsets from the first pixel centre of the box to the Gaussian's mean, and from the
                # cell one past the last pixel in each direction.
                dx0 = rec[U] - (tile_col0 + i0 + 0.5)
                dy0 = rec[V] - (tile_row0 + j0 + 0.5)
                dx1 = dx0 - (i1 - i0 + 1)
                dy1 = dy0 - (j1 - j0 + 1)
                n_pairs += 1
                n_evaluations += (i1 - i0 + 1) * (j1 - j0 + 1)
                # sigma(dx, dy) = 0.5 (a dx^2 + c dy^2) + b dx dy is convex: its largest value on
                # the rectangle is at a corner.
                sigma00 = 0.5 * (ca * dx0 * dx0 + cc * dy0 * dy0) + cb * dx0 * dy0
                sigma10 = 0.5 * (ca * dx1 * dx1 + cc * dy0 * dy0) + cb * dx1 * dy0
                sigma01 = 0.5 * (ca * dx0 * dx0 + cc * dy1 * dy1) + cb * dx0 * dy1
                sigma11 = 0.5 * (ca * dx1 * dx1 + cc * dy1 * dy1) + cb * dx1 * dy1
                if max(max(sigma00, sigma10), max(sigma01, sigma11)) < _RECURRENCE_SIGMA:
                    # Moving one pixel right (dx -= 1) changes sigma by -a dx + a/2 - b dy, and that
                    # difference by a per column and by b per row; moving down changes sigma by
                    # -c dy + c/2 - b dx, and that by c per row. So exp(-sigma) on the grid is
                    # products of exp(-a), exp(-b), exp(-c) and three exps at the first pixel.
                    buf[_E : _E + TILE_SIZE] = 0.0
                    buf[_RX : _RX + TILE_SIZE] = 1.0
                    e = math.exp(-sigma00)
                    rx = math.exp(ca * dx0 - 0.5 * ca + cb * dy0)
                    ry = math.exp(cc * dy0 - 0.5 * cc + cb * dx0)
                    for j in range(j0, j1 + 1):
                        buf[_E + j] = e
                        buf[_RX + j] = rx
                        e *= ry
                        ry *= rec[EXP_C]
                        rx *= rec[EXP_B]
                    for i in range(i0, i1 + 1):
                        n_live -= _composite_column(buf, i, j0, (j1 | 3) + 1, rec)
                        if k_top == 0:
                            continue
                        # Most weights are below their pixel's K-th largest so far: count first.
                        n_top = 0
                        for j in range(j0, j1 + 1):
                            n_top += np.int64(buf[_W + j] > buf[_KTH + i * TILE_SIZE + j])
                        if n_top > 0:
                            for j in range(j0, j1 + 1):
                                p = i * TILE_SIZE + j
                                if buf[_W + j] > buf[_KTH + p]:
                                    _keep_top(top_ids, top_w, p * k_top, k_top, g, buf[_W + j])
                                    buf[_KTH + p] = top_w[(p + 1) * k_top - 1]
                else:
                    n_live -= _composite_pixels(buf, top_ids, top_w, k_top, g, rec, i0, i1, j0, j1, dx0, dy0)
                if n_live == 0:  # every pixel of the tile is saturated
                    break

            for row in range(tile_row0, tile_row1 + 1):
                for col in range(tile_col0, tile_col1 + 1):
                    p = (col - tile_col0) * TILE_SIZE + (row - tile_row0)
                    t = abs(buf[_TRANS + p])
                    alpha = 1.0 - t
                    out_alpha[row, col] = alpha
                    out_rgb[row, col, 0] = buf[_RED + p] + t * background[0]
                    out_rgb[row, col, 1] = buf[_GREEN + p] + t * background[1]
                    out_rgb[row, col, 2] = buf[_BLUE + p] + t * background[2]
                    out_depth[row, col] = buf[_DEPTH + p] / alpha if alpha > 0.0 else 0.0
                    for k in range(k_top):
                        out_ids[row, col, k] = top_ids[p * k_top + k]
                        out_weights[row, col, k] = top_w[p * k_top + k]
        out_work[group, 0] = n_pairs
        out_work[group, 1] = n_evaluations
