"""The consensus backend: its steps on known answers, the numba kernel against a numpy twin, and what
refinement does to views that disagree, agree, or must not change."""

import numpy as np
import pytest

from services.common.cameras import orbit_cameras
from services.common.errors import ConfigError
from services.common.gaussians import SH_C0, random_gaussians
from services.common.views import Views
from services.refiner.backends import (
    ConsensusBackend,
    blend,
    make_backend,
    pixel_residuals,
    shift_base_colours,
    splat_votes,
)
from services.refiner.tests.scenes import card, correspondences, orbit_views, render_views, tint

RED, BLUE = (80, 0, 0), (0, 0, 80)


@pytest.fixture(scope="module")
def backend():
    return ConsensusBackend()


@pytest.fixture(scope="module")
def scene():
    """A card seen from azimuths 0 (source), 30 and -30, 64 x 64, on white."""
    gaussians = card()
    return gaussians, orbit_views(gaussians)


def source_fixed(views: Views) -> np.ndarray:
    """M = 1 everywhere but on the source view (index 0)."""
    mask = np.ones(views.alpha.shape, dtype=np.float32)
    mask[0] = 0.0
    return mask


def disagreement(rgb: np.ndarray, a: int, b: int, pixels_a: np.ndarray, pixels_b: np.ndarray) -> float:
    """Mean absolute colour difference (0..255 units) between corresponding pixels of views a and b."""
    colours_a = rgb[a][pixels_a[:, 0], pixels_a[:, 1]].astype(np.float64)
    colours_b = rgb[b][pixels_b[:, 0], pixels_b[:, 1]].astype(np.float64)
    return float(np.abs(colours_a - colours_b).mean())


def splat_votes_reference(ids, weights, residual, voting, view_weights, n):
    """The numpy twin of ``splat_votes``: np.bincount over every (pixel, contributor) pair."""
    k = ids.shape[-1]
    lam = np.broadcast_to(view_weights[:, None, None, None], ids.shape)
    keep = (ids >= 0) & voting[..., None]
    gids = ids[keep]
    w = (lam * weights.astype(np.float64))[keep]
    d = np.repeat(residual[:, :, :, None, :], k, axis=3)[keep].astype(np.float64)
    votes = np.stack([np.bincount(gids, w * d[:, c], minlength=n) for c in range(3)], axis=1)
    return votes, np.bincount(gids, w, minlength=n)


# Steps, on known answers.


def test_splat_votes_known_answer():
    ids = np.array([[[[0, 2], [2, -1]]]], dtype=np.int32)  # [V=1, H=1, W=2, K=2]
    weights = np.array([[[[0.5, 0.25], [0.8, 0.0]]]], dtype=np.float32)
    residual = np.array([[[[0.1, 0.2, 0.3], [1.0, 0.0, -1.0]]]], dtype=np.float32)
    votes, weight = splat_votes(ids, weights, residual, np.ones((1, 1, 2), bool), np.array([2.0]), 4)
    np.testing.assert_allclose(weight, [1.0, 0.0, 0.5 + 1.6, 0.0])
    np.testing.assert_allclose(votes[0], [0.1, 0.2, 0.3], rtol=1e-6)
    np.testing.assert_allclose(
        votes[2], 0.5 * np.array([0.1, 0.2, 0.3]) + 1.6 * np.array([1, 0, -1]), rtol=1e-6
    )
    # A pixel that does not vote adds nothing.
    votes, weight = splat_votes(ids, weights, residual, np.array([[[True, False]]]), np.array([1.0]), 4)
    np.testing.assert_allclose(weight, [0.5, 0.0, 0.25, 0.0])


@pytest.mark.parametrize(("v", "h", "w", "k"), [(1, 1, 1, 1), (2, 5, 7, 3), (3, 16, 9, 8)])
def test_splat_votes_matches_its_numpy_twin(v, h, w, k):
    rng = np.random.default_rng(v * h * w * k)
    n = 40
    ids = rng.integers(0, n, size=(v, h, w, k)).astype(np.int32)
    used = rng.integers(0, k + 1, size=(v, h, w))  # contributors per pixel; -1 after them
    ids[np.arange(k) >= used[..., None]] = -1
    weights = np.where(ids >= 0, rng.uniform(0, 1, size=ids.shape), 0).astype(np.float32)
    residual = rng.normal(size=(v, h, w, 3)).astype(np.float32)
    voting = rng.uniform(size=(v, h, w)) < 0.8
    view_weights = rng.uniform(0.5, 10, size=v)
    votes, weight = splat_votes(ids, weights, residual, voting, view_weights, n)
    ref_votes, ref_weight = splat_votes_reference(ids, weights, residual, voting, view_weights, n)
    assert votes.shape == (n, 3) and weight.shape == (n,) and votes.dtype == weight.dtype == np.float64
    np.testing.assert_allclose(votes, ref_votes, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(weight, ref_weight, rtol=1e-12, atol=1e-12)


def test_pixel_residuals_uncomposite_both_images():
    bg = np.array([1.0, 0.5, 0.0], dtype=np.float32)
    x_view, x_asset = np.array([0.2, 0.6, 0.4]), np.array([0.3, 0.3, 0.3])
    alpha = np.array([[[0.8, 0.3, 0.0]]], dtype=np.float32)  # [1, 1, 3]: voting, under 0.5, empty
    view = alpha[..., None] * x_view + (1 - alpha[..., None]) * bg
    rgb = np.rint(view * 255).astype(np.uint8)
    rendered = (alpha[..., None] * x_asset + (1 - alpha[..., None]) * bg).astype(np.float32)
    residual, voting = pixel_residuals(rgb, alpha, rendered, alpha, bg, 0.5)
    assert residual.shape == (1, 1, 3, 3) and residual.dtype == np.float32
    assert voting.tolist() == [[[True, False, False]]]
    np.testing.assert_allclose(residual[0, 0, 0], x_view - x_asset, atol=0.5 / 255 / 0.8 + 1e-6)
    assert (residual[0, 0, 1:] == 0).all()


def test_shift_base_colours_moves_only_the_chosen_dc_terms():
    gaussians = random_gaussians(5, sh_degree=1, seed=3)
    correction = np.tile([0.1, -0.2, 0.0], (5, 1))
    which = np.array([True, False, True, False, False])
    shifted = shift_base_colours(gaussians, correction, which)
    base = 0.5 + SH_C0 * gaussians.sh[:, 0]
    np.testing.assert_allclose(0.5 + SH_C0 * shifted.sh[which, 0], base[which] + correction[which], atol=1e-6)
    np.testing.assert_array_equal(shifted.sh[~which], gaussians.sh[~which])
    np.testing.assert_array_equal(shifted.sh[:, 1:], gaussians.sh[:, 1:])  # view-dependent bands kept
    assert shifted.means is gaussians.means
    # No correction, no change, not even by clipping.
    unchanged = shift_base_colours(gaussians, np.zeros((5, 3)), np.ones(5, bool))
    np.testing.assert_array_equal(unchanged.sh, gaussians.sh)


def test_blend_known_answer():
    rgb = np.array([[[[100, 100, 100], [10, 20, 30]]]], dtype=np.uint8)
    rendered = np.array([[[[1.0, 0.0, 0.5], [1.0, 1.0, 1.0]]]], dtype=np.float32)
    mask = np.array([[[1.0, 0.0]]], dtype=np.float32)
    out = blend(rgb, rendered, mask, 0.5)
    assert out.dtype == np.uint8
    assert out[0, 0, 0].tolist() == [178, 50, 114]  # 100 + 0.5 (255 - 100) = 177.5 -> 178
    assert out[0, 0, 1].tolist() == [10, 20, 30]


# The whole backend.


def test_output_shape_dtype_and_determinism(backend, scene):
    gaussians, views = scene
    tinted = tint(views, 1, RED)
    first = backend.refine(tinted, source_fixed(views), gaussians, 0, 0.3, seed=1)
    again = backend.refine(tinted, source_fixed(views), gaussians, 0, 0.3, seed=2)
    assert first.shape == views.rgb.shape and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert (first != tinted.rgb).any()


def test_masked_pixels_and_the_source_view_are_bit_identical(backend, scene):
    gaussians, views = scene
    tinted = tint(tint(views, 1, RED), 2, BLUE)
    rng = np.random.default_rng(0)
    mask = rng.uniform(size=views.alpha.shape).astype(np.float32)
    mask[rng.uniform(size=mask.shape) < 0.3] = 0.0
    mask[0] = 0.0
    out = backend.refine(tinted, mask, gaussians, 0, 1.0, 0)
    np.testing.assert_array_equal(out[0], tinted.rgb[0])
    np.testing.assert_array_equal(out[mask == 0], tinted.rgb[mask == 0])
    assert (out[mask > 0.5] != tinted.rgb[mask > 0.5]).any()


def test_strength_zero_and_an_empty_mask_are_the_identity(backend, scene):
    gaussians, views = scene
    tinted = tint(views, 1, RED)
    np.testing.assert_array_equal(
        backend.refine(tinted, source_fixed(views), gaussians, 0, 0.0, 0), tinted.rgb
    )
    empty = np.zeros(views.alpha.shape, dtype=np.float32)
    out = backend.refine(tinted, empty, gaussians, 0, 1.0, 0)
    np.testing.assert_array_equal(out, tinted.rgb)
    assert out is not tinted.rgb


def test_views_that_disagree_on_a_shared_surface_come_to_agree(backend, scene):
    gaussians, views = scene
    pixels_1, pixels_2 = correspondences(views, 1, 2)
    pixels_0, pixels_01 = correspondences(views, 0, 1)
    assert len(pixels_1) > 500 and len(pixels_0) > 500  # the card is a large shared surface
    tinted = tint(tint(views, 1, RED), 2, BLUE)
    mask = source_fixed(views)

    before = disagreement(tinted.rgb, 1, 2, pixels_1, pixels_2)
    natural = disagreement(views.rgb, 1, 2, pixels_1, pixels_2)  # splatting's own view dependence
    assert before > 40 > 4 > natural
    full = backend.refine(tinted, mask, gaussians, 0, 1.0, 0)
    half = backend.refine(tinted, mask, gaussians, 0, 0.5, 0)
    after_full = disagreement(full, 1, 2, pixels_1, pixels_2)
    after_half = disagreement(half, 1, 2, pixels_1, pixels_2)
    assert after_full < before / 5
    assert after_full < after_half < before and abs(after_half - before / 2) < before / 8

    # Both tinted views move toward the source's colours, which do not move.
    for view, (pixels_source, pixels_view) in ((1, (pixels_0, pixels_01)), (2, correspondences(views, 0, 2))):
        was = disagreement(tinted.rgb, view, 0, pixels_view, pixels_source)
        now = disagreement(full, view, 0, pixels_view, pixels_source)
        assert now < 0.6 * was, (view, was, now)
    np.testing.assert_array_equal(full[0], tinted.rgb[0])


@pytest.mark.parametrize("sh_degree", [0, 1])
def test_views_that_already_agree_with_the_asset_barely_change(backend, sh_degree):
    # Random colours and overlapping Gaussians: voting raw colours would blur this badly.
    gaussians = random_gaussians(3000, sh_degree=sh_degree, seed=4, extent=0.35)
    views = render_views(gaussians, orbit_cameras([0, 45, -45, 180], 64, 64))
    mask = np.ones(views.alpha.shape, dtype=np.float32)
    out = backend.refine(views, mask, gaussians, 0, 1.0, 0)
    covered = views.alpha > 0.5
    change = np.abs(out.astype(np.float64) - views.rgb)
    assert change[covered].mean() < 0.25  # levels of 255 (the goal was < 2): only uint8 rounding is left
    assert change.max() <= 1


def test_background_pixels_stay_the_background(backend, scene):
    gaussians, views = scene
    tinted = tint(tint(views, 1, RED), 2, BLUE)
    out = backend.refine(tinted, np.ones(views.alpha.shape, np.float32), gaussians, 0, 1.0, 0)
    empty = views.alpha == 0
    assert empty.sum() > 1000
    assert (out[empty] == 255).all()
    # On another background too (grey): it is estimated from the views, not assumed.
    grey = orbit_views(gaussians, background=(0.5, 0.5, 0.5))
    out = backend.refine(tint(grey, 1, RED), np.ones(grey.alpha.shape, np.float32), gaussians, 0, 1.0, 0)
    assert (out[grey.alpha == 0] == 128).all()


def test_make_backend():
    backend = make_backend("consensus", threads=1, contributors=4)
    assert backend.name == "consensus" and backend.device == "cpu (1 threads)"
    assert backend.contributors == 4
    with pytest.raises(ConfigError, match=r"'point-cloud-fusion'.*consensus"):
        make_backend("point-cloud-fusion")
    with pytest.raises(ConfigError, match="threads"):
        make_backend("consensus", threads=10_000)
