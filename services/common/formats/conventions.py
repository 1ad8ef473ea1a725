"""The conventions every splat format is converted through, written once.

The project's own (``Gaussians``, and the 3DGS `.ply` it reads and writes unchanged):

- **Axes:** whatever the `.ply` holds, taken as ``PLY_AXES`` (x right, y down, z forward: OpenCV's
  camera frame, which 3DGS training inherits from COLMAP, and the frame the spz library and
  PlayCanvas's splat-transform assume for a `.ply`). Other formats name their own frame (``SPZ_AXES``,
  ``GLTF_AXES``); a reader turns its file's frame into ``PLY_AXES`` and a writer back, with
  ``change_axes``, so that a file opens upright and facing the same way in every format.
- **Quaternions:** (w, x, y, z), unit length, local-to-world. spz and glTF store (x, y, z, w).
- **Scales:** natural log of the standard deviation (glTF and `.splat` store the deviation itself).
- **Opacity:** the logit (glTF, `.spz` and `.splat` store the opacity itself, quantized or not);
  ``opacity_to_logit`` keeps decoded values within the `.ply` reader's bounds.
- **Colour:** SH coefficients in gsplat's real basis and band order (``sh[:, 0]`` is the DC term,
  colour = 0.5 + ``SH_C0`` * DC + higher bands), ``[N, K, 3]``: coefficient-major, RGB inner, which is
  also spz's order. No colour-space conversion: every format here stores the same sRGB-valued
  coefficients that 3DGS trains.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.gaussians import MAX_OPACITY_LOGIT, SH_C0, Gaussians

__all__ = [
    "GLTF_AXES",
    "PLY_AXES",
    "SH_C0",
    "SPZ_AXES",
    "axis_signs",
    "change_axes",
    "logit_to_opacity",
    "opacity_to_logit",
    "to_uint8",
]

# Each frame as three letters: where +x, +y and +z point (Right/Left, Up/Down, Front/Back).
PLY_AXES = "RDF"
SPZ_AXES = "RUB"  # the spz library's internal frame (three.js's)
GLTF_AXES = "LUF"  # glTF 2.0: +Y up, +Z the asset's front, right-handed

_OPPOSITE = {"R": "L", "L": "R", "U": "D", "D": "U", "F": "B", "B": "F"}

# Parity of each SH basis function (gsplat's order, coefficients 1..15) in x, y and z: a change of
# sign of an axis multiplies the coefficient by (-1) ** parity. Band 1: -y, z, -x; band 2: xy, yz,
# 3z^2-1, xz, x^2-y^2; band 3: y(3x^2-y^2), xyz, y(4z^2-x^2-y^2), z(2z^2-3x^2-3y^2), x(4z^2-x^2-y^2),
# z(x^2-y^2), x(x^2-3y^2).
_SH_PARITY = np.array(
    [
        (0, 1, 0), (0, 0, 1), (1, 0, 0),
        (1, 1, 0), (0, 1, 1), (0, 0, 0), (1, 0, 1), (0, 0, 0),
        (0, 1, 0), (1, 1, 1), (0, 1, 0), (0, 0, 1), (1, 0, 0), (0, 0, 1), (1, 0, 0),
    ]
)  # fmt: skip


def axis_signs(source: str, target: str) -> np.ndarray:
    """``[3]`` of +-1: coordinates in frame ``source`` times these are coordinates in ``target``.

    Both frames name the same three axes in the same order (x is left-right in both, and so on);
    a frame that permutes axes is not supported here.

    Raises:
        ValueError: a frame is not three letters, one from each of R/L, U/D, F/B in that order.
    """
    for frame in (source, target):
        if len(frame) != 3 or any(frame[i] not in pair for i, pair in enumerate(("RL", "UD", "FB"))):
            raise ValueError(f"an axis frame is three letters from R/L, U/D, F/B in order, got {frame!r}")
    return np.array([1.0 if s == t else -1.0 for s, t in zip(source, target, strict=True)])


def change_axes(gaussians: Gaussians, source: str, target: str) -> Gaussians:
    """The same Gaussians, expressed in frame ``target`` instead of ``source``.

    With S the diagonal matrix of ``axis_signs``: means become S m, rotations S R S (a rotation
    again, whatever det S is: its quaternion keeps w and multiplies x, y, z by s_y s_z, s_x s_z,
    s_x s_y), scales stay, and each SH coefficient is multiplied by the signs of the axes its basis
    function is odd in, so that every view-dependent colour is the same seen from S d as from d.
    """
    signs = axis_signs(source, target)
    if np.all(signs == 1.0):
        return gaussians
    sx, sy, sz = signs
    quat_signs = np.array([1.0, sy * sz, sx * sz, sx * sy], dtype=np.float32)
    k = gaussians.sh.shape[1]
    sh_signs = np.ones(k, dtype=np.float32)
    sh_signs[1:] = np.prod(signs[None, :] ** _SH_PARITY[: k - 1], axis=1)
    return dataclasses.replace(
        gaussians,
        means=gaussians.means * signs.astype(np.float32),
        quats=gaussians.quats * quat_signs,
        sh=gaussians.sh * sh_signs[None, :, None],
    )


def logit_to_opacity(logits: np.ndarray) -> np.ndarray:
    """``[N]`` float64 sigmoid of the logits."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))


def opacity_to_logit(opacities: np.ndarray) -> np.ndarray:
    """``[N]`` float32 logits of opacities in [0, 1], clipped to +-``MAX_OPACITY_LOGIT``.

    A format that quantizes opacity stores 0 and 1 exactly, whose logits are infinite; the clip keeps
    them within what the `.ply` reader accepts (sigmoid(+-80) is 0 or 1 in float32).
    """
    p = np.asarray(opacities, dtype=np.float64)
    with np.errstate(divide="ignore"):
        logits = np.log(p) - np.log1p(-p)
    return np.clip(logits, -MAX_OPACITY_LOGIT, MAX_OPACITY_LOGIT).astype(np.float32)


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Values rounded to the nearest integer (halves away from zero, as C's ``round``, which the
    formats' reference encoders use) and clamped to 0..255, as uint8."""
    values = np.asarray(values, dtype=np.float64)
    return np.clip(np.trunc(values + np.copysign(0.5, values)), 0, 255).astype(np.uint8)
