"""The refiner as a real process: the S3 server and the refiner on loopback, called through the stub."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tire.v1 import common_pb2, refiner_pb2, refiner_pb2_grpc

from services.common.assets import store_frame
from services.common.clients import dial
from services.common.tensors import get_tensor, put_tensor
from services.common.views import write_views
from services.refiner.backends import ConsensusBackend
from services.refiner.tests.scenes import card, orbit_views, tint

SIZE = 64


@pytest.fixture(scope="module")
def refiner(launch_service):
    return launch_service("services.refiner.server", "TIRE_REFINER_", {"TIRE_REFINER_BACKEND": "consensus"})


@pytest.fixture(scope="module")
def stub(refiner):
    channel = dial(refiner.target)
    yield refiner_pb2_grpc.RefinerServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def scene():
    """The card from azimuths 0, 30, -30, views 1 and 2 tinted red and blue; M = 1 but on the source."""
    gaussians = card()
    views = tint(tint(orbit_views(gaussians, size=SIZE), 1, (80, 0, 0)), 2, (0, 0, 80))
    mask = np.ones(views.alpha.shape, dtype=np.float32)
    mask[0] = 0.0
    return gaussians, views, mask


def refine_request(store, scene, **fields):
    gaussians, views, mask = scene
    return refiner_pb2.RefineRequest(
        views=write_views(store, views),
        update_mask=put_tensor(store, mask),
        asset=common_pb2.AssetRef(frames=[store_frame(store, gaussians)]),
        **fields,
    )


def test_health(refiner):
    channel = dial(refiner.target)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tire.v1.RefinerService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name)).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_describe(stub):
    info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
    assert (info.service, info.backend) == ("tire.v1.RefinerService", "consensus")
    assert info.device.startswith("cpu") and info.settings["contributors"] == "8"


def test_refine_through_the_stub_matches_an_in_process_refine(stub, store, scene):
    gaussians, views, mask = scene
    reply = stub.Refine(refine_request(store, scene, source_index=0, strength=0.6, seed=7), timeout=60)
    rgb = get_tensor(store, reply.rgb, dtype=np.uint8, shape=(3, SIZE, SIZE, 3))
    np.testing.assert_array_equal(rgb, ConsensusBackend().refine(views, mask, gaussians, 0, 0.6, 7))
    np.testing.assert_array_equal(rgb[0], views.rgb[0])  # the source view is held fixed
    assert len(reply.rgb.preview_uris) == 3


def test_wrong_mask_shape_is_invalid_argument_naming_the_field(stub, store, scene):
    request = refine_request(store, scene)
    request.update_mask.CopyFrom(put_tensor(store, np.ones((3, SIZE, SIZE - 1), np.float32)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Refine(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`update_mask`" in info.value.details() and "[3, 64, 63]" in info.value.details()


def test_source_index_out_of_range_is_invalid_argument(stub, store, scene):
    with pytest.raises(grpc.RpcError) as info:
        stub.Refine(refine_request(store, scene, source_index=3), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`source_index`" in info.value.details()


def test_missing_asset_is_not_found(stub, store, scene):
    request = refine_request(store, scene)
    missing = common_pb2.ObjectRef(uri=store.uri_for("sha256/00/" + "0" * 64 + ".ply"))
    request.asset.frames[0].CopyFrom(missing)
    with pytest.raises(grpc.RpcError) as info:
        stub.Refine(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
