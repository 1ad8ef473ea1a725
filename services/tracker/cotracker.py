"""The ``cotracker`` tracker backend: CoTracker3's offline predictor over the orbit video, as in the paper.

CoTracker (github.com/facebookresearch/co-tracker) is not on PyPI; its source package ``cotracker`` and
the weights (``scaled_offline.pth``, a local file) are loaded when the backend is built, and a missing
package or checkpoint stops the start with ``FailedPrecondition`` saying how to get it. torch and
``cotracker`` are imported here only, inside functions, so the tracker service imports without them.

Orbit video and "backward" tracking. For each target, the nearest anchor (``anchor_order``) is joined to
it by the views between them along the orbit (``orbit_path``), and the video is fed target first,
anchor last, with every query on frame 0: CoTracker tracks from the target's pixels to the anchor. This
is the paper's backward tracking: queries are the pixels of the new view, followed back to the view the
ring grew out of (forward tracking, from the anchor's pixels into the target, gives fragmented masks).
It is also what CoTracker's own ``backward_tracking`` computes for queries on the last frame of the
anchor-to-target video (that pass flips the video and the query times), without the forward pass that
would have nothing to track; so ``locate_unobserved`` calls the predictor with ``backward_tracking=False``.
The one difference: CoTracker tracks its 6 x 6 support grid jointly with the queries, from frame 0 of
the video it is given: here from the target, there from the anchor, which moves the tracks slightly.

Where the model runs. ``OrbitVideoTracker`` holds everything above and below the model (the orbit
video, the queries, the masks) and calls ``predict`` for each video; ``CoTrackerBackend`` is it with
CoTracker3 in this process, ``services.tracker.triton_backend.TritonTrackBackend`` with the same
``CoTrackerBackend.predict`` served by Triton (``services.tracker.triton_model``).

Pixel convention. CoTracker puts pixel centres at integers: it resizes frames with
``align_corners=True`` and scales positions by ``(model_size - 1) / (size - 1)``, so its top-left pixel
centre is (0, 0). This project's is (0.5, 0.5) (``services.common.cameras``). ``to_cotracker_xy`` and
``from_cotracker_xy`` are the one place that converts.

Query subsampling. With ``query_stride`` s > 1, the target is cut into s x s cells and each cell that
holds foreground gets one query, its foreground pixel nearest the cell's centre. Every foreground pixel
then takes the result of its own cell's query: the same visibility, and the query's anchor position
shifted by the pixel's offset from the query. That local translation is exact for s = 1; at s = 3 on a
sphere turned 30 to 90 degrees it is off by 0.3 to 0.6 pixels (median), by several pixels where the
surface grazes the target's view, and the mask changes only within 2 pixels of its edges. A cell's
query is never more than (s - 1) * sqrt(2) pixels away, and thin parts keep their own queries.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.common.cameras import Cameras
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.models import describe_device, torch_device
from services.common.serial import one_call_at_a_time
from services.common.views import Views
from services.tracker.contract import (
    Footprint,
    Located,
    LocateOptions,
    anchor_order,
    dilate_within,
    drop_small_regions,
    footprint,
    pixel_centres,
    sample_depth,
    sample_image,
)

if TYPE_CHECKING:
    import torch

INSTALL_COMMAND = "pip install git+https://github.com/facebookresearch/co-tracker"
CHECKPOINT_SETTING = "TIRE_TRACKER_COTRACKER_CHECKPOINT"
CHECKPOINT_URL = "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth"

_AZIMUTH_TOLERANCE_DEG = 1e-3
"""Views within this many degrees of the path's ends are not frames between them (float32 cameras
recover their azimuths to about 1e-5 degrees)."""

Predictor = Callable[..., tuple["torch.Tensor", "torch.Tensor"]]
"""The ``CoTrackerPredictor`` call: ``predictor(video, queries=..., backward_tracking=...)`` with video
``[1, T, 3, H, W]`` float32 in [0, 255] and queries ``[1, N, 3]`` float32 (t, x, y) in CoTracker's pixel
convention, on the backend's device; returns tracks ``[1, T, N, 2]`` (x, y), same convention, and
visibility ``[1, T, N]`` bool."""


def to_cotracker_xy(xy: np.ndarray) -> np.ndarray:
    """Pixel positions from this project's convention (top-left pixel centre (0.5, 0.5)) to CoTracker's
    (top-left pixel centre (0, 0)).

    Args:
        xy: ``[..., 2]`` (x, y) pixels.

    Returns:
        ``[..., 2]`` (x, y) pixels, same dtype.
    """
    return xy - np.asarray(0.5, dtype=xy.dtype)


def from_cotracker_xy(xy: np.ndarray) -> np.ndarray:
    """The inverse of ``to_cotracker_xy``: CoTracker's pixel positions in this project's convention."""
    return xy + np.asarray(0.5, dtype=xy.dtype)


def orbit_path(cameras: Cameras, start: int, end: int) -> list[int]:
    """The frames of the orbit video from view ``start`` to view ``end``.

    Azimuths are the cameras' angles about the world y axis (LGM: 0 on +z, 90 on +x). The path turns
    from ``start`` to ``end`` the shorter way round (increasing azimuth on a tie at 180 degrees) and
    passes every view whose azimuth lies strictly between, in the order it meets them (views at the
    same azimuth in index order); views at the azimuth of either end are not between.

    Returns:
        View indices: ``start``, the views between, ``end``.
    """
    positions = cameras.positions.astype(np.float64)
    azimuth = np.degrees(np.arctan2(positions[:, 0], positions[:, 2]))
    turn = (azimuth[end] - azimuth[start]) % 360.0
    increasing = turn <= 180.0
    length = turn if increasing else 360.0 - turn
    progress = ((azimuth - azimuth[start]) if increasing else (azimuth[start] - azimuth)) % 360.0
    between = (progress > _AZIMUTH_TOLERANCE_DEG) & (progress < length - _AZIMUTH_TOLERANCE_DEG)
    between[[start, end]] = False
    inner = np.flatnonzero(between)
    inner = inner[np.argsort(progress[inner], kind="stable")]
    return [int(start), *(int(v) for v in inner), int(end)]


def grid_queries(foreground: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """One query per ``stride`` x ``stride`` cell that holds foreground, and each pixel's query.

    A cell's query is its foreground pixel nearest the cell's centre (ties: the first in row-major
    order). With stride 1 every foreground pixel is its own query.

    Args:
        foreground: ``[H, W]`` bool.
        stride: cell side, pixels, >= 1.

    Returns:
        queries ``[Q]`` int64 flat pixel indices (row * W + col) in row-major order, and ``[P]`` int64,
        for each foreground pixel in row-major order, the position in ``queries`` of its cell's query.
    """
    w = foreground.shape[1]
    flat = np.flatnonzero(foreground)
    rows, cols = np.divmod(flat, w)
    cell = (rows // stride) * (-(-w // stride)) + cols // stride
    centre = (stride - 1) / 2.0
    offset = (rows % stride - centre) ** 2 + (cols % stride - centre) ** 2
    order = np.lexsort((flat, offset, cell))  # by cell, then nearest the centre, then row-major
    cells, first = np.unique(cell[order], return_index=True)
    chosen = order[first]  # positions in ``flat`` of each cell's query, in cell order
    by_pixel = np.argsort(flat[chosen], kind="stable")  # queries in row-major order
    queries = flat[chosen][by_pixel]
    rank = np.empty_like(by_pixel)
    rank[by_pixel] = np.arange(len(by_pixel))
    return queries, rank[np.searchsorted(cells, cell)]


def check_video(rgb: np.ndarray, queries: np.ndarray, field: str) -> None:
    """What ``predict`` can track: at least one frame of at least 2 x 2 pixels (CoTracker scales positions
    by size - 1) and at least one query, each on one of the frames.

    Args:
        rgb: ``[T, H, W, 3]`` uint8 frames.
        queries: ``[N, 3]`` (t, x, y).
        field: the request field the frames came from, for errors.

    Raises:
        InvalidArgument: naming ``field`` (the frames) or ``queries``.
    """
    if rgb.ndim != 4 or rgb.shape[3] != 3 or rgb.shape[0] < 1:
        raise InvalidArgument(field, f"shape {list(rgb.shape)}", "must be [T, H, W, 3] frames, T >= 1")
    _, h, w, _ = rgb.shape
    if h < 2 or w < 2:
        raise InvalidArgument(field, f"{w} x {h} pixels", "must be at least 2 x 2 pixels for cotracker")
    if queries.ndim != 2 or queries.shape[1] != 3 or len(queries) == 0:
        raise InvalidArgument("queries", f"shape {list(queries.shape)}", "must be [N, 3] (t, x, y), N >= 1")
    t = queries[:, 0]
    bad = ~np.isfinite(queries).all(axis=1) | (t != np.floor(t)) | (t < 0) | (t >= len(rgb))
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidArgument(
            f"queries[{i}]", queries[i].tolist(), f"must be finite with an integer t in [0, {len(rgb)})"
        )


def import_predictor_type() -> type:
    """``cotracker.predictor.CoTrackerPredictor``.

    Raises:
        FailedPrecondition: torch or the ``cotracker`` package cannot be imported; says how to install it.
    """
    try:
        import torch  # noqa: F401  (cotracker needs it; a missing torch gets the same advice)
        from cotracker.predictor import CoTrackerPredictor
    except ImportError as exc:
        raise FailedPrecondition(
            f"The cotracker tracker backend needs torch and the `cotracker` package (CoTracker3), which "
            f"cannot be imported ({exc}); it is not on PyPI: install it with `{INSTALL_COMMAND}`, or set "
            "TIRE_TRACKER_BACKEND=geometric."
        ) from exc
    return CoTrackerPredictor


def load_predictor(predictor_type: type, checkpoint: str, device: torch.device) -> Predictor:
    """CoTracker3's offline predictor with the weights of ``checkpoint``, in eval mode on ``device``.

    The weights are read with ``torch.load(weights_only=True)`` (tensors only, nothing unpickled) and
    loaded into a predictor built without a checkpoint, whose defaults (offline, window 60) are the
    architecture of ``scaled_offline.pth``.

    Args:
        predictor_type: ``CoTrackerPredictor`` (``import_predictor_type``).
        checkpoint: path of the ``.pth`` file.
        device: where the model runs.

    Raises:
        FailedPrecondition: the path is empty, not a file, unreadable, or not CoTracker3 offline weights;
            names ``TIRE_TRACKER_COTRACKER_CHECKPOINT`` and where to download the weights.
    """
    import torch

    where = f"download scaled_offline.pth from {CHECKPOINT_URL} and set {CHECKPOINT_SETTING} to its path"
    if not checkpoint:
        raise FailedPrecondition(f"{CHECKPOINT_SETTING} is not set: {where}.")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FailedPrecondition(f"{CHECKPOINT_SETTING} is {checkpoint!r}, which is not a file: {where}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state:  # training checkpoints wrap the weights
            state = state["model"]
        predictor = predictor_type(checkpoint=None)
        predictor.model.load_state_dict(state)
    except (OSError, RuntimeError, pickle.UnpicklingError, TypeError) as exc:
        raise FailedPrecondition(
            f"{CHECKPOINT_SETTING} is {checkpoint!r}, which does not hold CoTracker3 offline weights "
            f"({str(exc).splitlines()[0]}); {where}."
        ) from exc
    return predictor.to(device).eval()


class OrbitVideoTracker(ABC):
    """``track`` and ``locate_unobserved`` over the orbit video, with the video tracker behind ``predict``
    (module docstring); subclasses say where the model runs.

    Args:
        query_stride: ``locate_unobserved`` queries one pixel per ``query_stride`` x ``query_stride``
            cell of a target's foreground, >= 1.
    """

    name = "cotracker"

    def __init__(self, query_stride: int = 1):
        self.query_stride = int(query_stride)

    @abstractmethod
    def predict(
        self, rgb: np.ndarray, queries: np.ndarray, backward: bool, field: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track ``queries`` through one video with CoTracker3 (where it runs is the subclass's).

        Args:
            rgb: ``[T, H, W, 3]`` uint8 frames.
            queries: ``[N, 3]`` (t, x, y), N >= 1, t a frame index, positions in this project's
                convention; taken as float32.
            backward: CoTracker's ``backward_tracking``.
            field: the request field the frames came from, for errors.

        Returns:
            tracks ``[T, N, 2]`` float32 (x, y) in this project's convention, visibility ``[T, N]`` bool.

        Raises:
            InvalidArgument: frames or queries it cannot track (``check_video``).
        """

    def track(self, frames: Views, queries: np.ndarray, backward: bool) -> tuple[np.ndarray, np.ndarray]:
        """See ``TrackerBackend.track``. Needs ``frames.rgb``.

        Tracks are CoTracker's positions in every frame (also where the point is occluded or outside the
        image); visibility is CoTracker's. Without ``backward``, frames before a query's frame get NaN
        and visibility 0, as nothing tracked the point there.
        """
        if frames.rgb is None:
            raise ValueError("the cotracker tracker needs the frames' rgb")
        tracks, visibility = self.predict(frames.rgb, queries, backward, field="frames")
        if not backward:
            before = np.arange(len(frames))[:, None] < queries[None, :, 0]
            tracks[before] = np.nan
            visibility[before] = False
        return tracks, visibility

    def locate_unobserved(
        self, views: Views, targets: Sequence[int], anchors: Sequence[int], options: LocateOptions
    ) -> Located:
        """See ``TrackerBackend.locate_unobserved``.

        Per target: the nearest anchor and the orbit video to it (module docstring); the target's
        foreground queried on frame 0 (``grid_queries``); a pixel is observed when its track is visible
        in the anchor frame and lands on the anchor's foreground (the pixel containing it is foreground;
        the stencil pixels that agree with its depth give its colour, as in the geometric backend). The
        rest of the foreground is unobserved; regions under ``min_region_pixels`` are dropped, the mask is
        dilated within the foreground, and dilated pixels lose their anchor.
        """
        if views.rgb is None or views.alpha is None or views.depth is None:
            raise ValueError("locate_unobserved needs the views' rgb, alpha and depth")
        _, h, w = views.shape
        thr, tol = options.foreground_threshold, options.depth_tolerance
        num_targets = len(targets)
        unobserved = np.zeros((num_targets, h, w), dtype=bool)
        anchor_index = np.full((num_targets, h, w), -1, dtype=np.int32)
        anchor_xy = np.full((num_targets, h, w, 2), np.nan, dtype=np.float32)
        transferred = views.rgb[list(targets)].copy()
        fractions = np.zeros(num_targets, dtype=np.float32)

        for i, t in enumerate(targets):
            foreground = views.alpha[t] > thr
            total = int(np.count_nonzero(foreground))
            if total == 0:
                continue

            # 1. The video from the target to its nearest anchor; the target's pixels queried on frame 0.
            a = anchor_order(views.cameras, t, anchors)[0]
            path = orbit_path(views.cameras, t, a)
            flat = np.flatnonzero(foreground)
            query_pixels, query_of = grid_queries(foreground, self.query_stride)
            query_rows, query_cols = np.divmod(query_pixels, w)
            query_xy = np.stack([query_cols + 0.5, query_rows + 0.5], axis=1)
            queries = np.concatenate([np.zeros((len(query_xy), 1)), query_xy], axis=1)

            # 2. Track; every foreground pixel takes its query's result, shifted by its offset.
            tracks, visibility = self.predict(views.rgb[path], queries, False, field="views")
            xy = pixel_centres(foreground)
            where = tracks[-1][query_of].astype(np.float64) + (xy - query_xy[query_of])
            landing = self._landing(views.alpha[a], views.depth[a], where, thr, tol)
            observed = visibility[-1][query_of] & landing.visible

            # 3. The mask: unobserved foreground, small regions dropped, dilated within the foreground.
            observed_image = np.zeros(h * w, dtype=bool)
            observed_image[flat] = observed
            observed_image = observed_image.reshape(h, w)
            mask = drop_small_regions(foreground & ~observed_image, options.min_region_pixels)
            mask = dilate_within(mask, options.dilation_pixels, foreground)

            # 4. Outputs where the pixel keeps its anchor: the anchor, the position, the anchor's colour.
            keep = observed & ~mask.reshape(-1)[flat]
            rows, cols = np.divmod(flat[keep], w)
            anchor_index[i, rows, cols] = a
            anchor_xy[i, rows, cols] = where[keep]
            if options.transfer_appearance:
                colour = sample_image(views.rgb[a], Footprint(*(f[keep] for f in landing)))
                transferred[i, rows, cols] = np.clip(np.rint(colour), 0, 255).astype(np.uint8)
            unobserved[i] = mask
            fractions[i] = np.count_nonzero(mask) / total

        return Located(unobserved, anchor_index, anchor_xy, transferred, fractions)

    @staticmethod
    def _landing(
        alpha: np.ndarray, depth: np.ndarray, xy: np.ndarray, foreground_threshold: float, tolerance: float
    ) -> Footprint:
        """Where tracked points land in the anchor: visible when the pixel containing a point is foreground
        (inside the image), and kept stencil pixels that agree with that surface's depth, for colours.

        Args:
            alpha, depth: ``[H, W]`` the anchor.
            xy: ``[P, 2]`` positions in the anchor (this project's convention).
        """
        z = sample_depth(alpha, depth, xy, foreground_threshold, tolerance)
        # z = 0 (off the foreground) is behind the near plane, so footprint keeps no pixel for it.
        return footprint(alpha, depth, xy, np.nan_to_num(z, nan=0.0), foreground_threshold, tolerance)


class CoTrackerBackend(OrbitVideoTracker):
    """CoTracker3 (offline) in this process; see the module docstring.

    Args:
        checkpoint: path of ``scaled_offline.pth`` (``TIRE_TRACKER_COTRACKER_CHECKPOINT``); unused with
            ``predictor``.
        device: "auto" (the first GPU when torch sees one, else the CPU), "cpu", "cuda" or "cuda:N".
        query_stride: as ``OrbitVideoTracker``'s.
        points_per_call: queries per predictor call, >= 1; more are tracked in several calls, which
            bounds the model's memory.
        predictor: the ``Predictor`` to call instead of CoTracker3 (tests); by default the real one.

    Raises:
        FailedPrecondition: without ``predictor``, the package or the checkpoint is missing or unusable.
        ConfigError: an unknown ``device``.
    """

    def __init__(
        self,
        checkpoint: str = "",
        device: str = "auto",
        *,
        query_stride: int = 1,
        points_per_call: int = 8192,
        predictor: Predictor | None = None,
    ):
        super().__init__(query_stride)
        predictor_type = import_predictor_type() if predictor is None else None
        import torch

        self._torch = torch
        self._device = torch_device(device)
        if predictor is None:
            predictor = load_predictor(predictor_type, checkpoint, self._device)
        self._predictor = predictor
        self.points_per_call = int(points_per_call)

    @property
    def device(self) -> str:
        return describe_device(self._device, self._torch.float32)

    @one_call_at_a_time
    def predict(
        self, rgb: np.ndarray, queries: np.ndarray, backward: bool, field: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """See ``OrbitVideoTracker.predict``: the predictor on the video, ``points_per_call`` queries at a
        time."""
        check_video(rgb, queries, field)
        torch, device = self._torch, self._device
        video = torch.from_numpy(np.ascontiguousarray(rgb.transpose(0, 3, 1, 2)))
        video = video.to(device=device, dtype=torch.float32)[None]
        queries = queries.astype(np.float32)
        converted = np.concatenate([queries[:, :1], to_cotracker_xy(queries[:, 1:3])], axis=1)
        tracks, visibility = [], []
        with torch.no_grad():
            for start in range(0, len(converted), self.points_per_call):
                chunk = torch.from_numpy(
                    np.ascontiguousarray(converted[start : start + self.points_per_call])
                )
                chunk_tracks, chunk_visibility = self._predictor(
                    video, queries=chunk[None].to(device), backward_tracking=backward
                )
                tracks.append(chunk_tracks[0].float().cpu().numpy())
                visibility.append(chunk_visibility[0].bool().cpu().numpy())
        return from_cotracker_xy(np.concatenate(tracks, axis=1)), np.concatenate(visibility, axis=1)
