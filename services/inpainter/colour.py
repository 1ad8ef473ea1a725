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
  3. local colour transfer in Lab (Reinhard et al. 2001, made local): each drifted pixel keeps its
     offset from the mean of the drifted surface around it, rescaled to the spread of the observed
     surface around it (the unmasked foreground: what the anchors showed), and added to that
     surface's mean (``local_statistics``, windows of the size of a part, widened where no observed
     pixel is near). Texture and shading survive (the map is affine with a positive slope), colour
     continues across the mask's edge (no seam), and a part of the subject absent from the
     surroundings is never painted in. LGM-like drift is itself close to an affine map of the true
     colours (desaturate, tint), which is why an affine map undoes most of it;
  4. move ``strength`` times the drift weight of the way; back to sRGB; only the pixels that move
     go through Lab and back. A view with no observed pixel falls back to the whole palette
     (``global_transfer``: optimal transport between Gaussian mixtures, then sliced optimal
     transport onto samples of the model).

Pure functions on numpy arrays, deterministic for their ``rng``. The two fast kernels (numba, they
release the GIL) have plain numpy twins the tests compare them with: ``apply_transport`` /
``apply_transport_reference`` and ``apply_mixture_transport`` / ``apply_mixture_transport_reference``.

Colours: sRGB uint8 in, sRGB uint8 out; CIELab (D65 white, OpenCV's float convention: L in [0, 100],
a and b roughly in [-128, 127]) in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import safetensors
import safetensors.numpy
from numba import njit

from services.inpainter.artifacts import canonical_safetensors, read_safetensors_metadata

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
"""The size of a part of the subject, as a fraction of the foreground's side: the window of the local
statistics (doubled up to three times where it holds no observed pixel). On the benchmark's four
textured objects 0.25 did a little better on average (held-out foreground PSNR 19.12 against 18.87
dB) but worse on spots (17.91 against 18.43) and mixed neighbouring parts of smaller subjects (a
brown region beside a cream one took a blend); 0.5 brought the whole palette back (17.94 dB)."""
MAX_CONTRAST = 3.0
"""The local contrast of a drifted region is rescaled by at most this factor (or its inverse): drift
flattens contrast (LGM's back is about 0.4 times as contrasted), noise must not be blown up."""
MIN_TRUSTED_PIXELS = 16
"""With fewer observed foreground pixels in a view, it falls back to the subject's whole palette
(``global_transfer``)."""

Progress = Callable[[int, int, float], None]


class InvalidSubject(ValueError):
    """A subject-model artifact that cannot be read, or that another backend made."""


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


def misfit(lab: np.ndarray, model: ColourModel) -> np.ndarray:
    """How far each colour lies from every part of the subject: the Mahalanobis distance to the nearest
    cluster of the model, its covariance floored at ``MISFIT_FLOOR_LAB`` Lab units along L, a and b.

    Args:
        lab: ``[n, 3]`` float Lab.

    Returns:
        ``[n]`` float64, in standard deviations (a colour of the subject is within about 2).
    """
    points = np.asarray(lab, dtype=np.float64)
    nearest = np.full(len(points), np.inf)
    floor = np.diag(np.square(MISFIT_FLOOR_LAB))
    for mean, covariance in zip(
        model.means.astype(np.float64), model.covariances.astype(np.float64), strict=True
    ):
        offset = points - mean
        squared = np.einsum("ni,ij,nj->n", offset, np.linalg.inv(covariance + floor), offset)
        np.minimum(nearest, squared, out=nearest)
    return np.sqrt(nearest)


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


def local_statistics(
    values: np.ndarray, weight: np.ndarray, sigmas: Sequence[float], min_weight: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted local mean and standard deviation, from the narrowest window that holds enough weight.

    At each pixel the statistics come from the first Gaussian window of ``sigmas`` whose normalised
    weight reaches ``min_weight``; where none does, from the whole image. So a pixel deep inside an
    unweighted region takes the statistics of the nearest weighted surface.

    Args:
        values: ``[H, W, C]`` float32.
        weight: ``[H, W]`` float32 >= 0, not all 0.
        sigmas: window standard deviations, pixels, increasing.
        min_weight: the weight density (0..1) a window must hold.

    Returns:
        mean ``[H, W, C]`` float32, std ``[H, W, C]`` float32.
    """
    mean = np.empty_like(values)
    variance = np.empty_like(values)
    done = np.zeros(weight.shape, dtype=bool)
    for sigma in sigmas:
        density = cv2.GaussianBlur(weight, (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
        take = (density > min_weight) & ~done
        if take.any():
            first = smooth_within(values, weight > 0, sigma, everywhere=True, weight=weight)
            second = smooth_within(values * values, weight > 0, sigma, everywhere=True, weight=weight)
            mean[take] = first[take]
            variance[take] = second[take] - first[take] ** 2
            done |= take
    if not done.all():
        total = float(weight.sum())
        whole = (values * weight[..., None]).reshape(-1, values.shape[-1]).sum(axis=0) / total
        spread = (((values - whole) ** 2) * weight[..., None]).reshape(-1, values.shape[-1]).sum(
            axis=0
        ) / total
        mean[~done] = whole
        variance[~done] = spread
    return mean, np.sqrt(np.maximum(variance, 0.0))


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
        rng: draws the global fallback's samples (used only when the view holds no observed pixel).
        iterations, samples, clusters, grid: the global fallback's transport (``global_transfer``).
        sigma: smoothing of the global fallback's displacement, pixels.
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

    # 3. The colours each drifted pixel should take: its offset from the drifted surface around it,
    #    rescaled to the spread of the observed surface around it and added to that surface's mean.
    #    Texture and shading survive; colour continues across the mask's edge. Masked pixels that fit
    #    are kept but are no model for their neighbours (dark drift fits a subject's black parts).
    #    A view with no observed pixel falls back to the subject's whole palette.
    trusted = (foreground & ~mask).astype(np.float32)
    if np.count_nonzero(trusted > 0.5) < MIN_TRUSTED_PIXELS:
        target = global_transfer(lab, mask, model, rng, iterations, samples, clusters, grid, sigma)
    else:
        sigmas = [scale * 2.0**level for level in range(4)]
        # Any drifted weight at all makes a window: a small drifted speck is its own surface.
        source_mean, source_std = local_statistics(lab, drift, sigmas, min_weight=1e-4)
        trusted_mean, trusted_std = local_statistics(lab, trusted, sigmas)
        ratio = np.clip((trusted_std + 1.0) / (source_std + 1.0), 1.0 / MAX_CONTRAST, MAX_CONTRAST)
        target = trusted_mean + (lab - source_mean) * ratio

    # 4. Move `strength * drift` of the way; back to sRGB; pixels outside the mask are copied.
    moves = drift > 0  # only these go through Lab and back (the round trip is not exact in sRGB)
    out = work.copy()
    out[moves] = lab_to_rgb(lab[moves] + (strength * drift[moves])[:, None] * (target[moves] - lab[moves]))
    return out


def global_transfer(
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
    """The masked colours moved onto the subject's whole palette: mixture transport cluster by cluster,
    then sliced optimal transport onto samples of the model, the displacement smoothed in the mask.

    The fallback for a view that shows no observed surface to continue from.

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
