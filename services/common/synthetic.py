"""Synthetic Gaussian scenes for tests, samples and benchmarks (deterministic for a seed).

- ``random_gaussians``: a cloud of random Gaussians, for renderer and I/O tests.
- ``textured_blob``: a closed textured object with a face, the ground truth of a repair;
  ``deform`` moves it non-rigidly over time (a 4D asset); ``corrupt_unseen`` makes the "generator
  output" whose back and sides drifted, as LGM's do.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from services.common.gaussians import SH_C0, Gaussians, recolour


def random_gaussians(
    n: int,
    sh_degree: int = 0,
    seed: int = 0,
    extent: float = 0.5,
    scale_range: tuple[float, float] = (0.005, 0.05),
    opacity_range: tuple[float, float] = (0.05, 0.99),
) -> Gaussians:
    """N random, anisotropic Gaussians inside a cube of half-size ``extent`` around the origin.

    Scales are log-uniform in ``scale_range`` (world units), rotations uniform, opacities uniform in
    ``opacity_range``, DC colours uniform in [0, 1] after activation, higher SH bands small.
    """
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    opac = rng.uniform(*opacity_range, size=n)
    sh = np.zeros((n, k, 3))
    sh[:, 0] = (rng.uniform(0.0, 1.0, size=(n, 3)) - 0.5) / SH_C0
    if k > 1:
        sh[:, 1:] = rng.normal(scale=0.2, size=(n, k - 1, 3))
    return Gaussians(
        means=rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32),
        log_scales=rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), size=(n, 3)).astype(
            np.float32
        ),
        quats=quats.astype(np.float32),
        opacity_logits=np.log(opac / (1.0 - opac)).astype(np.float32),
        sh=sh.astype(np.float32),
    )


# Synthetic objects with a known identity: a ground truth to repair toward, and its "generator output".
#
# Conventions as in ``services.common.cameras``: y is up and the object's front faces +z, so the camera
# at azimuth 0 sees the face. Colours are SH degree 0 (view-independent).

_BROWN = np.array([0.50, 0.31, 0.16])
_DARK_BROWN = np.array([0.20, 0.11, 0.05])
_CREAM = np.array([0.95, 0.87, 0.72])
_EYE = np.array([0.05, 0.04, 0.04])
_NOSE = np.array([0.55, 0.25, 0.25])


def textured_blob(n: int = 20_000, seed: int = 0, radius: float = 0.35) -> Gaussians:
    """A closed, bumpy, slightly squashed ball covered by small opaque Gaussians, with a face.

    The surface is an ellipsoid of semi-axes ``(0.85, 1.0, 0.8) * radius`` (x, y, z) with smooth random
    bumps of a few percent. Each Gaussian is a flat disc lying in the surface (tangent standard
    deviation about 0.7 of the spacing between neighbours, normal one a fifth of that), opacity about
    0.97, so the surface renders solid. The texture makes colour identity matter: brown fur-like streaks,
    dark stripes slanting around the sides and the back, and on the front (+z) a cream face patch with
    two dark eyes and a pink nose.

    Args:
        n: number of Gaussians, >= 100; 10-20k render solid at 256-512 pixels with the default orbit.
        seed: the bumps, the fur noise and small jitters depend on it; equal seeds give equal arrays.
        radius: half height of the object, world units (the default orbit has radius 1.5).

    Returns:
        N Gaussians, SH degree 0, float32 arrays.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 100:
        raise ValueError(f"n must be an int >= 100, got {n!r}")
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be positive, got {radius!r}")
    rng = np.random.default_rng(seed)

    # 1. Directions: a Fibonacci sphere (even coverage), turned by a random angle.
    i = np.arange(n) + 0.5
    y = 1.0 - 2.0 * i / n
    phi = i * np.pi * (3.0 - np.sqrt(5.0)) + rng.uniform(0.0, 2.0 * np.pi)
    ring = np.sqrt(np.maximum(0.0, 1.0 - y * y))
    directions = np.stack([ring * np.cos(phi), y, ring * np.sin(phi)], axis=1)

    # 2. The surface point along each direction, and its normal (gradient of the implicit function).
    axes = np.array([0.85, 1.0, 0.8]) * radius
    bump_waves = _random_waves(rng, count=4, frequency=(1.5, 3.0))
    bump_amplitudes = rng.uniform(0.015, 0.03, size=4)

    def implicit(points: np.ndarray) -> np.ndarray:
        unit = points / np.linalg.norm(points, axis=1, keepdims=True)
        bumps = 1.0 + _wave_sum(unit, bump_waves, bump_amplitudes)
        return np.linalg.norm(points / axes, axis=1) - bumps

    bumps = 1.0 + _wave_sum(directions, bump_waves, bump_amplitudes)
    means = directions * (bumps / np.linalg.norm(directions / axes, axis=1))[:, None]
    eps = 1e-5 * radius
    gradient = np.stack([implicit(means + eps * e) - implicit(means - eps * e) for e in np.eye(3)], axis=1)
    normals = gradient / np.linalg.norm(gradient, axis=1, keepdims=True)

    # 3. Flat discs in the tangent plane: local z along the normal, a random turn about it.
    spacing = np.sqrt(4.0 * np.pi * (axes.mean() ** 2) / n)
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

    colours = _blob_texture(means / radius, directions, rng)
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=np.log(opacity / (1.0 - opacity)).astype(np.float32),
        sh=((colours - 0.5) / SH_C0)[:, None, :].astype(np.float32),
    )


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
