"""The colour-solve backend: known answers on rendered scenes, the solver against dense linear algebra,
the SH basis against gsplat's, and backend selection."""

import dataclasses

import numpy as np
import pytest

from services.common.cameras import Cameras, orbit_cameras
from services.common.errors import ConfigError
from services.common.gaussians import SH_C0, Gaussians, random_gaussians, read_ply, recolour, write_ply
from services.common.rasterizer import rasterize
from services.common.views import Views
from services.reconstructor import _kernels
from services.reconstructor.backends import (
    ColourSolveBackend,
    back_projection,
    base_colours,
    evaluate_sh,
    make_backend,
    pixel_model,
    sh_basis,
    solve_colours,
    view_dependent_colours,
)
from services.reconstructor.contract import (
    LOCK_WEIGHT,
    SolveOptions,
    check_locked_views,
    locked_gaussians,
    rms_error,
)
from services.testing.synthetic import textured_blob

GEOMETRY = ("means", "log_scales", "quats", "opacity_logits")
WHITE = np.ones(3, dtype=np.float32)


def ring_cameras(resolution: int = 64) -> Cameras:
    """24 views that see every side: 12 azimuths at elevation 0, 6 from above and 6 from below."""
    rings = [
        orbit_cameras(np.arange(0, 360, 30), resolution, resolution),
        orbit_cameras(np.arange(0, 360, 60), resolution, resolution, elevation_deg=-30.0),
        orbit_cameras(np.arange(30, 360, 60), resolution, resolution, elevation_deg=30.0),
    ]
    return Cameras(
        np.concatenate([c.viewmats for c in rings]),
        np.concatenate([c.Ks for c in rings]),
        resolution,
        resolution,
    )


def with_hidden(gaussians: Gaussians) -> Gaussians:
    """The asset plus 3 Gaussians no view sees: two far off-screen, one too faint to composite."""
    hidden = Gaussians(
        means=np.array([[0.0, 6.0, 0.0], [0.0, -6.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32),
        log_scales=np.full((3, 3), np.log(0.05), dtype=np.float32),
        quats=np.tile(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32), (3, 1)),
        opacity_logits=np.array([3.0, 3.0, -12.0], dtype=np.float32),  # the last: alpha < 1/255
        sh=np.zeros((3, *gaussians.sh.shape[1:]), dtype=np.float32),
    )
    merged = Gaussians(
        *(np.concatenate([getattr(gaussians, f), getattr(hidden, f)]) for f in (*GEOMETRY, "sh"))
    )
    return read_ply(write_ply(merged))  # as a service reads it


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10.0 * np.log10(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def perturbed(gaussians: Gaussians, seed: int = 1) -> Gaussians:
    """Every Gaussian gets a random base colour; geometry and higher SH bands are kept."""
    colours = np.random.default_rng(seed).uniform(0.0, 1.0, size=(len(gaussians), 3))
    return recolour(gaussians, colours, keep_higher_sh=True)


@pytest.fixture(scope="module")
def cameras():
    return ring_cameras()


@pytest.fixture(scope="module")
def scene(cameras):
    """(true asset with 3 hidden Gaussians, its clean renders over white, views of them)."""
    truth = with_hidden(random_gaussians(2000, seed=0))
    clean = rasterize(truth, cameras, WHITE)
    return truth, clean, Views(to_uint8(clean.rgb), clean.alpha, None, cameras)


@pytest.fixture(scope="module")
def reconstructed(scene):
    truth, _, views = scene
    initial = perturbed(truth)
    return initial, ColourSolveBackend().reconstruct(views, initial, SolveOptions())


def test_recovers_strongly_perturbed_colours(scene, reconstructed, cameras):
    _, clean, _ = scene
    initial, result = reconstructed
    assert psnr(rasterize(initial, cameras, WHITE).rgb, clean.rgb) < 20  # the perturbation is strong
    rerender = rasterize(result.gaussians, cameras, WHITE).rgb
    assert psnr(rerender, clean.rgb) > 35
    # rms_error is the re-render's error against the (uint8) views.
    assert result.rms_error == pytest.approx(np.sqrt(np.mean((rerender - to_uint8(clean.rgb) / 255.0) ** 2)))
    assert 0 < result.rms_error < 10 ** (-35 / 20)
    assert 0 < result.iterations <= 200


def test_geometry_is_bit_identical_also_through_a_ply(reconstructed):
    initial, result = reconstructed
    reread = read_ply(write_ply(result.gaussians))
    for name in GEOMETRY:
        assert getattr(result.gaussians, name).tobytes() == getattr(initial, name).tobytes(), name
        assert getattr(reread, name).tobytes() == getattr(initial, name).tobytes(), name
    assert result.gaussians.sh.shape == initial.sh.shape and result.gaussians.sh.dtype == np.float32


def test_unseen_gaussians_keep_their_colour_exactly(reconstructed):
    initial, result = reconstructed
    np.testing.assert_array_equal(result.gaussians.sh[-3:], initial.sh[-3:])
    # ...while the seen ones moved.
    changed = np.any(result.gaussians.sh[:-3, 0] != initial.sh[:-3, 0], axis=1)
    assert changed.mean() > 0.9


def test_extra_properties_are_kept(scene, cameras):
    truth, _, views = scene
    flagged = dataclasses.replace(
        perturbed(truth), extra={"segment": np.arange(len(truth), dtype=np.float32)}
    )
    result = ColourSolveBackend().reconstruct(views, flagged, SolveOptions(max_iterations=2))
    assert result.gaussians.extra["segment"] is flagged.extra["segment"]
    assert result.iterations == 2


def test_an_asset_no_view_sees_comes_back_unchanged(cameras):
    initial = read_ply(write_ply(random_gaussians(50, sh_degree=1, seed=4, extent=0.1)))
    moved = dataclasses.replace(initial, means=initial.means + np.float32([0, 20, 0]))  # above every view
    empty = Views(np.zeros((24, 64, 64, 3), np.uint8), np.zeros((24, 64, 64), np.float32), None, cameras)
    result = ColourSolveBackend().reconstruct(empty, moved, SolveOptions(keep_higher_sh=True))
    assert result.iterations == 0 and result.rms_error == 0.0
    np.testing.assert_array_equal(result.gaussians.sh, moved.sh)


def test_renormalising_the_top_k_weights_is_what_reaches_the_target(scene):
    truth, _, views = scene
    initial = perturbed(truth)
    plain = ColourSolveBackend(renormalise=False).reconstruct(views, initial, SolveOptions())
    assert -20 * np.log10(plain.rms_error) < 30


@pytest.fixture(scope="module")
def sh_scene(cameras):
    """An SH-degree-3 asset with moderate view dependence, its views over black, and a perturbed copy."""
    truth = random_gaussians(2000, sh_degree=3, seed=2)
    sh = truth.sh.copy()
    sh[:, 1:] *= 0.5
    truth = dataclasses.replace(truth, sh=sh)
    clean = rasterize(truth, cameras)
    return truth, clean, Views(to_uint8(clean.rgb), clean.alpha, None, cameras), perturbed(truth)


def test_higher_sh_bands_are_zeroed_by_default_on_the_resolved_gaussians_only(sh_scene):
    _, _, views, initial = sh_scene
    result = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert result.gaussians.sh.shape == (2000, 16, 3)
    zeroed = ~result.gaussians.sh[:, 1:].any(axis=(1, 2))  # every initial band is non-zero
    assert zeroed.sum() == result.resolved > 1900 and not result.higher_sh_kept
    # The others (no view changes their pixels, or none sees them) keep every coefficient.
    assert result.gaussians.sh[~zeroed].tobytes() == initial.sh[~zeroed].tobytes()
    assert result.locked == 0 and result.kept == 2000 - result.resolved


def test_higher_sh_bands_are_kept_and_fitted_around(sh_scene, cameras):
    _, clean, views, initial = sh_scene
    kept = ColourSolveBackend().reconstruct(views, initial, SolveOptions(keep_higher_sh=True))
    np.testing.assert_array_equal(kept.gaussians.sh[:, 1:], initial.sh[:, 1:])
    assert kept.higher_sh_kept and kept.resolved > 1900
    assert psnr(rasterize(kept.gaussians, cameras).rgb, clean.rgb) > 35
    # Zeroing the bands instead loses the view-dependent colour.
    dropped = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert dropped.rms_error > 2 * kept.rms_error


def test_a_large_prior_weight_gives_each_gaussian_the_mean_of_its_pixels(scene, cameras):
    # The prior's centre is the back-projection (not the drifted initial colour).
    truth, _, views = scene
    initial = perturbed(truth)
    result = ColourSolveBackend().reconstruct(views, initial, SolveOptions(prior_weight=1e6))
    assert result.resolved > 0.99 * len(initial)  # nearly every Gaussian's pixels changed
    render = rasterize(initial, cameras, WHITE, contributors=8)
    model = pixel_model(render.ids, render.weights, render.alpha, views.rgb, WHITE, len(initial))
    projected = back_projection(model.ids, model.weights, model.targets)
    difference = np.abs(base_colours(result.gaussians)[model.gaussians] - projected)
    assert np.median(difference) < 1e-3 and np.percentile(difference, 95) < 0.02  # the few kept shift it
    assert np.median(np.abs(base_colours(result.gaussians) - base_colours(initial))) > 0.05


def test_reconstruction_is_deterministic_and_thread_independent(scene):
    truth, _, views = scene
    initial = perturbed(truth)
    one = ColourSolveBackend(threads=1).reconstruct(views, initial, SolveOptions())
    every = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    again = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert write_ply(one.gaussians) == write_ply(every.gaussians) == write_ply(again.gaussians)
    assert one.rms_error == every.rms_error and one.iterations == every.iterations


def test_pixel_model_shapes_and_renormalised_weights(scene, cameras):
    truth, _, views = scene
    render = rasterize(truth, cameras, WHITE, contributors=4)
    model = pixel_model(render.ids, render.weights, render.alpha, views.rgb, WHITE, len(truth))
    p, m = len(model.pixels), len(model.gaussians)
    assert model.ids.shape == (p, 4) and model.ids.dtype == np.int32
    assert model.weights.shape == (p, 4) and model.weights.dtype == np.float32
    assert model.targets.shape == (p, 3) and model.targets.dtype == np.float64
    assert model.pixels.dtype == np.int64 and np.all(np.diff(model.pixels) > 0)
    assert np.array_equal(np.unique(model.ids[model.ids >= 0]), np.arange(m))
    assert 0.9 * len(truth) < m and not np.isin(len(truth) - np.arange(1, 4), model.gaussians).any()
    alpha = render.alpha.reshape(-1)[model.pixels]
    np.testing.assert_array_equal(model.pixels, np.flatnonzero(render.ids[..., 0].reshape(-1) >= 0))
    np.testing.assert_allclose(model.weights.sum(axis=1), alpha, rtol=1e-5)
    # Targets: the view's colour minus the background's share.
    rgb = views.rgb.reshape(-1, 3)[model.pixels] / 255.0
    np.testing.assert_allclose(model.targets, rgb - (1.0 - alpha[:, None]) * WHITE, atol=1e-6)


# --- What is kept: the locked views' Gaussians, the Gaussians the views do not change, SH bands. ---


def with_higher_sh(gaussians: Gaussians, scale: float = 0.1, seed: int = 0) -> Gaussians:
    """``gaussians`` at SH degree 3: the same base colour, random higher bands (as a service reads it)."""
    rng = np.random.default_rng(seed)
    sh = np.zeros((len(gaussians), 16, 3), np.float32)
    sh[:, :1] = gaussians.sh[:, :1]
    sh[:, 1:] = rng.normal(scale=scale, size=(len(gaussians), 15, 3))
    return read_ply(write_ply(dataclasses.replace(gaussians, sh=sh)))


@pytest.fixture(scope="module")
def blob():
    """A closed textured surface (3,000 opaque discs, front toward +z) of SH degree 3."""
    return with_higher_sh(textured_blob(3000))


def test_a_gaussian_hidden_in_the_locked_view_is_not_locked():
    # On the axis of the camera at azimuth 0 (at +z): a large opaque Gaussian in front of a small one;
    # a third beside both. From the front the small one shows only faintly around the large one.
    g = Gaussians(
        means=np.array([[0.0, 0.0, 0.3], [0.0, 0.0, -0.3], [0.45, 0.0, 0.0]], np.float32),
        log_scales=np.log(np.array([[0.2] * 3, [0.05] * 3, [0.08] * 3], np.float32)),
        quats=np.tile(np.float32([1, 0, 0, 0]), (3, 1)),
        opacity_logits=np.full(3, 8.0, np.float32),
        sh=np.zeros((3, 1, 3), np.float32),
    )
    cams = orbit_cameras([0.0, 180.0], 32, 32)
    front = rasterize(g, cams[0], contributors=4)
    faint = front.weights[front.ids == 1].max()
    assert 1.0 / 255.0 < faint < LOCK_WEIGHT
    assert locked_gaussians(g, cams[[0]]).tolist() == [True, False, True]
    assert locked_gaussians(g, cams[[1]]).tolist() == [True, True, True]  # from behind all are seen
    assert not locked_gaussians(g, cams[[]]).any()


@pytest.mark.parametrize("locked_views", [(), (0,)])
@pytest.mark.parametrize("asset", ["random cloud", "textured blob"])
def test_views_equal_to_the_initial_render_return_the_asset_bit_identical(asset, locked_views, blob, cameras):
    initial = blob if asset == "textured blob" else read_ply(write_ply(random_gaussians(1500, 3, seed=6)))
    render = rasterize(initial, cameras, WHITE)
    views = Views(to_uint8(render.rgb), render.alpha, None, cameras)
    result = ColourSolveBackend().reconstruct(views, initial, SolveOptions(), None, locked_views)
    assert write_ply(result.gaussians) == write_ply(initial)
    for name in (*GEOMETRY, "sh"):
        assert getattr(result.gaussians, name).tobytes() == getattr(initial, name).tobytes(), name
    assert (result.resolved, result.iterations) == (0, 0) and result.higher_sh_kept
    assert result.locked + result.kept == len(initial) and (result.locked > 0) == bool(locked_views)
    assert result.rms_error == rms_error(render.rgb, views.rgb)  # the initial render's


def test_locked_gaussians_keep_every_parameter_whatever_the_views_say(blob, cameras):
    # The views, the locked one included, show other colours than the asset has: every base colour is
    # random in the asset.
    truth, initial = blob, perturbed(blob)
    render = rasterize(truth, cameras, WHITE)
    views = Views(to_uint8(render.rgb), render.alpha, None, cameras)
    weights = np.array([10.0] + [1.0] * (len(cameras) - 1))
    result = ColourSolveBackend().reconstruct(views, initial, SolveOptions(), weights, [0])
    locked = locked_gaussians(initial, cameras[[0]])
    assert result.locked == locked.sum() > 0.3 * len(blob)
    for name in (*GEOMETRY, "sh"):
        assert getattr(result.gaussians, name)[locked].tobytes() == getattr(initial, name)[locked].tobytes()
    # What the locked view does not show is re-solved toward the views, higher bands zeroed.
    resolved = np.any(result.gaussians.sh != initial.sh, axis=(1, 2))
    assert resolved.sum() == result.resolved > 0.3 * len(blob) and not (resolved & locked).any()
    assert not result.gaussians.sh[resolved, 1:].any() and not result.higher_sh_kept
    error = np.abs(base_colours(result.gaussians) - base_colours(truth))[resolved].mean()
    assert error < 0.5 * np.abs(base_colours(initial) - base_colours(truth))[resolved].mean()


@pytest.mark.parametrize("keep_higher_sh", [False, True])
def test_a_changed_region_changes_only_the_gaussians_under_it(keep_higher_sh, blob, cameras):
    # The right side (+x) of the asset drifted: its base colours turned; the views show the drift.
    region = blob.means[:, 0] > 0.12
    target = recolour(blob, base_colours(blob)[:, [2, 0, 1]], which=region, keep_higher_sh=True)
    render = rasterize(target, cameras, WHITE)
    views = Views(to_uint8(render.rgb), render.alpha, None, cameras)
    options = SolveOptions(keep_higher_sh=keep_higher_sh)
    result = ColourSolveBackend().reconstruct(views, blob, options)
    moved = np.any(result.gaussians.sh != blob.sh, axis=(1, 2))
    assert moved.sum() == result.resolved and result.kept == len(blob) - result.resolved
    assert moved[region].mean() > 0.9  # what drifted is re-solved...
    assert not moved[blob.means[:, 0] < 0.0].any()  # ...what is away from it is not touched
    # The Gaussians not re-solved keep every SH band, whatever keep_higher_sh says.
    assert result.gaussians.sh[~moved].tobytes() == blob.sh[~moved].tobytes()
    assert result.higher_sh_kept == keep_higher_sh
    if keep_higher_sh:
        np.testing.assert_array_equal(result.gaussians.sh[:, 1:], blob.sh[:, 1:])
        assert psnr(rasterize(result.gaussians, cameras, WHITE).rgb, render.rgb) > 35
    else:
        assert not result.gaussians.sh[moved, 1:].any()


@pytest.mark.parametrize(
    ("locked_views", "match"),
    [
        ([24], r"locked_views\[0\] must be a view index below 24, got 24"),
        ([3, 5, 3], r"locked_views\[2\] repeats"),
    ],
)
def test_bad_locked_views_are_refused(locked_views, match, scene):
    truth, _, views = scene
    with pytest.raises(ValueError, match=match):
        ColourSolveBackend().reconstruct(views, truth, SolveOptions(), None, locked_views)
    assert check_locked_views([2, 0], 3).tolist() == [2, 0]


def test_restricting_the_operator_to_some_columns_matches_the_dense_matrix():
    ids, weights = random_operator(seed=6)
    unknown = np.random.default_rng(7).uniform(size=40) < 0.3
    rows, restricted, kept_weights = _kernels.restrict_columns(ids, weights, unknown)
    full = dense(ids, weights, 40)[:, unknown]
    np.testing.assert_array_equal(rows, np.flatnonzero(full.any(axis=1)))
    np.testing.assert_array_equal(dense(restricted, kept_weights, unknown.sum()), full[rows])
    assert ((restricted[:, 1:] < 0) | (restricted[:, :-1] >= 0)).all()  # entries first, then -1


# --- The solver and its operators, against dense linear algebra. ---


def random_operator(pixels=300, k=5, m=40, seed=0):
    """A random A: ids ``[P, K]`` (rows padded with -1, each column used) and float32 weights."""
    rng = np.random.default_rng(seed)
    ids = np.full((pixels, k), -1, dtype=np.int32)
    weights = np.zeros((pixels, k), dtype=np.float32)
    for p in range(pixels):
        count = rng.integers(1, k + 1)
        ids[p, :count] = rng.choice(m, size=count, replace=False)
        weights[p, :count] = rng.uniform(0.01, 0.5, size=count)
    ids[: m // k + 1].flat[:m] = np.arange(m)  # every column occurs
    weights[: m // k + 1] = np.maximum(weights[: m // k + 1], 0.05)
    # Renumber the columns at random, so that their first rows are not in column order.
    ids = np.where(ids >= 0, rng.permutation(m)[ids], -1).astype(np.int32)
    return ids, weights


def dense(ids, weights, m):
    a = np.zeros((len(ids), m))
    for p, k in zip(*np.nonzero(ids >= 0), strict=True):
        a[p, ids[p, k]] += weights[p, k]
    return a


def test_a_and_a_transpose_are_adjoint_and_match_the_dense_matrix():
    ids, weights = random_operator()
    m, rng = 40, np.random.default_rng(1)
    x, y = rng.normal(size=(m, 3)), rng.normal(size=(len(ids), 3))
    ax, aty = np.empty((len(ids), 3)), np.empty((m, 3))
    _kernels.gather(ids, weights, x, ax)
    _kernels.scatter(ids, weights, y, np.empty((_kernels.CHUNKS, m, 3)), aty)
    np.testing.assert_allclose(np.sum(ax * y, axis=0), np.sum(x * aty, axis=0), rtol=1e-12)
    a = dense(ids, weights, m)
    np.testing.assert_allclose(ax, a @ x, rtol=1e-12)
    np.testing.assert_allclose(aty, a.T @ y, rtol=1e-12)


@pytest.mark.parametrize("tasks", [1, 3, 16])
def test_gram_matrix_is_a_transpose_a(tasks):
    ids, weights = random_operator(seed=tasks)
    m = 40
    row_ptr, cols, vals = _kernels.gram(ids, weights, m, tasks=tasks)
    assert row_ptr.shape == (m + 1,) and cols.dtype == np.int32 and vals.dtype == np.float64
    g = np.zeros((m, m))
    for row in range(m):
        g[row, cols[row_ptr[row] : row_ptr[row + 1]]] = vals[row_ptr[row] : row_ptr[row + 1]]
    a = dense(ids, weights, m)
    np.testing.assert_allclose(g, a.T @ a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(_kernels.diagonal(row_ptr, cols, vals), np.diag(a.T @ a), rtol=1e-12)
    x, out = np.random.default_rng(0).normal(size=(m, 3)), np.empty((m, 3))
    _kernels.spmv(row_ptr, cols, vals, x, out)
    np.testing.assert_allclose(out, a.T @ (a @ x), rtol=1e-10)


def test_gram_does_not_depend_on_the_task_split():
    ids, weights = random_operator(pixels=500, seed=3)
    results = [_kernels.gram(ids, weights, 40, tasks=t) for t in (1, 7)]
    for one, other in zip(*results, strict=True):
        assert one.tobytes() == other.tobytes()


@pytest.mark.parametrize("prior_weight", [0.0, 1e-3, 1.0])
def test_conjugate_gradients_agree_with_a_dense_solve(prior_weight):
    ids, weights = random_operator()
    m, rng = 40, np.random.default_rng(2)
    targets, initial = rng.uniform(size=(len(ids), 3)), rng.uniform(size=(m, 3))
    solve = solve_colours(
        ids, weights, targets, initial, prior_weight=prior_weight, max_iterations=500, tolerance=1e-12
    )
    a = dense(ids, weights, m)
    normal = a.T @ a
    mu = prior_weight * np.mean(np.diag(normal))
    expected = np.linalg.solve(normal + mu * np.eye(m), a.T @ targets + mu * initial)
    np.testing.assert_allclose(solve.colours, expected, rtol=1e-8, atol=1e-9)
    assert solve.iterations < 500 and solve.residuals[-1].max() <= 1e-12


def test_conjugate_gradients_converge_and_respect_the_cap():
    ids, weights = random_operator(pixels=2000, k=6, m=300, seed=4)
    rng = np.random.default_rng(5)
    targets, initial = rng.uniform(size=(2000, 3)), rng.uniform(size=(300, 3))
    full = solve_colours(ids, weights, targets, initial, tolerance=1e-8, max_iterations=1000)
    assert full.residuals.shape == (full.iterations + 1, 3)
    assert full.residuals[-1].max() <= 1e-8 < full.residuals[0].min()
    # The residual falls: every ten iterations it is below what it was.
    assert np.all(full.residuals[10::10] < full.residuals[:-10:10])
    capped = solve_colours(ids, weights, targets, initial, tolerance=1e-8, max_iterations=3)
    assert capped.iterations == 3 and capped.residuals.shape == (4, 3)
    np.testing.assert_array_equal(capped.residuals, full.residuals[:4])


def test_a_solve_starting_at_the_answer_runs_no_iteration():
    ids, weights = random_operator()
    initial = np.random.default_rng(0).uniform(size=(40, 3))
    a = dense(ids, weights, 40)
    # Targets rendered from `initial` itself: with any prior, `initial` is the exact solution.
    solve = solve_colours(ids, weights, a @ initial, initial, tolerance=1e-6)
    assert solve.iterations == 0
    np.testing.assert_array_equal(solve.colours, initial)


# --- Spherical harmonics. ---


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_evaluate_sh_matches_gsplat(degree):
    torch = pytest.importorskip("torch")
    torch_impl = pytest.importorskip("gsplat.cuda._torch_impl")
    rng = np.random.default_rng(degree)
    dirs, coeffs = rng.normal(size=(6, 5, 3)), rng.normal(size=(6, 5, 16, 3))
    expected = torch_impl._spherical_harmonics(degree, torch.from_numpy(dirs), torch.from_numpy(coeffs))
    np.testing.assert_allclose(evaluate_sh(dirs, coeffs, degree), expected.numpy(), rtol=1e-12, atol=1e-12)
    assert sh_basis(dirs, degree).shape == (6, 5, (degree + 1) ** 2)


def test_view_dependent_colours_match_the_rasterizer():
    """One opaque Gaussian filling the view: its rendered colour is 0.5 + c_dc + h."""
    g = Gaussians(
        means=np.array([[0.1, -0.05, 0.2]], dtype=np.float32),
        log_scales=np.full((1, 3), np.log(2.0), dtype=np.float32),
        quats=np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32),
        opacity_logits=np.array([20.0], dtype=np.float32),
        sh=np.random.default_rng(0).normal(scale=0.1, size=(1, 16, 3)).astype(np.float32),
    )
    g.sh[0, 0] = 0.0  # base colour 0.5
    cams = orbit_cameras([0.0, 70.0, 200.0], 8, 8, elevation_deg=-20.0)
    h = view_dependent_colours(g, cams)
    assert h.shape == (3, 1, 3)
    render = rasterize(g, cams)
    centre = render.rgb[:, 4, 4] / render.alpha[:, 4, 4, None]
    np.testing.assert_allclose(centre, 0.5 + h[:, 0], atol=1e-5)
    assert not view_dependent_colours(recolour(g, np.full((1, 3), 0.5)), cams).any()


def test_base_colours():
    g = random_gaussians(10)
    colours = base_colours(g)
    assert colours.shape == (10, 3) and colours.dtype == np.float64
    np.testing.assert_array_equal(colours, 0.5 + SH_C0 * g.sh[:, 0].astype(np.float64))


# --- Selection and options. ---


def test_unknown_backend_and_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match=r"'gsplat-optimise'.*colour-solve"):
        make_backend("gsplat-optimise")
    with pytest.raises(ConfigError, match="contributors"):
        make_backend("colour-solve", contributors=0)
    with pytest.raises(ConfigError, match="threads"):
        make_backend("colour-solve", threads=-1)
    backend = make_backend("colour-solve", contributors=4, threads=1)
    assert (backend.name, backend.contributors, backend.device) == ("colour-solve", 4, "cpu (1 threads)")


@pytest.mark.parametrize(
    "kwargs",
    [{"prior_weight": -1.0}, {"prior_weight": float("nan")}, {"max_iterations": 0}, {"tolerance": 1.0}],
)
def test_solve_options_refuse_bad_values(kwargs):
    with pytest.raises(ValueError):
        SolveOptions(**kwargs)


def test_view_weights_decide_between_views_that_disagree():
    # Two views of one asset that disagree on its colour: the fit follows the heavier one.
    truth = read_ply(write_ply(random_gaussians(800, seed=5)))
    cameras = orbit_cameras([0.0, 30.0], 48, 48)
    render = rasterize(truth, cameras, WHITE)
    rgb = to_uint8(render.rgb)
    tinted = rgb.copy()
    covered = render.alpha[1] > 0.5
    tinted[1][covered] = np.clip(tinted[1][covered].astype(int) + np.array([60, -60, -60]), 0, 255)
    views = Views(tinted, render.alpha, render.depth, cameras)
    backend, options = ColourSolveBackend(), SolveOptions()

    def error_against(result, view):
        again = rasterize(result.gaussians, cameras, WHITE)
        return np.abs(to_uint8(again.rgb)[view].astype(int) - rgb[view]).mean()

    plain = backend.reconstruct(views, truth, options)
    source_first = backend.reconstruct(views, truth, options, np.array([10.0, 1.0]))
    assert error_against(source_first, 0) < 0.5 * error_against(plain, 0)
    equal = backend.reconstruct(views, truth, options, np.array([1.0, 1.0]))
    assert equal.gaussians.sh.tobytes() == plain.gaussians.sh.tobytes()


def moved(gaussians: Gaussians, offset) -> Gaussians:
    """The same Gaussians, moved by ``offset`` (world units): the next frame of a 4D asset."""
    return dataclasses.replace(gaussians, means=(gaussians.means + np.float32(offset)).astype(np.float32))


def test_reconstructing_one_frame_together_is_reconstructing_it(blob, cameras):
    target = recolour(blob, base_colours(blob)[:, [2, 0, 1]], which=blob.means[:, 2] < 0.0)
    render = rasterize(target, cameras, WHITE)
    views = Views(to_uint8(render.rgb), render.alpha, None, cameras)
    alone = ColourSolveBackend().reconstruct(views, blob, SolveOptions(), None, [0])
    (together,) = ColourSolveBackend().reconstruct_together([(views, blob)], SolveOptions(), None, [0])
    assert write_ply(together.gaussians) == write_ply(alone.gaussians)
    assert (together.iterations, together.resolved, together.locked) == (
        alone.iterations,
        alone.resolved,
        alone.locked,
    )


def test_frames_solved_together_give_each_gaussian_one_colour(blob, cameras):
    # Two frames of a moving asset whose back was repainted differently in each frame's views (as two
    # time steps inpainted apart are): solved together, a surface point takes one colour, between the
    # two; the front, locked, keeps each frame's own parameters.
    frames = [blob, moved(blob, (0.04, -0.02, 0.0))]
    back = blob.means[:, 2] < -0.1
    views = []
    for frame, tint in zip(frames, ([0.9, 0.2, 0.2], [0.5, 0.2, 0.9]), strict=True):
        painted = recolour(frame, np.tile(tint, (len(frame), 1)), which=back, keep_higher_sh=True)
        render = rasterize(painted, cameras, WHITE)
        views.append(Views(to_uint8(render.rgb), render.alpha, None, cameras))
    frames[1] = recolour(frames[1], base_colours(blob) * 0.9, keep_higher_sh=True)  # its own colours
    results = ColourSolveBackend().reconstruct_together(
        list(zip(views, frames, strict=True)), SolveOptions(), None, [0]
    )
    first, second = (r.gaussians for r in results)
    resolved = np.any(first.sh != frames[0].sh, axis=(1, 2))
    assert resolved[back].mean() > 0.9 and results[0].resolved == results[1].resolved == resolved.sum()
    np.testing.assert_array_equal(first.sh[resolved], second.sh[resolved])
    solved = base_colours(first)[back & resolved].mean(axis=0)
    np.testing.assert_allclose(solved, [0.7, 0.2, 0.55], atol=0.05)  # the mean of the red and the violet
    # Neither solved nor changed in either frame: each frame keeps its own Gaussians, bit for bit.
    for result, frame in zip(results, frames, strict=True):
        assert result.gaussians.sh[~resolved].tobytes() == frame.sh[~resolved].tobytes()
        assert result.gaussians.means.tobytes() == frame.means.tobytes()
    locked = locked_gaussians(frames[0], cameras[[0]]) | locked_gaussians(frames[1], cameras[[0]])
    assert results[0].locked == results[1].locked == locked.sum() > 0 and not (resolved & locked).any()


def test_frames_that_do_not_match_are_refused(blob, cameras):
    render = rasterize(blob, cameras, WHITE)
    views = Views(to_uint8(render.rgb), render.alpha, None, cameras)
    with pytest.raises(ValueError, match="frame 1 holds 10 Gaussians, frame 0 holds 3000"):
        ColourSolveBackend().reconstruct_together(
            [(views, blob), (views, random_gaussians(10))], SolveOptions()
        )
    with pytest.raises(ValueError, match="frame 1 has 2 views, frame 0 has 24"):
        ColourSolveBackend().reconstruct_together(
            [(views, blob), (views.select([0, 1]), blob)], SolveOptions()
        )
