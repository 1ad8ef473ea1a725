"""Reconstructor backends: the two implementations of ``services.reconstructor.contract.ReconstructBackend``,
and ``make_backend``, which builds the configured one.

- ``colour-solve``: keeps the initial asset's geometry and solves the base colour of the Gaussians
  the views change by regularised least squares over all views. Any CPU, no weights.
- ``gsplat-optimize``: fine-tunes every Gaussian parameter against the views with Adam on gsplat's
  CUDA rasterizer (``services.reconstructor.optimize``, imported only when chosen). Needs CUDA, torch
  and gsplat.

Both keep what is right (DESIGN.md section 1, "do no harm"): the Gaussians of the ``locked_views``
(TIRE locks the source view) keep every parameter bit for bit, whatever the views say.

The colour solve, as ``ColourSolveBackend.reconstruct`` runs it:

1. Background: the colour the views were composited over, from their empty pixels (the views' alpha
   serves only this; the model's alpha is the render's below, which the re-render will have).
2. Contributors: render the initial asset into the views' cameras keeping each pixel's top-K
   compositing weights ``w_pk`` and Gaussian ids, and scale them to sum to the pixel's alpha (below).
3. Unknowns: of the Gaussians some pixel's top K holds, those that are neither
   - locked: a compositing weight >= ``LOCK_WEIGHT`` (0.05) in a pixel of a locked view
     (``locked_gaussians``; a Gaussian hidden behind others there has less, and is not seen), nor
   - unchanged: at most ``CHANGED_SHARE`` (5%) of its weight ``sum_p w_pg`` over the views (those of
     weight > 0) falls on changed pixels, where a channel of the view differs from the initial
     asset's render (clipped to [0, 1]) by more than ``CHANGE_TOLERANCE`` (3/255).
4. Linear model: ``y_p = sum_k w_pk c_{g_pk} + (1 - alpha_p) bg (+ sum_k w_pk h_{g_pk, v})`` over
   the unknowns, where ``c_g = 0.5 + SH_C0 f_dc`` is the base colour and ``h_gv`` the view-dependent
   part of the higher SH bands (known, moved to the right-hand side; only with ``keep_higher_sh``).
   The other Gaussians of a pixel are constants: their colour as the rasterizer gives it,
   ``max(0, c_g + h_gv)`` with every band, weighted, moves to the right-hand side
   (``constant_term``); their columns go (``_kernels.restrict_columns``), and so do the pixels left
   without an unknown.
5. Solve ``min ||A c - y||^2 + mu ||c - c0||^2``, ``mu = prior_weight * mean(diag(A^T A))``, by
   Jacobi-preconditioned conjugate gradients on ``(A^T A + mu I) c = A^T y + mu c0``, where ``c0``
   is each unknown's back-projection, the weighted mean of its pixels' colours (``back_projection``),
   also the first iterate; A and A^T are applied from the contributor lists, and ``A^T A`` is built
   once as a sparse matrix for the iterations (``_kernels``). Clip to [0, 1]. No unknowns, no solve.
   Why the back-projection and not the initial colour as the prior's centre: an unknown's initial
   colour is the drift being repaired, and a least-squares fit of overlapping Gaussians is not
   unique (neighbours can trade colour with the same renders), so a weak pull toward the drift let
   neighbours trade differently in every time step of a 4D asset. A pull of 0.03 toward each
   Gaussian's own pixels' colours prefers the smooth solution: samples/blob4d's cross-time change
   fell from 4.38 to 3.87 ΔE (0.3: 3.61, but a random cloud's colours then came back at 32 dB instead
   of over 35), held-out quality unchanged (blob, head, spotted: 20.17 and 20.22 dB).
6. New asset: ``recolour`` the unknowns; their higher SH bands are zeroed (the colour becomes
   view-independent) unless ``keep_higher_sh``. Every other Gaussian keeps every coefficient, SH
   bands included, and the geometry arrays are the initial asset's own: bit-identical.
7. Error: re-render the new asset and compare with the views (nothing re-solved: the initial render).

Frames of a 4D asset (``reconstruct_together``): when Gaussian i is one surface point in every
frame, the frames go into one solve with one colour per Gaussian: each frame's pixel model is built
from its own render (steps 1-2), the unknowns are the Gaussians changed in some frame and locked in
none (step 3), each frame's rows with their own constants stack into one A (step 4), and the solution
recolours every frame (step 6). Solved apart, a point's colour came from each time step's own
inpainting and the solve's free directions: samples/blob4d's cross-time change was 3.87 ΔE against
the drifted input's 2.41; solved together it is 0.31, and the held-out views against the truth are
better too (21.36 dB against 21.09, mean over the time steps; ``benchmarks.quality``).

Why lock and keep instead of re-solving everything (steps 3-4): a re-solve is never exact (the
top-K model, the prior, the SH bands it drops), so a Gaussian re-solved from views that agree with
it still moves. Re-solving every Gaussian any view sees cost a clean asset the sharpness of its
front, the source view of a repair 1.3 to 4.2 dB, and an SH-degree-3 asset every higher band. Now
views equal to the asset's own render give it back bit for bit (blob of 12,000 Gaussians, 18 views
of 256 x 256: 51-53 dB before, identical now, SH degree 3 included); with the back of that blob
(z < -0.1) recoloured in 3D and the source view locked, the front view stays within 55.9 dB of the
original (46.3 dB before) while the recoloured back is fitted as well as before (52.2 dB at 180°).
In the CPU pipeline (``tire run``), the source view's PSNR against the input rose from 40.0 to 43.5
dB on the LGM monkey, 42.5 to 48.1 on the LGM hamburger, 44.3 to 51.2 on fruit_drops, whose
Gaussians not re-solved (4,429 of 4,721) kept their degree-3 bands (none did before).

Why these thresholds:
- ``LOCK_WEIGHT`` 0.05: the smallest weight that does not lock the far side. Through the gaps
  between the front's discs the blob's back shows with weights up to 0.03 in the front view; locked,
  those Gaussians keep the drift (the blob's back above: 23.7 dB at 1/255, 44.0 at 0.02, 52.2 at
  0.05 and 0.1). The locked Gaussians carry 98.9% of the front view's alpha on the blob and 94.6%
  on the LGM monkey, whose front is made of many faint layers: the rest, in the solve at the source
  view's weight, moves a little (the monkey's source view: 49.3 dB at 0.02, 43.5 at 0.05, 41.0 at
  0.1, while its sides' colour distance to the subject grows from 3.3 to 3.9 as more is locked).
- ``CHANGE_TOLERANCE`` 3/255: above the views' rounding (0.5/255) and the renderers' float
  differences, below any repair's change (a refined view's changed pixels differ by 13/255 at the
  median on the LGM hamburger).
- ``CHANGED_SHARE`` 5%: a Gaussian whose pixels the views barely change (one stray pixel in 20, the
  edge of a changed region) stays as it was; its neighbours are re-solved and absorb the rest.
  With one side of the blob recoloured in 3D (x > 0.1), the untouched other side re-renders at 55.5
  dB with every Gaussian re-solved, 65.5 at 5% and the recoloured side equally well (51.3 dB).

Why renormalise the top-K weights (step 2): the weights beyond the K-th are dropped from the model,
and what they composited is still in ``y``. Left out, the solve would brighten the top K to make up
for them (re-renders of a 3,000-Gaussian test scene at K = 8: 24 dB PSNR). Scaled to the pixel's
alpha, the tail is modelled as having the top K's weighted mean colour, which neighbouring Gaussians
of one surface nearly do (same scene: 38 dB). K = 8 holds about 82% of the alpha of a pixel of a
dense random cloud (50k Gaussians, 14 views of 256 x 256) and 85% on the LGM monkey; its re-renders
reach 34 and 44 dB there; K = 16 reaches 42 and 50 dB at twice the solve time.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from services.common.cameras import Cameras
from services.common.errors import ConfigError
from services.common.gaussians import SH_C0, Gaussians, recolour
from services.common.rasterizer import rasterize
from services.common.serial import one_call_at_a_time
from services.common.views import Views
from services.reconstructor import _kernels
from services.reconstructor.contract import (
    BACKENDS,
    ReconstructBackend,
    Reconstruction,
    SolveOptions,
    check_locked_views,
    locked_gaussians,
    rms_error,
)

MAX_CONTRIBUTORS = 64
CHANGE_TOLERANCE = 3.0 / 255.0
"""A view's pixel is changed where some channel differs from the initial asset's render by more."""
CHANGED_SHARE = 0.05
"""A Gaussian is re-solved only if more than this share of its weight falls on changed pixels."""


@dataclass(frozen=True, eq=False)
class PixelModel:
    """The linear model of the covered pixels: ``targets ~ A @ colours[gaussians]``.

    Attributes:
        pixels: ``[P]`` int64 flat index into ``[V, H, W]`` of each row, increasing.
        ids: ``[P, K]`` int32 columns (indices into ``gaussians``) by decreasing weight, -1 where unused.
        weights: ``[P, K]`` float32 compositing weights (renormalised: see the module docstring).
        targets: ``[P, 3]`` float64 pixel colour minus the background's share, 0..1 scale.
        gaussians: ``[M]`` int64 the Gaussians the columns stand for, increasing.
    """

    pixels: np.ndarray
    ids: np.ndarray
    weights: np.ndarray
    targets: np.ndarray
    gaussians: np.ndarray


@dataclass(frozen=True, eq=False)
class ColourSolve:
    """The result of ``solve_colours``.

    Attributes:
        colours: ``[M, 3]`` float64 solution (not clipped).
        iterations: conjugate-gradient iterations run.
        residuals: ``[iterations + 1, 3]`` float64 relative residual ``||r|| / ||b||`` per channel,
            before the first iteration and after each.
    """

    colours: np.ndarray
    iterations: int
    residuals: np.ndarray


class ColourSolveBackend:
    """The CPU colour solve. ``contributors`` is K; ``threads=0`` uses every core numba sees."""

    name = "colour-solve"

    def __init__(self, contributors: int = 8, threads: int = 0, renormalise: bool = True):
        self.contributors = contributors
        self.threads = threads or None
        self.renormalise = renormalise

    @property
    def device(self) -> str:
        import numba

        return f"cpu ({self.threads or numba.config.NUMBA_NUM_THREADS} threads)"

    def reconstruct(
        self,
        views: Views,
        initial: Gaussians,
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> Reconstruction:
        return self.reconstruct_together([(views, initial)], options, view_weights, locked_views)[0]

    @one_call_at_a_time
    def reconstruct_together(
        self,
        frames: Sequence[tuple[Views, Gaussians]],
        options: SolveOptions,
        view_weights: np.ndarray | None = None,
        locked_views: Sequence[int] = (),
    ) -> list[Reconstruction]:
        if not frames:
            raise ValueError("frames must hold at least one (views, initial) pair")
        n = len(frames[0][1])
        for f, (views, initial) in enumerate(frames):
            if views.rgb is None or views.alpha is None:
                raise ValueError(f"frame {f}: views must carry rgb and alpha")
            if len(initial) != n:
                raise ValueError(f"frame {f} holds {len(initial)} Gaussians, frame 0 holds {n}")
            if len(views) != len(frames[0][0]):
                raise ValueError(f"frame {f} has {len(views)} views, frame 0 has {len(frames[0][0])}")
        locked_views = check_locked_views(locked_views, len(frames[0][0]))
        counted = np.ones(len(frames[0][0]), bool) if view_weights is None else np.asarray(view_weights) > 0
        with _numba_threads(self.threads):
            # 1-2. Each frame's background and pixel model.
            fits = [self._frame_fit(views, initial) for views, initial in frames]

            # 3. The unknowns: seen and changed in some frame, locked in none. A Gaussian has one colour
            #    in every frame, so one locked anywhere stays the input's everywhere.
            locked = np.zeros(n, dtype=bool)
            changed = np.zeros(n, dtype=bool)
            for (views, initial), fit in zip(frames, fits, strict=True):
                locked |= locked_gaussians(initial, views.cameras[locked_views])
                share = changed_share(fit.model, changed_pixels(fit.initial_rgb, views.rgb), counted)
                changed[fit.model.gaussians[share > CHANGED_SHARE]] = True
            unknown = changed & ~locked
            gaussians = np.flatnonzero(unknown)
            column = np.full(n, -1, dtype=np.int32)
            column[gaussians] = np.arange(len(gaussians), dtype=np.int32)

            # 4. Each frame's rows of the linear model, over the common columns of the unknowns.
            ids, weights, targets = [], [], []
            for (views, initial), fit in zip(frames, fits, strict=True):
                rows = self._frame_rows(fit, views, initial, unknown, column, options, view_weights)
                ids.append(rows[0])
                weights.append(rows[1])
                targets.append(rows[2])

            # 5. Regularised least squares by preconditioned conjugate gradients; then clip.
            solved, iterations = np.empty((0, 3)), 0
            if len(gaussians):
                ids_all, weights_all = np.concatenate(ids), np.concatenate(weights)
                targets_all = np.concatenate(targets)
                projected = back_projection(ids_all, weights_all, targets_all)
                solve = solve_colours(
                    ids_all,
                    weights_all,
                    targets_all,
                    projected,
                    prior_weight=options.prior_weight,
                    max_iterations=options.max_iterations,
                    tolerance=options.tolerance,
                    start=projected,
                )
                solved, iterations = np.clip(solve.colours, 0.0, 1.0), solve.iterations

            # 6. The new frames: the unknowns recoloured; every other Gaussian keeps every coefficient.
            # 7. The error of re-renders against the views (nothing re-solved: the initial render).
            results = []
            for (views, initial), fit in zip(frames, fits, strict=True):
                colours = base_colours(initial)
                colours[gaussians] = solved
                rebuilt = recolour(initial, colours, which=unknown, keep_higher_sh=options.keep_higher_sh)
                rerender = (
                    rasterize(rebuilt, views.cameras, fit.background).rgb
                    if len(gaussians)
                    else fit.initial_rgb
                )
                results.append(
                    Reconstruction(
                        gaussians=rebuilt,
                        rms_error=rms_error(rerender, views.rgb),
                        iterations=iterations,
                        locked=int(locked.sum()),
                        kept=n - int(locked.sum()) - len(gaussians),
                        resolved=len(gaussians),
                        higher_sh_kept=options.keep_higher_sh or initial.sh_degree == 0 or not len(gaussians),
                    )
                )
        return results

    def _frame_fit(self, views: Views, initial: Gaussians) -> _FrameFit:
        """Steps 1-2 for one frame: its background, its pixel model and its initial render."""
        background = views.background
        render = rasterize(initial, views.cameras, background, contributors=self.contributors)
        model = pixel_model(
            render.ids, render.weights, render.alpha, views.rgb, background, len(initial), self.renormalise
        )
        return _FrameFit(background, model, render.rgb)

    @staticmethod
    def _frame_rows(
        fit: _FrameFit,
        views: Views,
        initial: Gaussians,
        unknown: np.ndarray,
        column: np.ndarray,
        options: SolveOptions,
        view_weights: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Step 4 for one frame: ``(ids [P', K] int32, weights [P', K] float32, targets [P', 3]
        float64)``, the rows of its pixels that hold an unknown, ids numbered by ``column`` (``[N]``
        int32, each unknown Gaussian's column in the common solve)."""
        model = fit.model
        frame_unknown = unknown[model.gaussians]
        targets = model.targets - constant_term(model, initial, views.cameras, ~frame_unknown)
        rows, ids, weights = _kernels.restrict_columns(model.ids, model.weights, frame_unknown)
        model = PixelModel(model.pixels[rows], ids, weights, targets[rows], model.gaussians[frame_unknown])
        targets = model.targets
        if options.keep_higher_sh and initial.sh_degree > 0:
            targets = targets - view_dependent_term(model, initial, views.cameras)
        if view_weights is not None:
            # Weighted least squares: scaling a pixel's row and target by sqrt(w) weighs its squared
            # residual by w.
            pixels_per_view = views.cameras.width * views.cameras.height
            row_scale = np.sqrt(np.asarray(view_weights, np.float64))[model.pixels // pixels_per_view]
            weights = (weights * row_scale[:, None]).astype(np.float32)
            targets = targets * row_scale[:, None]
        # The frame's columns (indices into model.gaussians) become the common solve's.
        ids = np.where(ids >= 0, column[model.gaussians][np.maximum(ids, 0)], -1).astype(np.int32)
        return ids, weights, targets


@dataclass(frozen=True, eq=False)
class _FrameFit:
    """One frame's background ``[3]`` float64, pixel model, and initial render ``[V, H, W, 3]`` float."""

    background: np.ndarray
    model: PixelModel
    initial_rgb: np.ndarray


def changed_pixels(rendered: np.ndarray, rgb: np.ndarray, tolerance: float = CHANGE_TOLERANCE) -> np.ndarray:
    """``[V, H, W]`` bool: where the views differ from the render by more than ``tolerance``.

    The render is clipped to [0, 1] first, as the views were (SH colours have no upper bound).

    Args:
        rendered: ``[V, H, W, 3]`` float, the initial asset's render over the background.
        rgb: ``[V, H, W, 3]`` uint8 the views.
        tolerance: largest channel difference still "unchanged", 0..1 scale.
    """
    changed = np.empty(rendered.shape[:-1], dtype=bool)
    for v in range(len(rendered)):  # one view at a time: the float copies stay small
        clipped = np.clip(rendered[v].astype(np.float32), 0.0, 1.0)
        changed[v] = np.abs(clipped - rgb[v].astype(np.float32) / np.float32(255.0)).max(axis=-1) > tolerance
    return changed


def changed_share(model: PixelModel, changed: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """``[M]`` float64 each column's weighted share of changed pixels, over the views counted.

    ``s_g = sum_p w_pg [p changed] / sum_p w_pg`` over the model's pixels in views that count (those
    of weight > 0); 0 for a Gaussian no counted view sees.

    Args:
        model: the pixel model.
        changed: ``[V, H, W]`` bool (``changed_pixels``).
        counted: ``[V]`` bool the views that count.
    """
    m = len(model.gaussians)
    pixels_per_view = changed.shape[1] * changed.shape[2]
    in_counted = np.asarray(counted, bool)[model.pixels // pixels_per_view]
    values = np.zeros((len(model.pixels), 3))
    values[:, 0] = in_counted & changed.reshape(-1)[model.pixels]
    values[:, 1] = in_counted
    sums = np.empty((m, 3))
    _kernels.scatter(model.ids, model.weights, values, np.empty((_kernels.CHUNKS, m, 3)), sums)
    return np.divide(sums[:, 0], sums[:, 1], out=np.zeros(m), where=sums[:, 1] > 0.0)


def constant_term(
    model: PixelModel, gaussians: Gaussians, cameras: Cameras, constant: np.ndarray
) -> np.ndarray:
    """``[P, 3]`` float64 ``sum_k w_pk col_{g_pk, v(p)}`` over the constant columns of each model pixel.

    ``col_gv = max(0, c_g + h_gv)`` is the colour the rasterizer gives Gaussian g in view v, every SH
    band included.

    Args:
        model: the pixel model.
        gaussians: the N Gaussians its columns index (through ``model.gaussians``).
        cameras: the V cameras of its views.
        constant: ``[M]`` bool the constant columns.
    """
    starts = np.searchsorted(model.pixels, np.arange(len(cameras) + 1) * (cameras.width * cameras.height))
    base = base_colours(gaussians)[model.gaussians]
    out = np.empty((len(model.pixels), 3))
    for v, h in enumerate(_view_dependent_per_view(gaussians, cameras, model.gaussians)):
        colours = np.where(constant[:, None], np.maximum(base + h, 0.0), 0.0)
        a, b = starts[v], starts[v + 1]
        _kernels.gather(model.ids[a:b], model.weights[a:b], colours, out[a:b])
    return out


def pixel_model(
    ids: np.ndarray,
    weights: np.ndarray,
    alpha: np.ndarray,
    rgb: np.ndarray,
    background: np.ndarray,
    n: int,
    renormalise: bool = True,
) -> PixelModel:
    """Build the linear model from a render's top-K contributors.

    Args:
        ids: ``[V, H, W, K]`` int32 contributor ids (the rasterizer's, -1 where unused).
        weights: ``[V, H, W, K]`` float32 their compositing weights.
        alpha: ``[V, H, W]`` float32 the render's coverage.
        rgb: ``[V, H, W, 3]`` uint8 the views to fit.
        background: ``[3]`` float in [0, 1].
        n: N, the number of Gaussians rendered.
        renormalise: scale each pixel's K weights to sum to its alpha.

    Returns:
        The model of every pixel with at least one contributor, columns for every Gaussian that
        contributes to one.
    """
    k = ids.shape[-1]
    pixels, rows, row_weights, targets = _kernels.select_pixels(
        np.ascontiguousarray(ids.reshape(-1, k), dtype=np.int32),
        np.ascontiguousarray(weights.reshape(-1, k), dtype=np.float32),
        np.ascontiguousarray(alpha.reshape(-1), dtype=np.float32),
        np.ascontiguousarray(rgb.reshape(-1, 3), dtype=np.uint8),
        np.asarray(background, dtype=np.float64),
        renormalise,
    )
    columns, gaussians = _kernels.compact_columns(rows, n)
    return PixelModel(pixels, columns, row_weights, targets, gaussians)


def base_colours(gaussians: Gaussians) -> np.ndarray:
    """``[N, 3]`` float64 degree-0 colour ``0.5 + SH_C0 * f_dc`` (not clipped)."""
    return 0.5 + SH_C0 * gaussians.sh[:, 0, :].astype(np.float64)


def sh_basis(dirs: np.ndarray, degree: int) -> np.ndarray:
    """Real SH basis functions, gsplat's constants, signs and order (``_eval_sh_bases_fast``).

    Args:
        dirs: ``[..., 3]`` directions (normalised here; a zero vector gives NaN).
        degree: 0 to 3.

    Returns:
        ``[..., (degree + 1) ** 2]`` float64.
    """
    if degree not in (0, 1, 2, 3):
        raise ValueError(f"degree must be 0, 1, 2 or 3, got {degree!r}")
    d = np.asarray(dirs, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    out = np.empty((*d.shape[:-1], (degree + 1) ** 2))
    out[..., 0] = 0.2820947917738781
    if degree >= 1:
        out[..., 1] = -0.48860251190292 * y
        out[..., 2] = 0.48860251190292 * z
        out[..., 3] = -0.48860251190292 * x
    if degree >= 2:
        z2 = z * z
        tmp_b = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        out[..., 4] = 0.5462742152960395 * s1
        out[..., 5] = tmp_b * y
        out[..., 6] = 0.9461746957575601 * z2 - 0.3153915652525201
        out[..., 7] = tmp_b * x
        out[..., 8] = 0.5462742152960395 * c1
    if degree >= 3:
        tmp_c = -2.285228997322329 * z2 + 0.4570457994644658
        tmp_b = 1.445305721320277 * z
        c2 = x * c1 - y * s1
        s2 = x * s1 + y * c1
        out[..., 9] = -0.5900435899266435 * s2
        out[..., 10] = tmp_b * s1
        out[..., 11] = tmp_c * y
        out[..., 12] = z * (1.865881662950577 * z2 - 1.119528997770346)
        out[..., 13] = tmp_c * x
        out[..., 14] = tmp_b * c1
        out[..., 15] = -0.5900435899266435 * c2
    return out


def evaluate_sh(dirs: np.ndarray, coeffs: np.ndarray, degree: int | None = None) -> np.ndarray:
    """``sum_k Y_k(dirs) coeffs[..., k, :]`` over the first ``(degree + 1) ** 2`` coefficients.

    The same as gsplat's ``_spherical_harmonics(degree, dirs, coeffs)`` (no 0.5 offset, no clamp).

    Args:
        dirs: ``[..., 3]`` view directions (camera to Gaussian; normalised here).
        coeffs: ``[..., K, 3]`` SH coefficients, K >= (degree + 1) ** 2.
        degree: 0 to 3; None for the highest that K holds.

    Returns:
        ``[..., 3]`` float64.
    """
    coeffs = np.asarray(coeffs)
    if degree is None:
        degree = math.isqrt(coeffs.shape[-2]) - 1
    k = (degree + 1) ** 2
    if coeffs.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} coefficients, coeffs has {coeffs.shape[-2]}")
    basis = sh_basis(dirs, degree)
    return np.einsum("...k,...kc->...c", basis, coeffs[..., :k, :].astype(np.float64))


def view_dependent_colours(
    gaussians: Gaussians, cameras: Cameras, which: np.ndarray | None = None
) -> np.ndarray:
    """The higher SH bands' share of each Gaussian's colour seen from each camera (bands >= 1).

    Args:
        gaussians: N Gaussians.
        cameras: V cameras.
        which: ``[M]`` int indices of the Gaussians wanted; None for all.

    Returns:
        ``[V, M, 3]`` float64 ``h_gv``, the colour minus its degree-0 part, as the rasterizer evaluates
        it (direction from the camera centre to the mean); zeros for an SH-degree-0 asset.
    """
    return np.stack(list(_view_dependent_per_view(gaussians, cameras, which)))


def _view_dependent_per_view(
    gaussians: Gaussians, cameras: Cameras, which: np.ndarray | None
) -> Iterator[np.ndarray]:
    """``view_dependent_colours`` one view at a time: V arrays ``[M, 3]`` float64."""
    index = np.arange(len(gaussians)) if which is None else np.asarray(which)
    degree = gaussians.sh_degree
    means = gaussians.means[index].astype(np.float64)
    coeffs = gaussians.sh[index, 1:].astype(np.float64)  # [M, K - 1, 3]
    for position in cameras.positions.astype(np.float64):
        if degree == 0:
            yield np.zeros((len(index), 3))
        else:
            basis = sh_basis(means - position, degree)[:, 1:]
            yield np.einsum("mk,mkc->mc", basis, coeffs)


def view_dependent_term(model: PixelModel, gaussians: Gaussians, cameras: Cameras) -> np.ndarray:
    """``[P, 3]`` float64 ``sum_k w_pk h_{g_pk, v(p)}``, each model pixel's view-dependent colour."""
    starts = np.searchsorted(model.pixels, np.arange(len(cameras) + 1) * (cameras.width * cameras.height))
    out = np.empty((len(model.pixels), 3))
    for v, h in enumerate(_view_dependent_per_view(gaussians, cameras, model.gaussians)):
        a, b = starts[v], starts[v + 1]
        _kernels.gather(model.ids[a:b], model.weights[a:b], h, out[a:b])
    return out


def back_projection(ids: np.ndarray, weights: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each column's weighted mean of the un-composited colour of its pixels: a starting guess.

    ``x_g = sum_p w_pg (t_p / a_p) / sum_p w_pg`` with ``a_p = sum_k w_pk``, clipped to [0, 1].

    Args:
        ids: ``[P, K]`` int32 columns; weights: ``[P, K]`` float32; targets: ``[P, 3]`` float64.

    Returns:
        ``[M, 3]`` float64, M = ``ids.max() + 1``.
    """
    m = int(ids.max(initial=-1)) + 1
    partial = np.empty((_kernels.CHUNKS, m, 3))
    coverage = np.empty_like(targets)
    _kernels.gather(ids, weights, np.ones((m, 3)), coverage)
    numerator, denominator = np.empty((m, 3)), np.empty((m, 3))
    _kernels.scatter(ids, weights, targets / np.maximum(coverage, 1e-12), partial, numerator)
    _kernels.scatter(ids, weights, np.ones_like(targets), partial, denominator)
    return np.clip(numerator / np.maximum(denominator, 1e-30), 0.0, 1.0)


def solve_colours(
    ids: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    initial: np.ndarray,
    *,
    prior_weight: float = 1e-3,
    max_iterations: int = 200,
    tolerance: float = 1e-6,
    start: np.ndarray | None = None,
) -> ColourSolve:
    """Minimise ``||A c - t||^2 + mu ||c - c0||^2`` by Jacobi-preconditioned conjugate gradients.

    The normal equations ``(A^T A + mu I) c = A^T t + mu c0``, ``mu = prior_weight * mean(diag A^T A)``,
    with ``A^T A`` built once as a sparse matrix (``_kernels.gram``), are solved for the three channels
    at once (each its own step sizes; a channel stops when its
    relative residual reaches ``tolerance``, the solve when all have or after ``max_iterations``).

    Args:
        ids: ``[P, K]`` int32 columns in [0, M), -1 where unused; every column must occur.
        weights: ``[P, K]`` float32 the entries of A.
        targets: ``[P, 3]`` float64 t.
        initial: ``[M, 3]`` float64 c0, the prior's centre.
        prior_weight: relative weight of the prior, >= 0.
        max_iterations: iteration cap, >= 1.
        tolerance: relative residual ``||r|| / ||b||`` to stop at.
        start: ``[M, 3]`` float64 first iterate; None starts at ``initial``.
    """
    import numba

    m = len(initial)
    row_ptr, cols, vals = _kernels.gram(ids, weights, m, tasks=4 * numba.get_num_threads())
    diag = _kernels.diagonal(row_ptr, cols, vals)
    mu = prior_weight * float(diag.mean()) if m else 0.0
    inv_diag = (1.0 / np.maximum(diag + mu, 1e-300))[:, None]
    product = np.empty((m, 3))

    def normal(vector: np.ndarray) -> np.ndarray:
        _kernels.spmv(row_ptr, cols, vals, vector, product)
        return product + mu * vector

    partial = np.empty((_kernels.CHUNKS, m, 3))
    b = np.empty((m, 3))
    _kernels.scatter(ids, weights, targets, partial, b)
    b += mu * initial
    b_norm = np.sqrt((b * b).sum(axis=0))
    b_norm[b_norm == 0.0] = 1.0  # b = 0: measure the residual itself

    x = (initial if start is None else start).astype(np.float64, copy=True)
    r = b - normal(x)
    z = inv_diag * r
    p = z.copy()
    rz = (r * z).sum(axis=0)
    residuals = [np.sqrt((r * r).sum(axis=0)) / b_norm]
    done = residuals[0] <= tolerance
    iterations = 0
    while iterations < max_iterations and not done.all():
        q = normal(p)
        pq = (p * q).sum(axis=0)
        step = np.divide(rz, pq, out=np.zeros(3), where=~done & (pq > 0.0))
        x += step * p
        r -= step * q
        iterations += 1
        residuals.append(np.sqrt((r * r).sum(axis=0)) / b_norm)
        done |= residuals[-1] <= tolerance
        z = inv_diag * r
        rz_next = (r * z).sum(axis=0)
        beta = np.divide(rz_next, rz, out=np.zeros(3), where=~done & (rz > 0.0))
        p = z + beta * p
        rz = rz_next
    return ColourSolve(colours=x, iterations=iterations, residuals=np.asarray(residuals))


@contextmanager
def _numba_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` numba threads (None: leave the setting), restoring it after."""
    import numba

    previous = numba.get_num_threads()
    if threads is not None:
        numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def make_backend(
    name: str,
    contributors: int = 8,
    threads: int = 0,
    device: str = "cuda",
    views_per_step: int = 4,
    learning_rate_scale: float = 3.0,
) -> ReconstructBackend:
    """The backend called ``name``, "colour-solve" or "gsplat-optimize".

    ``contributors`` and ``threads`` configure the colour solve; ``device``, ``views_per_step`` and
    ``learning_rate_scale`` the optimisation (see ``services.reconstructor.optimize``).

    Raises:
        ConfigError: an unknown name, a setting out of range, or "gsplat-optimize" without CUDA,
            torch or gsplat.
    """
    import numba

    if name not in BACKENDS:
        raise ConfigError(f"unknown reconstructor backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if not 1 <= contributors <= MAX_CONTRIBUTORS:
        raise ConfigError(f"contributors must be between 1 and {MAX_CONTRIBUTORS}, got {contributors!r}")
    if not 0 <= threads <= numba.config.NUMBA_NUM_THREADS:
        raise ConfigError(
            f"threads must be between 0 (all) and {numba.config.NUMBA_NUM_THREADS}, got {threads!r}"
        )
    if name == "gsplat-optimize":
        # gsplat compiles its CUDA extension on first use; keep the build where the renderer keeps it.
        os.environ.setdefault(
            "TORCH_EXTENSIONS_DIR",
            os.path.join(os.path.expanduser("~"), ".cache", "tire", "torch_extensions"),
        )
        try:
            from services.reconstructor.optimize import GsplatOptimizeBackend
        except ImportError as exc:
            raise ConfigError(
                "backend 'gsplat-optimize' needs torch and gsplat "
                f"(pip install 'tire-services[gsplat]'): {exc}"
            ) from exc
        return GsplatOptimizeBackend(
            device=device, views_per_step=views_per_step, learning_rate_scale=learning_rate_scale
        )
    return ColourSolveBackend(contributors=contributors, threads=threads)
