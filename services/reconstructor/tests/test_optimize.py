"""The gsplat-optimize backend: its dense PyTorch renderer against the CPU rasterizer, the optimisation on
CPU through that renderer, view weights, stopping, configuration; on CUDA, the real gsplat path."""

import dataclasses

import numpy as np
import pytest
import torch

from services.common.cameras import orbit_cameras
from services.common.errors import ConfigError, Unimplemented
from services.common.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from services.common.rasterizer import rasterize
from services.common.rasterizer.reference import rasterization_dense
from services.common.views import Views
from services.reconstructor.backends import make_backend
from services.reconstructor.contract import SolveOptions, locked_gaussians, rms_error
from services.reconstructor.optimize import GsplatOptimizeBackend, photometric_loss, ssim

GREY = np.full(3, 0.5, dtype=np.float32)
CAMERAS = orbit_cameras([0.0, 90.0, 180.0, 270.0], 32, 32, elevation_deg=-15.0)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def psnr(gaussians: Gaussians, rgb: np.ndarray, view: int | slice = slice(None)) -> float:
    """PSNR (dB) of a CPU render of ``gaussians`` against the uint8 views ``rgb``, over ``view``."""
    rendered = rasterize(gaussians, CAMERAS, GREY).rgb[view]
    return float(-10.0 * np.log10(np.mean((rendered - rgb[view] / 255.0) ** 2)))


def dense_inputs(gaussians: Gaussians, dtype=torch.float64, device="cpu") -> dict:
    """``gaussians`` and ``CAMERAS`` as ``gsplat.rasterization``'s keyword arguments."""

    def tensor(array):
        return torch.tensor(np.asarray(array), dtype=dtype, device=device)

    return dict(
        means=tensor(gaussians.means),
        quats=tensor(gaussians.quats),
        scales=tensor(gaussians.scales),
        opacities=tensor(gaussians.opacities),
        colors=tensor(gaussians.sh),
        viewmats=tensor(CAMERAS.viewmats),
        Ks=tensor(CAMERAS.Ks),
        width=CAMERAS.width,
        height=CAMERAS.height,
        sh_degree=gaussians.sh_degree,
        backgrounds=tensor(np.tile(GREY, (len(CAMERAS), 1))),
        packed=False,
    )


@pytest.fixture(scope="module")
def truth():
    return read_ply(write_ply(random_gaussians(200, sh_degree=1, seed=3, scale_range=(0.02, 0.08))))


@pytest.fixture(scope="module")
def views(truth):
    render = rasterize(truth, CAMERAS, GREY)
    return Views(to_uint8(render.rgb), render.alpha, None, CAMERAS)


@pytest.fixture(scope="module")
def perturbed(truth):
    """The truth with noisy colours (sd 0.2), positions (sd 0.01) and opacity logits (sd 0.5), and extras."""
    rng = np.random.default_rng(1)
    n = len(truth)
    sh = truth.sh.copy()
    sh[:, 0] += rng.normal(scale=0.2, size=(n, 3)) / 0.28209479
    return dataclasses.replace(
        truth,
        means=(truth.means + rng.normal(scale=0.01, size=(n, 3))).astype(np.float32),
        opacity_logits=(truth.opacity_logits + rng.normal(scale=0.5, size=n)).astype(np.float32),
        sh=sh,
        extra={"label": np.arange(n, dtype=np.float32)},
    )


def dense_backend(**kwargs) -> GsplatOptimizeBackend:
    return GsplatOptimizeBackend(device="cpu", renderer=rasterization_dense, **kwargs)


@pytest.fixture(scope="module")
def optimized(views, perturbed):
    options = SolveOptions(keep_higher_sh=True, max_iterations=50, tolerance=1e-9)
    return dense_backend(learning_rate_scale=5.0).reconstruct(views, perturbed, options)


# --- The dense renderer. ---


@pytest.mark.parametrize("sh_degree", [0, 3])
def test_dense_renderer_matches_the_cpu_rasterizer(sh_degree):
    gaussians = random_gaussians(150, sh_degree=sh_degree, seed=7, scale_range=(0.01, 0.1))
    expected = rasterize(gaussians, CAMERAS, GREY)
    colours, alphas, _ = rasterization_dense(**dense_inputs(gaussians), render_mode="RGB+ED")
    assert colours.shape == (4, 32, 32, 4) and alphas.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(colours[..., :3].numpy(), expected.rgb, rtol=0, atol=1e-4)
    np.testing.assert_allclose(alphas[..., 0].numpy(), expected.alpha, rtol=0, atol=1e-4)
    covered = expected.alpha > 0.01
    np.testing.assert_allclose(colours[..., 3].numpy()[covered], expected.depth[covered], rtol=1e-4)
    rgb_only, _, _ = rasterization_dense(**dense_inputs(gaussians, torch.float32))
    assert rgb_only.shape == (4, 32, 32, 3) and rgb_only.dtype == torch.float32
    np.testing.assert_allclose(rgb_only.numpy(), expected.rgb, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["means", "quats", "scales", "opacities", "colors"])
def test_dense_renderer_gradients_match_finite_differences(name):
    # A small step: the alpha threshold and the integer box make the image jump where a pixel crosses
    # them, and larger steps cross some.
    inputs = dense_inputs(random_gaussians(40, sh_degree=1, seed=4, scale_range=(0.02, 0.08)))
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(inputs[name].shape, generator=generator, dtype=torch.float64)

    def loss(step: float) -> torch.Tensor:
        return (rasterization_dense(**{**inputs, name: inputs[name] + step * direction})[0] ** 2).sum()

    inputs[name].requires_grad_(True)
    loss(0.0).backward()
    analytic = float((inputs[name].grad * direction).sum())
    with torch.no_grad():
        numeric = float(loss(1e-7) - loss(-1e-7)) / 2e-7
    assert abs(analytic) > 1.0
    assert analytic == pytest.approx(numeric, rel=1e-5)


def test_dense_renderer_refuses_what_it_does_not_implement(truth):
    with pytest.raises(ValueError, match="rasterize_mode"):
        rasterization_dense(**dense_inputs(truth), rasterize_mode="antialiased")
    with pytest.raises(ValueError, match="render_mode"):
        rasterization_dense(**dense_inputs(truth), render_mode="D")


# --- Loss pieces. ---


def test_ssim_of_equal_images_is_one_and_of_constant_images_follows_the_formula():
    image = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(ssim(image, image), torch.ones_like(image))
    other = torch.rand(2, 24, 24, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(ssim(image, other), ssim(other, image))
    assert float(ssim(image, other).mean()) < 0.2
    # Constant images a and b: away from the zero-padded border, SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b = 0.3, 0.7
    constant = [torch.full((1, 24, 24, 1), value, dtype=torch.float64) for value in (a, b)]
    value = ssim(*constant)[0, 5:-5, 5:-5]
    expected = (2 * a * b + 1e-4) / (a * a + b * b + 1e-4)
    torch.testing.assert_close(value, torch.full_like(value, expected))


def test_photometric_loss_counts_only_covered_pixels():
    target_rgb = torch.full((2, 16, 16, 3), 0.5)
    target_alpha = torch.zeros(2, 16, 16)
    target_alpha[:, :4, :4] = 1.0  # 16 of 256 pixels are foreground
    rgb, alpha = target_rgb.clone(), target_alpha.clone()
    assert photometric_loss(rgb, alpha, target_rgb, target_alpha).tolist() == [0.0, 0.0]
    rgb[0, :4, :4] = 0.7  # an error of 0.2 on the foreground of view 0
    loss = photometric_loss(rgb, alpha, target_rgb, target_alpha, alpha_weight=0.0)
    assert loss[1] == 0.0
    # Averaged over the 16 foreground pixels only: not over all 256, and without the SSIM error that
    # the window spreads onto the background around them.
    structure = 1.0 - ssim(rgb, target_rgb)[0].mean(dim=-1)
    assert float(structure[4:8, :8].min()) > 0.0
    expected = 0.8 * 0.2 + 0.2 * float(structure[:4, :4].mean())
    assert float(loss[0]) == pytest.approx(expected, rel=1e-6)
    alpha[1, 8:10, 8:10] = 0.5  # the render's footprint spills onto 4 background pixels of view 1
    spilled = photometric_loss(rgb, alpha, target_rgb, target_alpha, alpha_weight=1.0)
    assert float(spilled[1]) == pytest.approx(4 * 0.5 / 20)


# --- The optimisation, on CPU through the dense renderer. ---


def test_optimisation_moves_the_asset_toward_the_views(views, perturbed, optimized):
    before, after = psnr(perturbed, views.rgb), psnr(optimized.gaussians, views.rgb)
    assert after > before + 8.0, (before, after)

    def loss(gaussians):
        inputs = dense_inputs(gaussians, torch.float32)
        rgb, alpha, _ = rasterization_dense(**inputs)
        target = torch.tensor(views.rgb, dtype=torch.float32) / 255.0
        return float(photometric_loss(rgb, alpha[..., 0], target, torch.tensor(views.alpha)).mean())

    assert loss(optimized.gaussians) < 0.5 * loss(perturbed)
    assert optimized.iterations == 50


def test_the_result_is_a_valid_asset_of_the_same_gaussians(perturbed, optimized):
    result = optimized.gaussians
    result.validate()  # float32, finite, unit quaternions
    assert len(result) == len(perturbed) and result.sh.shape == perturbed.sh.shape
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        assert getattr(result, name).dtype == np.float32
        assert not np.array_equal(getattr(result, name), getattr(perturbed, name)), name
    np.testing.assert_allclose(np.linalg.norm(result.quats, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(result.extra["label"], perturbed.extra["label"])


def test_rms_error_is_that_of_a_rerender(views, optimized):
    rerender = rasterize(optimized.gaussians, CAMERAS, GREY).rgb
    assert optimized.rms_error == pytest.approx(rms_error(rerender, views.rgb), abs=1e-4)


def test_higher_sh_bands_are_zeroed_and_left_out_unless_kept(views, perturbed):
    result = dense_backend().reconstruct(views, perturbed, SolveOptions(max_iterations=3))
    assert result.gaussians.sh.shape == perturbed.sh.shape
    assert not result.gaussians.sh[:, 1:].any()
    assert not np.array_equal(result.gaussians.sh[:, 0], perturbed.sh[:, 0])


@pytest.mark.parametrize("keep_higher_sh", [False, True])
def test_the_locked_views_gaussians_are_frozen_bit_for_bit(views, perturbed, keep_higher_sh):
    options = SolveOptions(keep_higher_sh=keep_higher_sh, max_iterations=6, tolerance=1e-9)
    result = dense_backend().reconstruct(views, perturbed, options, None, [0])
    locked = locked_gaussians(perturbed, CAMERAS[[0]])
    assert result.locked == locked.sum() > 0.2 * len(perturbed)
    assert (result.kept, result.resolved) == (0, len(perturbed) - result.locked)
    assert result.higher_sh_kept == keep_higher_sh
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        before, after = getattr(perturbed, name), getattr(result.gaussians, name)
        assert after[locked].tobytes() == before[locked].tobytes(), name  # SH bands included
        assert not np.array_equal(after[~locked], before[~locked]), name  # the others move
    if not keep_higher_sh:
        assert not result.gaussians.sh[~locked, 1:].any()
    with pytest.raises(ValueError, match=r"locked_views\[1\] repeats"):
        dense_backend().reconstruct(views, perturbed, options, None, [0, 0])


def test_a_loose_tolerance_stops_after_two_windows(views, perturbed):
    # 4 views, 4 per step: an epoch is one step, a window ten; the first window has nothing to improve on.
    result = dense_backend().reconstruct(views, perturbed, SolveOptions(max_iterations=50, tolerance=0.99))
    assert result.iterations == 20


def test_runs_are_deterministic(views, perturbed):
    options = SolveOptions(max_iterations=4)
    first = dense_backend(views_per_step=2, seed=5).reconstruct(views, perturbed, options)
    second = dense_backend(views_per_step=2, seed=5).reconstruct(views, perturbed, options)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(first.gaussians, name), getattr(second.gaussians, name))


def test_view_weights_decide_whether_a_disagreeing_view_pulls(truth, views):
    # View 3 is tinted red where the asset covers it; the others agree with the asset as it is.
    tinted = views.rgb.copy()
    covered = views.alpha[3] > 0.5
    tinted[3][covered] = np.clip(tinted[3][covered].astype(int) + np.array([80, -40, -40]), 0, 255)
    disagreeing = dataclasses.replace(views, rgb=tinted)
    options = SolveOptions(max_iterations=40)
    backend = dense_backend(learning_rate_scale=5.0)

    ignored = backend.reconstruct(disagreeing, truth, options, np.array([1.0, 1.0, 1.0, 0.0]))
    heeded = backend.reconstruct(disagreeing, truth, options, np.array([1.0, 1.0, 1.0, 10.0]))
    start = psnr(truth, tinted, 3)
    assert psnr(ignored.gaussians, tinted, 3) < start + 1.0
    assert psnr(heeded.gaussians, tinted, 3) > start + 4.0
    # Ignoring view 3 keeps the others as they were; heeding it costs them some of their fit.
    assert psnr(ignored.gaussians, views.rgb, slice(0, 3)) > psnr(heeded.gaussians, views.rgb, slice(0, 3))


def test_bad_view_weights_are_refused(views, truth):
    with pytest.raises(ValueError, match="view_weights"):
        dense_backend().reconstruct(views, truth, SolveOptions(), np.zeros(4))
    with pytest.raises(ValueError, match="view_weights"):
        dense_backend().reconstruct(views, truth, SolveOptions(), np.ones(3))


# --- Configuration. ---


def test_without_cuda_the_backend_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="needs CUDA"):
        GsplatOptimizeBackend()
    with pytest.raises(ConfigError, match="needs CUDA"):
        make_backend("gsplat-optimize")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"views_per_step": 0}, "views_per_step"),
        ({"learning_rate_scale": 0.0}, "learning_rate_scale"),
        ({"learning_rate_scale": float("nan")}, "learning_rate_scale"),
        ({"alpha_weight": -1.0}, "alpha_weight"),
        ({"device": "abacus"}, "'abacus'"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GsplatOptimizeBackend(renderer=rasterization_dense, **kwargs)


def test_an_injected_renderer_runs_where_torch_does():
    backend = dense_backend(views_per_step=2)
    assert (backend.name, backend.device, backend.views_per_step) == ("gsplat-optimize", "cpu", 2)


# --- On CUDA: gsplat itself. ---


@pytest.mark.gpu
@cuda
def test_gsplat_and_the_dense_renderer_agree_on_images_and_gradients(truth, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    from gsplat import rasterization

    names = ("means", "quats", "scales", "opacities", "colors")
    gradients = []
    for render in (rasterization_dense, rasterization):
        inputs = dense_inputs(truth, torch.float32, "cuda")
        for name in names:
            inputs[name].requires_grad_(True)
        colours, alphas, _ = render(**inputs, render_mode="RGB", rasterize_mode="classic", eps2d=0.3)
        (colours.square().sum() + alphas.sum()).backward()
        gradients.append({name: inputs[name].grad for name in names})
        if render is rasterization_dense:
            expected, expected_alpha = colours.detach(), alphas.detach()
    torch.testing.assert_close(colours, expected, rtol=0, atol=2e-3)
    torch.testing.assert_close(alphas, expected_alpha, rtol=0, atol=2e-3)
    dense, gsplat = gradients
    for name in names:
        assert float((gsplat[name] - dense[name]).norm() / dense[name].norm()) < 0.02, name


@pytest.mark.gpu
@cuda
def test_gsplat_optimisation_moves_the_asset_toward_the_views(views, perturbed, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    backend = make_backend("gsplat-optimize", learning_rate_scale=5.0)
    assert backend.device.startswith("cuda:0")
    result = backend.reconstruct(views, perturbed, SolveOptions(keep_higher_sh=True, max_iterations=80))
    result.gaussians.validate()
    assert len(result.gaussians) == len(perturbed)
    assert psnr(result.gaussians, views.rgb) > psnr(perturbed, views.rgb) + 8.0
    rerender = rasterize(result.gaussians, CAMERAS, GREY).rgb
    assert result.rms_error == pytest.approx(rms_error(rerender, views.rgb), abs=2e-3)


def test_frames_are_fitted_together_only_one_at_a_time(views, perturbed):
    options = SolveOptions(max_iterations=2)
    (one,) = dense_backend(seed=5).reconstruct_together([(views, perturbed)], options)
    assert write_ply(one.gaussians) == write_ply(
        dense_backend(seed=5).reconstruct(views, perturbed, options).gaussians
    )
    with pytest.raises(
        Unimplemented, match="one frame per call, not 2: joint_time_steps needs the colour-solve"
    ):
        dense_backend().reconstruct_together([(views, perturbed)] * 2, options)
