"""The reconstructor as a real process: the S3 server and the reconstructor on loopback, called through
the stub."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tire.v1 import common_pb2, reconstructor_pb2, reconstructor_pb2_grpc

from services.common.assets import store_frame
from services.common.cameras import orbit_cameras
from services.common.clients import dial
from services.common.gaussians import random_gaussians, read_ply, recolour, write_ply
from services.common.rasterizer import rasterize
from services.common.views import Views, write_views
from services.reconstructor.backends import ColourSolveBackend
from services.reconstructor.contract import SolveOptions

GEOMETRY = ("means", "log_scales", "quats", "opacity_logits")


@pytest.fixture(scope="module")
def reconstructor(launch_service):
    return launch_service(
        "services.reconstructor.server", "TIRE_RECONSTRUCTOR_", {"TIRE_RECONSTRUCTOR_BACKEND": "colour-solve"}
    )


@pytest.fixture(scope="module")
def stub(reconstructor):
    channel = dial(reconstructor.target)
    yield reconstructor_pb2_grpc.ReconstructorServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def scene():
    """(views of an asset over white, a copy of the asset with random colours)."""
    truth = read_ply(write_ply(random_gaussians(2000, seed=5)))
    cameras = orbit_cameras(np.arange(0, 360, 45), 64, 64, elevation_deg=-10.0)
    render = rasterize(truth, cameras, (1.0, 1.0, 1.0))
    rgb = np.clip(np.rint(render.rgb * 255), 0, 255).astype(np.uint8)
    colours = np.random.default_rng(1).uniform(size=(len(truth), 3))
    return Views(rgb, render.alpha, render.depth, cameras), recolour(truth, colours)


def request_for(store, scene, **kwargs):
    views, initial = scene
    return reconstructor_pb2.ReconstructRequest(
        views=write_views(store, views),
        initial=common_pb2.AssetRef(frames=[store_frame(store, initial)]),
        **kwargs,
    )


def test_health_is_serving(reconstructor):
    channel = dial(reconstructor.target)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tire.v1.ReconstructorService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_describe(stub):
    info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
    assert (info.service, info.backend) == ("tire.v1.ReconstructorService", "colour-solve")
    assert info.settings["contributors"] == "8"


def test_reconstruct_through_the_stub_matches_an_in_process_call(stub, store, scene):
    views, initial = scene
    reply = stub.Reconstruct(request_for(store, scene), timeout=120)
    fitted = read_ply(store.get_bytes(reply.ply.uri, sha256=reply.ply.sha256))
    for name in GEOMETRY:
        assert getattr(fitted, name).tobytes() == getattr(initial, name).tobytes()
    assert 0 < reply.rms_error < 0.02 and 0 < reply.iterations <= 200

    local = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert store.get_bytes(reply.ply.uri) == write_ply(local.gaussians)
    assert reply.rms_error == pytest.approx(local.rms_error, rel=1e-6)
    assert reply.iterations == local.iterations


def test_missing_alpha_is_invalid_argument_naming_the_field(stub, store, scene):
    request = request_for(store, scene)
    request.views.ClearField("alpha")
    with pytest.raises(grpc.RpcError) as info:
        stub.Reconstruct(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`views.alpha`" in info.value.details()


def test_zero_max_iterations_is_invalid_argument(stub, store, scene):
    request = request_for(store, scene, options=reconstructor_pb2.ReconstructOptions(max_iterations=0))
    with pytest.raises(grpc.RpcError) as info:
        stub.Reconstruct(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`options.max_iterations`" in info.value.details()


def test_missing_initial_object_is_not_found(stub, store, scene):
    request = request_for(store, scene)
    request.initial.frames[0].uri = store.uri_for("sha256/00/" + "0" * 64 + ".ply")
    request.initial.frames[0].sha256 = ""
    with pytest.raises(grpc.RpcError) as info:
        stub.Reconstruct(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
