"""The numba rasterizer against the dense reference built from gsplat's PyTorch functions, and invariants."""

import numpy as np
import pytest

from services.common.cameras import Cameras, orbit_cameras
from services.common.gaussians import Gaussians
from services.common.rasterizer import rasterize
from services.common.rasterizer.reference import rasterize_reference
from services.common.synthetic import random_gaussians

TOLERANCE = 1e-3


@pytest.mark.parametrize(
    ("n", "sh_degree", "width", "height", "azimuths", "elevation", "background"),
    [
        (300, 0, 64, 48, (0.0,), 0.0, (0.0, 0.0, 0.0)),
        (800, 1, 48, 64, (45.0, 180.0), -20.0, (1.0, 1.0, 1.0)),
        (1500, 2, 40, 40, (90.0,), 15.0, (0.2, 0.5, 0.8)),
        (2000, 3, 72, 40, (270.0, 10.0), -35.0, (0.1, 0.1, 0.1)),
    ],
)
def test_matches_the_dense_reference(n, sh_degree, width, height, azimuths, elevation, background):
    gaussians = random_gaussians(n, sh_degree=sh_degree, seed=n)
    cameras = orbit_cameras(azimuths, width, height, elevation_deg=elevation)
    fast = rasterize(gaussians, cameras, background=background, contributors=6)
    slow = rasterize_reference(gaussians, cameras, background=background, contributors=6)
    for name in ("rgb", "alpha", "depth"):
        assert getattr(fast, name).shape == getattr(slow, name).shape
        assert np.abs(getattr(fast, name) - getattr(slow, name)).max() <= TOLERANCE, name
    assert fast.alpha.max() > 0.5  # the scene is actually in view
    np.testing.assert_allclose(fast.weights, slow.weights, atol=1e-4)
    # Ids agree wherever the weight is not tied with the next one.
    distinct = np.abs(np.diff(slow.weights, axis=-1, append=0.0)) > 1e-5
    assert (fast.ids[distinct] == slow.ids[distinct]).all()


def test_shapes_dtypes_and_contributor_weights_sum_to_alpha():
    gaussians = random_gaussians(400, seed=3, scale_range=(0.02, 0.08))
    result = rasterize(gaussians, orbit_cameras([0.0, 60.0], 32, 24), contributors=64)
    assert result.rgb.shape == (2, 24, 32, 3) and result.rgb.dtype == np.float32
    assert result.alpha.shape == result.depth.shape == (2, 24, 32)
    assert result.ids.shape == result.weights.shape == (2, 24, 32, 64) and result.ids.dtype == np.int32
    np.testing.assert_allclose(result.weights.sum(-1), result.alpha, atol=1e-5)
    assert (np.diff(result.weights, axis=-1) <= 1e-7).all()  # sorted by decreasing weight
    assert ((result.ids == -1) == (result.weights == 0)).all()
    assert rasterize(gaussians, orbit_cameras([0.0], 8, 8)).ids is None


def one_gaussian(mean, scale, opacity=0.999, colour=(1.0, 0.0, 0.0)) -> Gaussians:
    logit = np.log(opacity / (1 - opacity))
    return Gaussians(
        means=np.array([mean], np.float32),
        log_scales=np.log(np.full((1, 3), scale, np.float32)),
        quats=np.array([[1, 0, 0, 0]], np.float32),
        opacity_logits=np.array([logit], np.float32),
        sh=((np.array([[colour]], np.float32) - 0.5) / 0.28209479177387814).astype(np.float32),
    )


def test_a_large_opaque_gaussian_at_the_origin_covers_the_centre_at_the_orbit_radius():
    result = rasterize(one_gaussian((0, 0, 0), 0.3), orbit_cameras([0.0], 32, 32))
    # The image centre is half a pixel from pixel (16, 16)'s centre: alpha = 0.999 * exp(-small).
    assert result.alpha[0, 16, 16] == pytest.approx(0.999, abs=1e-2)
    assert result.depth[0, 16, 16] == pytest.approx(1.5, abs=1e-5)
    assert result.rgb[0, 16, 16] == pytest.approx([result.alpha[0, 16, 16], 0.0, 0.0], abs=1e-6)


def test_a_gaussian_at_plus_x_appears_right_of_centre_from_azimuth_0():
    result = rasterize(one_gaussian((0.3, 0, 0), 0.02), orbit_cameras([0.0], 64, 64))
    row, col = np.unravel_index(np.argmax(result.alpha[0]), (64, 64))
    assert row in (31, 32) and col > 40


def test_nothing_in_front_of_the_camera_gives_the_background():
    behind = one_gaussian((0, 0, 2.0), 0.1)  # the camera at azimuth 0 sits at z = 1.5 looking toward -z
    result = rasterize(behind, orbit_cameras([0.0], 16, 16), background=(0.1, 0.2, 0.3))
    assert (result.alpha == 0).all() and (result.depth == 0).all()
    np.testing.assert_allclose(result.rgb, np.broadcast_to([0.1, 0.2, 0.3], result.rgb.shape), atol=1e-7)


def test_deterministic_and_independent_of_thread_count():
    gaussians, cameras = random_gaussians(3000, sh_degree=1, seed=9), orbit_cameras([30.0, 200.0], 64, 64)
    every = rasterize(gaussians, cameras, contributors=4)
    again = rasterize(gaussians, cameras, contributors=4)
    one = rasterize(gaussians, cameras, contributors=4, num_threads=1)
    for name in ("rgb", "alpha", "depth", "ids", "weights"):
        np.testing.assert_array_equal(getattr(every, name), getattr(again, name))
        np.testing.assert_array_equal(getattr(every, name), getattr(one, name))


def test_bad_arguments_are_named():
    gaussians, cameras = random_gaussians(10), orbit_cameras([0.0], 8, 8)
    with pytest.raises(ValueError, match="background"):
        rasterize(gaussians, cameras, background=(1.0, 0.0))
    with pytest.raises(ValueError, match="contributors"):
        rasterize(gaussians, cameras, contributors=-1)
    with pytest.raises(ValueError, match=r"cameras\.width"):
        rasterize(gaussians, Cameras(cameras.viewmats, cameras.Ks, 0, 8))
