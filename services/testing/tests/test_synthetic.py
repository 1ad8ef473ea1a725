"""Synthetic objects: the textured blob, its motion and its drifted "generator output"."""

import numpy as np
import pytest

from services.common.cameras import orbit_cameras
from services.common.gaussians import SH_C0, Gaussians
from services.common.rasterizer import rasterize
from services.testing.synthetic import (
    _BLACK,
    _CHARCOAL,
    _GREEN,
    _HAIR,
    _RED,
    _SKIN,
    _WHITE,
    _YELLOW,
    OBJECTS,
    _matrix_to_quat,
    _quat_to_matrix,
    corrupt_unseen,
    deform,
    textured_blob,
)

N = 6_000


@pytest.fixture(scope="module")
def blob() -> Gaussians:
    return textured_blob(N, seed=0)


def _colours(g: Gaussians) -> np.ndarray:
    return np.clip(0.5 + SH_C0 * g.sh[:, 0].astype(np.float64), 0.0, 1.0)


def _render(g: Gaussians, azimuths, side: int = 96):
    return rasterize(g, orbit_cameras(azimuths, side, side), background=(1.0, 1.0, 1.0))


def _interior(alpha: np.ndarray, margin: int = 3) -> np.ndarray:
    """``[V, H, W]`` bool: pixels whose every neighbour within ``margin`` is inside the silhouette."""
    inside = alpha > 0.5
    h, w = inside.shape[1:]
    padded = np.pad(inside, ((0, 0), (margin, margin), (margin, margin)))
    interior = np.ones_like(inside)
    for dy in range(2 * margin + 1):
        for dx in range(2 * margin + 1):
            interior &= padded[:, dy : dy + h, dx : dx + w]
    return interior


def _covariances(g: Gaussians) -> np.ndarray:
    r = _quat_to_matrix(g.quats.astype(np.float64))
    s = np.exp(2.0 * g.log_scales.astype(np.float64))
    return np.einsum("nij,nj,nkj->nik", r, s, r)


def test_textured_blob_is_deterministic_for_a_seed(blob: Gaussians) -> None:
    again = textured_blob(N, seed=0)
    other = textured_blob(N, seed=1)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(again, name), getattr(blob, name))
    assert not np.array_equal(other.sh, blob.sh)


def test_textured_blob_is_a_closed_surface_of_small_opaque_discs(blob: Gaussians) -> None:
    blob.validate()
    assert len(blob) == N and blob.sh_degree == 0
    extent = np.abs(blob.means).max(axis=0)
    np.testing.assert_allclose(extent, np.array([0.85, 1.0, 0.8]) * 0.35, rtol=0.1)
    assert blob.opacities.min() > 0.9
    scales = np.sort(blob.scales, axis=1)
    assert (scales[:, 0] < 0.3 * scales[:, 1]).all(), "discs are flat"
    assert scales[:, 2].max() < 0.03

    # Solid from every side: away from the silhouette's rim, alpha is close to 1.
    render = _render(blob, [0.0, 90.0, 180.0, 270.0])
    assert (render.alpha > 0.5).mean(axis=(1, 2)).min() > 0.15
    assert render.alpha[_interior(render.alpha)].min() > 0.95


def test_textured_blob_has_a_face_on_the_front_and_stripes_behind(blob: Gaussians) -> None:
    render = _render(blob, [0.0, 180.0])
    centre = render.rgb[:, 40:56, 40:56].reshape(2, -1, 3).mean(axis=1)
    cream, brown = centre
    assert cream.min() > 0.6 and cream[0] > cream[2], f"front centre {cream} is not the cream face"
    assert brown[0] > 1.5 * brown[2] and brown.max() < 0.6, f"back centre {brown} is not brown fur"
    # Stripes: the back holds both dark stripe pixels and lighter fur.
    back = render.rgb[1][render.alpha[1] > 0.99].mean(axis=1)
    assert np.quantile(back, 0.05) < 0.15 < 0.3 < np.quantile(back, 0.9)


def test_textured_blob_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 100, got 10"):
        textured_blob(10)
    with pytest.raises(ValueError, match="radius must be positive, got -1"):
        textured_blob(1000, radius=-1.0)


def test_deform_at_zero_is_the_identity(blob: Gaussians) -> None:
    same = deform(blob, 0.0)
    assert same is not blob
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert getattr(same, name) is getattr(blob, name)


def test_deform_moves_smoothly_and_keeps_identity(blob: Gaussians) -> None:
    moved = deform(blob, 1.0)
    moved.validate()
    assert len(moved) == len(blob)
    assert moved.sh is blob.sh and moved.opacity_logits is blob.opacity_logits
    shift = np.linalg.norm(moved.means - blob.means, axis=1)
    top, bottom = blob.means[:, 1] > 0.3, blob.means[:, 1] < -0.3
    assert shift[top].mean() > 0.05 > 0.02 > shift[bottom].mean(), "the top sways, the bottom stays"
    assert shift.max() < 0.3

    # Continuous in t: a small step moves little.
    np.testing.assert_allclose(deform(blob, 1e-4).means, blob.means, atol=1e-4)


def test_deform_carries_covariances_with_the_motion(blob: Gaussians) -> None:
    t = 0.6
    moved = deform(blob, t)
    # Twist, sway and squash each keep volume, so every Gaussian keeps its volume (sum of log scales).
    np.testing.assert_allclose(moved.log_scales.sum(axis=1), blob.log_scales.sum(axis=1), atol=1e-4)

    # The covariance is J Σ Jᵀ, with J measured here by moving two points along each axis.
    norms = np.linalg.norm(blob.means, axis=1)
    picks = np.flatnonzero(norms < 0.95 * norms.max())[::397]
    eps = 1e-3
    jacobian = np.empty((len(picks), 3, 3))
    for axis in range(3):
        step = np.zeros(3, dtype=np.float32)
        step[axis] = eps
        probe = [
            Gaussians(
                blob.means[picks] + sign * step,
                blob.log_scales[picks],
                blob.quats[picks],
                blob.opacity_logits[picks],
                blob.sh[picks],
            )
            for sign in (1, -1)
        ]
        # The motion is scaled by the object's size: move the probes along with the whole object (they
        # lie inside it, so they do not change its size) and read them back.
        ends = [deform(_concat(blob, p), t).means[N:].astype(np.float64) for p in probe]
        jacobian[:, :, axis] = (ends[0] - ends[1]) / (2 * eps)
    expected = jacobian @ _covariances(blob)[picks] @ jacobian.transpose(0, 2, 1)
    np.testing.assert_allclose(_covariances(moved)[picks], expected, rtol=2e-3, atol=1e-9)


def test_deform_keeps_the_surface_solid(blob: Gaussians) -> None:
    render = _render(deform(blob, 1.0), [0.0, 90.0])
    assert render.alpha[_interior(render.alpha)].min() > 0.95


def test_deform_rejects_times_outside_zero_one(blob: Gaussians) -> None:
    with pytest.raises(ValueError, match=r"t must be in \[0, 1\], got 1\.5"):
        deform(blob, 1.5)


def test_corrupt_unseen_keeps_the_front_bit_for_bit(blob: Gaussians) -> None:
    drifted = corrupt_unseen(blob, seed=3)
    cosine = blob.means[:, 2] / np.linalg.norm(blob.means, axis=1)
    front = cosine >= 0.2
    assert front.sum() > N // 4
    np.testing.assert_array_equal(drifted.sh[front], blob.sh[front])
    for name in ("means", "log_scales", "quats", "opacity_logits"):
        assert getattr(drifted, name) is getattr(blob, name)
    # So the front view's face is unchanged, up to the little of the drifted back that shows through
    # the opaque front surface (under 1.5 levels of 255); its rim, seen at a grazing angle, drifts.
    a, b = _render(blob, [0.0]), _render(drifted, [0.0])
    np.testing.assert_allclose(a.rgb[0, 36:60, 36:60], b.rgb[0, 36:60, 36:60], atol=1.5 / 255)


def test_corrupt_unseen_drifts_the_back_to_a_pale_blue_grey_and_blurs_it(blob: Gaussians) -> None:
    drifted = corrupt_unseen(blob, seed=3)
    cosine = blob.means[:, 2] / np.linalg.norm(blob.means, axis=1)
    back = cosine <= -0.3
    before, after = _colours(blob)[back], _colours(drifted)[back]
    assert before.mean(axis=0)[0] > 1.5 * before.mean(axis=0)[2], "the truth is brown behind"
    r, g, b = after.mean(axis=0)
    assert b > g > r and after.mean() > before.mean(), f"drifted back {after.mean(axis=0)} is not pale blue"
    luminance = np.array([0.299, 0.587, 0.114])
    assert (after @ luminance).std() < 0.5 * (before @ luminance).std(), "the stripes are not blurred away"
    # In between, a smooth transition: a middle band is partly drifted.
    middle = (cosine < 0.0) & (cosine > -0.1)
    change = np.abs(_colours(drifted) - _colours(blob)).sum(axis=1)
    assert 0.0 < change[middle].mean() < change[back].mean()


def test_corrupt_unseen_is_deterministic_for_a_seed(blob: Gaussians) -> None:
    np.testing.assert_array_equal(corrupt_unseen(blob, seed=1).sh, corrupt_unseen(blob, seed=1).sh)
    assert not np.array_equal(corrupt_unseen(blob, seed=1).sh, corrupt_unseen(blob, seed=2).sh)


def test_corrupt_unseen_rejects_bad_arguments(blob: Gaussians) -> None:
    with pytest.raises(ValueError, match=r"desaturate must be in \[0, 1\], got 2"):
        corrupt_unseen(blob, desaturate=2)
    with pytest.raises(ValueError, match="blur must be positive, got 0"):
        corrupt_unseen(blob, blur=0)
    with pytest.raises(ValueError, match="need -1 <= back_cos < front_cos <= 1"):
        corrupt_unseen(blob, front_cos=-0.5, back_cos=0.5)


def test_matrix_to_quat_inverts_quat_to_matrix_near_every_pivot() -> None:
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(200, 4))
    quats[:4] = np.eye(4) + 1e-3  # half turns about x, y, z, and the identity: each pivot in turn
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    quats *= np.where(quats[:, :1] < 0, -1.0, 1.0)
    np.testing.assert_allclose(_matrix_to_quat(_quat_to_matrix(quats)), quats, atol=1e-12)


def _concat(a: Gaussians, b: Gaussians) -> Gaussians:
    return Gaussians(
        *(
            np.concatenate([getattr(a, n), getattr(b, n)])
            for n in ("means", "log_scales", "quats", "opacity_logits", "sh")
        )
    )


# ----- the other ground-truth objects ---------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[str, Gaussians]:
    return {name: make(N, seed=0) for name, make in OBJECTS.items()}


ABOVE, BELOW = -80.0, 80.0
"""Elevations (degrees, LGM sign: negative is above) of views from nearly straight above and below."""


def _render_from(g: Gaussians, elevation: float, side: int = 96):
    return rasterize(g, orbit_cameras([0.0], side, side, elevation_deg=elevation), background=(1.0, 1.0, 1.0))


def _share(render, view: int, colour: np.ndarray, tolerance: float) -> float:
    """The fraction of view ``view``'s interior pixels within ``tolerance`` (RGB distance) of ``colour``."""
    interior = _interior(render.alpha)[view]
    pixels = render.rgb[view][interior]
    return float((np.linalg.norm(pixels - colour, axis=1) < tolerance).mean())


def test_objects_name_the_blob_and_four_more() -> None:
    assert OBJECTS["blob"] is textured_blob
    assert list(OBJECTS) == ["blob", "banded", "zebra", "spotted", "head"]


@pytest.mark.parametrize("name", list(OBJECTS))
def test_objects_are_deterministic_for_a_seed(name: str, objects: dict[str, Gaussians]) -> None:
    again, other = OBJECTS[name](N, seed=0), OBJECTS[name](N, seed=1)
    for field in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(again, field), getattr(objects[name], field))
    assert not np.array_equal(other.sh, objects[name].sh)
    assert not np.array_equal(other.means, objects[name].means)


@pytest.mark.parametrize("name", list(OBJECTS))
def test_objects_are_closed_surfaces_of_flat_opaque_discs_about_the_origin(
    name: str, objects: dict[str, Gaussians]
) -> None:
    g = objects[name]
    g.validate()
    assert len(g) == N and g.sh_degree == 0
    assert np.abs(g.means.mean(axis=0)).max() < 0.02, "centred at the origin"
    assert 0.3 < np.abs(g.means).max() < 0.4, "the blob's size: radius about 0.35"
    assert g.opacities.min() > 0.9
    scales = np.sort(g.scales, axis=1)
    assert (scales[:, 0] < 0.3 * scales[:, 1]).all(), "discs are flat"
    render = _render(g, [0.0, 90.0, 180.0, 270.0])
    assert (render.alpha > 0.5).mean(axis=(1, 2)).min() > 0.15
    assert render.alpha[_interior(render.alpha)].min() > 0.95, "solid from every side"
    colours = _colours(g)
    assert colours.min() >= 0.0 and colours.max() <= 1.0


@pytest.mark.parametrize("name", list(OBJECTS))
def test_objects_reject_bad_arguments(name: str) -> None:
    with pytest.raises(ValueError, match="n must be an int >= 100, got 10"):
        OBJECTS[name](10)
    with pytest.raises(ValueError, match="radius must be positive, got 0"):
        OBJECTS[name](1000, radius=0.0)


def test_banded_body_shows_its_three_parts_from_the_front_and_around(objects: dict[str, Gaussians]) -> None:
    render = _render(objects["banded"], [0.0, 90.0, 180.0, 270.0])
    for view in range(4):
        assert _share(render, view, _GREEN, 0.15) > 0.4, f"view {view}: the green body"
        assert _share(render, view, _YELLOW, 0.15) > 0.1, f"view {view}: the yellow belt"
    # The dark base is at the bottom: the front view sees its rim, a view from below sees it whole.
    assert _share(render, 0, _CHARCOAL, 0.1) > 0.02
    assert _share(_render_from(objects["banded"], BELOW), 0, _CHARCOAL, 0.1) > 0.5


def test_zebra_is_black_and_white_on_every_side(objects: dict[str, Gaussians]) -> None:
    render = _render(objects["zebra"], [0.0, 90.0, 180.0, 270.0])
    for view in range(4):
        black, white = _share(render, view, _BLACK, 0.15), _share(render, view, _WHITE, 0.15)
        assert black > 0.25 and white > 0.25 and black + white > 0.65, f"view {view}: {black}, {white}"
    # An odd number of stripes wind round: the back view is the front view's negative, so a back copied
    # from the front is wrong everywhere.
    front, back = (render.rgb[v].mean(axis=2) for v in (0, 2))
    inside = _interior(render.alpha)[0] & _interior(render.alpha)[2]
    assert np.corrcoef(front[inside], back[inside])[0, 1] < -0.5


def test_spotted_has_black_spots_on_red_on_every_side(objects: dict[str, Gaussians]) -> None:
    sides = _render(objects["spotted"], [0.0, 90.0, 180.0, 270.0])
    ends = _render_from(objects["spotted"], ABOVE), _render_from(objects["spotted"], BELOW)
    for render, view, where in [(sides, v, f"azimuth {90 * v}") for v in range(4)] + [
        (ends[0], 0, "above"),
        (ends[1], 0, "below"),
    ]:
        black, red = _share(render, view, _BLACK, 0.15), _share(render, view, _RED, 0.2)
        assert 0.08 < black < 0.5 and red > 0.4, f"{where}: black {black}, red {red}"


def test_head_shows_face_and_hair_from_the_front_and_hair_behind(objects: dict[str, Gaussians]) -> None:
    render = _render(objects["head"], [0.0, 180.0])
    assert _share(render, 0, _SKIN, 0.12) > 0.3, "the face"
    assert _share(render, 0, _HAIR, 0.15) > 0.1, "hair around the face"
    eyes = _render(objects["head"], [0.0], side=192)
    whites = np.linalg.norm(eyes.rgb[0][_interior(eyes.alpha)[0]] - _WHITE, axis=1) < 0.2
    assert whites.sum() >= 20, "the whites of the eyes"
    assert _share(render, 1, _HAIR, 0.15) > 0.6 and _share(render, 1, _SKIN, 0.12) < 0.3, "hair behind"
    # In the front view the hair frames the face: the silhouette's left, right and top edges are hair.
    rgb, inside = render.rgb[0], _interior(render.alpha)[0]
    rows, columns = np.nonzero(inside)
    middle = rows == (rows.min() + rows.max()) // 2
    hair_like = lambda p: np.linalg.norm(p - _HAIR) < 0.15
    assert hair_like(rgb[rows[middle][0], columns[middle].min()]), "the left edge"
    assert hair_like(rgb[rows[middle][0], columns[middle].max()]), "the right edge"
    centre = columns == (columns.min() + columns.max()) // 2
    assert hair_like(rgb[rows[centre].min(), columns[centre][0]]), "the top"
