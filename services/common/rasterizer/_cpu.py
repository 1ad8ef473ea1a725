"""The tile-based CPU rasterizer: per view, project, sort by depth, bin into tiles, composite."""

from __future__ import annotations

import numba
import numpy as np

from services.common.cameras import Cameras
from services.common.gaussians import Gaussians
from services.common.rasterizer import _numba
from services.common.rasterizer._common import RenderResult, check_arguments


def rasterize(
    gaussians: Gaussians,
    cameras: Cameras,
    background=(0.0, 0.0, 0.0),
    contributors: int = 0,
    num_threads: int | None = None,
) -> RenderResult:
    """Render Gaussians into every camera on the CPU, with gsplat 1.5.3's forward math.

    Pinhole projection with gsplat's EWA splatting (eps2d 0.3, near 0.01, far 1e10), its
    opacity-aware bounding boxes, SH colours ``max(0, 0.5 + SH(direction from camera to mean))``, and
    front-to-back compositing: alpha = min(0.999, opacity exp(-sigma)), contributions under 1/255
    skipped, a pixel stops before the Gaussian that would bring its transmittance to 1e-4 or below.
    Computed in float64 (see ``_numba``), in 16 x 16 tiles in parallel; the result does not depend on
    the tile size or the thread count, and is deterministic.

    The first call on a machine compiles the kernels (tens of seconds); they are cached on disk.

    Args:
        gaussians: N Gaussians (raw log scales, logit opacities; activated here).
        cameras: V OpenCV world-to-camera views of W x H pixels.
        background: RGB, 3 floats, composited under the Gaussians.
        contributors: K, how many top contributors to report per pixel (0: none).
        num_threads: numba threads for this call (None: numba's current setting); restored after.

    Returns:
        ``RenderResult`` with ``rgb [V, H, W, 3]``, ``alpha [V, H, W]``, ``depth [V, H, W]`` float32,
        and, when K > 0, ``ids [V, H, W, K]`` int32 and ``weights [V, H, W, K]`` float32.

    Raises:
        ValueError: an argument has the wrong type, shape or value; the message names it.
    """
    bg = check_arguments(gaussians, cameras, background, contributors)
    if num_threads is not None and (
        isinstance(num_threads, bool)
        or not isinstance(num_threads, int | np.integer)
        or not 1 <= num_threads <= numba.config.NUMBA_NUM_THREADS
    ):
        limit = numba.config.NUMBA_NUM_THREADS
        raise ValueError(f"num_threads must be None or an int in [1, {limit}], got {num_threads!r}")

    previous = numba.get_num_threads()
    if num_threads is not None:
        numba.set_num_threads(int(num_threads))
    try:
        return _render(gaussians, cameras, bg, int(contributors))
    finally:
        numba.set_num_threads(previous)


def _render(gaussians: Gaussians, cameras: Cameras, background: np.ndarray, k_top: int) -> RenderResult:
    n, v = len(gaussians), len(cameras)
    width, height = int(cameras.width), int(cameras.height)
    tiles_x = -(-width // _numba.TILE_SIZE)
    tiles_y = -(-height // _numba.TILE_SIZE)

    means = np.ascontiguousarray(gaussians.means, dtype=np.float32)
    opacities = np.ascontiguousarray(gaussians.opacities, dtype=np.float32)
    sh = np.ascontiguousarray(gaussians.sh, dtype=np.float32)
    quats = np.ascontiguousarray(gaussians.quats, dtype=np.float32)
    scales = np.ascontiguousarray(gaussians.scales, dtype=np.float32)

    rgb = np.empty((v, height, width, 3), dtype=np.float32)
    alpha = np.empty((v, height, width), dtype=np.float32)
    depth = np.empty((v, height, width), dtype=np.float32)
    ids = np.empty((v, height, width, k_top), dtype=np.int32)
    weights = np.empty((v, height, width, k_top), dtype=np.float32)

    # Scratch space, reused by every view.
    records = np.empty((n, _numba.N_FIELDS))
    boxes = np.empty((n, 4), dtype=np.int32)
    work = np.empty((numba.get_num_threads(), 2), dtype=np.int64)  # counted for benchmarks only
    for view in range(v):
        _numba.project_view(
            means,
            quats,
            scales,
            opacities,
            sh,
            np.ascontiguousarray(cameras.viewmats[view], dtype=np.float32),
            np.ascontiguousarray(cameras.Ks[view], dtype=np.float32),
            width,
            height,
            records,
            boxes,
        )
        offsets, tile_lists = _numba.prepare_tiles(records, boxes, tiles_x, tiles_y)
        _numba.rasterize_tiles(
            records,
            boxes,
            offsets,
            tile_lists,
            tiles_x,
            background,
            numba.get_num_threads(),
            rgb[view],
            alpha[view],
            depth[view],
            ids[view],
            weights[view],
            work,
        )
    if k_top == 0:
        return RenderResult(rgb=rgb, alpha=alpha, depth=depth)
    return RenderResult(rgb=rgb, alpha=alpha, depth=depth, ids=ids, weights=weights)
