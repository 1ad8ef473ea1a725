"""Tracker backends: the geometric implementation of ``services.tracker.contract.TrackerBackend``, and
``make_backend``, which builds the configured one of the three.

- ``geometric``: exact for splat assets. The renderer gives every view's expected depth and camera, so a
  pixel of one view is unprojected to the 3D point it shows, projected into the other views, and tested
  against their depth (occlusion) and alpha (coverage). No appearance matching, no weights, any CPU.
- ``cotracker``: the paper's CoTracker3 (offline) over the orbit video, in ``services.tracker.cotracker``
  (imported only when chosen: it needs torch, the ``cotracker`` package and a checkpoint).
- ``triton``: the same cotracker, its model served by a Triton Inference Server
  (``services.tracker.triton_backend``; it needs ``tritonclient``, not torch). Its name is ``cotracker``.

The geometry lives in small pure functions with their shapes (``project``, ``unproject`` in
``services.common.cameras``; ``footprint``, ``sample_depth``, ``sample_image`` in the contract, shared
with cotracker); ``GeometricBackend`` only loops over views.

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

import numpy as np

from services.common.cameras import project, unproject
from services.common.errors import ConfigError
from services.common.views import Views
from services.tracker.contract import (
    BACKENDS,
    NEAR,
    Footprint,
    Located,
    LocateOptions,
    TrackerBackend,
    anchor_order,
    dilate_within,
    drop_small_regions,
    footprint,
    pixel_centres,
    sample_depth,
    sample_image,
)

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
            p_xy, p_z = project(frames.cameras.viewmats[t], frames.cameras.Ks[t], world[wanted], NEAR)
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
                p_xy, p_z = project(cams.viewmats[a], cams.Ks[a], world[remaining], NEAR)
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
    triton_url: str = "",
    triton_version: str = "",
) -> TrackerBackend:
    """The backend called ``name``, "geometric", "cotracker" or "triton".

    Args:
        name: the backend's name.
        foreground_threshold, depth_tolerance: the geometric backend's visibility test for ``track``.
        cotracker_checkpoint, device, query_stride, points_per_call: the cotracker backend's
            (``CoTrackerBackend``'s ``checkpoint``, ``device``, ``query_stride``, ``points_per_call``).
        triton_url, triton_version: the triton backend's (``TritonTrackBackend``'s ``url`` and
            ``version``); it takes ``query_stride`` too.

    Raises:
        ConfigError: an unknown name, an unknown device for cotracker, triton without its address.
        FailedPrecondition: cotracker without its package or checkpoint.
        ImportError: triton without ``tritonclient``.
    """
    if name == "geometric":
        return GeometricBackend(foreground_threshold, depth_tolerance)
    if name == "cotracker":
        from services.tracker.cotracker import CoTrackerBackend

        return CoTrackerBackend(
            cotracker_checkpoint, device, query_stride=query_stride, points_per_call=points_per_call
        )
    if name == "triton":
        if not triton_url:
            raise ConfigError("the triton backend needs Triton's address: set TIRE_TRACKER_TRITON_URL.")
        from services.tracker.triton_backend import TritonTrackBackend

        return TritonTrackBackend(triton_url, triton_version, query_stride=query_stride)
    raise ConfigError(f"unknown tracker backend {name!r}; choose one of {', '.join(BACKENDS)}")
