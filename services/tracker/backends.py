"""Tracker backends: one narrow interface, two implementations.

- ``geometric``: exact for splat assets. The renderer gives every view's expected depth and camera, so a
  pixel of one view is unprojected to the 3D point it shows, projected into the other views, and tested
  against their depth (occlusion) and alpha (coverage). No appearance matching, no weights, any CPU.
- ``cotracker``: the paper's CoTracker3 (offline) over the orbit video, in ``services.tracker.cotracker``
  (imported only when chosen: it needs torch, the ``cotracker`` package and a checkpoint).

The geometry lives in small pure functions (``unproject``, ``project``, ``footprint``, ``sample_depth``,
``sample_image``) with their shapes; ``GeometricBackend`` only loops over views.

Sub-pixel sampling. A projected point rarely falls on a pixel centre, and sampling the other view's
depth at the nearest pixel is fragile at silhouettes and occlusion edges: half a pixel of rounding puts
a point on the background, or on the surface in front of it. ``footprint`` looks at the 4 pixels whose
centres surround the point (the pixels bilinear interpolation reads) and keeps those that are foreground
and agree in depth; a point is visible when any of them is kept. This errs towards "observed" by at most
one pixel at edges, where the unobserved mask is dilated anyway. A point on a pixel centre reads only that
pixel (stencil pixels of weight below ``MIN_STENCIL_WEIGHT`` are ignored), so views of the same pose agree
pixel for pixel. Colours and depths are the bilinear average over the kept pixels only (weights
renormalised), so a sample never mixes in the background or another surface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from services.common.cameras import Cameras
from services.common.config import ConfigError
from services.common.views import Views

BACKENDS = ("geometric", "cotracker")

NEAR = 0.01
"""Points closer to a camera than this (camera z, world units) are not projected; as the rasterizer's
near plane."""

MIN_STENCIL_WEIGHT = 1e-4
"""Stencil pixels with a smaller bilinear weight are not read (the point is on a pixel centre's row or
column, to float rounding)."""

_DISTANCE_DECIMALS = 6
"""Camera distances are rounded to this many decimals before ranking anchors, so anchors placed
symmetrically about a target tie exactly and the order in ``anchor_indices`` decides."""


@dataclass(frozen=True)
class LocateOptions:
    """Thresholds of ``locate_unobserved``; the defaults are the proto's.

    Attributes:
        foreground_threshold: alpha above which a pixel is foreground, in (0, 1).
        depth_tolerance: relative depth tolerance of the occlusion test, in (0, 1]: a point at camera
            depth z is visible where the view's depth z_a satisfies ``|z - z_a| <= tolerance * z_a``.
        min_region_pixels: 8-connected unobserved regions with fewer pixels are dropped from the mask.
        dilation_pixels: radius of the elliptic dilation of the mask, kept within the foreground.
        transfer_appearance: replace observed pixels by the anchors' colour.
    """

    foreground_threshold: float = 0.5
    depth_tolerance: float = 0.03
    min_region_pixels: int = 16
    dilation_pixels: int = 2
    transfer_appearance: bool = True


@dataclass(frozen=True, eq=False)
class Located:
    """What ``locate_unobserved`` finds, one entry per target in target order.

    Attributes:
        unobserved: ``[Tg, H, W]`` bool, foreground pixels no anchor observes (after dropping small
            regions and dilating): the inpainting mask.
        anchor_index: ``[Tg, H, W]`` int32 index into the views of the anchor that observes the pixel,
            -1 where none does (unobserved, dropped small regions, background).
        anchor_xy: ``[Tg, H, W, 2]`` float32 (x, y) of the pixel in that anchor (top-left pixel centre is
            (0.5, 0.5)); NaN exactly where ``anchor_index`` is -1.
        transferred_rgb: ``[Tg, H, W, 3]`` uint8, the target rgb with pixels that have an anchor replaced
            by the anchor's colour there (when transfer is on).
        unobserved_fraction: ``[Tg]`` float32, unobserved pixels / foreground pixels (0 without
            foreground).
    """

    unobserved: np.ndarray
    anchor_index: np.ndarray
    anchor_xy: np.ndarray
    transferred_rgb: np.ndarray
    unobserved_fraction: np.ndarray


class TrackerBackend(Protocol):
    """Follows pixels between views."""

    name: str

    @property
    def device(self) -> str:
        """Where it computes, for Describe."""
        ...

    def track(self, frames: Views, queries: np.ndarray, backward: bool) -> tuple[np.ndarray, np.ndarray]:
        """Track query points through the T frames.

        Args:
            frames: T views (rgb, alpha, depth, cameras as the backend needs).
            queries: ``[N, 3]`` float32 (t, x, y): an integer frame index and a pixel position in that
                frame (top-left pixel centre (0.5, 0.5)), inside the image.
            backward: also track into the frames before each query's frame.

        Returns:
            tracks ``[T, N, 2]`` float32 (x, y), NaN where undefined; visibility ``[T, N]`` bool.
        """
        ...

    def locate_unobserved(
        self, views: Views, targets: Sequence[int], anchors: Sequence[int], options: LocateOptions
    ) -> Located:
        """For every foreground pixel of each target, whether an anchor observes it, which, and where.

        Args:
            views: V views with rgb, alpha, depth and cameras.
            targets: indices into ``views``, non-empty, no duplicates.
            anchors: indices into ``views``, non-empty, no duplicates, disjoint from ``targets``.
            options: thresholds.
        """
        ...


# -- geometry -------------------------------------------------------------------------------------------


class Footprint(NamedTuple):
    """Where P points land in one view: the 4 pixels of their bilinear stencil.

    Attributes:
        index: ``[P, 4]`` int64 flat pixel index (row * W + col), clamped into the image.
        weights: ``[P, 4]`` float64 bilinear weights (sum 1 per point).
        kept: ``[P, 4]`` bool, the stencil pixel is read (weight >= ``MIN_STENCIL_WEIGHT``), in the
            image, foreground, and agrees in depth.
    """

    index: np.ndarray
    weights: np.ndarray
    kept: np.ndarray

    @property
    def visible(self) -> np.ndarray:
        """``[P]`` bool: the point is seen by the view (any stencil pixel kept)."""
        return self.kept.any(axis=1)

    def sample_weights(self) -> np.ndarray:
        """``[P, 4]`` float64 bilinear weights over the kept pixels only, renormalised to sum 1; rows of
        points that are not visible are 0."""
        w = np.where(self.kept, self.weights, 0.0)
        total = w.sum(axis=1, keepdims=True)
        return np.divide(w, total, out=np.zeros_like(w), where=total > 0)


def pixel_centres(mask: np.ndarray) -> np.ndarray:
    """The pixel centres of the true pixels of ``mask``.

    Args:
        mask: ``[H, W]`` bool.

    Returns:
        ``[P, 2]`` float64 (x, y) = (col + 0.5, row + 0.5), in row-major order of ``mask``.
    """
    rows, cols = np.nonzero(mask)
    return np.stack([cols + 0.5, rows + 0.5], axis=1).astype(np.float64)


def unproject(viewmat: np.ndarray, K: np.ndarray, xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """World points seen at pixel positions ``xy`` at camera depth ``depth``.

    Args:
        viewmat: ``[4, 4]`` OpenCV world-to-camera matrix.
        K: ``[3, 3]`` intrinsics, pixels.
        xy: ``[P, 2]`` pixel positions (x, y), top-left pixel centre (0.5, 0.5).
        depth: ``[P]`` camera z (not the distance along the ray), world units.

    Returns:
        ``[P, 3]`` float64 world points.
    """
    K = np.asarray(K, dtype=np.float64)
    z = np.asarray(depth, dtype=np.float64)
    cam = np.stack([(xy[:, 0] - K[0, 2]) / K[0, 0] * z, (xy[:, 1] - K[1, 2]) / K[1, 1] * z, z], axis=1)
    camera_to_world = np.linalg.inv(np.asarray(viewmat, dtype=np.float64))
    return cam @ camera_to_world[:3, :3].T + camera_to_world[:3, 3]


def project(viewmat: np.ndarray, K: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel positions and camera depths of world points in one camera (``cameras.project_points`` for
    one view).

    Args:
        viewmat: ``[4, 4]`` OpenCV world-to-camera matrix.
        K: ``[3, 3]`` intrinsics, pixels.
        points: ``[P, 3]`` world points.

    Returns:
        xy ``[P, 2]`` float64 (x, y), NaN where the point is closer than ``NEAR`` or behind the camera;
        z ``[P]`` float64 camera depth.
    """
    viewmat = np.asarray(viewmat, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    cam = points @ viewmat[:3, :3].T + viewmat[:3, 3]
    z = cam[:, 2]
    front = z > NEAR
    safe_z = np.where(front, z, 1.0)
    xy = np.stack([K[0, 0] * cam[:, 0] / safe_z + K[0, 2], K[1, 1] * cam[:, 1] / safe_z + K[1, 2]], axis=1)
    xy[~front] = np.nan
    return xy, z


def footprint(
    alpha: np.ndarray,
    depth: np.ndarray,
    xy: np.ndarray,
    z: np.ndarray,
    foreground_threshold: float,
    depth_tolerance: float,
) -> Footprint:
    """Test points against one view: the 4-pixel stencil around each, and which of those pixels see it.

    A stencil pixel is kept when the point is in front of the camera and inside the image
    (0 <= x < W, 0 <= y < H), the pixel's bilinear weight is at least ``MIN_STENCIL_WEIGHT``, it is in
    the image, foreground (alpha > threshold, depth > 0), and ``|z - depth| <= depth_tolerance * depth``.

    Args:
        alpha: ``[H, W]`` the view's alpha.
        depth: ``[H, W]`` the view's expected camera depth.
        xy: ``[P, 2]`` the points' pixel positions in the view (NaN: not projectable).
        z: ``[P]`` the points' camera depths in the view.
        foreground_threshold, depth_tolerance: as in ``LocateOptions``.
    """
    h, w = alpha.shape
    x, y = xy[:, 0], xy[:, 1]
    with np.errstate(invalid="ignore"):  # NaN positions compare False
        inside = (z > NEAR) & (x >= 0) & (x < w) & (y >= 0) & (y < h)
    u = np.where(inside, x - 0.5, 0.0)
    v = np.where(inside, y - 0.5, 0.0)
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = u - u0, v - v0
    cols = u0.astype(np.int64)[:, None] + np.array([0, 1, 0, 1])
    rows = v0.astype(np.int64)[:, None] + np.array([0, 0, 1, 1])
    weights = np.stack([(1 - fu) * (1 - fv), fu * (1 - fv), (1 - fu) * fv, fu * fv], axis=1)
    in_image = (
        inside[:, None]
        & (weights >= MIN_STENCIL_WEIGHT)
        & (cols >= 0)
        & (cols < w)
        & (rows >= 0)
        & (rows < h)
    )
    index = np.clip(rows, 0, h - 1) * w + np.clip(cols, 0, w - 1)
    z_view = depth.reshape(-1)[index].astype(np.float64)
    a_view = alpha.reshape(-1)[index]
    kept = (
        in_image
        & (a_view > foreground_threshold)
        & (z_view > 0)
        & (np.abs(z[:, None] - z_view) <= depth_tolerance * z_view)
    )
    return Footprint(index, weights, kept)


def sample_image(image: np.ndarray, fp: Footprint) -> np.ndarray:
    """Bilinear samples of ``image`` over the kept stencil pixels of ``fp``.

    Args:
        image: ``[H, W, C]`` any numeric dtype.
        fp: a footprint in the same view.

    Returns:
        ``[P, C]`` float64; rows of points that are not visible are 0.
    """
    flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
    return np.einsum("pk,pkc->pc", fp.sample_weights(), flat[fp.index])


def sample_depth(
    alpha: np.ndarray, depth: np.ndarray, xy: np.ndarray, foreground_threshold: float, depth_tolerance: float
) -> np.ndarray:
    """The depth of a view at sub-pixel positions, for unprojecting query points.

    The pixel that contains a position gives its depth z0 when it is foreground; the result is the
    bilinear average over the stencil pixels that agree with z0 (``footprint`` with z = z0), so a position
    next to a silhouette or a depth edge never averages in the background or another surface. At a
    pixel centre it is that pixel's depth.

    Args:
        alpha, depth: ``[H, W]`` the view.
        xy: ``[P, 2]`` positions inside the image.

    Returns:
        ``[P]`` float64 camera depth, NaN where the containing pixel is not foreground.
    """
    h, w = alpha.shape
    cols = np.clip(np.floor(xy[:, 0]).astype(np.int64), 0, w - 1)
    rows = np.clip(np.floor(xy[:, 1]).astype(np.int64), 0, h - 1)
    z0 = depth[rows, cols].astype(np.float64)
    on_foreground = (alpha[rows, cols] > foreground_threshold) & (z0 > 0)
    fp = footprint(alpha, depth, xy, np.where(on_foreground, z0, 0.0), foreground_threshold, depth_tolerance)
    z = np.einsum("pk,pk->p", fp.sample_weights(), depth.reshape(-1)[fp.index].astype(np.float64))
    return np.where(on_foreground & fp.visible, z, np.nan)


def anchor_order(cameras: Cameras, target: int, anchors: Sequence[int]) -> list[int]:
    """``anchors`` sorted by the distance of their camera centre to the target's, nearest first; ties
    (to 1e-6 world units) keep the order of ``anchors``."""
    positions = cameras.positions.astype(np.float64)
    distance = np.linalg.norm(positions[list(anchors)] - positions[target], axis=1)
    order = np.argsort(np.round(distance, _DISTANCE_DECIMALS), kind="stable")
    return [int(anchors[i]) for i in order]


def drop_small_regions(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    """``mask`` without its 8-connected components of fewer than ``min_pixels`` pixels.

    Args:
        mask: ``[H, W]`` bool.

    Returns:
        ``[H, W]`` bool.
    """
    if min_pixels <= 1 or not mask.any():
        return mask.copy()
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    big = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    big[0] = False  # label 0 is the background of the mask
    return big[labels]


def dilate_within(mask: np.ndarray, radius: int, within: np.ndarray) -> np.ndarray:
    """``mask`` grown by an elliptic (disc) kernel of ``radius`` pixels, then restricted to ``within``.

    Args:
        mask, within: ``[H, W]`` bool.

    Returns:
        ``[H, W]`` bool.
    """
    if radius <= 0 or not mask.any():
        return mask & within
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool) & within


# -- the backend ----------------------------------------------------------------------------------------


class GeometricBackend:
    """Unproject with the rendered depth, reproject, test against the other view's depth and alpha.

    Args:
        foreground_threshold: alpha above which a pixel is foreground, for ``track``.
        depth_tolerance: relative depth tolerance of the visibility test, for ``track``.
    """

    name = "geometric"

    def __init__(self, foreground_threshold: float = 0.5, depth_tolerance: float = 0.03):
        self.foreground_threshold = float(foreground_threshold)
        self.depth_tolerance = float(depth_tolerance)

    @property
    def device(self) -> str:
        return "cpu (numpy)"

    def track(self, frames: Views, queries: np.ndarray, backward: bool) -> tuple[np.ndarray, np.ndarray]:
        """See ``TrackerBackend.track``. Needs ``frames.alpha``, ``frames.depth`` and the cameras.

        Each query is unprojected with its frame's depth (``sample_depth``) and projected into every
        frame. Tracks are those projections wherever the point is in front of the camera (also when it
        is occluded or outside the image, as video trackers report positions through occlusion);
        visibility is the ``footprint`` test. In its own frame a query's track is its own position and
        it is visible when it lies on the foreground. A query on the background (or on a pixel whose
        depth is unusable) has no 3D point: NaN tracks and visibility 0 in every other frame. Without
        ``backward``, frames before a query's frame get NaN and 0.
        """
        if frames.alpha is None or frames.depth is None:
            raise ValueError("the geometric tracker needs the frames' alpha and depth")
        num_frames, n = len(frames), len(queries)
        thr, tol = self.foreground_threshold, self.depth_tolerance
        t_of = queries[:, 0].astype(np.int64)
        xy = queries[:, 1:3].astype(np.float64)

        # 1. The 3D point of each query, from its own frame's depth.
        world = np.full((n, 3), np.nan)
        for t in np.unique(t_of):
            sel = np.flatnonzero(t_of == t)
            z = sample_depth(frames.alpha[t], frames.depth[t], xy[sel], thr, tol)
            ok = np.isfinite(z)
            world[sel[ok]] = unproject(frames.cameras.viewmats[t], frames.cameras.Ks[t], xy[sel[ok]], z[ok])
        located = np.isfinite(world[:, 0])

        # 2. Project into every frame and test visibility there.
        tracks = np.full((num_frames, n, 2), np.nan, dtype=np.float32)
        visibility = np.zeros((num_frames, n), dtype=bool)
        for t in range(num_frames):
            wanted = located & (t_of != t) & (backward | (t_of < t))
            if not wanted.any():
                continue
            p_xy, p_z = project(frames.cameras.viewmats[t], frames.cameras.Ks[t], world[wanted])
            fp = footprint(frames.alpha[t], frames.depth[t], p_xy, p_z, thr, tol)
            tracks[t, wanted] = p_xy
            visibility[t, wanted] = fp.visible

        # 3. Each query in its own frame.
        own = np.arange(n)
        tracks[t_of, own] = xy
        visibility[t_of, own] = located
        return tracks, visibility

    def locate_unobserved(
        self, views: Views, targets: Sequence[int], anchors: Sequence[int], options: LocateOptions
    ) -> Located:
        """See ``TrackerBackend.locate_unobserved``.

        Per target: unproject every foreground pixel centre with its depth; for each anchor, nearest
        camera first, test the pixels no nearer anchor has claimed with ``footprint`` and give the
        visible ones to that anchor (position, and bilinear colour over the kept stencil pixels). The
        rest of the foreground is unobserved; regions under ``min_region_pixels`` are dropped, the mask is
        dilated within the foreground, and dilated pixels lose their anchor.
        """
        if views.rgb is None or views.alpha is None or views.depth is None:
            raise ValueError("locate_unobserved needs the views' rgb, alpha and depth")
        _, h, w = views.shape
        thr, tol = options.foreground_threshold, options.depth_tolerance
        cams = views.cameras
        num_targets = len(targets)
        unobserved = np.zeros((num_targets, h, w), dtype=bool)
        anchor_index = np.full((num_targets, h, w), -1, dtype=np.int32)
        anchor_xy = np.full((num_targets, h, w, 2), np.nan, dtype=np.float32)
        transferred = views.rgb[list(targets)].copy()
        fractions = np.zeros(num_targets, dtype=np.float32)

        for i, t in enumerate(targets):
            # 1. The target's foreground pixels as world points.
            foreground = views.alpha[t] > thr
            usable = foreground & (views.depth[t] > 0)
            xy = pixel_centres(usable)
            flat = np.flatnonzero(usable)
            world = unproject(cams.viewmats[t], cams.Ks[t], xy, views.depth[t].reshape(-1)[flat])

            # 2. Anchors, most similar view first, each claiming the pixels it sees.
            owner = np.full(len(flat), -1, dtype=np.int32)
            where = np.full((len(flat), 2), np.nan)
            colour = np.zeros((len(flat), 3))
            remaining = np.arange(len(flat))
            for a in anchor_order(cams, t, anchors):
                if remaining.size == 0:
                    break
                p_xy, p_z = project(cams.viewmats[a], cams.Ks[a], world[remaining])
                fp = footprint(views.alpha[a], views.depth[a], p_xy, p_z, thr, tol)
                seen = fp.visible
                claimed = remaining[seen]
                owner[claimed] = a
                where[claimed] = p_xy[seen]
                if options.transfer_appearance:
                    colour[claimed] = sample_image(views.rgb[a], Footprint(*(f[seen] for f in fp)))
                remaining = remaining[~seen]

            # 3. The mask: unobserved foreground, small regions dropped, dilated within the foreground.
            owner_image = np.full(h * w, -1, dtype=np.int32)
            owner_image[flat] = owner
            owner_image = owner_image.reshape(h, w)
            mask = drop_small_regions(foreground & (owner_image < 0), options.min_region_pixels)
            mask = dilate_within(mask, options.dilation_pixels, foreground)
            has_anchor = (owner_image >= 0) & ~mask

            # 4. Outputs: anchors and positions where kept, the anchors' colours there.
            keep = has_anchor.reshape(-1)[flat]
            rows, cols = np.divmod(flat[keep], w)
            anchor_index[i, rows, cols] = owner[keep]
            anchor_xy[i, rows, cols] = where[keep]
            if options.transfer_appearance:
                transferred[i, rows, cols] = np.clip(np.rint(colour[keep]), 0, 255).astype(np.uint8)
            unobserved[i] = mask
            total = int(np.count_nonzero(foreground))
            fractions[i] = np.count_nonzero(mask) / total if total else 0.0

        return Located(unobserved, anchor_index, anchor_xy, transferred, fractions)


def make_backend(
    name: str,
    *,
    foreground_threshold: float = 0.5,
    depth_tolerance: float = 0.03,
    cotracker_checkpoint: str = "",
    device: str = "auto",
    query_stride: int = 1,
    points_per_call: int = 8192,
) -> TrackerBackend:
    """The backend called ``name``, "geometric" or "cotracker".

    Args:
        name: the backend's name.
        foreground_threshold, depth_tolerance: the geometric backend's visibility test for ``track``.
        cotracker_checkpoint, device, query_stride, points_per_call: the cotracker backend's
            (``CoTrackerBackend``'s ``checkpoint``, ``device``, ``query_stride``, ``points_per_call``).

    Raises:
        ConfigError: an unknown name, or an unknown device for cotracker.
        FailedPrecondition: cotracker without its package or checkpoint.
    """
    if name == "geometric":
        return GeometricBackend(foreground_threshold, depth_tolerance)
    if name == "cotracker":
        from services.tracker.cotracker import CoTrackerBackend

        return CoTrackerBackend(
            cotracker_checkpoint, device, query_stride=query_stride, points_per_call=points_per_call
        )
    raise ConfigError(f"unknown tracker backend {name!r}; choose one of {', '.join(BACKENDS)}")
