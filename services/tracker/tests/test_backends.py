"""The geometric tracker backend: known answers on spheres of Gaussians, occlusion, appearance transfer,
tracks of a static point, the mask's post-processing, and the geometry helpers."""

import numpy as np
import pytest

from services.common.cameras import project_points
from services.common.errors import ConfigError
from services.common.views import Views
from services.tracker.backends import GeometricBackend, make_backend
from services.tracker.contract import Footprint, Located, LocateOptions, footprint, sample_depth
from services.tracker.tests.scenes import (
    merge,
    orbit_views,
    plane_views,
    ray_cast_sphere,
    silhouette_radius,
    sphere_gaussians,
)

EXACT = LocateOptions(min_region_pixels=0, dilation_pixels=0)
SPHERE_AZIMUTHS = [0, 30, 90, 150, 180, 0]  # anchor, four targets, and a target at the anchor's pose
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


@pytest.fixture(scope="module")
def backend():
    return GeometricBackend()


@pytest.fixture(scope="module")
def sphere():
    """A sphere of radius 0.4 at the origin (red where x < 0, blue elsewhere), 96 x 96 views."""
    return orbit_views(sphere_gaussians(colour=BLUE, colour_negative_x=RED), SPHERE_AZIMUTHS)


@pytest.fixture(scope="module")
def sphere_located(backend, sphere):
    return backend.locate_unobserved(sphere, [1, 2, 3, 4, 5], [0], EXACT)


def check_conventions(located: Located, views: Views, targets, options: LocateOptions) -> None:
    """The invariants every result keeps, whatever the scene."""
    tg, (_, h, w) = len(targets), views.shape
    assert located.unobserved.shape == (tg, h, w) and located.unobserved.dtype == np.bool_
    assert located.anchor_index.shape == (tg, h, w) and located.anchor_index.dtype == np.int32
    assert located.anchor_xy.shape == (tg, h, w, 2) and located.anchor_xy.dtype == np.float32
    assert located.transferred_rgb.shape == (tg, h, w, 3) and located.transferred_rgb.dtype == np.uint8
    assert located.unobserved_fraction.shape == (tg,) and located.unobserved_fraction.dtype == np.float32
    foreground = views.alpha[list(targets)] > options.foreground_threshold
    none = located.anchor_index == -1
    assert not (located.unobserved & ~foreground).any()  # the mask stays on the foreground
    assert none[~foreground].all() and none[located.unobserved].all()
    np.testing.assert_array_equal(np.isnan(located.anchor_xy), np.repeat(none[..., None], 2, axis=-1))
    # The anchor positions lie inside the image.
    xy = located.anchor_xy[~none]
    assert ((xy >= 0) & (xy < [w, h])).all()
    # Pixels without an anchor keep the target's own colour.
    target_rgb = views.rgb[list(targets)]
    np.testing.assert_array_equal(located.transferred_rgb[none], target_rgb[none])
    assert set(np.unique(located.anchor_index)) - {-1} <= set(range(len(views)))
    expected = located.unobserved.sum(axis=(1, 2)) / np.maximum(foreground.sum(axis=(1, 2)), 1)
    np.testing.assert_allclose(located.unobserved_fraction, expected, rtol=1e-6)


# -- known answers on the sphere ----------------------------------------------------------------------


@pytest.mark.parametrize(("position", "azimuth"), [(1, 30), (2, 90), (3, 150), (4, 180)])
def test_unobserved_fraction_of_a_sphere_matches_ray_casting(sphere, sphere_located, position, azimuth):
    # The exact answer: a target pixel's ray hits the sphere at p, which the anchor observes iff p is on
    # the anchor's visible cap, (p - c_anchor) . n_p < 0. The sphere is the one with the render's
    # silhouette (see silhouette_radius).
    radius = silhouette_radius(sphere.alpha[position], sphere.cameras, position)
    assert 0.4 < radius < 0.43
    hit, points = ray_cast_sphere(sphere.cameras, position, radius)
    anchor = sphere.cameras.positions[0].astype(np.float64)
    seen = np.einsum("hwc,hwc->hw", points - anchor, points) < 0
    expected = np.count_nonzero(hit & ~seen) / np.count_nonzero(hit)
    got = sphere_located.unobserved_fraction[position - 1]
    assert abs(got - expected) < 0.03, (azimuth, got, expected)
    # Pixel by pixel too: few disagree, and only near the cap's rim or the silhouette.
    disagree = np.count_nonzero(sphere_located.unobserved[position - 1] != (hit & ~seen))
    assert disagree < 0.06 * np.count_nonzero(hit)


def test_opposite_view_and_back_hemisphere_are_unobserved(sphere, sphere_located):
    assert sphere_located.unobserved_fraction[3] > 0.97  # azimuth 180
    for position in (2, 3, 4):  # azimuths 90, 150, 180
        hit, points = ray_cast_sphere(sphere.cameras, position, 0.4)
        back = hit & (points[..., 2] < -0.04)  # the anchor looks from +z
        assert back.sum() > 300
        assert sphere_located.unobserved[position - 1][back].mean() > 0.99


def test_a_target_at_the_anchors_pose_is_observed_in_place(sphere, sphere_located):
    assert sphere_located.unobserved_fraction[4] < 0.005
    observed = sphere_located.anchor_index[4] == 0
    assert observed.sum() > 0.99 * (sphere.alpha[5] > 0.5).sum()
    rows, cols = np.nonzero(observed)
    np.testing.assert_allclose(
        sphere_located.anchor_xy[4][observed], np.stack([cols, rows], 1) + 0.5, atol=1e-3
    )
    # Same pose, same render: every transferred pixel is the anchor's own colour.
    np.testing.assert_array_equal(sphere_located.transferred_rgb[4], sphere.rgb[0])


def test_sphere_results_follow_the_conventions(sphere, sphere_located):
    check_conventions(sphere_located, sphere, [1, 2, 3, 4, 5], EXACT)


def test_anchor_positions_match_the_exact_spheres_correspondence(sphere, sphere_located):
    # Where the exact sphere faces both cameras squarely, a target pixel's anchor position is where its
    # ray's hit point projects in the anchor (the renders' expected depth is biased towards the camera
    # on oblique surfaces, by about a pixel's width of slope, so grazing pixels are left out).
    cams, t = sphere.cameras, 1  # azimuth 30
    hit, points = ray_cast_sphere(cams, t, 0.4)

    def facing(view):
        to_camera = cams.positions[view] - points
        to_camera /= np.linalg.norm(to_camera, axis=-1, keepdims=True)
        return np.einsum("hwc,hwc->hw", to_camera, points / 0.4)

    square = hit & (facing(t) > 0.7) & (facing(0) > 0.7)
    assert square.sum() > 500
    assert (sphere_located.anchor_index[t - 1][square] == 0).all()
    expected, _ = project_points(cams[[0]], points[square])
    error = np.linalg.norm(sphere_located.anchor_xy[t - 1][square] - expected[0], axis=1)
    assert np.median(error) < 0.4 and error.max() < 1.0


# -- occlusion ------------------------------------------------------------------------------------------


def test_a_point_hidden_from_the_anchor_is_unobserved(backend):
    # A small red sphere right behind a big green one, seen from the anchor (+z); the target (+x) sees
    # both side by side.
    front = sphere_gaussians(12_000, 0.2, (0.0, 0.0, 0.25), colour=(0.1, 0.9, 0.1))
    back = sphere_gaussians(6_000, 0.12, (0.0, 0.0, -0.3), colour=RED)

    def red_pixels_unobserved(gaussians):
        views = orbit_views(gaussians, [0, 90])
        located = backend.locate_unobserved(views, [1], [0], EXACT)
        rgb = views.rgb[1].astype(int)
        red = (views.alpha[1] > 0.5) & (rgb[..., 0] > rgb[..., 1] + 60)
        assert red.sum() > 200
        return located.unobserved[0][red].mean()

    assert red_pixels_unobserved(merge(front, back)) == 1.0
    # Alone, the small sphere's front is observed: it is the occluder that hides it.
    assert red_pixels_unobserved(back) < 0.6


# -- appearance transfer ------------------------------------------------------------------------------


def test_observed_pixels_take_the_anchors_appearance(backend, sphere):
    # Recolour the anchor view (red <-> blue): observed target pixels must follow their surface point's
    # colour in the anchor, unobserved ones keep the target's own.
    views = sphere.select([0, 1])  # anchor at 0, target at 30: both see some red and some blue
    swapped = views.rgb.copy()
    swapped[0] = views.rgb[0][..., ::-1]
    views = Views(swapped, views.alpha, views.depth, views.cameras)
    located = backend.locate_unobserved(views, [1], [0], LocateOptions())
    check_conventions(located, views, [1], LocateOptions())
    target, out = views.rgb[1].astype(int), located.transferred_rgb[0].astype(int)
    observed = located.anchor_index[0] == 0
    was_red = observed & (target[..., 0] > target[..., 2] + 100)
    was_blue = observed & (target[..., 2] > target[..., 0] + 100)
    assert was_red.sum() > 100 and was_blue.sum() > 100
    # Bilinear samples blend the two colours near the seam; away from it they are swapped.
    assert (out[was_red][:, 2] > out[was_red][:, 0]).mean() > 0.95
    assert (out[was_blue][:, 0] > out[was_blue][:, 2]).mean() > 0.95
    unobserved = located.unobserved[0]
    assert unobserved.sum() > 100
    np.testing.assert_array_equal(out[unobserved], target[unobserved])


def test_samples_never_mix_in_the_anchors_background(backend, sphere):
    # Paint the anchor's foreground one flat colour over a black background: every observed pixel,
    # including those near the anchor's silhouette, must get exactly that colour.
    views = sphere.select([0, 1])
    rgb = views.rgb.copy()
    rgb[0] = np.where((views.alpha[0] > 0.5)[..., None], np.uint8([10, 200, 30]), np.uint8(0))
    views = Views(rgb, views.alpha, views.depth, views.cameras)
    located = backend.locate_unobserved(views, [1], [0], EXACT)
    observed = located.anchor_index[0] == 0
    assert observed.sum() > 2000
    assert (located.transferred_rgb[0][observed] == [10, 200, 30]).all()


def test_transfer_off_returns_the_target_rgb(backend, sphere):
    options = LocateOptions(transfer_appearance=False)
    located = backend.locate_unobserved(sphere, [1, 2], [0], options)
    np.testing.assert_array_equal(located.transferred_rgb, sphere.rgb[[1, 2]])
    assert (located.anchor_index >= 0).any()


# -- anchor choice --------------------------------------------------------------------------------------


def test_the_nearest_anchor_wins_whatever_the_order(backend, sphere):
    # Target at 30; anchors at 0 (30 degrees away) and 90 (60 away).
    first = backend.locate_unobserved(sphere, [1], [0, 2], EXACT)
    swapped = backend.locate_unobserved(sphere, [1], [2, 0], EXACT)
    np.testing.assert_array_equal(first.anchor_index, swapped.anchor_index)
    only_near = backend.locate_unobserved(sphere, [1], [0], EXACT)
    by_near = first.anchor_index[0] == 0
    # Wherever the near anchor sees a pixel it is chosen, at the same position ...
    np.testing.assert_array_equal(by_near, only_near.anchor_index[0] == 0)
    np.testing.assert_array_equal(first.anchor_xy[0][by_near], only_near.anchor_xy[0][by_near])
    # ... and the far anchor fills in some of what the near one misses.
    assert (first.anchor_index[0] == 2).sum() > 50
    assert first.unobserved_fraction[0] < only_near.unobserved_fraction[0]


def test_equally_near_anchors_go_by_their_order():
    alphas = np.ones((3, 16, 16), np.float32)  # three views of one pose
    views = plane_views(alphas)
    backend = GeometricBackend()
    assert (backend.locate_unobserved(views, [0], [2, 1], EXACT).anchor_index == 2).all()
    assert (backend.locate_unobserved(views, [0], [1, 2], EXACT).anchor_index == 1).all()


# -- the mask: small regions, dilation, conventions ---------------------------------------------------


@pytest.fixture(scope="module")
def holes():
    """A target and an anchor of one pose seeing a plane; the anchor misses four holes of the target's
    foreground (rows/cols 2..29 of 32): 1, 4 and 25 pixels inside, and 9 on the foreground's top edge."""
    alphas = np.zeros((2, 32, 32), np.float32)
    alphas[:, 2:30, 2:30] = 1.0
    alphas[1, 5, 5] = 0.0
    alphas[1, 10:12, 10:12] = 0.0
    alphas[1, 18:23, 18:23] = 0.0
    alphas[1, 2:5, 25:28] = 0.0
    return plane_views(alphas)


def hole_masks():
    masks = {}
    for name, (rows, cols) in {
        "one": (slice(5, 6), slice(5, 6)),
        "four": (slice(10, 12), slice(10, 12)),
        "big": (slice(18, 23), slice(18, 23)),
        "edge": (slice(2, 5), slice(25, 28)),
    }.items():
        mask = np.zeros((32, 32), bool)
        mask[rows, cols] = True
        masks[name] = mask
    return masks


def test_holes_are_found_exactly(holes):
    located = GeometricBackend().locate_unobserved(holes, [0], [1], EXACT)
    masks = hole_masks()
    np.testing.assert_array_equal(located.unobserved[0], np.logical_or.reduce(list(masks.values())))
    assert located.unobserved_fraction[0] == pytest.approx(39 / 784)
    observed = located.anchor_index[0] == 1
    rows, cols = np.nonzero(observed)
    np.testing.assert_allclose(located.anchor_xy[0][observed], np.stack([cols, rows], 1) + 0.5, atol=1e-4)
    np.testing.assert_array_equal(located.transferred_rgb[0], holes.rgb[0])
    check_conventions(located, holes, [0], EXACT)


@pytest.mark.parametrize(
    ("min_region", "kept"), [(0, ["one", "four", "big", "edge"]), (4, ["four", "big", "edge"]), (10, ["big"])]
)
def test_small_regions_are_dropped(holes, min_region, kept):
    options = LocateOptions(min_region_pixels=min_region, dilation_pixels=0)
    located = GeometricBackend().locate_unobserved(holes, [0], [1], options)
    masks = hole_masks()
    np.testing.assert_array_equal(located.unobserved[0], np.logical_or.reduce([masks[k] for k in kept]))
    # Dropped regions are not unobserved, yet no anchor sees them: they keep their own colour.
    for name in set(masks) - set(kept):
        assert (located.anchor_index[0][masks[name]] == -1).all()
    check_conventions(located, holes, [0], options)


def test_dilation_grows_the_mask_only_within_the_foreground(holes):
    options = LocateOptions(min_region_pixels=5, dilation_pixels=2)
    located = GeometricBackend().locate_unobserved(holes, [0], [1], options)
    check_conventions(located, holes, [0], options)
    masks, mask = hole_masks(), located.unobserved[0]
    foreground = holes.alpha[0] > 0.5
    assert mask[masks["big"] | masks["edge"]].all()
    assert not mask[masks["one"] | masks["four"]].any()  # dropped regions stay dropped
    # The 5 x 5 hole grows by OpenCV's 5 x 5 ellipse (a plus of width 5 and a 5 x 3 bar): its 9 x 9 box
    # without the 2 outermost pixels of each corner's top or bottom row.
    around_big = mask[16:25, 16:25]
    assert (
        around_big.sum() == 81 - 4 * 2
        and not around_big[0, :2].any()
        and not mask[15, :].any()
        and not mask[:, 15].any()
    )
    # The edge hole grows to the side and down, never onto the background above it.
    assert not (mask & ~foreground).any()
    assert mask[2:7, 25:28].all() and mask[2:5, 23:30].all()
    # Dilated pixels lose their anchor and keep the target's colour.
    grown = mask & ~(masks["big"] | masks["edge"])
    assert grown.sum() > 40
    assert (located.anchor_index[0][grown] == -1).all() and np.isnan(located.anchor_xy[0][grown]).all()


def test_no_foreground_gives_a_zero_fraction():
    alphas = np.zeros((2, 8, 8), np.float32)
    alphas[1, 2:6, 2:6] = 1.0
    located = GeometricBackend().locate_unobserved(plane_views(alphas), [0], [1], LocateOptions())
    assert located.unobserved_fraction.tolist() == [0.0]
    assert not located.unobserved.any() and (located.anchor_index == -1).all()


def test_results_are_deterministic(backend, sphere):
    one = backend.locate_unobserved(sphere, [2, 1], [0], LocateOptions())
    two = backend.locate_unobserved(sphere, [2, 1], [0], LocateOptions())
    for name in ("unobserved", "anchor_index", "anchor_xy", "transferred_rgb", "unobserved_fraction"):
        np.testing.assert_array_equal(getattr(one, name), getattr(two, name))


# -- Track ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orbit():
    return orbit_views(sphere_gaussians(), [0, 30, 60, -30, 180, 220])


def surface_point(azimuth_deg: float, height: float) -> np.ndarray:
    """A point of the radius-0.4 sphere, nearly facing the camera at ``azimuth_deg``."""
    az = np.deg2rad(azimuth_deg)
    direction = np.array([np.sin(az) + 0.12, height, np.cos(az)])
    return 0.4 * direction / np.linalg.norm(direction)


def test_tracks_of_static_points_match_their_projections(backend, orbit):
    points = np.stack([surface_point(0, -0.1), surface_point(30, 0.15)])
    pixels, _ = project_points(orbit.cameras, points)  # [T, 2, 2]
    queries = np.array([[0, *pixels[0, 0]], [1, *pixels[1, 1]]], np.float32)  # sub-pixel positions
    tracks, visibility = backend.track(orbit, queries, backward=True)
    assert tracks.shape == (6, 2, 2) and tracks.dtype == np.float32
    assert visibility.shape == (6, 2) and visibility.dtype == np.bool_
    # Visible exactly where the point faces the camera: c . p > r^2 (well away from grazing here).
    facing = orbit.cameras.positions.astype(np.float64) @ points.T / 0.4**2
    assert ((facing > 1.3) | (facing < 0.7)).all()
    np.testing.assert_array_equal(visibility, facing > 1)
    error = np.linalg.norm(tracks - pixels, axis=-1)
    assert error[visibility].max() < 0.5, error
    # Behind the sphere the tracks still follow the point (as through an occlusion).
    assert visibility[4:].sum() == 0 and np.isfinite(tracks[4:]).all()


def test_track_conventions(backend, orbit):
    queries = np.array(
        [
            [2, 48.5, 48.5],  # the middle of frame 2: on the sphere
            [2, 2.5, 3.25],  # a corner: background
            [0, 47.0, 47.0],  # frame 0
        ],
        np.float32,
    )
    tracks, visibility = backend.track(orbit, queries, backward=False)
    # In its own frame a query is where it was asked, visible iff it lies on the foreground.
    np.testing.assert_array_equal(tracks[2, :2], queries[:2, 1:])
    np.testing.assert_array_equal(tracks[0, 2], queries[2, 1:])
    assert visibility[2, 0] and not visibility[2, 1] and visibility[0, 2]
    # Without backward tracking, frames before the query's frame are undefined.
    assert np.isnan(tracks[:2, 0]).all() and not visibility[:2, 0].any()
    assert np.isfinite(tracks[3:, 0]).all() and np.isfinite(tracks[1:, 2]).all()
    # A background query has no 3D point: undefined in every other frame.
    others = [0, 1, 3, 4, 5]
    assert np.isnan(tracks[others, 1]).all() and not visibility[:, 1].any()
    # Backward tracking fills the earlier frames and changes nothing else.
    back_tracks, back_visibility = backend.track(orbit, queries, backward=True)
    assert np.isfinite(back_tracks[:2, 0]).all() and back_visibility[1, 0]
    np.testing.assert_array_equal(back_tracks[2:, 0], tracks[2:, 0])
    np.testing.assert_array_equal(back_visibility[2:], visibility[2:])


def test_track_agrees_with_locate(backend, sphere):
    # Track, from a target's foreground pixel centres to the anchor, is LocateUnobserved's test.
    located = backend.locate_unobserved(sphere, [2], [0], EXACT)
    rows, cols = np.nonzero(sphere.alpha[2] > 0.5)
    queries = np.stack([np.full(rows.size, 2), cols + 0.5, rows + 0.5], 1).astype(np.float32)
    tracks, visibility = backend.track(sphere.select([0, 1, 2]), queries, backward=True)
    np.testing.assert_array_equal(visibility[0], located.anchor_index[0][rows, cols] == 0)
    seen = visibility[0]
    np.testing.assert_array_equal(tracks[0][seen], located.anchor_xy[0][rows, cols][seen])


# -- geometry helpers -------------------------------------------------------------------------------------


def test_footprint_tests_coverage_depth_and_bounds():
    alpha = np.zeros((4, 4), np.float32)
    alpha[1:3, 1:3] = 1.0
    depth = np.where(alpha > 0, 2.0, 0.0).astype(np.float32)
    xy = np.array(
        [
            [1.5, 1.5],  # a pixel centre: reads only that pixel
            [0.5, 0.5],  # a background pixel centre
            [1.0, 1.0],  # between 4 pixels, one of them foreground
            [1.5, 1.5],  # depth disagrees
            [4.0, 1.5],  # right of the image
            [np.nan, np.nan],  # not projectable
        ]
    )
    z = np.array([2.05, 2.0, 2.0, 2.1, 2.0, 2.0])
    fp = footprint(alpha, depth, xy, z, 0.5, 0.03)
    assert isinstance(fp, Footprint)
    assert fp.visible.tolist() == [True, False, True, False, False, False]
    assert fp.kept[0].tolist() == [True, False, False, False]
    np.testing.assert_allclose(fp.weights.sum(axis=1), 1.0)
    np.testing.assert_allclose(fp.sample_weights()[2], [0, 0, 0, 1])


def test_sample_depth_is_exact_at_pixel_centres_and_stays_on_the_surface():
    alpha = np.zeros((3, 3), np.float32)
    alpha[:, :2] = 1.0
    depth = np.array([[1.0, 1.02, 0.0], [1.0, 1.02, 0.0], [5.0, 5.0, 0.0]], np.float32)
    xy = np.array([[0.5, 0.5], [1.0, 0.5], [1.0, 1.0], [1.9, 0.5], [2.5, 0.5], [1.0, 1.9]])
    z = sample_depth(alpha, depth, xy, 0.5, 0.03)
    np.testing.assert_allclose(z[:3], [1.0, 1.01, 1.01], rtol=1e-6)
    assert z[3] == pytest.approx(1.02)  # the background column is not averaged in
    assert np.isnan(z[4])  # on the background
    assert z[5] == pytest.approx(1.01)  # the far surface below (depth 5) is not averaged in


def test_unknown_backend_is_a_config_error():
    assert make_backend("geometric").name == "geometric"
    with pytest.raises(ConfigError, match=r"'optical-flow'.*geometric"):
        make_backend("optical-flow")
