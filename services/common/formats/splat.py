"""The `.splat` of the first web viewers (antimatter15/splat): 32 bytes per Gaussian, no header.

Per Gaussian (little-endian): position (3 x float32), standard deviations (3 x float32, linear),
colour and opacity (4 x uint8: 255 (0.5 + SH_C0 DC) clamped to [0, 1], then 255 opacity), rotation
(4 x uint8, w, x, y, z of the unit quaternion as 128 q + 128, clamped). Same axes as the `.ply`.

What it loses: every SH band above the DC term; DC colours outside [0, 1] (clamped); colour and
opacity to 0.5/255; quaternion components to 0.5/128 before renormalisation. Positions are exact and
scales keep float32 precision (exp then log: 1e-7 relative).
"""

from __future__ import annotations

import numpy as np

from services.common.errors import AssetError
from services.common.formats.conventions import logit_to_opacity, opacity_to_logit, to_uint8
from services.common.gaussians import MAX_GAUSSIANS, MAX_LOG_SCALE, MAX_POSITION, SH_C0, Gaussians

RECORD = np.dtype(
    [("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)]
)  # 32 bytes


def read_splat(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Decode a `.splat` file's bytes into ``Gaussians`` (SH degree 0).

    Raises:
        AssetError: a length that is 0 or not a multiple of 32, a count over ``max_gaussians``, a
            position that is not finite or beyond +-``MAX_POSITION``, a scale that is not positive
            and finite or whose log is over ``MAX_LOG_SCALE``.
    """
    if len(data) == 0 or len(data) % RECORD.itemsize:
        raise AssetError(f"`.splat` length {len(data)} is not a positive multiple of {RECORD.itemsize} bytes")
    n = len(data) // RECORD.itemsize
    if n > max_gaussians:
        raise AssetError(f"`.splat` holds {n} Gaussians, over the limit of {max_gaussians}")
    records = np.frombuffer(data, dtype=RECORD)
    means = np.array(records["position"], dtype=np.float32)
    bad = ~np.all(np.isfinite(means) & (np.abs(means) <= MAX_POSITION), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        position = means[first].tolist()
        raise AssetError(f"`.splat` Gaussian {first} has position {position}: not finite, or too far")
    scales = records["scale"].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_scales = np.log(scales)
    bad = ~np.all(np.isfinite(log_scales) & (log_scales <= MAX_LOG_SCALE), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        sizes = scales[first].tolist()
        raise AssetError(f"`.splat` Gaussian {first} has scales {sizes}: each must lie in (0, e^10]")
    rgba = records["rgba"].astype(np.float64) / 255.0
    quats = (records["rotation"].astype(np.float64) - 128.0) / 128.0
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norms > 0.0, quats / np.where(norms > 0.0, norms, 1.0), [1.0, 0.0, 0.0, 0.0])
    return Gaussians(
        means=means,
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=opacity_to_logit(rgba[:, 3]),
        sh=((rgba[:, None, :3] - 0.5) / SH_C0).astype(np.float32),
    )


def write_splat(gaussians: Gaussians) -> bytes:
    """Encode ``Gaussians`` as a `.splat` file, in the order given.

    Raises:
        AssetError: ``gaussians.validate()`` fails.
    """
    gaussians.validate()
    records = np.zeros(len(gaussians), dtype=RECORD)
    records["position"] = gaussians.means
    records["scale"] = np.exp(gaussians.log_scales.astype(np.float64))
    colour = 0.5 + SH_C0 * gaussians.sh[:, 0].astype(np.float64)
    opacity = logit_to_opacity(gaussians.opacity_logits)
    records["rgba"] = to_uint8(np.concatenate([colour, opacity[:, None]], axis=1) * 255.0)
    quats = gaussians.quats.astype(np.float64)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    records["rotation"] = to_uint8(quats * 128.0 + 128.0)
    return records.tobytes()
