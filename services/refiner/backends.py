"""Refiner backends: one narrow interface, and the geometric ``consensus`` backend.

After the rings are inpainted view by view, neighbouring views disagree where they overlap. The
``consensus`` backend makes them agree through the asset itself: the Gaussians are the one surface
every view shows, so each view's pixels vote on how each Gaussian's colour should change, the votes
are averaged (the source view's weigh ``source_weight`` times more), the asset is recoloured with the
result and re-rendered, and each view moves toward that re-render as far as its update mask and the
strength allow.

Why it is a consensus: a Gaussian seen by several views takes one colour correction, the weighted mean
of what all of them say, so after re-rendering they show it in one colour. A Gaussian seen by a single
view simply takes that view's colour. A pixel whose mask is 0 (the source view) never changes, but it
still votes.

What it is not: it is not a diffusion model. It invents nothing: it cannot sharpen, add detail finer
than the Gaussians, or fix geometry; it averages colours the views already hold, and gives the
Gaussians no view-dependent colour of their own (the correction is added to the view-independent base
colour). The ``mv-diffusion`` backend (``services.refiner.mv_diffusion``: a multi-view diffusion model with
mask-aware latent updates, as in the paper) is the one that hallucinates; it needs the ``diffusion`` extra
(torch, diffusers, transformers), weights and, in production, a GPU, and is imported only when chosen. The
``triton`` backend (``services.refiner.triton_backend``) is mv-diffusion served by a Triton Inference Server
(``services.refiner.triton_model``): the same answers, with the model and its device in Triton.

The votes are residuals, not raw colours: each pixel votes for ``x - r``, its un-composited colour
minus the un-composited colour the asset renders there, and the correction is added to the
Gaussian's colour. Voting raw colours (setting each Gaussian to the weighted mean of the pixels it
touches) would blur the asset: every pixel blends several Gaussians, so the mean of pixels is a
low-pass copy of the Gaussians' colours, and views that already agree with the asset would lose
detail. With residuals, views that agree with the asset vote for no change, and refining them is a
no-op up to the uint8 rounding of their pixels.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numba
import numpy as np

from services.common.errors import ConfigError
from services.common.gaussians import SH_C0, Gaussians
from services.common.rasterizer import rasterize
from services.common.serial import one_call_at_a_time
from services.common.views import Views

BACKENDS = ("consensus", "mv-diffusion", "triton")


class RefineBackend(Protocol):
    """Makes V views of one asset agree with each other."""

    name: str
    default_strength: float  # what a request's strength 0 (unset) means for this backend

    @property
    def device(self) -> str:
        """Where it computes, for Describe, for example "cpu (2 threads)"."""
        ...

    def refine(
        self,
        views: Views,
        update_mask: np.ndarray,
        gaussians: Gaussians,
        source_index: int,
        strength: float,
        seed: int,
    ) -> np.ndarray:
        """Refine the views jointly.

        Args:
            views: V views: rgb ``[V, H, W, 3]`` uint8, alpha and depth ``[V, H, W]`` float32, cameras.
            update_mask: ``[V, H, W]`` float32 in [0, 1]; 0 keeps a pixel, 1 lets it change fully.
            gaussians: the N Gaussians of the asset the views show.
            source_index: index of the source (front) view, which weighs most when views disagree.
            strength: in [0, 1], how far pixels may move (0: not at all).
            seed: random seed, for stochastic backends.

        Returns:
            ``[V, H, W, 3]`` uint8 refined views. Pixels whose mask is 0 are bit-identical to the input,
            so a view with an all-zero mask comes back unchanged.
        """
        ...


class ConsensusBackend:
    """Back-project every view onto the Gaussians, fuse, re-render, blend (see the module docstring).

    Args:
        threads: rasterizer threads, 0 for every core numba sees.
        contributors: K, how many of each pixel's largest contributors receive its vote.
        source_weight: how much more the source view's votes weigh than any other view's.
        min_coverage: pixels vote only where both the view's alpha and the asset's rendered alpha are
            above this (un-compositing divides by alpha).
        min_weight: Gaussians whose summed vote weight is below this keep their colour.
    """

    name = "consensus"
    default_strength = 0.3
    """The paper's refinement strength, read here as a blend 30% of the way to the consensus render."""

    def __init__(
        self,
        threads: int = 0,
        contributors: int = 8,
        source_weight: float = 10.0,
        min_coverage: float = 0.5,
        min_weight: float = 0.05,
    ):
        if not 0 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ConfigError(
                f"refiner threads must be between 0 and {numba.config.NUMBA_NUM_THREADS}, got {threads}."
            )
        if contributors < 1:
            raise ConfigError(f"refiner contributors must be at least 1, got {contributors}.")
        self.threads = threads or None
        self.contributors = contributors
        self.source_weight = source_weight
        self.min_coverage = min_coverage
        self.min_weight = min_weight

    @property
    def device(self) -> str:
        return f"cpu ({self.threads or numba.config.NUMBA_NUM_THREADS} threads)"

    @one_call_at_a_time
    def refine(
        self,
        views: Views,
        update_mask: np.ndarray,
        gaussians: Gaussians,
        source_index: int,
        strength: float,
        seed: int,
    ) -> np.ndarray:
        """See ``RefineBackend.refine``. Deterministic: ``seed`` is not used."""
        rgb, alpha = views.rgb, views.alpha
        v = len(views)
        # 0. Nothing may move: skip the work.
        changing = np.flatnonzero(update_mask.reshape(v, -1).max(axis=1, initial=0.0) > 0.0)
        if strength <= 0.0 or changing.size == 0:
            return rgb.copy()

        # 1. The background the views were composited over.
        background = views.background

        # 2. Each pixel's top-K contributors, and the colours the asset renders as it is.
        before = rasterize(
            gaussians, views.cameras, background, contributors=self.contributors, num_threads=self.threads
        )

        # 3. Back-project: each covered pixel votes for (its colour - the asset's) on its contributors.
        residual, voting = pixel_residuals(
            rgb, alpha, before.rgb, before.alpha, background, self.min_coverage
        )
        view_weights = np.ones(v, dtype=np.float64)
        view_weights[source_index] = self.source_weight
        votes, weight = splat_votes(
            before.ids, before.weights, residual, voting, view_weights, len(gaussians)
        )

        # 4. Fuse: Gaussians with enough votes take the weighted mean correction.
        seen = (weight > 0.0) & (weight >= self.min_weight)
        correction = np.zeros_like(votes)
        correction[seen] = votes[seen] / weight[seen, None]
        fused = shift_base_colours(gaussians, correction, seen)

        # 5. Re-render the fused asset in the views that may change (same background).
        after = rasterize(fused, views.cameras[changing], background, num_threads=self.threads)

        # 6. Blend each changing view toward its re-render where the mask allows.
        out = rgb.copy()
        out[changing] = blend(rgb[changing], after.rgb, update_mask[changing], strength)
        return out


def pixel_residuals(
    rgb: np.ndarray,
    alpha: np.ndarray,
    rendered_rgb: np.ndarray,
    rendered_alpha: np.ndarray,
    background: np.ndarray,
    min_coverage: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's un-composited colour minus the asset's, and which pixels may vote.

    Un-compositing ``x = (I - (1 - a) bg) / a`` recovers the colour of the surface under a pixel, free
    of the background; the residual is ``x_view - x_asset``.

    Args:
        rgb: ``[V, H, W, 3]`` uint8 views.
        alpha: ``[V, H, W]`` float32 their coverage.
        rendered_rgb: ``[V, H, W, 3]`` float32 in [0, 1], the asset rendered in the same cameras.
        rendered_alpha: ``[V, H, W]`` float32 its coverage.
        background: ``[3]`` float, the background both were composited over.
        min_coverage: pixels vote where both alphas are above this.

    Returns:
        residual: ``[V, H, W, 3]`` float32, 0 where a pixel does not vote.
        voting: ``[V, H, W]`` bool.
    """
    voting = (alpha > min_coverage) & (rendered_alpha > min_coverage)
    bg = np.asarray(background, dtype=np.float32)
    a = np.where(voting, alpha, 1.0)[..., None]
    a0 = np.where(voting, rendered_alpha, 1.0)[..., None]
    x = (rgb.astype(np.float32) / 255.0 - (1.0 - a) * bg) / a
    r = (rendered_rgb - (1.0 - a0) * bg) / a0
    residual = np.where(voting[..., None], x - r, 0.0).astype(np.float32)
    return residual, voting


def splat_votes(
    ids: np.ndarray,
    weights: np.ndarray,
    residual: np.ndarray,
    voting: np.ndarray,
    view_weights: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum every voting pixel's residual onto its contributors, weighted by compositing weight and view.

    ``votes[g] = sum lambda_v w_vpk d_vp`` and ``weight[g] = sum lambda_v w_vpk`` over the views v, the
    voting pixels p and their contributors k with ``ids[v, p, k] == g``.

    Args:
        ids: ``[V, H, W, K]`` int32 contributor indices, -1 for none (after the last real one).
        weights: ``[V, H, W, K]`` float32 their compositing weights.
        residual: ``[V, H, W, 3]`` float32 per-pixel votes ``d``.
        voting: ``[V, H, W]`` bool, the pixels that vote.
        view_weights: ``[V]`` float64 ``lambda_v``.
        n: the number of Gaussians.

    Returns:
        votes: ``[N, 3]`` float64; weight: ``[N]`` float64.
    """
    return _splat_votes(
        np.ascontiguousarray(ids, dtype=np.int32),
        np.ascontiguousarray(weights, dtype=np.float32),
        np.ascontiguousarray(residual, dtype=np.float32),
        np.ascontiguousarray(voting, dtype=np.bool_),
        np.ascontiguousarray(view_weights, dtype=np.float64),
        int(n),
    )


@numba.njit(cache=True)
def _splat_votes(ids, weights, residual, voting, view_weights, n):
    v_count, height, width, k_top = ids.shape
    votes = np.zeros((n, 3))
    weight = np.zeros(n)
    for v in range(v_count):
        lam = view_weights[v]
        for i in range(height):
            for j in range(width):
                if not voting[v, i, j]:
                    continue
                for k in range(k_top):
                    g = ids[v, i, j, k]
                    if g < 0:
                        break
                    w = lam * weights[v, i, j, k]
                    weight[g] += w
                    for c in range(3):
                        votes[g, c] += w * residual[v, i, j, c]
    return votes, weight


def shift_base_colours(gaussians: Gaussians, correction: np.ndarray, which: np.ndarray) -> Gaussians:
    """A copy of ``gaussians`` whose base (degree-0) colour moves by ``correction`` where ``which``.

    The DC coefficient moves by ``correction / SH_C0``, so the colour ``0.5 + SH_C0 * f_dc`` moves by
    ``correction`` in every direction; higher SH bands, geometry and the other Gaussians are kept.
    Unlike ``recolour``, nothing is clipped, so a zero correction changes nothing.

    Args:
        gaussians: N Gaussians.
        correction: ``[N, 3]`` float RGB offsets.
        which: ``[N]`` bool, the Gaussians to change.
    """
    sh = gaussians.sh.copy()
    sh[which, 0, :] += (correction[which] / SH_C0).astype(np.float32)
    return dataclasses.replace(gaussians, sh=sh)


def blend(rgb: np.ndarray, rendered: np.ndarray, mask: np.ndarray, strength: float) -> np.ndarray:
    """``I + strength * M * (R - I)`` rounded to uint8; where ``M == 0`` the input bytes are copied.

    Args:
        rgb: ``[V, H, W, 3]`` uint8 views I.
        rendered: ``[V, H, W, 3]`` float32 in [0, 1] re-renders R (clipped to [0, 1] here).
        mask: ``[V, H, W]`` float32 M in [0, 1].
        strength: in [0, 1].

    Returns:
        ``[V, H, W, 3]`` uint8.
    """
    image = rgb.astype(np.float32)
    target = np.clip(rendered, 0.0, 1.0) * 255.0
    step = (np.float32(strength) * mask)[..., None]
    moved = np.clip(np.rint(image + step * (target - image)), 0, 255).astype(np.uint8)
    return np.where((mask == 0)[..., None], rgb, moved)


def make_backend(name: str, **options) -> RefineBackend:
    """The backend called ``name`` ("consensus", "mv-diffusion", or "triton": mv-diffusion served by
    Triton, ``services.refiner.triton_backend``), built with ``options`` (its constructor's keywords).

    Raises:
        ConfigError: an unknown name, an option out of range, (mv-diffusion) missing packages, no model
            or one that does not load, or (triton) no ``tritonclient``.
    """
    if name == "consensus":
        return ConsensusBackend(**options)
    if name == "mv-diffusion":
        try:
            from services.refiner.mv_diffusion import MvDiffusionBackend
        except ImportError as exc:
            raise ConfigError(
                "refiner backend 'mv-diffusion' needs the diffusion extra (torch, diffusers, transformers): "
                f"pip install 'tire-services[diffusion]' ({exc})."
            ) from exc
        return MvDiffusionBackend(**options)
    if name == "triton":
        try:
            from services.refiner.triton_backend import TritonRefineBackend

            return TritonRefineBackend(**options)
        except ImportError as exc:
            raise ConfigError(
                f"refiner backend 'triton' needs tritonclient: pip install 'tritonclient[grpc]' ({exc})."
            ) from exc
    raise ConfigError(f"unknown refiner backend {name!r}; choose one of {', '.join(BACKENDS)}")
