"""The reconstructor stage's contract: the backend interface, its options and result, and what every
backend shares.

``ReconstructBackend`` is what the service calls: ``reconstruct`` fits an asset to views of it,
``reconstruct_together`` fits the time steps of a 4D asset in one solve. ``SolveOptions`` holds the
options (the API's defaults), ``Reconstruction`` the result, ``BACKENDS`` the implementations
(``services.reconstructor.backends`` builds them). Every backend keeps the Gaussians of the locked
views bit for bit (``locked_gaussians``, ``check_locked_views``) and reports ``rms_error``.

Conventions: views as ``services.common.views.Views`` (rgb ``[V, H, W, 3]`` uint8, alpha ``[V, H, W]``
float32); colours in [0, 1] once rendered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common.cameras import Cameras
from services.common.gaussians import Gaussians
from services.common.rasterizer import rasterize
from services.common.views import Views

BACKENDS = ("colour-solve", "gsplat-optimize")
LOCK_WEIGHT = 0.05
"""A Gaussian with a compositing weight of at least this in a pixel of a locked view is locked."""
LOCK_CONTRIBUTORS = math.ceil(1.0 / LOCK_WEIGHT)
"""Contributors per pixel the lock test renders: a pixel's weights sum to its alpha (< 1), so fewer
than this many reach ``LOCK_WEIGHT``, and the test sees every one that does."""


@dataclass(frozen=True)
class SolveOptions:
    """Options of one reconstruction; the defaults are the API's.

    Attributes:
        keep_higher_sh: keep the initial asset's SH bands above degree 0 (and fit the base colour
            with their view-dependent colour as a known term) instead of zeroing them.
        prior_weight: weight of the pull toward each unknown's back-projection (the weighted mean of
            its pixels' colours), relative to the data term; >= 0.
        max_iterations: cap on conjugate-gradient iterations, >= 1.
        tolerance: relative residual ``||r|| / ||b||`` (per channel) at which the solver stops, in (0, 1).
    """

    keep_higher_sh: bool = False
    prior_weight: float = 0.03
    max_iterations: int = 200
    tolerance: float = 1e-6

    def __post_init__(self) -> None:
        if not (math.isfinite(self.prior_weight) and self.prior_weight >= 0.0):
            raise ValueError(f"prior_weight must be finite and >= 0, got {self.prior_weight!r}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations!r}")
        if not 0.0 < self.tolerance < 1.0:
            raise ValueError(f"tolerance must lie in (0, 1), got {self.tolerance!r}")


@dataclass(frozen=True, eq=False)
class Reconstruction:
    """The result of ``reconstruct``.

    Attributes:
        gaussians: the new asset; its geometry arrays are the initial asset's.
        rms_error: RMS colour error of re-renders against the views, 0..1 scale, over every pixel
            and channel.
        iterations: solver iterations run.
        locked: Gaussians locked by the locked views (every parameter kept bit for bit).
        kept: Gaussians neither locked nor re-fitted (every parameter kept bit for bit).
        resolved: Gaussians re-fitted; ``locked + kept + resolved`` is the asset's N.
        higher_sh_kept: every Gaussian kept its SH bands above degree 0 (``keep_higher_sh``, an
            SH-degree-0 asset, or nothing re-fitted); False when the re-fitted ones' were zeroed.
    """

    gaussians: Gaussians
    rms_error: float
    iterations: int
    locked: int = 0
    kept: int = 0
    resolved: int = 0
    higher_sh_kept: bool = True


class ReconstructBackend(Protocol):
    """Turns views of an asset back into an asset."""

    name: str

    @property
    def device(self) -> str:
        """Where it computes, for Describe, for example "cpu (2 threads)"."""
        ...

    def reconstruct(
        self,
        views: Views,
        initial: Gaussians,
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> Reconstruction:
        """Fit ``initial`` to ``views``.

        Args:
            views: rgb ``[V, H, W, 3]`` uint8, alpha ``[V, H, W]`` float32, cameras (depth unused).
            initial: N Gaussians, the asset the views were rendered from.
            options: solver options.
            view_weights: ``[V]`` float, each view's weight in the fit (>= 0, not all 0); None: equal.
            locked_views: distinct indices < V of the views whose Gaussians (``locked_gaussians``)
                keep every parameter bit for bit.
        """
        ...

    def reconstruct_together(
        self,
        frames: Sequence[tuple[Views, Gaussians]],
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> list[Reconstruction]:
        """Fit the frames of a 4D asset in one solve, each Gaussian one colour in every frame.

        Args:
            frames: F pairs of views (V each, as in ``reconstruct``) and the frame they were rendered
                from; every frame holds N Gaussians, Gaussian i of each being one surface point.
            options, view_weights, locked_views: as in ``reconstruct``, for each frame's V views; a
                Gaussian locked in one frame is locked in all.

        Returns:
            F reconstructions, in order; their counts are alike (one Gaussian is treated alike in every
            frame), their ``rms_error`` each frame's own.

        Raises:
            Unimplemented: a backend that fits one frame at a time, given more than one.
        """
        ...


def check_locked_views(locked_views: Sequence[int], num_views: int) -> np.ndarray:
    """``[L]`` int64 the locked views' indices, checked: distinct, each in [0, V).

    Raises:
        ValueError: an index out of range or repeated; the message names it.
    """
    indices = np.asarray(locked_views, dtype=np.int64).reshape(-1)
    for i, index in enumerate(indices.tolist()):
        if not 0 <= index < num_views:
            raise ValueError(f"locked_views[{i}] must be a view index below {num_views}, got {index}")
        if index in indices[:i]:
            raise ValueError(f"locked_views[{i}] repeats view {index}")
    return indices


def locked_gaussians(gaussians: Gaussians, cameras: Cameras) -> np.ndarray:
    """``[N]`` bool: the Gaussians with a compositing weight >= ``LOCK_WEIGHT`` in a pixel of a camera.

    A Gaussian hidden behind others in every one of these views has a weight below it everywhere (it
    is not seen) and is not locked. Every such weight is found: each view is rendered with
    ``LOCK_CONTRIBUTORS`` per pixel (weights do not depend on the background).

    Args:
        gaussians: N Gaussians.
        cameras: the locked views' cameras (none: nothing is locked).
    """
    locked = np.zeros(len(gaussians), dtype=bool)
    for view in range(len(cameras)):
        render = rasterize(gaussians, cameras[view], contributors=LOCK_CONTRIBUTORS)
        locked[render.ids[render.weights >= LOCK_WEIGHT]] = True
    return locked


def rms_error(rendered: np.ndarray, rgb: np.ndarray) -> float:
    """RMS of ``rendered - rgb / 255`` over every pixel and channel.

    Args:
        rendered: ``[V, H, W, 3]`` float in [0, 1].
        rgb: ``[V, H, W, 3]`` uint8.
    """
    diff = rendered.astype(np.float64) - rgb.astype(np.float64) / 255.0
    return float(np.sqrt(np.mean(diff * diff)))
