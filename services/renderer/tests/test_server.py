"""The renderer servicer in-process, over the in-memory store: values, shapes and request validation."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tire.v1 import common_pb2, renderer_pb2

from services.common.cameras import cameras_from_proto, cameras_to_proto, orbit_cameras
from services.common.errors import IntegrityError, InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.gaussians import random_gaussians, read_ply, write_ply
from services.common.store import MemoryStore
from services.common.tensors import get_tensor
from services.renderer.backends import CpuBackend
from services.renderer.server import RendererServicer, RendererSettings

MONKEY = Path(__file__).parents[3] / "samples" / "monkey_lgm.ply"


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    return RendererServicer(CpuBackend(), store, RendererSettings(max_views=8, max_pixels=8 * 64 * 64))


@pytest.fixture
def monkey_ref(store):
    return store.put_bytes(MONKEY.read_bytes(), suffix=".ply", media_type="application/x-ply")


def orbit_request(*frames, azimuths=(0, 90, 180), resolution=64, center=(), **kwargs):
    return renderer_pb2.RenderRequest(
        asset=common_pb2.AssetRef(frames=list(frames)),
        orbit=common_pb2.Orbit(azimuths_deg=list(azimuths), resolution=resolution, center=list(center)),
        **kwargs,
    )


def test_render_writes_views_of_the_asset(servicer, store, monkey_ref):
    reply = servicer.Render(orbit_request(monkey_ref, write_previews=True), None)
    rgb = get_tensor(store, reply.views.rgb, dtype=np.uint8, shape=(3, 64, 64, 3))
    alpha = get_tensor(store, reply.views.alpha, dtype=np.float32, shape=(3, 64, 64))
    depth = get_tensor(store, reply.views.depth, dtype=np.float32, shape=(3, 64, 64))
    assert reply.num_gaussians == 36_295 and reply.backend == "cpu" and reply.render_seconds > 0
    assert len(reply.views.rgb.preview_uris) == 3
    # The monkey fills most of the middle of every view (the side view shows gaps by the arm),
    # in front of the origin's depth (the orbit radius, 1.5), and none of the corners.
    assert (alpha[:, 24:40, 24:40].mean(axis=(1, 2)) > 0.6).all()
    assert alpha[0, 32, 32] > 0.99
    assert (alpha[:, :4, :4] < 0.01).all()
    covered = alpha > 0.5
    assert ((depth[covered] > 0.9) & (depth[covered] < 2.1)).all()
    assert depth[0, 32, 32] < 1.5 - 0.3  # the face is in front of the origin
    assert (depth[alpha == 0] == 0).all()
    # Black background: no colour where there is no coverage.
    assert rgb[alpha == 0].max() == 0
    # The returned cameras are the orbit's.
    np.testing.assert_allclose(
        cameras_from_proto(reply.views.cameras).viewmats, orbit_cameras([0, 90, 180], 64, 64).viewmats
    )


def test_render_matches_the_backend_and_background(servicer, store, monkey_ref):
    cams = orbit_cameras([30.0, 200.0], 48, 40, elevation_deg=-20.0)
    request = renderer_pb2.RenderRequest(
        asset=common_pb2.AssetRef(frames=[monkey_ref]),
        cameras=cameras_to_proto(cams),
        background_rgb=[1, 1, 1],
    )
    reply = servicer.Render(request, None)
    expected = CpuBackend().render(read_ply(MONKEY), cams, np.ones(3, np.float32))
    rgb = get_tensor(store, reply.views.rgb)
    np.testing.assert_array_equal(rgb, np.clip(np.rint(expected.rgb * 255), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(get_tensor(store, reply.views.alpha), expected.alpha)
    assert rgb[0, 0, 0].tolist() == [255, 255, 255]
    assert list(reply.views.background_rgb) == [1.0, 1.0, 1.0]  # the views name it for the next stages


def test_an_orbit_centre_moves_the_view_with_it(servicer, store, monkey_ref):
    monkey = read_ply(MONKEY)
    shift = np.array([0.6, -0.3, 0.9], np.float32)
    moved = dataclasses.replace(monkey, means=monkey.means + shift)
    moved_ref = store.put_bytes(write_ply(moved), suffix=".ply")

    def alpha(ref, **orbit):
        request = orbit_request(ref, azimuths=(0, 120), **orbit)
        return get_tensor(store, servicer.Render(request, None).views.alpha)

    at_origin = alpha(monkey_ref)
    # The moved monkey seen from an orbit around the point it moved to looks as the monkey at the origin.
    np.testing.assert_allclose(alpha(moved_ref, center=shift.tolist()), at_origin, atol=2e-3)
    # Around the origin it has moved off-centre: part of it has left the frame.
    assert np.abs(alpha(moved_ref) - at_origin).mean() > 0.1


def test_render_picks_the_time_step_of_a_4d_asset(servicer, store):
    frames = [store.put_bytes(write_ply(random_gaussians(n, seed=n)), suffix=".ply") for n in (100, 200, 300)]
    reply = servicer.Render(orbit_request(*frames, time_step=2), None)
    assert reply.num_gaussians == 300


def test_describe_names_backend_and_limits(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.RendererService"
    assert info.backend == "cpu" and info.device.startswith("cpu")
    assert set(info.available_backends) == {"cpu", "gsplat"}
    assert info.settings["max_views"] == "8"


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda ref: renderer_pb2.RenderRequest(asset=common_pb2.AssetRef(frames=[ref])), "views"),
        (lambda ref: orbit_request(), "asset.frames"),
        (lambda ref: orbit_request(ref, time_step=1), "time_step"),
        (lambda ref: orbit_request(ref, background_rgb=[1, 0]), "background_rgb"),
        (lambda ref: orbit_request(ref, background_rgb=[0, 2, 0]), "background_rgb"),
        (lambda ref: orbit_request(ref, background_rgb=[0, float("nan"), 0]), "background_rgb"),
        (lambda ref: orbit_request(ref, resolution=0), "orbit.resolution"),
        (lambda ref: orbit_request(ref, center=(1.0, 2.0)), "orbit.center"),
        (lambda ref: orbit_request(common_pb2.ObjectRef()), "asset.frames[0].uri"),
    ],
)
def test_bad_requests_name_the_field(servicer, monkey_ref, build, field):
    with pytest.raises(InvalidArgument) as info:
        servicer.Render(build(monkey_ref), None)
    assert info.value.field == field


def test_malformed_ply_is_an_invalid_argument_naming_the_frame(servicer, store):
    ref = store.put_bytes(
        b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nend_header\n", suffix=".ply"
    )
    with pytest.raises(InvalidArgument, match=r"`asset.frames\[0\]` is not a splat file this reads"):
        servicer.Render(orbit_request(ref), None)


def test_truncated_ply_is_an_invalid_argument(servicer, store):
    ref = store.put_bytes(MONKEY.read_bytes()[:50_000], suffix=".ply")
    with pytest.raises(InvalidArgument, match="truncated"):
        servicer.Render(orbit_request(ref), None)


def test_missing_and_tampered_objects(servicer, monkey_ref):
    missing = common_pb2.ObjectRef(uri=monkey_ref.uri.replace("sha256/", "sha256/00"))
    with pytest.raises(ObjectNotFound):
        servicer.Render(orbit_request(missing), None)
    wrong_hash = common_pb2.ObjectRef(uri=monkey_ref.uri, sha256="0" * 64)
    with pytest.raises(IntegrityError):
        servicer.Render(orbit_request(wrong_hash), None)


def test_requests_over_the_view_or_pixel_limits_are_resource_exhausted(servicer, monkey_ref):
    with pytest.raises(ResourceExhausted, match="pixels"):
        servicer.Render(orbit_request(monkey_ref, azimuths=(0, 90), resolution=200), None)
    with pytest.raises(ResourceExhausted, match=r"`orbit` holds 9 views, over this service's limit of 8"):
        servicer.Render(orbit_request(monkey_ref, azimuths=range(9)), None)
