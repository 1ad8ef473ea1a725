"""What each quantizing splat format may change, as assertions shared by the format tests and the
cross-check against PlayCanvas's splat-transform (the bounds ``services.common.formats.spz`` and
``splat`` state)."""

from __future__ import annotations

import numpy as np

from services.common.gaussians import SH_C0, Gaussians
from services.testing.synthetic import _quat_to_matrix

SPZ_LOG_SCALES = (-10.0, 255 / 16 - 10.0)  # what 8 bits of 16 (log s + 10) can hold
SPZ_DC = 127.5 / 38.25  # |DC| a byte of 0.15 * 255 DC + 127.5 can hold
SPZ_SH = (-1.0, 127 / 128)  # what a byte of 128 x + 128 can hold


def rotation_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest angle, radians, between the rotations of two ``[N, 4]`` quaternion arrays (q and -q
    are the same rotation)."""
    a = a.astype(np.float64) / np.linalg.norm(a, axis=1, keepdims=True)
    b = b.astype(np.float64) / np.linalg.norm(b, axis=1, keepdims=True)
    # |a - b| = 2 sin(angle / 4): well conditioned near 0, where arccos of the dot product is not.
    chord = np.minimum(np.linalg.norm(a - b, axis=1), np.linalg.norm(a + b, axis=1))
    return float(np.max(4.0 * np.arcsin(np.minimum(1.0, chord / 2.0))))


def covariance_error(a: Gaussians, b: Gaussians) -> float:
    """Largest difference between the Gaussians' covariances R S^2 R^T, relative to the largest
    variance of each. Writers may represent the same Gaussian by different rotations (an axis flip
    applied as M R or as M R M: R differs by a half turn about one of its own axes, which maps the
    ellipsoid onto itself), so this compares what a renderer draws."""

    def covariance(g: Gaussians) -> np.ndarray:
        r = _quat_to_matrix(g.quats.astype(np.float64))
        variances = np.exp(2.0 * g.log_scales.astype(np.float64))
        return np.einsum("nij,nj,nkj->nik", r, variances, r)

    ca, cb = covariance(a), covariance(b)
    scale = np.maximum(np.abs(ca).max(axis=(1, 2)), np.abs(cb).max(axis=(1, 2)))
    return float(np.max(np.abs(ca - cb).max(axis=(1, 2)) / scale))


def assert_within_spz(again: Gaussians, original: Gaussians, max_angle: float = 0.004) -> None:
    """``again`` is ``original`` through a `.spz`: each value within its quantization, or clamped to
    what the format holds. ``max_angle``: 0.004 rad for version 3 and later, 0.25 for version 2."""
    assert again.sh.shape == original.sh.shape
    np.testing.assert_allclose(again.means, original.means, rtol=0, atol=2.0**-13 + 1e-6)
    scales = np.clip(original.log_scales, *SPZ_LOG_SCALES)
    np.testing.assert_allclose(again.log_scales, scales, rtol=0, atol=1 / 32 + 1e-6)
    np.testing.assert_allclose(again.opacities, original.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    dc = np.clip(original.sh[:, 0], -SPZ_DC, SPZ_DC)
    np.testing.assert_allclose(again.sh[:, 0], dc, rtol=0, atol=0.5 / 38.25 + 1e-6)
    rest = np.clip(original.sh[:, 1:], *SPZ_SH)
    np.testing.assert_allclose(again.sh[:, 1:4], rest[:, :3], rtol=0, atol=4.5 / 128 + 1e-6)
    np.testing.assert_allclose(again.sh[:, 4:], rest[:, 3:], rtol=0, atol=8.5 / 128 + 1e-6)
    assert rotation_error(again.quats, original.quats) < max_angle


def assert_within_splat(again: Gaussians, original: Gaussians) -> None:
    """``again`` is ``original`` through a `.splat`: positions exact, scales to float32, DC colour
    clamped to [0, 1] and with opacity to 0.5/255, rotations to 0.03 rad, higher SH bands gone."""
    assert again.sh.shape == (len(original), 1, 3)
    np.testing.assert_array_equal(again.means, original.means)
    np.testing.assert_allclose(again.log_scales, original.log_scales, rtol=0, atol=1e-5)
    np.testing.assert_allclose(again.opacities, original.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    colour = np.clip(0.5 + SH_C0 * original.sh[:, 0], 0.0, 1.0)
    np.testing.assert_allclose(0.5 + SH_C0 * again.sh[:, 0], colour, rtol=0, atol=0.5 / 255 + 1e-6)
    assert rotation_error(again.quats, original.quats) < 0.03


KSPLAT_POSITION_STEP = 5.0 / 2.0 / 32767  # GaussianSplats3D's default block size over its uint16 range


def nearest_indices(reference: np.ndarray, points: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``[M]`` int64: for each of ``points`` ``[M, D]``, the index of the nearest of ``reference``
    ``[N, D]``, by brute force in chunks (to pair the Gaussians of a writer that reorders them: give
    positions and scales, each over its quantization step, as neighbours can be closer than a step)."""
    reference = reference.astype(np.float64)
    norms = np.einsum("ij,ij->i", reference, reference)
    found = []
    for start in range(0, len(points), chunk):
        block = points[start : start + chunk].astype(np.float64)
        found.append(np.argmin(norms[None, :] - 2.0 * block @ reference.T, axis=1))
    return np.concatenate(found)


def assert_within_ksplat(
    again: Gaussians, original: Gaussians, level: int, sh_range: tuple[float, float]
) -> None:
    """``again`` is ``original`` (paired in order) through GaussianSplats3D's `.ksplat` writer at
    compression ``level``: colour (clamped to [0, 1]) and opacity rounded down to 1/255; at level 0 the
    rest as float32; at levels 1 and 2 positions to half a step of ``KSPLAT_POSITION_STEP``, scales and
    rotations to float16 (truncated by three.js: 2^-10 relative), and SH bands to float16 (level 1) or
    rounded down to 1/255 of ``sh_range`` (level 2); bands above 2 gone."""
    k = again.sh.shape[1]
    assert len(again) == len(original) and k <= min(original.sh.shape[1], 9)
    step = 0.0 if level == 0 else KSPLAT_POSITION_STEP / 2.0
    np.testing.assert_allclose(again.means, original.means, rtol=0, atol=step + 2e-6)
    # float16 keeps 11 significant bits down to 2^-14; below, steps of 2^-24 (subnormal).
    scales, again_scales = original.scales.astype(np.float64), again.scales.astype(np.float64)
    relative = 1e-6 if level == 0 else 2.0**-10  # three.js truncates to float16
    np.testing.assert_allclose(again_scales, scales, rtol=relative, atol=2.0**-24 if level else 0.0)
    below = original.opacities - again.opacities
    assert below.min() > -1e-5 and below.max() < 1 / 255 + 1e-5
    colour = np.clip(0.5 + SH_C0 * original.sh[:, 0].astype(np.float64), 0.0, 1.0)
    below = colour - (0.5 + SH_C0 * again.sh[:, 0].astype(np.float64))
    assert below.min() > -1e-5 and below.max() < 1 / 255 + 1e-5
    rest, again_rest = original.sh[:, 1:k].astype(np.float64), again.sh[:, 1:].astype(np.float64)
    if level == 2 and rest.size:
        low, high = sh_range
        below = np.clip(rest, low, high) - again_rest
        assert below.min() > -1e-5 and below.max() < (high - low) / 255 + 1e-5
    else:
        np.testing.assert_allclose(
            again_rest, rest, rtol=2.0**-10 if level else 1e-7, atol=2.0**-24 if level else 0
        )
    assert rotation_error(again.quats, original.quats) < (1e-5 if level == 0 else 3e-3)
