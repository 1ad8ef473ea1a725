"""The tracker stage's contract: the backend interface, its options and result, and the helpers every
backend shares.

``TrackerBackend`` is what the service calls: ``track`` follows query points through T frames,
``locate_unobserved`` finds, for each target view, the foreground pixels no anchor view observes (the
inpainting mask) and, for the others, which anchor sees them and where. ``LocateOptions`` holds its
thresholds and ``Located`` its result; ``BACKENDS`` names the implementations (``services.tracker.backends``
builds them).

Conventions. Pixel positions are (x, y) with the top-left pixel centre at (0.5, 0.5), as in
``services.common.cameras``; depth is camera z (not the distance along the ray), world units; images are
``[H, W]`` (alpha, depth, masks) or ``[H, W, C]`` (rgb), and stacks of them take a leading view axis.
The shared helpers test points against a view through the 4-pixel bilinear stencil around them
(``footprint``, ``Footprint``), sample over the kept stencil pixels (``sample_image``, ``sample_depth``),
rank anchors (``anchor_order``) and post-process masks (``drop_small_regions``, ``dilate_within``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import cv2
import numpy as np

from services.common.cameras import Cameras
from services.common.views import Views

BACKENDS = ("geometric", "cotracker", "triton")

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
