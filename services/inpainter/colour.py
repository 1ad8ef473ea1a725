"""The maths of the ``colour`` backend: a colour model of the subject, and a colour transfer that keeps
the structure of the region it repaints.

- ``fit_colour_model``: k-means (k-means++ seeding, Lloyd iterations) on the CIELab colours of the
  references' foreground, kept as a Gaussian mixture (``ColourModel``), stored as safetensors.
- ``inpaint_view``, per view, part-aware (a drifted region takes the colours of the subject's part
  next to it, not the subject's whole palette):
  1. fill holes (masked pixels with no rendered content) with OpenCV's Telea inpainting, from the
     rendered foreground only (``fill_holes``);
  2. find the drifted regions (``locate_drift``): masked regions where most colours lie far from
     every cluster of the model. A region whose colours already fit a part of the subject (a clean
     back, the hamburger's lettuce) stays exactly as it is;
  3. transfer onto the part's palette: the model's clusters reweighted by the observed pixels
     (the unmasked foreground: what the anchors showed) they explain, each pixel counted by its
     nearness to the drifted region (``local_palette``); the drifted colours moved onto that palette
     by optimal transport (``palette_transfer``: between Gaussian mixtures, then sliced, the
     displacement smoothed), so their order survives (the light stripe stays the light one) and a
     part of the subject absent from the surroundings is never painted in; then, near the mask's
     edge, the local mean shifted onto the observed surface's (``continue_observed``), so colour
     continues across it (no seam);
  4. move ``strength`` times the drift weight of the way; back to sRGB; only the pixels that move
     go through Lab and back. A view with no observed pixel takes the subject's whole palette.

Pure functions on numpy arrays, deterministic for their ``rng``. The two fast kernels (numba, they
release the GIL) have plain numpy twins the tests compare them with: ``apply_transport`` /
``apply_transport_reference`` and ``apply_mixture_transport`` / ``apply_mixture_transport_reference``.

Colours: sRGB uint8 in, sRGB uint8 out; CIELab (D65 white, OpenCV's float convention: L in [0, 100],
a and b roughly in [-128, 127]) in between.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
import safetensors
import safetensors.numpy
from numba import njit

from services.inpainter.artifacts import canonical_safetensors, read_safetensors_metadata
from services.inpainter.contract import InvalidSubject

BACKEND = "colour"
ARTIFACT_FORMAT = "1"
COLOUR_SPACE = "CIELab D65"
# Added to the diagonal of every cluster's covariance (Lab units squared): keeps one-colour clusters
# sampleable (positive definite) and is far below what the eye tells apart (about 1 Lab unit).
COVARIANCE_REGULARISATION = 1.0
INTERIOR_KERNEL = np.ones((5, 5), dtype=np.uint8)  # the interior: mask > 0.99, eroded by 2 pixels
MIN_INTERIOR_SHARE = 0.25  # with less interior than this share of the foreground, no cluster is dropped
EDGE_CLUSTER_INTERIOR_SHARE = 0.35  # a cluster with less interior than this is made of edge blends

# Part-aware inpainting (``inpaint_view``); chosen on the ground-truth benchmark (benchmarks.quality).
MISFIT_FLOOR_LAB = (8.0, 2.0, 2.0)
"""Each cluster's spread is taken as at least this many Lab units along L, a and b when telling whether a
colour belongs to the subject: a tight cluster would call its own shading drift, and lightness is
floored widest because a part in shadow or in light (the darker stripes on a clean back) is the same
part, while drift moves hue and chroma (toward blue-grey). On clean textured blobs a floor of 2 on L
moved 1.6 ΔE of their backs; 8 moves nothing, and repairs their drifted twins as well (ring views,
foreground PSNR 21.9 against 22.0 dB)."""
MISFIT_THRESHOLD = 4.0
"""A colour further than this (Mahalanobis, standard deviations) from every cluster of the subject has
drifted. Measured on textured blobs: the clean back's pixels have a median of 0.7 and a 95th
percentile of 5 (the darkest stripes), the drifted back's a 5th percentile of 5."""
DRIFT_SHARE = (0.15, 0.45)
"""The share of drifted pixels around a masked pixel at which its region starts to move (below: it is
left exactly as it is) and at which it moves all the way."""
PART_SCALE = 0.12
"""The size of a part of the subject, as a fraction of the foreground's side: the unit of the drift
decision's window and of the reaches below."""
PALETTE_REACH = 2.0
"""Observed pixels pick the palette of a drifted region with a weight falling off as a Gaussian of this
many part sizes from it. On the ground-truth benchmark (benchmarks.quality, mean held-out foreground
PSNR of the five objects): 1 → 20.4 dB (the zebra only 4.0 dB over doing nothing), 1.5 → 21.4,
2 → 22.1, 3 → 21.9 (a cream face alone in a view took some of the brown fur beside it)."""
CONTINUITY_REACH = 0.5
"""The window, in part sizes, over which the transferred colours' local mean is shifted onto the
observed surface's next to the mask's edge."""
CONTINUITY_FULL = 0.4
"""The density of observed pixels in that window at which the shift is whole; it fades to 0 with the
density. Lower continues colour more exactly across the edge but imposes the phase of a fine texture
found there (zebra, palette reach 3: held-out PSNR 17.6 dB at 0.2, 18.4 at 0.4, 18.8 at 0.6); higher
leaves a seam and lets a region beside two parts take a blend of them."""
MIN_TRUSTED_PIXELS = 16
"""With fewer observed foreground pixels in a view, it falls back to the subject's whole palette
(``palette_transfer``)."""

Progress = Callable[[int, int, float], None]


# ----------------------------------------------------------------------------------------------------
# Colour conversion


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB to CIELab.

    Args:
        rgb: ``[..., 3]`` uint8 sRGB.

    Returns:
        ``[..., 3]`` float32 Lab: L in [0, 100], a and b roughly in [-128, 127].
    """
    if rgb.size == 0:
        return np.zeros(rgb.shape, dtype=np.float32)
    flat = rgb.reshape(-1, 1, 3).astype(np.float32) * np.float32(1.0 / 255.0)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(rgb.shape)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """CIELab to sRGB, rounded; colours outside the sRGB gamut are clipped per channel.

    Args:
        lab: ``[..., 3]`` float Lab (as ``rgb_to_lab`` returns).

    Returns:
        ``[..., 3]`` uint8 sRGB.
    """
    if lab.size == 0:
        return np.zeros(lab.shape, dtype=np.uint8)
    flat = np.ascontiguousarray(lab, dtype=np.float32).reshape(-1, 1, 3)
    rgb = cv2.cvtColor(flat, cv2.COLOR_Lab2RGB).reshape(lab.shape)
    return np.rint(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------
# The subject's colour model


def kmeans(
    points: np.ndarray, k: int, iterations: int, rng: np.random.Generator, progress: Progress | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding.

    Each iteration assigns every point to its nearest centre, reports the mean squared distance, then
    moves each centre to the mean of its points (a centre left with no point stays where it is), so
    the reported losses never increase.

    Args:
        points: ``[N, D]`` float64, N >= 1.
        k: clusters, >= 1 (may exceed N: centres then repeat).
        iterations: Lloyd iterations, >= 1.
        rng: the seeding's randomness.
        progress: called as ``progress(iteration, iterations, loss)`` after each assignment.

    Returns:
        centres ``[k, D]`` float64, labels ``[N]`` int64 (the nearest centre of each point, after the
        last update), losses ``[iterations]`` float64.
    """
    n = len(points)
    centres = np.empty((k, points.shape[1]), dtype=np.float64)
    centres[0] = points[rng.integers(n)]
    nearest = _squared_distances(points, centres[:1])[:, 0]
    for j in range(1, k):
        cumulative = np.cumsum(nearest)
        if cumulative[-1] > 0:
            pick = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
        else:  # every point sits on a centre already
            pick = int(rng.integers(n))
        centres[j] = points[min(pick, n - 1)]
        nearest = np.minimum(nearest, _squared_distances(points, centres[j : j + 1])[:, 0])

    losses = np.empty(iterations, dtype=np.float64)
    for step in range(iterations):
        distances = _squared_distances(points, centres)
        labels = np.argmin(distances, axis=1)
        losses[step] = float(np.take_along_axis(distances, labels[:, None], axis=1).mean())
        if progress is not None:
            progress(step + 1, iterations, losses[step])
        counts = np.bincount(labels, minlength=k)
        filled = counts > 0
        for d in range(points.shape[1]):
            sums = np.bincount(labels, weights=points[:, d], minlength=k)
            centres[filled, d] = sums[filled] / counts[filled]
    labels = np.argmin(_squared_distances(points, centres), axis=1)
    return centres, labels, losses


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``[N, K]`` squared Euclidean distances between ``points [N, D]`` and ``centres [K, D]``."""
    distances = (points * points).sum(axis=1)[:, None] - 2.0 * (points @ centres.T)
    distances += (centres * centres).sum(axis=1)[None, :]
    return np.maximum(distances, 0.0, out=distances)


@dataclass(frozen=True, eq=False)
class ColourModel:
    """A subject's colours: a Gaussian mixture in CIELab.

    Attributes:
        weights: ``[K]`` float32, positive, summing to 1: the share of the foreground each cluster holds.
        means: ``[K, 3]`` float32 Lab.
        covariances: ``[K, 3, 3]`` float32, symmetric positive definite (Lab units squared).
        pixels: foreground pixels the model was fitted on (before subsampling).
    """

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    pixels: int

    def __len__(self) -> int:
        return len(self.weights)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``[n, 3]`` float64 Lab colours drawn from the mixture (L clipped to [0, 100])."""
        weights = self.weights.astype(np.float64)
        counts = rng.multinomial(n, weights / weights.sum())
        component = np.repeat(np.arange(len(self)), counts)
        chol = np.linalg.cholesky(self.covariances.astype(np.float64))
        noise = rng.standard_normal((n, 3))
        samples = self.means.astype(np.float64)[component] + np.einsum("nij,nj->ni", chol[component], noise)
        samples[:, 0] = np.clip(samples[:, 0], 0.0, 100.0)
        return samples

    def to_bytes(self, **metadata: str) -> bytes:
        """The artifact: safetensors with ``weights``, ``means``, ``covariances`` and metadata
        ``backend``, ``format``, ``colour_space``, ``pixels`` (plus ``metadata``), byte-stable."""
        header = {
            "backend": BACKEND,
            "format": ARTIFACT_FORMAT,
            "colour_space": COLOUR_SPACE,
            "pixels": str(self.pixels),
            **metadata,
        }
        tensors = {
            "weights": np.ascontiguousarray(self.weights, dtype=np.float32),
            "means": np.ascontiguousarray(self.means, dtype=np.float32),
            "covariances": np.ascontiguousarray(self.covariances, dtype=np.float32),
        }
        return canonical_safetensors(tensors, header)

    @classmethod
    def from_bytes(cls, data: bytes) -> ColourModel:
        """Parse and check an artifact written by ``to_bytes``.

        Raises:
            InvalidSubject: not safetensors, another backend's or format's model, or tensors of the
                wrong names, shapes or values; the message says which.
        """
        try:
            tensors = safetensors.numpy.load(data)
            metadata = read_safetensors_metadata(data)
        except (safetensors.SafetensorError, KeyError, ValueError) as exc:
            raise InvalidSubject(f"is not a readable safetensors file ({exc})") from exc
        backend = metadata.get("backend", "")
        if backend != BACKEND:
            raise InvalidSubject(f"was made by backend {backend!r}, not {BACKEND!r}")
        if metadata.get("format") != ARTIFACT_FORMAT:
            raise InvalidSubject(f"has format {metadata.get('format')!r}, expected {ARTIFACT_FORMAT!r}")
        if sorted(tensors) != ["covariances", "means", "weights"]:
            raise InvalidSubject(f"holds tensors {sorted(tensors)}, expected covariances, means, weights")
        weights, means, covariances = tensors["weights"], tensors["means"], tensors["covariances"]
        k = len(weights)
        shapes_ok = (
            k >= 1
            and weights.shape == (k,)
            and means.shape == (k, 3)
            and covariances.shape == (k, 3, 3)
            and all(t.dtype == np.float32 for t in (weights, means, covariances))
        )
        if not shapes_ok:
            raise InvalidSubject(
                f"holds weights {list(weights.shape)}, means {list(means.shape)}, covariances "
                f"{list(covariances.shape)}, expected float32 [K], [K, 3], [K, 3, 3]"
            )
        if not all(np.isfinite(t).all() for t in (weights, means, covariances)):
            raise InvalidSubject("holds NaN or infinite values")
        if (weights <= 0).any():
            raise InvalidSubject("has weights that are not positive")
        if not np.allclose(covariances, covariances.transpose(0, 2, 1), rtol=1e-5, atol=1e-5):
            raise InvalidSubject("has covariances that are not symmetric")
        try:
            np.linalg.cholesky(covariances.astype(np.float64))
        except np.linalg.LinAlgError as exc:
            raise InvalidSubject("has covariances that are not positive definite") from exc
        try:
            pixels = int(metadata.get("pixels", "0"))
        except ValueError as exc:
            raise InvalidSubject(f"has a malformed pixel count {metadata.get('pixels')!r}") from exc
        return cls(weights=weights, means=means, covariances=covariances, pixels=pixels)


def fit_colour_model(
    images: np.ndarray,
    masks: np.ndarray,
    *,
    clusters: int,
    iterations: int,
    seed: int,
    max_samples: int = 20_000,
    progress: Progress | None = None,
) -> ColourModel:
    """The subject's colours: k-means in CIELab over the foreground of the reference images.

    Args:
        images: ``[R, H, W, 3]`` uint8 sRGB references.
        masks: ``[R, H, W]`` float32 in [0, 1]; the foreground is where it is above 0.5. Clusters
            with under ``EDGE_CLUSTER_INTERIOR_SHARE`` of their pixels in its interior (mask above
            0.99, eroded by 2 pixels) are blends with the background and are dropped (unless the
            interior holds under ``MIN_INTERIOR_SHARE`` of the foreground).
        clusters: K, clusters of the mixture (clusters left empty are dropped).
        iterations: Lloyd iterations.
        seed: seeds the subsampling and the k-means++ seeding; the same inputs and seed give the
            same model.
        max_samples: foreground pixels used at most (a uniform subsample when there are more).
        progress: ``progress(iteration, iterations, loss)``, loss = mean squared Lab distance of the
            pixels to their cluster's centre.

    Raises:
        ValueError: no foreground pixel.
    """
    foreground = masks > 0.5
    if not foreground.any():
        raise ValueError("the masks mark no foreground pixel (none above 0.5)")
    # Edge pixels blend the subject with the background: a cluster made mostly of them (pale,
    # neutral) would make drifted pale blue-grey look like a part of the subject, so such clusters
    # are dropped. Thin parts (an ear's rim, a tail's tip) share their cluster with interior pixels
    # of the same colour and stay.
    interior = np.stack([cv2.erode((m > 0.99).astype(np.uint8), INTERIOR_KERNEL) > 0 for m in masks])
    pixels, inner = images[foreground], interior[foreground]
    rng = np.random.default_rng(seed)
    chosen = np.arange(len(pixels))
    if len(pixels) > max_samples:
        chosen = np.sort(rng.choice(len(pixels), max_samples, replace=False))
    lab = rgb_to_lab(pixels[chosen]).astype(np.float64)
    inner = inner[chosen]
    _, labels, _ = kmeans(lab, clusters, iterations, rng, progress)
    if np.count_nonzero(inner) >= MIN_INTERIOR_SHARE * len(inner):
        counts = np.maximum(np.bincount(labels, minlength=clusters), 1)
        interior_share = np.bincount(labels, weights=inner, minlength=clusters) / counts
        keep = interior_share[labels] >= EDGE_CLUSTER_INTERIOR_SHARE
        lab, labels = lab[keep], labels[keep]
    weights, means, covariances = mixture_statistics(lab, labels, clusters)
    return ColourModel(
        weights=weights.astype(np.float32),
        means=means.astype(np.float32),
        covariances=covariances.astype(np.float32),
        pixels=len(pixels),
    )


def mixture_statistics(
    points: np.ndarray, labels: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Gaussian mixture of a clustering; empty clusters are dropped.

    Args:
        points: ``[N, 3]`` float64.
        labels: ``[N]`` int, cluster of each point, in [0, k).
        k: clusters.

    Returns:
        weights ``[K']`` (shares of the points), means ``[K', 3]``, covariances ``[K', 3, 3]``
        (+ ``COVARIANCE_REGULARISATION`` on the diagonal), all float64, K' <= k non-empty clusters.
    """
    counts = np.bincount(labels, minlength=k)
    weights, means, covariances = [], [], []
    for j in np.flatnonzero(counts):
        members = points[labels == j]
        mean = members.mean(axis=0)
        centred = members - mean
        weights.append(counts[j] / len(points))
        means.append(mean)
        covariances.append(centred.T @ centred / len(members) + COVARIANCE_REGULARISATION * np.eye(3))
    return np.asarray(weights), np.asarray(means), np.asarray(covariances)


# ----------------------------------------------------------------------------------------------------
# Transport between Gaussian mixtures


@dataclass(frozen=True, eq=False)
class MixtureTransport:
    """A smooth colour map that moves whole colour clusters: ``T(x) = sum_i p_i(x) (c_i + B_i (x - m_i))``.

    ``p_i(x)`` is the posterior of source component i (weights ``weights``, means ``means``, inverse
    Cholesky factors ``inv_chol`` of the covariances); ``c_i`` and ``B_i`` average the Gaussian optimal
    maps from component i to the target components it is matched with.

    Attributes:
        weights: ``[K]`` float64.
        means: ``[K, 3]`` float64.
        inv_chol: ``[K, 3, 3]`` float64, ``L_i^-1`` with ``L_i L_i^T`` the covariance.
        log_norm: ``[K]`` float64, ``log weights_i - log det L_i``.
        targets: ``[K, 3]`` float64, the ``c_i``.
        linear: ``[K, 3, 3]`` float64, the ``B_i``.
    """

    weights: np.ndarray
    means: np.ndarray
    inv_chol: np.ndarray
    log_norm: np.ndarray
    targets: np.ndarray
    linear: np.ndarray


def fit_mixture_transport(
    source: np.ndarray, model: ColourModel, clusters: int, rng: np.random.Generator, iterations: int = 10
) -> MixtureTransport:
    """Optimal transport between Gaussian mixtures (Delon and Desolneux, "A Wasserstein-type distance in
    the space of Gaussian mixture models", SIAM J. Imaging Sci. 2020), used there for colour transfer.

    The source colours are clustered (k-means) into a mixture; its components are matched to the
    model's by discrete optimal transport with the squared 2-Wasserstein distance between Gaussians as
    the cost (entropic, nearly exact: ``sinkhorn``); each source component then moves by the plan-
    weighted average of the Gaussian optimal maps to its matched components. Clusters move as wholes,
    to the target clusters that their share and position call for, which a sliced transport alone does
    not do (it splits clusters along its random directions).

    Args:
        source: ``[M, 3]`` float64 colours.
        model: the target mixture.
        clusters: source components, at most.
        rng: the clustering's seeding.
        iterations: k-means iterations.
    """
    _, labels, _ = kmeans(source, min(clusters, len(source)), iterations, rng)
    weights, means, covariances = mixture_statistics(source, labels, clusters)
    target_weights = model.weights.astype(np.float64)
    target_weights /= target_weights.sum()
    target_means = model.means.astype(np.float64)
    target_covariances = model.covariances.astype(np.float64)

    # Gaussian optimal maps A_ij = S_i^-1/2 (S_i^1/2 T_j S_i^1/2)^1/2 S_i^-1/2 and W2^2 costs.
    root, inv_root = _sqrtm(covariances), _sqrtm(covariances, inverse=True)  # [K, 3, 3]
    middle = _sqrtm(root[:, None] @ target_covariances[None] @ root[:, None])  # [K, J, 3, 3]
    maps = inv_root[:, None] @ middle @ inv_root[:, None]
    cost = ((means[:, None] - target_means[None]) ** 2).sum(-1) + (
        np.trace(covariances, axis1=1, axis2=2)[:, None]
        + np.trace(target_covariances, axis1=1, axis2=2)[None]
        - 2.0 * np.trace(middle, axis1=2, axis2=3)
    )
    plan = sinkhorn(weights, target_weights, np.maximum(cost, 0.0))
    share = plan / plan.sum(axis=1, keepdims=True)  # [K, J]

    chol = np.linalg.cholesky(covariances)
    return MixtureTransport(
        weights=weights,
        means=means,
        inv_chol=np.linalg.inv(chol),
        log_norm=np.log(weights) - np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1),
        targets=share @ target_means,
        linear=np.einsum("kj,kjab->kab", share, maps),
    )


def apply_mixture_transport(points: np.ndarray, transport: MixtureTransport) -> np.ndarray:
    """Move colours by ``transport`` (numba, releases the GIL).

    Args:
        points: ``[N, 3]`` colours.

    Returns:
        ``[N, 3]`` float64.
    """
    out = np.empty((len(points), 3), dtype=np.float64)
    _mixture_kernel(
        np.ascontiguousarray(points, dtype=np.float64),
        transport.means,
        transport.inv_chol,
        transport.log_norm,
        transport.targets,
        transport.linear,
        out,
    )
    return out


def apply_mixture_transport_reference(points: np.ndarray, transport: MixtureTransport) -> np.ndarray:
    """``apply_mixture_transport`` in plain numpy (the specification the kernel is tested against)."""
    points = np.asarray(points, dtype=np.float64)
    offsets = points[:, None, :] - transport.means[None]  # [N, K, 3]
    whitened = np.einsum("kab,nkb->nka", transport.inv_chol, offsets)
    log_p = transport.log_norm[None] - 0.5 * (whitened**2).sum(-1)  # [N, K]
    posterior = np.exp(log_p - log_p.max(axis=1, keepdims=True))
    posterior /= posterior.sum(axis=1, keepdims=True)
    moved = transport.targets[None] + np.einsum("kab,nkb->nka", transport.linear, offsets)
    return np.einsum("nk,nka->na", posterior, moved)


@njit(cache=True, nogil=True)
def _mixture_kernel(points, means, inv_chol, log_norm, targets, linear, out):
    k = means.shape[0]
    log_p = np.empty(k)
    offsets = np.empty((k, 3))
    for i in range(points.shape[0]):
        # Posterior of each source component (up to a common factor).
        top = -np.inf
        for c in range(k):
            for a in range(3):
                offsets[c, a] = points[i, a] - means[c, a]
            maha = 0.0
            for a in range(3):
                z = 0.0
                for b in range(3):
                    z += inv_chol[c, a, b] * offsets[c, b]
                maha += z * z
            log_p[c] = log_norm[c] - 0.5 * maha
            top = max(top, log_p[c])
        # The posterior-weighted affine maps.
        total = 0.0
        out[i, :] = 0.0
        for c in range(k):
            w = np.exp(log_p[c] - top)
            total += w
            for a in range(3):
                moved = targets[c, a]
                for b in range(3):
                    moved += linear[c, a, b] * offsets[c, b]
                out[i, a] += w * moved
        for a in range(3):
            out[i, a] /= total


def sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, precision: float = 1e-2) -> np.ndarray:
    """A nearly exact optimal transport plan between two small discrete distributions.

    Log-domain Sinkhorn iterations with the regularisation lowered step by step (epsilon scaling)
    down to ``precision`` times the largest cost; for the few-cluster problems here the plan is then
    within a hair of an exact one.

    Args:
        a: ``[K]`` positive weights summing to 1.
        b: ``[J]`` positive weights summing to 1.
        cost: ``[K, J]`` non-negative.

    Returns:
        ``[K, J]`` plan; columns sum to ``b``, rows to ``a`` within 1e-5.
    """
    scale = float(cost.max()) or 1.0
    c = cost / scale
    log_a, log_b = np.log(a), np.log(b)
    f, g = np.zeros(len(a)), np.zeros(len(b))
    epsilon = 1.0
    while epsilon > precision:
        epsilon = max(epsilon / 8.0, precision)
        for _ in range(1000):
            f = epsilon * (log_a - _logsumexp((g[None, :] - c) / epsilon, axis=1))
            g = epsilon * (log_b - _logsumexp((f[:, None] - c) / epsilon, axis=0))
            plan = np.exp((f[:, None] + g[None, :] - c) / epsilon)
            if np.abs(plan.sum(axis=1) - a).max() < 1e-5:
                break
    return plan


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def _sqrtm(matrices: np.ndarray, inverse: bool = False) -> np.ndarray:
    """Square roots (or inverse square roots) of symmetric positive definite ``[..., 3, 3]`` matrices."""
    values, vectors = np.linalg.eigh(matrices)
    values = np.maximum(values, 1e-12)
    roots = values**-0.5 if inverse else np.sqrt(values)
    return (vectors * roots[..., None, :]) @ np.swapaxes(vectors, -1, -2)


# ----------------------------------------------------------------------------------------------------
# Sliced optimal transport


@dataclass(frozen=True, eq=False)
class Transport:
    """A colour map made of T sliced-transport iterations; ``apply_transport`` evaluates it anywhere.

    Iteration t projects a colour on the three orthonormal columns of ``bases[t]`` and moves it along
    each by a 1D monotone displacement, tabulated on a uniform grid of G + 1 points per axis (linear in
    between; beyond the grid's ends, the end's displacement).

    Attributes:
        bases: ``[T, 3, 3]`` float64, orthonormal columns.
        lo: ``[T, 3]`` float64, each axis' grid start (projection units).
        inv_step: ``[T, 3]`` float64, 1 / grid spacing (0 when every projection was equal).
        displacement: ``[T, 3, G + 1]`` float64, the displacement at each grid point.
    """

    bases: np.ndarray
    lo: np.ndarray
    inv_step: np.ndarray
    displacement: np.ndarray

    def __len__(self) -> int:
        return len(self.bases)


def random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """``[count, 3, 3]`` float64 uniformly random orthonormal matrices (QR of Gaussian matrices, with
    the signs fixed so the distribution is uniform)."""
    q, r = np.linalg.qr(rng.standard_normal((count, 3, 3)))
    return q * np.where(np.diagonal(r, axis1=1, axis2=2) < 0, -1.0, 1.0)[:, None, :]


def fit_transport(
    source: np.ndarray, target: np.ndarray, iterations: int, rng: np.random.Generator, grid: int = 2048
) -> Transport:
    """Sliced optimal transport (iterative distribution transfer) of ``source`` onto ``target``.

    Each iteration draws a random orthonormal basis; along each axis, the sorted projections of the
    (current) source are matched to the sorted projections of the target (tied source values share
    the mean of their targets), which gives a monotone 1D map; the source moves by it, and the next
    iteration starts from there. After enough iterations the source's distribution is the target's.

    Args:
        source: ``[M, 3]`` float64 colours (a sample of the colours the map is for).
        target: ``[P, 3]`` float64 colours to transport onto; when P != M, the source's i-th smallest
            projection is matched to the target's quantile (i + 0.5) / M.
        iterations: T, >= 1.
        rng: draws the bases.
        grid: G, grid cells per 1D map.
    """
    if source.ndim != 2 or target.ndim != 2 or source.shape[1:] != (3,) or target.shape[1:] != (3,):
        raise ValueError(
            f"source and target must be [M, 3] and [P, 3], got {source.shape} and {target.shape}"
        )
    if len(source) == 0 or len(target) == 0:
        raise ValueError("source and target must not be empty")
    m, p = len(source), len(target)
    quantiles = (np.arange(m) + 0.5) / m
    target_quantiles = (np.arange(p) + 0.5) / p
    bases = random_rotations(rng, iterations)
    lo = np.empty((iterations, 3))
    inv_step = np.empty((iterations, 3))
    displacement = np.empty((iterations, 3, grid + 1))
    unit = np.linspace(0.0, 1.0, grid + 1)
    moving = np.ascontiguousarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    new = np.empty((3, m), dtype=bool)
    new[:, 0] = True
    for t in range(iterations):
        s, u = bases[t].T @ moving.T, bases[t].T @ target.T  # [3, M] projections
        for axis in range(3):  # (1D sorts are several times faster than one sort along an axis)
            s[axis].sort()
            u[axis].sort()
        if p != m:
            u = np.stack([np.interp(quantiles, target_quantiles, u[axis]) for axis in range(3)])
        np.not_equal(s[:, 1:], s[:, :-1], out=new[:, 1:])
        for axis in range(3):
            if new[axis].all():
                knots, values = s[axis], u[axis]
            else:  # equal source values cannot go to different places: they share their targets' mean
                starts = np.flatnonzero(new[axis])
                knots = s[axis, starts]
                values = np.add.reduceat(u[axis], starts) / np.diff(np.append(starts, m))
            first, last = knots[0], knots[-1]
            lo[t, axis] = first
            if last > first:
                inv_step[t, axis] = grid / (last - first)
                points = first + (last - first) * unit
                displacement[t, axis] = np.interp(points, knots, values) - points
            else:
                inv_step[t, axis] = 0.0
                displacement[t, axis] = values[0] - first
        step = np.empty_like(moving)
        _apply_transport_kernel(
            moving, bases[t : t + 1], lo[t : t + 1], inv_step[t : t + 1], displacement[t : t + 1], step
        )
        moving = step
    return Transport(bases, lo, inv_step, displacement)


def apply_transport(points: np.ndarray, transport: Transport) -> np.ndarray:
    """Move colours through every iteration of ``transport`` (numba, releases the GIL).

    Args:
        points: ``[N, 3]`` colours.
        transport: T iterations.

    Returns:
        ``[N, 3]`` float64, the transported colours.
    """
    out = np.empty((len(points), 3), dtype=np.float64)
    _apply_transport_kernel(
        np.ascontiguousarray(points, dtype=np.float64),
        np.ascontiguousarray(transport.bases, dtype=np.float64),
        np.ascontiguousarray(transport.lo, dtype=np.float64),
        np.ascontiguousarray(transport.inv_step, dtype=np.float64),
        np.ascontiguousarray(transport.displacement, dtype=np.float64),
        out,
    )
    return out


def apply_transport_reference(points: np.ndarray, transport: Transport) -> np.ndarray:
    """``apply_transport`` in plain numpy (the specification the kernel is tested against)."""
    x = np.asarray(points, dtype=np.float64).copy()
    grid = np.arange(transport.displacement.shape[2], dtype=np.float64)
    for t in range(len(transport)):
        projected = x @ transport.bases[t]
        moves = np.empty_like(projected)
        for axis in range(3):
            u = (projected[:, axis] - transport.lo[t, axis]) * transport.inv_step[t, axis]
            moves[:, axis] = np.interp(u, grid, transport.displacement[t, axis])
        x = x + moves @ transport.bases[t].T
    return x


@njit(cache=True, nogil=True)
def _apply_transport_kernel(points, bases, lo, inv_step, displacement, out):
    # Iterations outermost: one iteration's tables (3 x (G + 1) float64) stay in cache over all points.
    n = points.shape[0]
    last = displacement.shape[2] - 1
    out[:] = points
    for t in range(bases.shape[0]):
        b = bases[t]
        for i in range(n):
            x0, x1, x2 = out[i, 0], out[i, 1], out[i, 2]
            m0 = m1 = m2 = 0.0
            for axis in range(3):
                u = (x0 * b[0, axis] + x1 * b[1, axis] + x2 * b[2, axis] - lo[t, axis]) * inv_step[t, axis]
                if u <= 0.0:
                    move = displacement[t, axis, 0]
                elif u >= last:
                    move = displacement[t, axis, last]
                else:
                    j = int(u)
                    f = u - j
                    move = displacement[t, axis, j] * (1.0 - f) + displacement[t, axis, j + 1] * f
                m0 += move * b[0, axis]
                m1 += move * b[1, axis]
                m2 += move * b[2, axis]
            out[i, 0] = x0 + m0
            out[i, 1] = x1 + m1
            out[i, 2] = x2 + m2


# ----------------------------------------------------------------------------------------------------
# Inpainting one view: part-aware, local colour transfer


def fill_holes(image: np.ndarray, holes: np.ndarray, known: np.ndarray, radius: int = 3) -> np.ndarray:
    """Fill ``holes`` with OpenCV's Telea inpainting, drawing only on ``known`` pixels.

    Telea fills a hole from every pixel around it. Around a render's holes lies empty background as
    well as foreground, so first every unknown pixel outside the holes is given the local mean colour
    of the known pixels (``smooth_within`` with sigma ``2 * radius``); the background then passes on
    foreground-like colours, never its own. The work is cropped to the holes' bounding box plus a
    margin.

    Args:
        image: ``[H, W, 3]`` uint8.
        holes: ``[H, W]`` bool, pixels to fill.
        known: ``[H, W]`` bool, pixels whose colour is trusted (for a render: alpha >= 0.5).
        radius: Telea's neighbourhood radius, pixels.

    Returns:
        ``[H, W, 3]`` uint8: ``image`` with the holes filled (a new array; other pixels unchanged).
        Nothing is filled when no pixel is known.
    """
    out = image.copy()
    fill = holes & ~known
    if not fill.any() or not known.any():
        return out
    rows, cols = np.nonzero(fill)
    margin = 6 * radius + 2
    h, w = fill.shape
    y0, y1 = max(int(rows.min()) - margin, 0), min(int(rows.max()) + margin + 1, h)
    x0, x1 = max(int(cols.min()) - margin, 0), min(int(cols.max()) + margin + 1, w)
    if not known[y0:y1, x0:x1].any():
        y0, y1, x0, x1 = 0, h, 0, w
    crop, trusted, window = image[y0:y1, x0:x1], known[y0:y1, x0:x1], fill[y0:y1, x0:x1]
    # The background around the holes takes the colour of the foreground near it.
    local = smooth_within(crop.astype(np.float32), trusted, 2.0 * radius, everywhere=True)
    source = np.where(trusted[..., None], crop, np.rint(np.clip(local, 0, 255)).astype(np.uint8))
    filled = cv2.inpaint(source, window.astype(np.uint8), radius, cv2.INPAINT_TELEA)
    out[y0:y1, x0:x1][window] = filled[window]
    return out


def smooth_within(
    values: np.ndarray,
    mask: np.ndarray,
    sigma: float,
    everywhere: bool = False,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """Gaussian smoothing of the values in ``mask`` (normalised convolution: blur(v m) / blur(m)).

    Args:
        values: ``[H, W, C]`` float32; only pixels in the mask are read.
        mask: ``[H, W]`` bool.
        sigma: Gaussian standard deviation, pixels; > 0.
        everywhere: also return the weighted mean outside the mask (where any mask pixel is near
            enough to give a weight), instead of 0.
        weight: ``[H, W]`` float32 >= 0, each pixel's weight in the mean; None: the mask itself.

    Returns:
        ``[H, W, C]`` float32: the mask-weighted local mean in the mask (and, with ``everywhere``,
        wherever it is defined); 0 elsewhere.
    """
    weight = mask.astype(np.float32) if weight is None else np.asarray(weight, dtype=np.float32)
    numerator = cv2.GaussianBlur(values * weight[..., None], (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    denominator = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    numerator = numerator.reshape(values.shape)
    where = mask | (denominator > 1e-6) if everywhere else mask
    smoothed = np.zeros_like(numerator)
    smoothed[where] = numerator[where] / denominator[where][:, None]
    return smoothed


def cluster_distances(lab: np.ndarray, model: ColourModel) -> np.ndarray:
    """The Mahalanobis distance from each colour to each cluster of the model, its covariance floored
    at ``MISFIT_FLOOR_LAB`` Lab units along L, a and b.

    Args:
        lab: ``[n, 3]`` float Lab.

    Returns:
        ``[n, K]`` float64, in standard deviations.
    """
    points = np.asarray(lab, dtype=np.float64)
    floor = np.diag(np.square(MISFIT_FLOOR_LAB))
    squared = [
        np.einsum("ni,ij,nj->n", points - mean, np.linalg.inv(covariance + floor), points - mean)
        for mean, covariance in zip(
            model.means.astype(np.float64), model.covariances.astype(np.float64), strict=True
        )
    ]
    return np.sqrt(np.stack(squared, axis=1))


def misfit(lab: np.ndarray, model: ColourModel) -> np.ndarray:
    """How far each colour lies from every part of the subject: ``cluster_distances`` to the nearest
    cluster.

    Args:
        lab: ``[n, 3]`` float Lab.

    Returns:
        ``[n]`` float64, in standard deviations (a colour of the subject is within about 2).
    """
    return cluster_distances(lab, model).min(axis=1)


def local_palette(observed: np.ndarray, nearness: np.ndarray, model: ColourModel) -> ColourModel:
    """The subject's colours as seen around one region: each cluster's weight is the summed
    ``nearness`` of the observed colours nearest it (``cluster_distances``).

    A cluster no observed pixel near the region explains keeps a weight of 1e-6 of the whole, so that
    the transport can still reach it but nothing is painted with it.

    Args:
        observed: ``[n, 3]`` float Lab, n >= 1, the observed pixels' colours.
        nearness: ``[n]`` float >= 0, each pixel's nearness to the region, not all 0.
        model: the subject's colours.

    Returns:
        the model with its weights replaced (positive, summing to 1).
    """
    nearest = cluster_distances(observed, model).argmin(axis=1)
    counts = np.bincount(nearest, weights=nearness, minlength=len(model)).astype(np.float64)
    weights = np.maximum(counts / max(counts.sum(), 1e-12), 1e-6)
    return ColourModel(
        (weights / weights.sum()).astype(np.float32), model.means, model.covariances, model.pixels
    )


def locate_drift(drifted: np.ndarray, mask: np.ndarray, scale: float) -> np.ndarray:
    """Where the masked region has drifted away from the subject, as a soft weight.

    One drifted pixel among right ones is texture (the subject's darkest stripe, a highlight), not
    drift, so the decision is made over regions: the share of drifted pixels among the masked ones
    within about ``scale / 2``, mapped through a smoothstep from ``DRIFT_SHARE`` (nothing moves) to
    its upper end (all moves).

    Args:
        drifted: ``[H, W]`` bool, masked pixels whose colour fits no part of the subject (``misfit``
            above ``MISFIT_THRESHOLD``).
        mask: ``[H, W]`` bool, the pixels that may change.
        scale: the size of a part, pixels.

    Returns:
        ``[H, W]`` float32 in [0, 1], 0 outside the mask.
    """
    share = smooth_within(drifted.astype(np.float32)[..., None], mask, 0.5 * scale)[..., 0]
    low, high = DRIFT_SHARE
    weight = np.clip((share - low) / (high - low), 0.0, 1.0)
    return (weight * weight * (3.0 - 2.0 * weight) * mask).astype(np.float32)


def continue_observed(
    target: np.ndarray, lab: np.ndarray, trusted: np.ndarray, moving: np.ndarray, reach: float
) -> np.ndarray:
    """Shift the transferred colours' local mean onto the observed surface's, where it is near.

    The shift is the difference of the two local means (Gaussian windows of ``reach`` pixels), in full
    where the window holds ``CONTINUITY_FULL`` observed pixels or more, fading to nothing where it
    holds none: colour continues across the mask's edge; deep inside a region the transfer stands.

    Args:
        target: ``[H, W, 3]`` float32 Lab, the transferred colours (read in ``moving``).
        lab: ``[H, W, 3]`` float32 Lab, the view (read where ``trusted``).
        trusted: ``[H, W]`` float32 in [0, 1], the observed foreground.
        moving: ``[H, W]`` bool, the pixels that move, not empty.
        reach: the window's standard deviation, pixels.

    Returns:
        ``[H, W, 3]`` float32 Lab.
    """
    density = cv2.GaussianBlur(trusted, (0, 0), reach, borderType=cv2.BORDER_REPLICATE)
    observed_mean = smooth_within(lab, trusted > 0, reach, everywhere=True, weight=trusted)
    moved_mean = smooth_within(target, moving, reach, everywhere=True)
    weight = np.clip(density / CONTINUITY_FULL, 0.0, 1.0)[..., None]
    return target + weight * (observed_mean - moved_mean)


def inpaint_view(
    image: np.ndarray,
    mask: np.ndarray,
    alpha: np.ndarray | None,
    model: ColourModel,
    *,
    strength: float,
    rng: np.random.Generator,
    iterations: int = 30,
    samples: int = 4096,
    clusters: int = 8,
    grid: int = 2048,
    sigma: float = 3.0,
    fill_radius: int = 3,
    part_scale: float = PART_SCALE,
) -> np.ndarray:
    """Move the drifted part of the masked pixels toward the subject part next to them, keeping their
    structure; masked pixels whose colours already fit the subject stay as they are.

    Args:
        image: ``[H, W, 3]`` uint8.
        mask: ``[H, W]`` bool, the pixels that may change.
        alpha: ``[H, W]`` float32 coverage in [0, 1], or None (then nothing is filled and every pixel
            counts as foreground).
        model: the subject's colours.
        strength: in [0, 1], the fraction of the way to the transferred colours; 0 returns a copy.
        rng: draws the transport's samples.
        iterations, samples, clusters, grid: the transport (``palette_transfer``).
        sigma: smoothing of the transport's displacement, pixels.
        fill_radius: Telea radius for holes, pixels.
        part_scale: the size of a part as a fraction of the foreground's side (sqrt of its area).

    Returns:
        ``[H, W, 3]`` uint8; pixels outside the mask are ``image``'s, bit for bit.
    """
    if strength == 0 or not mask.any():
        return image.copy()
    foreground = np.ones(mask.shape, dtype=bool) if alpha is None else alpha >= 0.5
    # 1. Fill holes: masked pixels with no rendered content take their surroundings' colours.
    work = image if alpha is None else fill_holes(image, mask & ~foreground, foreground, fill_radius)
    lab = rgb_to_lab(work)

    # 2. Which masked regions drifted away from every part of the subject; the rest stays.
    scale = max(part_scale * float(np.sqrt(max(np.count_nonzero(foreground), 1))), 1.0)
    drifted = np.zeros(mask.shape, dtype=bool)
    drifted[mask] = misfit(lab[mask], model) > MISFIT_THRESHOLD
    drift = locate_drift(drifted, mask, scale)
    if not drift.any():
        return work.copy()  # holes filled, nothing else moved

    # 3. The colours each drifted pixel should take: transported onto the palette of the observed
    #    surface near it, then continued across the mask's edge. Masked pixels that fit are kept but
    #    are no model for their neighbours (dark drift fits a subject's black parts).
    trusted = (foreground & ~mask).astype(np.float32)
    moving = drift > 0
    observed = trusted > 0.5
    if np.count_nonzero(observed) < MIN_TRUSTED_PIXELS:
        # Nothing observed: the whole masked region onto the whole palette, so that the parts that
        # fit hold their share of it and only what drifted is moved far.
        target = palette_transfer(lab, mask, model, rng, iterations, samples, clusters, grid, sigma)
    else:
        nearness = cv2.GaussianBlur(drift, (0, 0), PALETTE_REACH * scale, borderType=cv2.BORDER_REPLICATE)
        palette = local_palette(lab[observed], nearness[observed], model)
        target = palette_transfer(lab, moving, palette, rng, iterations, samples, clusters, grid, sigma)
        target = continue_observed(target, lab, trusted, moving, CONTINUITY_REACH * scale)

    # 4. Move `strength * drift` of the way; back to sRGB; pixels outside the mask are copied.
    moves = drift > 0  # only these go through Lab and back (the round trip is not exact in sRGB)
    out = work.copy()
    out[moves] = lab_to_rgb(lab[moves] + (strength * drift[moves])[:, None] * (target[moves] - lab[moves]))
    return out


def palette_transfer(
    lab: np.ndarray,
    mask: np.ndarray,
    model: ColourModel,
    rng: np.random.Generator,
    iterations: int = 30,
    samples: int = 4096,
    clusters: int = 8,
    grid: int = 2048,
    sigma: float = 3.0,
) -> np.ndarray:
    """The masked colours moved onto a palette (the subject's whole model, or a ``local_palette``):
    mixture transport cluster by cluster, then sliced optimal transport onto samples of the model, the
    displacement smoothed in the mask (so a pixel keeps its offset from its neighbours: texture and
    shading finer than ``sigma`` are carried, not re-sorted).

    Args:
        lab: ``[H, W, 3]`` float32 Lab.
        mask: ``[H, W]`` bool, not empty.

    Returns:
        ``[H, W, 3]`` float32 Lab: the moved colours in the mask, ``lab`` elsewhere.
    """
    points = lab[mask].astype(np.float64)  # [n, 3]
    n = len(points)
    m = min(n, samples)
    chosen = np.sort(rng.choice(n, m, replace=False)) if n > m else np.arange(n)
    target = model.sample(samples, rng)
    coarse = fit_mixture_transport(points[chosen], model, clusters, rng)
    moved = apply_mixture_transport(points, coarse)
    transport = fit_transport(moved[chosen], target, iterations, rng, grid)
    moved = apply_transport(moved, transport)
    displacement = np.zeros(lab.shape, dtype=np.float32)
    displacement[mask] = moved - points
    smoothed = smooth_within(displacement, mask, sigma) if sigma > 0 else displacement
    out = lab.copy()
    out[mask] += smoothed[mask]
    return out
