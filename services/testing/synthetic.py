"""Synthetic Gaussian objects for tests, samples and benchmarks (deterministic for a seed).

- ``textured_blob``: a closed textured object with a face, the ground truth of a repair;
  ``deform`` moves it non-rigidly over time (a 4D asset); ``corrupt_unseen`` makes the "generator
  output" whose back and sides drifted, as LGM's do.
- ``banded_body``, ``zebra``, ``spotted``, ``head``: more ground truths, each in parts of distinct
  colours (``OBJECTS`` names all five), on the same surface of flat opaque discs as the blob.
- ``SHARED_ASSETS``: where the real generator outputs (hamburger, monkey, donut, fruit_drops) are, for
  the tests and benchmarks that use them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from services.common.gaussians import SH_C0, Gaussians, recolour

SHARED_ASSETS = (
    Path(os.environ.get("TIRE_SHARED_DATA", Path(__file__).parents[3] / "shared" / "data")) / "assets"
)
"""The real generator outputs: ``$TIRE_SHARED_DATA/assets``, by default ``../shared/data/assets`` beside
the repository. Absent on most machines: their tests skip."""


# Synthetic objects with a known identity: a ground truth to repair toward, and its "generator output".
#
# Conventions as in ``services.common.cameras``: y is up and the object's front faces +z, so the camera
# at azimuth 0 sees the face. Colours are SH degree 0 (view-independent).

_BROWN = np.array([0.50, 0.31, 0.16])
_DARK_BROWN = np.array([0.20, 0.11, 0.05])
_CREAM = np.array([0.95, 0.87, 0.72])
_EYE = np.array([0.05, 0.04, 0.04])
_NOSE = np.array([0.55, 0.25, 0.25])
_GREEN = np.array([0.20, 0.55, 0.18])
_YELLOW = np.array([0.96, 0.80, 0.16])
_CHARCOAL = np.array([0.16, 0.13, 0.12])
_WHITE = np.array([0.95, 0.94, 0.90])
_BLACK = np.array([0.07, 0.06, 0.06])
_RED = np.array([0.80, 0.12, 0.09])
_SKIN = np.array([0.93, 0.75, 0.61])
_HAIR = np.array([0.30, 0.17, 0.08])
_LIPS = np.array([0.72, 0.26, 0.26])


def textured_blob(n: int = 20_000, seed: int = 0, radius: float = 0.35) -> Gaussians:
    """A closed, bumpy, slightly squashed ball covered by small opaque Gaussians, with a face.

    The surface is an ellipsoid of semi-axes ``(0.85, 1.0, 0.8) * radius`` (x, y, z) with smooth random
    bumps of a few percent. Each Gaussian is a flat disc lying in the surface (tangent standard
    deviation about 0.7 of the spacing between neighbours, normal one a fifth of that), opacity about
    0.97, so the surface renders solid (``_surface``). The texture makes colour identity matter: brown
    fur-like streaks, dark stripes slanting around the sides and the back, and on the front (+z) a cream
    face patch with two dark eyes and a pink nose.

    Args:
        n: number of Gaussians, >= 100; 10-20k render solid at 256-512 pixels with the default orbit.
        seed: the bumps, the fur noise and small jitters depend on it; equal seeds give equal arrays.
        radius: half height of the object, world units (the default orbit has radius 1.5).

    Returns:
        N Gaussians, SH degree 0, float32 arrays.
    """
    _check_object_arguments(n, radius)
    rng = np.random.default_rng(seed)
    surface = _surface(n, rng, radius, axes=(0.85, 1.0, 0.8))
    return surface.gaussians(_blob_texture(surface.means / radius, surface.directions, rng))


def banded_body(n: int = 12_000, seed: int = 0, radius: float = 0.35) -> Gaussians:
    """A body in three coloured parts: green above, a yellow belly band around the middle, a dark base.

    The surface is ``_surface`` on an egg-like ellipsoid of semi-axes ``(0.8, 1.0, 0.8) * radius``. With
    ``d`` the unit direction from the centre (y up) and ``a = atan2(x, z)`` the angle around the vertical,
    the band covers ``|d_y + 0.05 + 0.06 sin(2 a + phase)| < 0.2`` (a slightly wavy belt, all the way
    round) and the base ``d_y < -0.72``; the rest is the green body. Every part has a mottled shading of
    a few percent. Colours are far from ``corrupt_unseen``'s steel blue-grey drift, so a drifted part is
    plainly wrong. The front view shows all three parts, as a reference picture of such a subject would.

    Args, returns: as ``textured_blob``.
    """
    _check_object_arguments(n, radius)
    rng = np.random.default_rng(seed)
    surface = _surface(n, rng, radius, axes=(0.8, 1.0, 0.8))
    x, y, z = surface.directions.T
    around = np.arctan2(x, z)
    colours = _mottled(_GREEN, surface.means / radius, rng)
    belt = y + 0.05 + 0.06 * np.sin(2.0 * around + rng.uniform(0.0, 2.0 * np.pi))
    band = _smoothstep(0.22, 0.18, np.abs(belt))
    colours = colours + band[:, None] * (_mottled(_YELLOW, surface.means / radius, rng) - colours)
    base = _smoothstep(-0.70, -0.74, y)
    colours = colours + base[:, None] * (_CHARCOAL - colours)
    return surface.gaussians(np.clip(colours, 0.0, 1.0))


def zebra(n: int = 12_000, seed: int = 0, radius: float = 0.35) -> Gaussians:
    """A ball striped black and white all round: diagonal stripes winding about the vertical axis.

    The surface is ``_surface`` on semi-axes ``(0.85, 1.0, 0.85) * radius``. With ``d`` the unit
    direction from the centre and ``a = atan2(d_x, d_z)``, the stripes are the sign of
    ``cos(5 a + 6 d_y + phase)`` (phase from ``seed``) with soft edges: five black and five white
    stripes around the body, each slanting as it winds. Both colours show on every side, the front
    included; being odd in number, the stripes make the back view the front view's negative (white
    where the front is black), so a back copied from the front is wrong everywhere.

    Args, returns: as ``textured_blob``.
    """
    _check_object_arguments(n, radius)
    rng = np.random.default_rng(seed)
    surface = _surface(n, rng, radius, axes=(0.85, 1.0, 0.85))
    x, y, z = surface.directions.T
    phase = 5.0 * np.arctan2(x, z) + 6.0 * y + rng.uniform(0.0, 2.0 * np.pi)
    black = _smoothstep(0.25, -0.25, np.cos(phase))
    white = _mottled(_WHITE, surface.means / radius, rng, amount=0.03)
    colours = white + black[:, None] * (_BLACK - white)
    return surface.gaussians(np.clip(colours, 0.0, 1.0))


def spotted(n: int = 12_000, seed: int = 0, radius: float = 0.35, spots: int = 16) -> Gaussians:
    """A red ball with large black spots on every side, like a ladybird.

    The surface is ``_surface`` on semi-axes ``(0.9, 0.85, 0.9) * radius``. The spot centres are a
    Fibonacci sphere of ``spots`` directions (even cover: every side has spots, the front several),
    turned at random and jittered; spot ``i`` covers the directions within an angle of about 0.3 rad
    (times 0.8-1.2 at random) of its centre, with a soft edge.

    Args:
        spots: how many spots, >= 1.
        n, seed, radius: as ``textured_blob``.

    Returns:
        As ``textured_blob``.
    """
    _check_object_arguments(n, radius)
    if isinstance(spots, bool) or not isinstance(spots, int | np.integer) or spots < 1:
        raise ValueError(f"spots must be an int >= 1, got {spots!r}")
    rng = np.random.default_rng(seed)
    surface = _surface(n, rng, radius, axes=(0.9, 0.85, 0.9))
    centres = _fibonacci_directions(spots, rng.uniform(0.0, 2.0 * np.pi))
    centres = centres @ _random_rotation(rng).T + rng.normal(0.0, 0.08, size=centres.shape)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    sizes = 0.3 * rng.uniform(0.8, 1.2, size=spots)
    angle = np.arccos(np.clip(surface.directions @ centres.T, -1.0, 1.0))  # [N, spots]
    spot = _smoothstep(1.0, 0.85, angle / sizes).max(axis=1)
    red = _mottled(_RED, surface.means / radius, rng)
    colours = red + spot[:, None] * (_BLACK - red)
    return surface.gaussians(np.clip(colours, 0.0, 1.0))


def head(n: int = 12_000, seed: int = 0, radius: float = 0.35) -> Gaussians:
    """A head: a skin-coloured face with eyes, brows and a mouth on the front, dark brown hair elsewhere.

    The surface is ``_surface`` on semi-axes ``(0.82, 1.0, 0.88) * radius``. With ``d`` the unit
    direction from the centre, the face is the oval ``(d_x / 0.68)² + ((d_y + 0.12) / 0.72)² < 1`` on the
    front (``d_z > 0``); below ``d_y = -0.55`` (chin and neck) the skin goes all the way round; the rest
    (top, sides and back) is hair: strands of brown that run mostly up and down. Seen from the front, the
    hair frames the face on the top and both sides, so a reference picture shows both parts. On the face:
    two eyes (white with a dark iris), two brows in the hair's colour and a red mouth.

    Args, returns: as ``textured_blob``.
    """
    _check_object_arguments(n, radius)
    rng = np.random.default_rng(seed)
    surface = _surface(n, rng, radius, axes=(0.82, 1.0, 0.88))
    points = surface.means / radius
    x, y, z = surface.directions.T
    face = _smoothstep(1.05, 0.9, (x / 0.68) ** 2 + ((y + 0.12) / 0.72) ** 2) * _smoothstep(0.0, 0.15, z)
    skin = np.maximum(face, _smoothstep(-0.5, -0.6, y))
    waves = _random_waves(rng, count=24, frequency=(8.0, 16.0))
    waves[:, 1] *= 0.2  # strands: waves that vary mostly around, little up and down
    strands = _wave_sum(points, waves, np.full(24, 1.0 / np.sqrt(24.0)))
    hair = _HAIR[None] * (1.0 + 0.35 * strands[:, None] + rng.normal(0.0, 0.05, size=(n, 1)))
    colours = hair + skin[:, None] * (_mottled(_SKIN, points, rng, amount=0.03) - hair)
    for cx in (-0.24, 0.24):
        sclera = _smoothstep(1.0, 0.75, np.hypot((x - cx) / 0.13, (y - 0.1) / 0.08)) * (z > 0)
        colours = colours + sclera[:, None] * (_WHITE - colours)
        iris = _smoothstep(0.05, 0.035, np.hypot(x - cx, y - 0.1)) * (z > 0)
        colours = colours + iris[:, None] * (_EYE - colours)
        brow = _smoothstep(1.0, 0.8, np.hypot((x - cx) / 0.13, (y - 0.25 - 0.03 * cx) / 0.025)) * (z > 0)
        colours = colours + brow[:, None] * (_HAIR - colours)
    mouth = _smoothstep(1.0, 0.8, np.hypot(x / 0.17, (y + 0.38) / 0.045)) * (z > 0)
    colours = colours + mouth[:, None] * (_LIPS - colours)
    return surface.gaussians(np.clip(colours, 0.0, 1.0))


OBJECTS = {
    "blob": textured_blob,
    "banded": banded_body,
    "zebra": zebra,
    "spotted": spotted,
    "head": head,
}
"""The ground-truth objects by name: each ``f(n, seed, radius)`` gives N flat opaque Gaussians of SH
degree 0 on a closed surface about the origin, front toward +z, in parts of distinct colours that the
front view shows at least in part (as a subject's reference picture would)."""


def deform(gaussians: Gaussians, t: float) -> Gaussians:
    """The object at time ``t`` of a smooth non-rigid motion: it twists, sways to +x and squashes.

    With ``s = r / r0``, the point's coordinates in units of the object's size ``r0`` (the largest
    distance of a mean from the origin) and ``h = (y / r0 + 1) / 2`` its height from 0 (bottom) to 1
    (top), the motion at time t is, in order:
    1. a twist about +y by ``0.5 * t * h`` radians (the top turns up to about 29°, the bottom stays);
    2. a sway along +x of ``0.25 * t * h**2 * r0`` (the top leans, the bottom stays);
    3. a volume-keeping squash: y scaled by ``q = 1 - 0.12 * sin(pi * t)``, x and z by ``1 / sqrt(q)``.
    ``t = 0`` is the identity (the input's arrays are returned in a new ``Gaussians``), and every t
    maps the same Gaussian to a nearby place, so frames of a 4D asset correspond index by index.

    Each covariance moves with the local Jacobian J of the motion (``J Σ Jᵀ``), so discs stay in the
    surface; scales and rotations are re-read from it. Colours, opacities and ``extra`` are kept; SH
    bands above degree 0 are not rotated (exact for degree 0).

    Args:
        gaussians: N Gaussians around the origin.
        t: time in [0, 1].

    Returns:
        N Gaussians, float32.
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t!r}")
    if t == 0.0:
        g = gaussians
        return Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh, dict(g.extra))
    means = gaussians.means.astype(np.float64)
    r0 = float(np.linalg.norm(means, axis=1).max()) or 1.0

    def motion(points: np.ndarray) -> np.ndarray:
        x, y, z = points[:, 0], points[:, 1], points[:, 2]
        h = (y / r0 + 1.0) / 2.0
        angle = 0.5 * t * h
        x, z = np.cos(angle) * x + np.sin(angle) * z, -np.sin(angle) * x + np.cos(angle) * z
        x = x + 0.25 * t * h * h * r0
        q = 1.0 - 0.12 * np.sin(np.pi * t)
        return np.stack([x / np.sqrt(q), y * q, z / np.sqrt(q)], axis=1)

    # Central differences: the motion is smooth on the scale of 1e-5 r0, and this keeps it in one place.
    eps = 1e-5 * r0
    jacobian = np.stack(
        [(motion(means + eps * e) - motion(means - eps * e)) / (2.0 * eps) for e in np.eye(3)], axis=2
    )
    rotation = _quat_to_matrix(gaussians.quats.astype(np.float64))
    scales = np.exp(gaussians.log_scales.astype(np.float64))
    factor = jacobian @ rotation * scales[:, None, :]  # J R S, so that Σ' = (J R S)(J R S)ᵀ
    u, sigma, _ = np.linalg.svd(factor)
    # Σ' = U diag(sigma²) Uᵀ; U may be a reflection, and flipping one column keeps Σ'.
    u[:, :, 2] *= np.sign(np.linalg.det(u))[:, None]
    return Gaussians(
        means=motion(means).astype(np.float32),
        log_scales=np.log(sigma).astype(np.float32),
        quats=_matrix_to_quat(u).astype(np.float32),
        opacity_logits=gaussians.opacity_logits,
        sh=gaussians.sh,
        extra=dict(gaussians.extra),
    )


def corrupt_unseen(
    gaussians: Gaussians,
    seed: int = 0,
    tint: tuple[float, float, float] = (0.50, 0.62, 0.76),
    tint_strength: float = 0.6,
    desaturate: float = 0.5,
    blur: float = 0.03,
    front_cos: float = 0.2,
    back_cos: float = -0.3,
) -> Gaussians:
    """Imitate a feed-forward generator's drift on the sides the input image did not show (as LGM's).

    A Gaussian's weight w grows smoothly from 0 to 1 as the cosine between +z and the direction from
    the origin to its mean falls from ``front_cos`` to ``back_cos``. Where w > 0 its colour c becomes

        blurred  = the mean colour of the Gaussians within about ``blur`` of it (grid hashing)
        drifted  = lerp(lerp(blurred, luminance(blurred), desaturate), tint, tint_strength)
                   times a blotchy brightness of +-8% (random, from ``seed``)
        c'       = lerp(c, drifted, w)

    so the back and sides lose their detail and turn a pale steel blue-grey. Gaussians with w = 0 (those the
    front camera sees, for an object of the default size) keep every SH coefficient bit for bit;
    those with w > 0 become view-independent (higher SH bands zeroed). Geometry is unchanged.

    Args:
        gaussians: N Gaussians around the origin, front toward +z.
        seed: the blotches.
        tint: RGB in [0, 1] the colours drift toward.
        tint_strength: in [0, 1]; how far toward ``tint``.
        desaturate: in [0, 1]; how far toward grey.
        blur: world units, > 0; the size of the neighbourhood averaged.
        front_cos: above it, no change; must be above ``back_cos``.
        back_cos: below it, the full change.

    Returns:
        N Gaussians, the geometry arrays shared with the input.
    """
    for name, value in (("tint_strength", tint_strength), ("desaturate", desaturate)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if not (np.isfinite(blur) and blur > 0):
        raise ValueError(f"blur must be positive, got {blur!r}")
    if not -1.0 <= back_cos < front_cos <= 1.0:
        raise ValueError(
            f"need -1 <= back_cos < front_cos <= 1, got back_cos {back_cos!r}, front_cos {front_cos!r}"
        )
    rng = np.random.default_rng(seed)
    means = gaussians.means.astype(np.float64)
    distance = np.maximum(np.linalg.norm(means, axis=1), 1e-12)
    cosine = means[:, 2] / distance
    ramp = np.clip((front_cos - cosine) / (front_cos - back_cos), 0.0, 1.0)
    weight = ramp * ramp * (3.0 - 2.0 * ramp)  # smoothstep
    which = weight > 0.0
    if not which.any():
        return dataclasses.replace(gaussians)

    colours = np.clip(0.5 + SH_C0 * gaussians.sh[:, 0].astype(np.float64), 0.0, 1.0)
    blurred = _grid_blur(means, colours, blur)
    grey = blurred @ np.array([0.299, 0.587, 0.114])
    drifted = (1.0 - desaturate) * blurred + desaturate * grey[:, None]
    drifted = (1.0 - tint_strength) * drifted + tint_strength * np.asarray(tint, dtype=np.float64)
    size = distance.max()
    blotches = _wave_sum(means / size, _random_waves(rng, count=5, frequency=(2.0, 5.0)), np.full(5, 0.035))
    drifted = drifted * (1.0 + blotches)[:, None]
    result = (1.0 - weight[:, None]) * colours + weight[:, None] * drifted
    return recolour(gaussians, result, which=which)


def _check_object_arguments(n: int, radius: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 100:
        raise ValueError(f"n must be an int >= 100, got {n!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be positive, got {radius!r}")


@dataclasses.dataclass(frozen=True)
class _Surface:
    """Flat opaque discs covering a closed surface: every array but the colour of N Gaussians.

    Attributes:
        means: ``[N, 3]`` float64 points on the surface, world units.
        directions: ``[N, 3]`` float64 unit directions from the origin that the points were cast along.
        log_scales: ``[N, 3]`` float64.
        quats: ``[N, 4]`` float64 (w, x, y, z).
        opacity: ``[N]`` float64 in (0, 1).
    """

    means: np.ndarray
    directions: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    opacity: np.ndarray

    def gaussians(self, colours: np.ndarray) -> Gaussians:
        """These discs with ``[N, 3]`` RGB colours in [0, 1], as SH degree 0 Gaussians, float32."""
        return Gaussians(
            means=self.means.astype(np.float32),
            log_scales=self.log_scales.astype(np.float32),
            quats=self.quats.astype(np.float32),
            opacity_logits=np.log(self.opacity / (1.0 - self.opacity)).astype(np.float32),
            sh=((colours - 0.5) / SH_C0)[:, None, :].astype(np.float32),
        )


def _surface(n: int, rng: np.random.Generator, radius: float, axes: tuple[float, float, float]) -> _Surface:
    """N flat discs covering a bumpy ellipsoid of semi-axes ``axes * radius`` (x, y, z) about the origin.

    1. Directions: a Fibonacci sphere (even coverage), turned about y by a random angle.
    2. The surface point along each direction: the ellipsoid with 4 smooth random bumps of 1.5-3% of its
       size; the normal is the gradient of the implicit function.
    3. Flat discs in the tangent plane: local z along the normal, a random turn about it, tangent
       standard deviation about 0.7 of the spacing between neighbours (so the surface renders solid),
       normal one a fifth of that; opacity 0.95-0.99.

    The draws from ``rng`` come in a fixed order, so a caller that draws its texture afterwards gets the
    same arrays for the same seed.
    """
    # 1. Directions.
    directions = _fibonacci_directions(n, rng.uniform(0.0, 2.0 * np.pi))

    # 2. The surface point along each direction, and its normal (gradient of the implicit function).
    semi_axes = np.array(axes) * radius
    bump_waves = _random_waves(rng, count=4, frequency=(1.5, 3.0))
    bump_amplitudes = rng.uniform(0.015, 0.03, size=4)

    def implicit(points: np.ndarray) -> np.ndarray:
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        bumps = 1.0 + _wave_sum(unit, bump_waves, bump_amplitudes)
        return np.linalg.norm(points / semi_axes, axis=1) - bumps

    bumps = 1.0 + _wave_sum(directions, bump_waves, bump_amplitudes)
    means = directions * (bumps / np.linalg.norm(directions / semi_axes, axis=1))[:, None]
    eps = 1e-5 * radius
    gradient = np.stack([implicit(means + eps * e) - implicit(means - eps * e) for e in np.eye(3)], axis=1)
    normals = gradient / np.linalg.norm(gradient, axis=1, keepdims=True)

    # 3. Flat discs in the tangent plane.
    spacing = np.sqrt(4.0 * np.pi * (semi_axes.mean() ** 2) / n)
    tangent = 0.7 * spacing * np.exp(rng.normal(0.0, 0.1, size=n))
    log_scales = np.log(np.stack([tangent, tangent * rng.uniform(0.8, 1.0, size=n), 0.2 * tangent], axis=1))
    helper = np.where(np.abs(normals[:, 1:2]) < 0.9, [[0.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]])
    t1 = np.cross(helper, normals)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True)
    t2 = np.cross(normals, t1)
    turn = rng.uniform(0.0, 2.0 * np.pi, size=(n, 1))
    t1, t2 = np.cos(turn) * t1 + np.sin(turn) * t2, -np.sin(turn) * t1 + np.cos(turn) * t2
    quats = _matrix_to_quat(np.stack([t1, t2, normals], axis=2))
    opacity = rng.uniform(0.95, 0.99, size=n)
    return _Surface(means, directions, log_scales, quats, opacity)


def _fibonacci_directions(n: int, turn: float) -> np.ndarray:
    """``[n, 3]`` unit directions spread evenly over the sphere (a Fibonacci spiral), turned by ``turn``."""
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0)) + turn
    ring = np.sqrt(np.maximum(0.0, 1.0 - y * y))
    return np.stack([ring * np.cos(phi), y, ring * np.sin(phi)], axis=1)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """``[3, 3]`` a uniformly random rotation matrix."""
    q = rng.normal(size=4)
    return _quat_to_matrix(q[None])[0]


def _mottled(
    colour: np.ndarray, points: np.ndarray, rng: np.random.Generator, amount: float = 0.06
) -> np.ndarray:
    """``[N, 3]``: ``colour`` with a smooth mottled brightness of about +-``amount`` at ``[N, 3]`` points."""
    waves = _random_waves(rng, count=6, frequency=(1.0, 3.0))
    shade = _wave_sum(points, waves, np.full(6, amount / np.sqrt(3.0)))
    return np.clip(colour[None] * (1.0 + shade[:, None]), 0.0, 1.0)


def _random_waves(rng: np.random.Generator, count: int, frequency: tuple[float, float]) -> np.ndarray:
    """``[count, 4]``: unit direction times a frequency (radians per unit), then a phase."""
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    k = directions * 2.0 * np.pi * rng.uniform(*frequency, size=(count, 1))
    return np.concatenate([k, rng.uniform(0.0, 2.0 * np.pi, size=(count, 1))], axis=1)


def _wave_sum(points: np.ndarray, waves: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """``[P]`` sum of ``amplitude * sin(k . p + phase)`` over the waves, at ``[P, 3]`` points."""
    return np.sin(points @ waves[:, :3].T + waves[:, 3]) @ amplitudes


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    u = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _blob_texture(points: np.ndarray, directions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[N, 3]`` RGB in [0, 1] at ``[N, 3]`` points (units of the radius) with unit ``directions``."""
    n = len(points)
    # Fur: thin streaks that run mostly up and down (waves whose direction is mostly horizontal).
    waves = _random_waves(rng, count=24, frequency=(6.0, 14.0))
    waves[:, 1] *= 0.25
    fur = _wave_sum(points, waves, np.full(24, 1.0 / np.sqrt(24.0)))
    colours = _BROWN[None] * (1.0 + 0.22 * fur[:, None] + rng.normal(0.0, 0.04, size=(n, 1)))

    # Stripes slanting around the body, strongest at the back.
    x, y, z = directions[:, 0], directions[:, 1], directions[:, 2]
    around = np.arctan2(x, z)
    stripes = _smoothstep(0.45, 0.75, np.cos(7.0 * around + 2.5 * y)) * _smoothstep(0.5, -0.1, z)
    colours = colours + stripes[:, None] * (_DARK_BROWN - colours)

    # The face: a cream oval on the front, two eyes above its middle and a nose below them.
    face = _smoothstep(1.0, 0.75, (x / 0.5) ** 2 + ((y + 0.05) / 0.6) ** 2) * _smoothstep(0.2, 0.45, z)
    colours = colours + face[:, None] * (_CREAM - colours)
    for centre, size, colour in (
        ((-0.2, 0.22), 0.075, _EYE),
        ((0.2, 0.22), 0.075, _EYE),
        ((0.0, 0.02), 0.06, _NOSE),
    ):
        spot = _smoothstep(size, 0.7 * size, np.hypot(x - centre[0], y - centre[1])) * (z > 0)
        colours = colours + spot[:, None] * (colour - colours)
    return np.clip(colours, 0.0, 1.0)


def _grid_blur(points: np.ndarray, values: np.ndarray, cell: float) -> np.ndarray:
    """``[P, C]``: the mean of ``values`` over the points in the 3 x 3 x 3 grid cells around each point.

    Cells are ``cell`` wide; sums per occupied cell are looked up by sorted integer keys.
    """
    index = np.floor(points / cell).astype(np.int64)
    index -= index.min(axis=0)
    span = index.max(axis=0) + 3  # room for the -1 and +1 neighbours after shifting by one
    index += 1

    def key(idx: np.ndarray) -> np.ndarray:
        return (idx[:, 0] * span[1] + idx[:, 1]) * span[2] + idx[:, 2]

    cells, inverse = np.unique(key(index), return_inverse=True)
    sums = np.zeros((len(cells), values.shape[1]))
    np.add.at(sums, inverse, values)
    counts = np.bincount(inverse, minlength=len(cells)).astype(np.float64)
    total = np.zeros_like(values, dtype=np.float64)
    count = np.zeros(len(points))
    for offset in np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), axis=-1).reshape(-1, 3):
        neighbour = key(index + offset)
        at = np.minimum(np.searchsorted(cells, neighbour), len(cells) - 1)
        found = cells[at] == neighbour
        total[found] += sums[at[found]]
        count[found] += counts[at[found]]
    return total / count[:, None]


def _matrix_to_quat(matrices: np.ndarray) -> np.ndarray:
    """``[N, 4]`` unit quaternions (w, x, y, z), w >= 0, of ``[N, 3, 3]`` rotation matrices."""
    m = matrices
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # Shepperd: take the largest of 4w², 4x², 4y², 4z² as the pivot, for accuracy near 180° turns.
    squares = np.stack(
        [
            1.0 + trace,
            1.0 + 2.0 * m[:, 0, 0] - trace,
            1.0 + 2.0 * m[:, 1, 1] - trace,
            1.0 + 2.0 * m[:, 2, 2] - trace,
        ],
        axis=1,
    )
    pivot = squares.argmax(axis=1)
    q = np.empty((len(m), 4))
    for p in range(4):
        sel = pivot == p
        r = m[sel]
        s = np.sqrt(np.maximum(squares[sel, p], 1e-300))  # = 2 |q_p|
        # Differences and sums of opposite entries: 4 w x, 4 w y, 4 w z, 4 x y, 4 x z, 4 y z.
        d = {
            "wx": r[:, 2, 1] - r[:, 1, 2], "wy": r[:, 0, 2] - r[:, 2, 0], "wz": r[:, 1, 0] - r[:, 0, 1],
            "xy": r[:, 0, 1] + r[:, 1, 0], "xz": r[:, 0, 2] + r[:, 2, 0], "yz": r[:, 1, 2] + r[:, 2, 1],
        }  # fmt: skip
        if p == 0:
            q[sel] = np.stack([s / 2, d["wx"] / (2 * s), d["wy"] / (2 * s), d["wz"] / (2 * s)], axis=1)
        elif p == 1:
            q[sel] = np.stack([d["wx"] / (2 * s), s / 2, d["xy"] / (2 * s), d["xz"] / (2 * s)], axis=1)
        elif p == 2:
            q[sel] = np.stack([d["wy"] / (2 * s), d["xy"] / (2 * s), s / 2, d["yz"] / (2 * s)], axis=1)
        else:
            q[sel] = np.stack([d["wz"] / (2 * s), d["xz"] / (2 * s), d["yz"] / (2 * s), s / 2], axis=1)
    q *= np.where(q[:, :1] < 0.0, -1.0, 1.0)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _quat_to_matrix(quats: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` rotation matrices of ``[N, 4]`` quaternions (w, x, y, z), normalised first."""
    q = quats / np.linalg.norm(quats, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=1),
        ],
        axis=1,
    )
