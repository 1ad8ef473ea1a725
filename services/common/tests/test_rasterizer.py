"""The CPU rasterizer against its dense reference, and against answers known in advance."""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch

from services.common.cameras import Cameras, orbit_cameras, project
from services.common.gaussians import SH_C0, Gaussians, random_gaussians
from services.common.rasterizer import RenderResult, _numba, rasterize
from services.common.rasterizer.reference import rasterize_reference

ATOL = 1e-3  # rgb, alpha, depth: fast path vs reference
WEIGHT_ATOL = 1e-4


def _needles(n: int, seed: int) -> Gaussians:
    """Long thin Gaussians (0.4 x 0.0005 x 0.0005), too elongated for the fast path's recurrences."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return Gaussians(
        means=rng.uniform(-0.3, 0.3, size=(n, 3)).astype(np.float32),
        log_scales=np.log(np.tile([0.4, 0.0005, 0.0005], (n, 1))).astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=np.full(n, 3.0, dtype=np.float32),
        sh=(rng.normal(scale=0.3, size=(n, 4, 3))).astype(np.float32),
    )


def _assert_same_contributors(fast: RenderResult, ref: RenderResult) -> None:
    """Weights within WEIGHT_ATOL; ids equal wherever the reference's weights are not tied."""
    np.testing.assert_allclose(fast.weights, ref.weights, rtol=0, atol=WEIGHT_ATOL)
    gaps = np.abs(np.diff(ref.weights, axis=-1, prepend=np.inf, append=-np.inf))
    distinct = (gaps[..., :-1] > 1e-6) & (gaps[..., 1:] > 1e-6)
    np.testing.assert_array_equal(fast.ids[distinct], ref.ids[distinct])


def _concat(a: Gaussians, b: Gaussians) -> Gaussians:
    return Gaussians(
        *(
            np.concatenate([getattr(a, f), getattr(b, f)])
            for f in ("means", "log_scales", "quats", "opacity_logits")
        ),
        sh=np.concatenate([a.sh, b.sh]),
    )


def _one_gaussian(mean, scale: float, opacity_logit: float = 10.0, rgb=(0.8, 0.2, 0.1)) -> Gaussians:
    return Gaussians(
        means=np.array([mean], dtype=np.float32),
        log_scales=np.full((1, 3), np.log(scale), dtype=np.float32),
        quats=np.array([[1.0, 0.0, 0.0, 0.0]], dtype=np.float32),
        opacity_logits=np.array([opacity_logit], dtype=np.float32),
        sh=((np.array(rgb) - 0.5) / SH_C0).reshape(1, 1, 3).astype(np.float32),
    )


# (id, Gaussians, cameras, background)
SCENES = [
    ("300-sh0-64x48", random_gaussians(300, sh_degree=0, seed=1), orbit_cameras([0, 120], 64, 48), (0, 0, 0)),
    (
        "1000-sh1-50x70-el-30",
        random_gaussians(1000, sh_degree=1, seed=2),
        orbit_cameras([45], 50, 70, elevation_deg=-30),
        (0.2, 0.5, 1.0),
    ),
    (
        "2000-sh3-64x48-el20",
        random_gaussians(2000, sh_degree=3, seed=3),
        orbit_cameras([0, 200], 64, 48, elevation_deg=20),
        (1.0, 1.0, 1.0),
    ),
    (
        "800-sh2-40x33-large",
        random_gaussians(800, sh_degree=2, seed=4, scale_range=(0.02, 0.2)),
        orbit_cameras([300], 40, 33, elevation_deg=10),
        (0.1, 0.2, 0.3),
    ),
    (
        "1500-sh2-56x40-inside",  # the camera inside the cloud: near-plane culling, frustum clamping
        random_gaussians(1500, sh_degree=2, seed=11),
        orbit_cameras([20, 160], 56, 40, elevation_deg=30, radius=0.3),
        (0.5, 0.5, 0.5),
    ),
    (
        "needles",
        _concat(random_gaussians(300, sh_degree=1, seed=5), _needles(40, seed=6)),
        orbit_cameras([0, 45], 96, 80),
        (0.3, 0.3, 0.3),
    ),
]


@pytest.mark.parametrize(
    ("gaussians", "cameras", "background"), [s[1:] for s in SCENES], ids=[s[0] for s in SCENES]
)
def test_matches_reference(gaussians: Gaussians, cameras: Cameras, background) -> None:
    k = 8
    fast = rasterize(gaussians, cameras, background=background, contributors=k)
    ref = rasterize_reference(gaussians, cameras, background=background, contributors=k)

    v, h, w = len(cameras), cameras.height, cameras.width
    assert fast.rgb.shape == (v, h, w, 3) and fast.rgb.dtype == np.float32
    assert fast.alpha.shape == fast.depth.shape == (v, h, w)
    assert fast.ids.shape == fast.weights.shape == (v, h, w, k) and fast.ids.dtype == np.int32
    assert ref.alpha.max() > 0.5, "the scene should cover part of the image"
    for name in ("rgb", "alpha", "depth"):
        np.testing.assert_allclose(getattr(fast, name), getattr(ref, name), rtol=0, atol=ATOL, err_msg=name)
    _assert_same_contributors(fast, ref)


def test_projection_kernel_places_centres_as_cameras_project() -> None:
    """``project_view`` inlines ``cameras.project``: every Gaussian it keeps has the same centre and depth."""
    gaussians = random_gaussians(300, sh_degree=1, seed=11)
    cameras = orbit_cameras([0.0, 130.0], 48, 40, elevation_deg=-20.0)
    n = len(gaussians)
    inputs = [
        np.ascontiguousarray(a, dtype=np.float32)
        for a in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh)
    ]
    records, boxes = np.empty((n, _numba.N_FIELDS)), np.empty((n, 4), dtype=np.int32)
    for viewmat, K in zip(cameras.viewmats, cameras.Ks, strict=True):
        _numba.project_view(*inputs, viewmat, K, cameras.width, cameras.height, records, boxes)
        kept = boxes[:, 0] <= boxes[:, 1]
        assert kept.sum() > n // 2
        xy, z = project(viewmat, K, gaussians.means)
        np.testing.assert_allclose(records[kept][:, [_numba.U, _numba.V]], xy[kept], rtol=0, atol=1e-9)
        np.testing.assert_allclose(records[kept, _numba.DEPTH], z[kept], rtol=1e-12)


def test_compositing_counts_its_work() -> None:
    """``out_work`` counts the pairs composited and the pixels of their boxes, whatever the thread count:
    one Gaussian is one pair per tile its box touches, and its box's pixels."""
    gaussians = _one_gaussian([0.02, -0.01, 0.0], scale=0.05)
    cameras = orbit_cameras([0.0], 64, 48)
    inputs = [
        np.ascontiguousarray(a, dtype=np.float32)
        for a in (gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities, gaussians.sh)
    ]
    records, boxes = np.empty((1, _numba.N_FIELDS)), np.empty((1, 4), dtype=np.int32)
    _numba.project_view(*inputs, cameras.viewmats[0], cameras.Ks[0], 64, 48, records, boxes)
    col0, col1, row0, row1 = boxes[0]
    tiles = (col1 // 16 - col0 // 16 + 1) * (row1 // 16 - row0 // 16 + 1)
    assert tiles > 1, "the box spans tiles"
    offsets, tile_lists = _numba.prepare_tiles(records, boxes, 4, 3)
    for workers in (1, 3):
        work = np.full((workers, 2), -1, dtype=np.int64)
        images = [
            np.empty((48, 64, 3), np.float32),
            np.empty((48, 64), np.float32),
            np.empty((48, 64), np.float32),
        ]
        contributors = [np.empty((48, 64, 0), np.int32), np.empty((48, 64, 0), np.float32)]
        _numba.rasterize_tiles(
            records, boxes, offsets, tile_lists, 4, np.zeros(3), workers, *images, *contributors, work
        )
        assert work.sum(axis=0).tolist() == [tiles, (col1 - col0 + 1) * (row1 - row0 + 1)]


def test_contributor_weights_sum_to_alpha() -> None:
    """With K above every pixel's contributor count, the weights are all of them."""
    gaussians = random_gaussians(300, sh_degree=1, seed=7)
    cameras = orbit_cameras([30], 48, 40)
    fast = rasterize(gaussians, cameras, contributors=128)
    ref = rasterize_reference(gaussians, cameras, contributors=128)
    assert (fast.ids[..., -1] == -1).all(), "K should exceed every pixel's contributor count"
    _assert_same_contributors(fast, ref)
    np.testing.assert_allclose(fast.weights.sum(-1), fast.alpha, rtol=0, atol=WEIGHT_ATOL)
    assert (np.diff(fast.weights, axis=-1) <= 0).all(), "sorted by decreasing weight"
    assert ((fast.ids == -1) == (fast.weights == 0)).all()


def test_everything_behind_the_camera_gives_the_background() -> None:
    gaussians = random_gaussians(200, seed=8)
    # Azimuth 0: the camera is at z = +1.5 looking toward -z; these are all behind it.
    gaussians = Gaussians(
        means=gaussians.means + np.float32([0.0, 0.0, 2.5]),
        log_scales=gaussians.log_scales,
        quats=gaussians.quats,
        opacity_logits=gaussians.opacity_logits,
        sh=gaussians.sh,
    )
    background = (0.25, 0.5, 0.75)
    result = rasterize(gaussians, orbit_cameras([0], 32, 24), background=background, contributors=2)
    assert (result.alpha == 0).all() and (result.depth == 0).all()
    assert (result.rgb == np.float32(background)).all()
    assert (result.ids == -1).all() and (result.weights == 0).all()


def test_no_gaussians_gives_the_background() -> None:
    empty = Gaussians(
        means=np.zeros((0, 3), np.float32),
        log_scales=np.zeros((0, 3), np.float32),
        quats=np.zeros((0, 4), np.float32),
        opacity_logits=np.zeros(0, np.float32),
        sh=np.zeros((0, 1, 3), np.float32),
    )
    result = rasterize(empty, orbit_cameras([0, 90], 20, 10), background=(1.0, 0.0, 0.0))
    assert (result.alpha == 0).all() and (result.rgb == np.float32([1.0, 0.0, 0.0])).all()
    assert result.ids is None and result.weights is None


def test_large_opaque_gaussian_at_the_origin() -> None:
    """Seen from the default radius 1.5, it covers the centre at full (clamped) alpha and depth 1.5."""
    rgb = (0.8, 0.2, 0.1)
    background = np.array([0.0, 0.5, 1.0])
    # Odd sizes put pixel (24, 32)'s centre on the optical axis, through the mean: sigma = 0 there.
    result = rasterize(
        _one_gaussian((0, 0, 0), 0.3, rgb=rgb), orbit_cameras([0], 65, 49), background=background
    )
    assert result.alpha[0, 24, 32] == pytest.approx(0.999, abs=1e-6)  # min(0.999, opacity)
    assert result.depth[0, 24, 32] == pytest.approx(1.5, abs=1e-6)
    np.testing.assert_allclose(result.rgb[0, 24, 32], 0.999 * np.array(rgb) + 0.001 * background, atol=1e-5)
    # The footprint's standard deviation is 0.3 / 1.5 * focal = 10.5 pixels.
    np.testing.assert_allclose(result.alpha[0, 20:29, 28:37], 0.999, atol=0.15)
    np.testing.assert_allclose(result.depth[0, 20:29, 28:37], 1.5, atol=1e-5)
    assert result.alpha[0, 0, 0] < 0.05, "the corners are outside it"


def test_orientation_convention() -> None:
    """At azimuth 0, world +x is right of the image centre and world +y above it."""
    cameras = orbit_cameras([0], 64, 48)
    right = rasterize(_one_gaussian((0.3, 0, 0), 0.02), cameras).alpha[0]
    up = rasterize(_one_gaussian((0, 0.3, 0), 0.02), cameras).alpha[0]
    row, col = np.unravel_index(np.argmax(right), right.shape)
    assert col > 32 + 5 and abs(row - 24) <= 1
    row, col = np.unravel_index(np.argmax(up), up.shape)
    assert row < 24 - 5 and abs(col - 32) <= 1


def test_deterministic_and_independent_of_the_thread_count() -> None:
    gaussians = random_gaussians(3000, sh_degree=2, seed=9)
    cameras = orbit_cameras([10, 100], 80, 64, elevation_deg=-15)
    threads = numba.get_num_threads()
    first = rasterize(gaussians, cameras, contributors=4)
    second = rasterize(gaussians, cameras, contributors=4)
    single = rasterize(gaussians, cameras, contributors=4, num_threads=1)
    assert numba.get_num_threads() == threads, "the thread count is restored"
    for name in ("rgb", "alpha", "depth", "ids", "weights"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name), err_msg=name)
        np.testing.assert_array_equal(getattr(first, name), getattr(single, name), err_msg=name)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"background": (0.0, 0.0)}, "background"),
        ({"background": (0.0, np.nan, 0.0)}, "background"),
        ({"contributors": -1}, "contributors"),
        ({"contributors": 1.5}, "contributors"),
        ({"num_threads": 0}, "num_threads"),
        ({"num_threads": 10_000}, "num_threads"),
        ({"gaussians": "not gaussians"}, "gaussians"),
        ({"cameras": None}, "cameras"),
        (
            {"cameras": Cameras(np.eye(4, dtype=np.float32)[None], np.eye(3, dtype=np.float32)[None], 0, 8)},
            "width",
        ),
    ],
)
def test_rejects_bad_arguments(kwargs: dict, argument: str) -> None:
    call = {"gaussians": random_gaussians(10), "cameras": orbit_cameras([0], 16, 16), **kwargs}
    with pytest.raises(ValueError, match=argument):
        rasterize(**call)


def test_rejects_malformed_gaussians() -> None:
    g = random_gaussians(10, sh_degree=1)
    bad_sh = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh[:, :3])
    with pytest.raises(ValueError, match=r"gaussians\.sh"):
        rasterize(bad_sh, orbit_cameras([0], 16, 16))
    bad_opacities = Gaussians(g.means, g.log_scales, g.quats, g.opacity_logits[:5], g.sh)
    with pytest.raises(ValueError, match=r"gaussians\.opacity_logits"):
        rasterize(bad_opacities, orbit_cameras([0], 16, 16))


def test_result_is_frozen() -> None:
    result = rasterize(random_gaussians(10), orbit_cameras([0], 16, 16))
    assert isinstance(result, RenderResult)
    with pytest.raises(AttributeError):
        result.rgb = None  # type: ignore[misc]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
def test_matches_gsplat_cuda() -> None:
    """gsplat's own CUDA rasterizer (float32, so a few pixels may differ by about 1/255 at most)."""
    import gsplat

    gaussians = random_gaussians(5000, sh_degree=3, seed=10)
    cameras = orbit_cameras([0, 90, 200], 128, 96, elevation_deg=-20)
    background = (0.1, 0.2, 0.3)
    cpu = rasterize(gaussians, cameras, background=background)

    def cuda(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).cuda()

    colours, alphas, _ = gsplat.rasterization(
        cuda(gaussians.means),
        cuda(gaussians.quats),
        cuda(gaussians.scales),  # gsplat takes activated scales and opacities
        cuda(gaussians.opacities),
        cuda(gaussians.sh),
        cuda(cameras.viewmats),  # world-to-camera
        cuda(cameras.Ks),
        cameras.width,
        cameras.height,
        sh_degree=gaussians.sh_degree,
        backgrounds=cuda(np.tile(background, (len(cameras), 1))),
        render_mode="RGB+ED",
        packed=False,
    )
    colours, alphas = colours.cpu().numpy(), alphas[..., 0].cpu().numpy()
    for name, ours, theirs in (
        ("rgb", cpu.rgb, colours[..., :3]),
        ("alpha", cpu.alpha, alphas),
        ("depth", cpu.depth, colours[..., 3]),
    ):
        error = np.abs(ours - theirs)
        assert error.mean() < 1e-4, name
        assert np.quantile(error, 0.999) < 5e-3, name
