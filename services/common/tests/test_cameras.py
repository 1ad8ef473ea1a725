"""Pin the camera convention: which pixel a known 3D point lands on from azimuth 0, 90 and 180."""

import numpy as np
import pytest
from tire.v1 import common_pb2

from services.common.cameras import (
    cameras_from_orbit,
    cameras_from_proto,
    cameras_to_proto,
    intrinsics,
    orbit_cameras,
    orbit_center,
    project,
    project_points,
    unproject,
)
from services.common.errors import InvalidArgument

W, H = 256, 192
FOCAL = 0.5 * H / np.tan(np.deg2rad(49.1) / 2)


def land(azimuth, point, elevation=0.0):
    pixels, depth = project_points(orbit_cameras([azimuth], W, H, elevation), np.array([point]))
    return pixels[0, 0], depth[0, 0]


def test_intrinsics_are_centred_with_square_pixels():
    K = intrinsics(W, H)
    assert K[0, 0] == K[1, 1] == pytest.approx(FOCAL)
    assert (K[0, 2], K[1, 2]) == (W / 2, H / 2)


def test_origin_lands_on_the_image_centre_at_the_orbit_radius():
    for az in (0, 37, 90, 180, 275):
        (x, y), z = land(az, (0.0, 0.0, 0.0))
        assert (x, y, z) == pytest.approx((W / 2, H / 2, 1.5))


def test_azimuth_0_looks_from_plus_z_with_plus_x_right_and_plus_y_up():
    (x, y), z = land(0, (0.1, 0.0, 0.0))
    assert (x, y, z) == pytest.approx((W / 2 + FOCAL * 0.1 / 1.5, H / 2, 1.5))
    (x, y), _ = land(0, (0.0, 0.1, 0.0))
    assert (x, y) == pytest.approx((W / 2, H / 2 - FOCAL * 0.1 / 1.5))  # image y points down
    _, z = land(0, (0.0, 0.0, 0.3))
    assert z == pytest.approx(1.2)  # the front (+z) faces the camera


def test_azimuth_90_looks_from_plus_x_with_plus_z_left():
    (x, y), z = land(90, (0.0, 0.0, 0.1))
    assert (x, y, z) == pytest.approx((W / 2 - FOCAL * 0.1 / 1.5, H / 2, 1.5))
    _, z = land(90, (0.3, 0.0, 0.0))
    assert z == pytest.approx(1.2)


def test_azimuth_180_looks_from_minus_z_with_plus_x_left():
    (x, y), z = land(180, (0.1, 0.0, 0.0))
    assert (x, y, z) == pytest.approx((W / 2 - FOCAL * 0.1 / 1.5, H / 2, 1.5))
    _, z = land(180, (0.0, 0.0, -0.3))
    assert z == pytest.approx(1.2)


def test_negative_elevation_is_above_the_object():
    cams = orbit_cameras([0.0], W, H, elevation_deg=-30.0)
    assert cams.positions[0] == pytest.approx(
        (0.0, 1.5 * np.sin(np.deg2rad(30)), 1.5 * np.cos(np.deg2rad(30))), abs=1e-6
    )
    (x, y), _ = land(0, (0.0, 0.0, 0.0), elevation=-30.0)
    assert (x, y) == pytest.approx((W / 2, H / 2))


def test_viewmats_are_rigid_and_positions_on_the_orbit():
    cams = orbit_cameras(np.arange(0, 360, 45), W, H, elevation_deg=15.0, radius=2.0)
    rot = cams.viewmats[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-6)
    assert np.allclose(np.linalg.det(rot), 1.0, atol=1e-6)
    assert np.allclose(np.linalg.norm(cams.positions, axis=1), 2.0, atol=1e-5)


def test_a_centred_orbit_is_the_origin_orbit_translated():
    center = np.array([0.4, -0.2, 1.1])
    at_origin = orbit_cameras([0, 37, 90, 200], W, H, elevation_deg=-20.0, radius=0.8)
    moved = orbit_cameras([0, 37, 90, 200], W, H, elevation_deg=-20.0, radius=0.8, center=center)
    assert moved.positions == pytest.approx(at_origin.positions + center, abs=1e-5)
    np.testing.assert_allclose(moved.viewmats[:, :3, :3], at_origin.viewmats[:, :3, :3], atol=1e-6)
    # The centre lands on the image centre at the orbit radius, as the origin does without one.
    pixels, depth = project_points(moved, center[None])
    assert pixels[:, 0] == pytest.approx(np.tile([W / 2, H / 2], (4, 1)), abs=1e-3)
    assert depth[:, 0] == pytest.approx(0.8, abs=1e-5)
    # A point beside the centre lands where the same offset from the origin does.
    offset = np.array([[0.05, 0.1, -0.02]])
    np.testing.assert_allclose(
        project_points(moved, center + offset)[0], project_points(at_origin, offset)[0], atol=1e-3
    )


def test_orbit_message_centre():
    orbit = common_pb2.Orbit(azimuths_deg=[0, 90], resolution=64, radius=0.5, center=[1.0, 2.0, 3.0])
    cams = cameras_from_orbit(orbit)
    np.testing.assert_allclose(cams.positions, [[1.0, 2.0, 3.5], [1.5, 2.0, 3.0]], atol=1e-5)
    assert orbit_center([]) == pytest.approx([0.0, 0.0, 0.0])  # empty: the origin


def test_proto_round_trip_and_selection():
    cams = orbit_cameras([0, 90, 200], W, H, elevation_deg=-10.0)
    back = cameras_from_proto(cameras_to_proto(cams))
    assert (back.width, back.height) == (W, H)
    np.testing.assert_array_equal(back.viewmats, cams.viewmats)
    np.testing.assert_array_equal(back.Ks, cams.Ks)
    assert len(cams[1:]) == 2 and np.array_equal(cams[2].viewmats[0], cams.viewmats[2])


def test_orbit_message_uses_defaults_for_zero_radius_and_fov():
    cams = cameras_from_orbit(common_pb2.Orbit(azimuths_deg=[0, 90], resolution=64))
    ref = orbit_cameras([0, 90], 64, 64)
    np.testing.assert_allclose(cams.viewmats, ref.viewmats)
    np.testing.assert_allclose(cams.Ks, ref.Ks)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: setattr(m, "width", 0), "cameras.width"),
        (lambda m: setattr(m, "height", 5000), "cameras.height"),
        (lambda m: m.ClearField("cameras"), "cameras.cameras"),
        (lambda m: m.cameras[1].world_to_camera.pop(), "cameras.cameras[1].world_to_camera"),
        (
            lambda m: m.cameras[0].world_to_camera.__setitem__(3, float("nan")),
            "cameras.cameras[0].world_to_camera",
        ),
        (lambda m: m.cameras[0].world_to_camera.__setitem__(0, 2.0), "cameras.cameras[0].world_to_camera"),
        (lambda m: m.cameras[0].world_to_camera.__setitem__(12, 1.0), "cameras.cameras[0].world_to_camera"),
        (lambda m: setattr(m.cameras[1].intrinsics, "fx", -1.0), "cameras.cameras[1].intrinsics"),
    ],
)
def test_bad_camera_sets_name_the_field(mutate, field):
    message = cameras_to_proto(orbit_cameras([0, 90], 64, 64))
    mutate(message)
    with pytest.raises(InvalidArgument) as info:
        cameras_from_proto(message)
    assert info.value.field == field
    assert f"`{field}`" in str(info.value)


@pytest.mark.parametrize(
    ("orbit", "field"),
    [
        (common_pb2.Orbit(azimuths_deg=[0], resolution=0), "orbit.resolution"),
        (common_pb2.Orbit(resolution=64), "orbit.azimuths_deg"),
        (common_pb2.Orbit(azimuths_deg=[float("inf")], resolution=64), "orbit.azimuths_deg"),
        (common_pb2.Orbit(azimuths_deg=[0], resolution=64, elevation_deg=95), "orbit.elevation_deg"),
        (common_pb2.Orbit(azimuths_deg=[0], resolution=64, radius=-1), "orbit.radius"),
        (common_pb2.Orbit(azimuths_deg=[0], resolution=64, fovy_deg=180), "orbit.fovy_deg"),
        (common_pb2.Orbit(azimuths_deg=[0], resolution=64, center=[0.0, 1.0]), "orbit.center"),
        (common_pb2.Orbit(azimuths_deg=[0], resolution=64, center=[0, float("nan"), 0]), "orbit.center"),
    ],
)
def test_bad_orbits_name_the_field(orbit, field):
    with pytest.raises(InvalidArgument, match=rf"`{field}`"):
        cameras_from_orbit(orbit)


def test_project_is_the_pinhole_model_and_unproject_inverts_it():
    cams = orbit_cameras([0.0, 75.0, 200.0], 64, 48, elevation_deg=-20.0)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, size=(100, 3))
    pixels, depth = project_points(cams, points)
    for v in range(len(cams)):
        camera = points @ cams.viewmats[v, :3, :3].T.astype(np.float64) + cams.viewmats[v, :3, 3]
        uvw = camera @ cams.Ks[v].T.astype(np.float64)  # homogeneous pixel coordinates
        np.testing.assert_allclose(pixels[v], uvw[:, :2] / uvw[:, 2:], atol=1e-9)
        np.testing.assert_allclose(depth[v], camera[:, 2], atol=1e-12)
        xy, z = project(cams.viewmats[v], cams.Ks[v], points)
        np.testing.assert_array_equal(xy, pixels[v])
        np.testing.assert_allclose(unproject(cams.viewmats[v], cams.Ks[v], xy, z), points, atol=1e-6)


def test_project_gives_no_position_to_points_at_or_behind_the_near_plane():
    cams = orbit_cameras([0.0], 32, 32)  # at z = 1.5, looking at the origin
    points = np.array([[0.0, 0.0, 3.0], [0.0, 0.0, 1.495], [0.0, 0.0, 0.0]])
    xy, z = project(cams.viewmats[0], cams.Ks[0], points, near=0.01)
    assert np.isnan(xy[:2]).all() and z[0] < 0 < z[1] <= 0.01
    np.testing.assert_allclose(xy[2], [16.0, 16.0])  # the origin, at the image centre
    assert np.isfinite(project(cams.viewmats[0], cams.Ks[0], points)[0]).all()  # no near plane: all kept
