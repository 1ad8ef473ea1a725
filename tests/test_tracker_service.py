"""The tracker as a real process: the S3 server and the tracker on loopback, called through the stub."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tire.v1 import common_pb2, tracker_pb2, tracker_pb2_grpc

from services.common.clients import dial
from services.common.tensors import get_tensor, put_tensor
from services.common.views import write_views
from services.tracker.backends import GeometricBackend
from services.tracker.contract import LocateOptions
from services.tracker.tests.scenes import orbit_views, sphere_gaussians


@pytest.fixture(scope="module")
def tracker(launch_service):
    return launch_service("services.tracker.server", "TIRE_TRACKER_", {"TIRE_TRACKER_BACKEND": "geometric"})


@pytest.fixture(scope="module")
def stub(tracker):
    channel = dial(tracker.target)
    yield tracker_pb2_grpc.TrackerServiceStub(channel)
    channel.close()


@pytest.fixture(scope="module")
def views():
    return orbit_views(sphere_gaussians(20_000, scale=0.009), [0, 45, 180], 64)


def test_health_is_serving(tracker):
    channel = dial(tracker.target)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tire.v1.TrackerService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_describe(stub):
    info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
    assert (info.service, info.backend) == ("tire.v1.TrackerService", "geometric")
    assert info.settings["max_queries"] == "262144"


def test_locate_unobserved_through_the_stub_matches_in_process(stub, store, views):
    request = tracker_pb2.LocateUnobservedRequest(
        views=write_views(store, views),
        target_indices=[1, 2],
        anchor_indices=[0],
        options=tracker_pb2.LocateOptions(dilation_pixels=1),
    )
    reply = stub.LocateUnobserved(request, timeout=60)
    local = GeometricBackend().locate_unobserved(views, [1, 2], [0], LocateOptions(dilation_pixels=1))
    np.testing.assert_array_equal(
        get_tensor(store, reply.unobserved, dtype=np.uint8, shape=(2, 64, 64)), local.unobserved
    )
    np.testing.assert_array_equal(get_tensor(store, reply.anchor_index), local.anchor_index)
    np.testing.assert_array_equal(get_tensor(store, reply.anchor_xy), local.anchor_xy)
    np.testing.assert_array_equal(get_tensor(store, reply.transferred_rgb), local.transferred_rgb)
    np.testing.assert_array_equal(np.float32(reply.unobserved_fraction), local.unobserved_fraction)
    assert 0.0 < reply.unobserved_fraction[0] < 0.5 and reply.unobserved_fraction[1] > 0.95
    assert len(reply.transferred_rgb.preview_uris) == 2


def test_track_through_the_stub_matches_in_process(stub, store, views):
    queries = np.array([[0, 32.5, 32.5], [1, 28.25, 40.75]], np.float32)
    reply = stub.Track(
        tracker_pb2.TrackRequest(
            frames=write_views(store, views), queries=put_tensor(store, queries), backward_tracking=True
        ),
        timeout=60,
    )
    tracks, visibility = GeometricBackend().track(views, queries, True)
    np.testing.assert_array_equal(get_tensor(store, reply.tracks, dtype=np.float32, shape=(3, 2, 2)), tracks)
    np.testing.assert_array_equal(get_tensor(store, reply.visibility, dtype=np.uint8), visibility)


def test_bad_options_are_invalid_argument_naming_the_field(stub, store, views):
    request = tracker_pb2.LocateUnobservedRequest(
        views=write_views(store, views),
        target_indices=[1],
        anchor_indices=[0],
        options=tracker_pb2.LocateOptions(depth_tolerance=2.0),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.LocateUnobserved(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`options.depth_tolerance`" in info.value.details() and "2.0" in info.value.details()


def test_anchor_that_is_a_target_is_invalid_argument(stub, store, views):
    request = tracker_pb2.LocateUnobservedRequest(
        views=write_views(store, views), target_indices=[1], anchor_indices=[1]
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.LocateUnobserved(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`anchor_indices[0]`" in info.value.details()


def test_missing_object_is_not_found(stub, store, views):
    view_set = write_views(store, views)
    view_set.depth.uri = store.uri_for("sha256/00/" + "0" * 64 + ".safetensors")
    request = tracker_pb2.LocateUnobservedRequest(views=view_set, target_indices=[1], anchor_indices=[0])
    with pytest.raises(grpc.RpcError) as info:
        stub.LocateUnobserved(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
