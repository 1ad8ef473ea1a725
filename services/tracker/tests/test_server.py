"""The tracker servicer in-process, over the in-memory store: results, defaults and request validation."""

import numpy as np
import pytest
from tire.v1 import common_pb2, tracker_pb2

from services.common.config import from_env
from services.common.errors import ConfigError, InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.common.views import Views, write_views
from services.testing.stores import CountingStore
from services.tracker.backends import GeometricBackend
from services.tracker.contract import LocateOptions
from services.tracker.server import TrackerServicer, TrackerSettings, build_servicer, warm_up
from services.tracker.tests.scenes import orbit_views, sphere_gaussians

SIZE = 64


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    settings = TrackerSettings(max_views=4, max_pixels=4 * SIZE * SIZE, max_queries=1000)
    return TrackerServicer(GeometricBackend(), store, settings)


@pytest.fixture(scope="module")
def views():
    """A sphere seen from azimuths 0, 40, 90 and 180, 64 x 64."""
    return orbit_views(sphere_gaussians(20_000, scale=0.009), [0, 40, 90, 180], SIZE)


@pytest.fixture
def view_set(store, views):
    return write_views(store, views)


def locate_request(view_set, targets=(1, 2, 3), anchors=(0,), **options):
    return tracker_pb2.LocateUnobservedRequest(
        views=view_set,
        target_indices=list(targets),
        anchor_indices=list(anchors),
        options=tracker_pb2.LocateOptions(**options),
    )


def track_request(store, view_set, queries, backward=True):
    return tracker_pb2.TrackRequest(
        frames=view_set, queries=put_tensor(store, np.asarray(queries)), backward_tracking=backward
    )


def test_locate_unobserved_writes_the_backends_result(servicer, store, views, view_set):
    options = {"min_region_pixels": 4, "dilation_pixels": 1, "depth_tolerance": 0.05}
    reply = servicer.LocateUnobserved(locate_request(view_set, **options), None)
    expected = GeometricBackend().locate_unobserved(views, [1, 2, 3], [0], LocateOptions(**options))
    shape = (3, SIZE, SIZE)
    unobserved = get_tensor(store, reply.unobserved, dtype=np.uint8, shape=shape)
    np.testing.assert_array_equal(unobserved, expected.unobserved.astype(np.uint8))
    np.testing.assert_array_equal(
        get_tensor(store, reply.anchor_index, dtype=np.int32, shape=shape), expected.anchor_index
    )
    np.testing.assert_array_equal(
        get_tensor(store, reply.anchor_xy, dtype=np.float32, shape=(*shape, 2)), expected.anchor_xy
    )
    np.testing.assert_array_equal(
        get_tensor(store, reply.transferred_rgb, dtype=np.uint8, shape=(*shape, 3)), expected.transferred_rgb
    )
    np.testing.assert_array_equal(np.float32(reply.unobserved_fraction), expected.unobserved_fraction)
    assert len(reply.unobserved.preview_uris) == 3 and len(reply.transferred_rgb.preview_uris) == 3
    # The sphere: the opposite view is all unobserved, the nearer ones less so.
    fractions = list(reply.unobserved_fraction)
    assert fractions[0] < fractions[1] < fractions[2] and fractions[2] > 0.95
    # Content-addressed: the same request gives the same objects.
    again = servicer.LocateUnobserved(locate_request(view_set, **options), None)
    assert again.unobserved.uri == reply.unobserved.uri and again.anchor_xy.sha256 == reply.anchor_xy.sha256


def test_unset_options_take_the_proto_defaults_and_zeros_are_kept(servicer, store, views, view_set):
    defaults = servicer.LocateUnobserved(locate_request(view_set, targets=[2]), None)
    expected = GeometricBackend().locate_unobserved(views, [2], [0], LocateOptions())
    np.testing.assert_array_equal(get_tensor(store, defaults.unobserved), expected.unobserved)
    # Explicit zeros and false are values, not "unset".
    zeros = servicer.LocateUnobserved(
        locate_request(
            view_set, targets=[2], min_region_pixels=0, dilation_pixels=0, transfer_appearance=False
        ),
        None,
    )
    exact = GeometricBackend().locate_unobserved(
        views, [2], [0], LocateOptions(min_region_pixels=0, dilation_pixels=0, transfer_appearance=False)
    )
    np.testing.assert_array_equal(get_tensor(store, zeros.unobserved), exact.unobserved)
    np.testing.assert_array_equal(get_tensor(store, zeros.transferred_rgb), views.rgb[[2]])
    assert not np.array_equal(exact.unobserved, expected.unobserved)


def test_track_writes_tracks_and_visibility(servicer, store, views, view_set):
    queries = np.array([[0, 32.5, 32.5], [1, 30.25, 20.75], [2, 1.5, 1.5]], np.float32)
    reply = servicer.Track(track_request(store, view_set, queries), None)
    tracks = get_tensor(store, reply.tracks, dtype=np.float32, shape=(4, 3, 2))
    visibility = get_tensor(store, reply.visibility, dtype=np.uint8, shape=(4, 3))
    expected_tracks, expected_visibility = GeometricBackend().track(views, queries, True)
    np.testing.assert_array_equal(tracks, expected_tracks)
    np.testing.assert_array_equal(visibility, expected_visibility.astype(np.uint8))
    # The front centre: seen from 0 and 40 degrees, on the rim at 90 (grazing), hidden from behind.
    assert visibility[[0, 1, 3], 0].tolist() == [1, 1, 0]
    assert visibility[:, 2].tolist() == [0, 0, 0, 0]  # a background corner
    forward = servicer.Track(track_request(store, view_set, queries, backward=False), None)
    assert np.isnan(get_tensor(store, forward.tracks)[0, 1:]).all()


def test_describe_names_backend_and_settings(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.TrackerService"
    assert (info.backend, info.device) == ("geometric", "cpu (numpy)")
    assert list(info.available_backends) == ["geometric", "cotracker", "triton"]
    assert info.settings["max_queries"] == "1000" and info.settings["track_depth_tolerance"] == "0.03"


def test_settings_from_the_environment_and_build(store):
    settings = from_env(
        TrackerSettings,
        "TIRE_TRACKER_",
        {"TIRE_TRACKER_MAX_QUERIES": "10", "TIRE_TRACKER_TRACK_DEPTH_TOLERANCE": "0.1"},
    )
    servicer = build_servicer(settings, store)
    assert servicer.backend.depth_tolerance == 0.1 and servicer.settings.max_queries == 10
    warm_up(servicer)
    with pytest.raises(ConfigError, match="'optical-flow'"):
        build_servicer(TrackerSettings(backend="optical-flow"), store)
    with pytest.raises(ConfigError, match="track_foreground_threshold"):
        from_env(TrackerSettings, "TIRE_TRACKER_", {"TIRE_TRACKER_TRACK_FOREGROUND_THRESHOLD": "1.5"})


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"foreground_threshold": 0.0}, "options.foreground_threshold"),
        ({"foreground_threshold": 1.0}, "options.foreground_threshold"),
        ({"depth_tolerance": 0.0}, "options.depth_tolerance"),
        ({"depth_tolerance": 1.5}, "options.depth_tolerance"),
        ({"depth_tolerance": float("nan")}, "options.depth_tolerance"),
        ({"min_region_pixels": 5000}, "options.min_region_pixels"),
        ({"dilation_pixels": 65}, "options.dilation_pixels"),
    ],
)
def test_bad_options_name_the_field(servicer, view_set, options, field):
    with pytest.raises(InvalidArgument) as info:
        servicer.LocateUnobserved(locate_request(view_set, **options), None)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("targets", "anchors", "field"),
    [
        ([], [0], "target_indices"),
        ([1, 4], [0], "target_indices[1]"),
        ([1, 2, 1], [0], "target_indices[2]"),
        ([1], [], "anchor_indices"),
        ([1], [0, 7], "anchor_indices[1]"),
        ([1], [0, 0], "anchor_indices[1]"),
        ([1, 2], [2, 0], "anchor_indices[0]"),
    ],
)
def test_bad_indices_name_the_field(servicer, view_set, targets, anchors, field):
    with pytest.raises(InvalidArgument) as info:
        servicer.LocateUnobserved(locate_request(view_set, targets, anchors), None)
    assert info.value.field == field


def test_bad_views_name_the_field(servicer, store, views, view_set):
    with pytest.raises(InvalidArgument) as info:
        servicer.LocateUnobserved(
            tracker_pb2.LocateUnobservedRequest(target_indices=[1], anchor_indices=[0]), None
        )
    assert info.value.field == "views"
    no_depth = write_views(store, Views(views.rgb, views.alpha, None, views.cameras))
    with pytest.raises(InvalidArgument) as info:
        servicer.LocateUnobserved(locate_request(no_depth), None)
    assert info.value.field == "views.depth"
    wrong_shape = common_pb2.ViewSet()
    wrong_shape.CopyFrom(view_set)
    wrong_shape.alpha.CopyFrom(put_tensor(store, views.alpha[:, :32]))
    with pytest.raises(InvalidArgument, match="shape") as info:
        servicer.LocateUnobserved(locate_request(wrong_shape), None)
    assert info.value.field == "views.alpha"


@pytest.mark.parametrize(
    ("queries", "field"),
    [
        (np.zeros((0, 3), np.float32), "queries"),
        (np.zeros((2, 2), np.float32), "queries"),
        (np.zeros((2, 3), np.int32), "queries"),
        (np.float32([[0, 1, 1], [0, np.nan, 1]]), "queries"),
        (np.float32([[0, 1, 1], [0.5, 1, 1]]), "queries[1]"),
        (np.float32([[0, 1, 1], [1, 1, 1], [4, 1, 1]]), "queries[2]"),
        (np.float32([[-1, 1, 1]]), "queries[0]"),
        (np.float32([[0, 64, 1]]), "queries[0]"),
        (np.float32([[0, 1, -0.5]]), "queries[0]"),
    ],
)
def test_bad_queries_name_the_field(servicer, store, view_set, queries, field):
    with pytest.raises(InvalidArgument) as info:
        servicer.Track(track_request(store, view_set, queries), None)
    assert info.value.field == field


def test_bad_track_requests_name_the_field(servicer, store, views, view_set):
    with pytest.raises(InvalidArgument) as info:
        servicer.Track(tracker_pb2.TrackRequest(frames=view_set), None)
    assert info.value.field == "queries"
    with pytest.raises(InvalidArgument) as info:
        servicer.Track(
            tracker_pb2.TrackRequest(queries=put_tensor(store, np.zeros((1, 3), np.float32))), None
        )
    assert info.value.field == "frames"
    no_rgb = write_views(store, Views(None, views.alpha, views.depth, views.cameras))
    with pytest.raises(InvalidArgument) as info:
        servicer.Track(track_request(store, no_rgb, [[0, 1, 1]]), None)
    assert info.value.field == "frames.rgb"


def test_limits_are_resource_exhausted(servicer, store, views):
    index = [0, 1, 2, 3, 0]
    five = write_views(
        store, Views(views.rgb[index], views.alpha[index], views.depth[index], views.cameras[index])
    )
    with pytest.raises(ResourceExhausted, match="4"):
        servicer.LocateUnobserved(locate_request(five), None)
    with pytest.raises(ResourceExhausted, match="1000"):
        servicer.Track(track_request(store, write_views(store, views), np.zeros((1001, 3), np.float32)), None)


def test_missing_objects_are_not_found(servicer, store, view_set):
    missing = common_pb2.ViewSet()
    missing.CopyFrom(view_set)
    missing.depth.uri = missing.depth.uri.replace("sha256/", "sha256/00")
    with pytest.raises(ObjectNotFound):
        servicer.LocateUnobserved(locate_request(missing), None)
    queries = put_tensor(store, np.zeros((1, 3), np.float32))
    queries.uri = queries.uri.replace("sha256/", "sha256/00")
    with pytest.raises(ObjectNotFound):
        servicer.Track(tracker_pb2.TrackRequest(frames=view_set, queries=queries), None)


def test_a_video_taken_from_the_views_locates_as_the_same_views_sent_alone(views):
    store = CountingStore()
    servicer = TrackerServicer(GeometricBackend(), store, TrackerSettings(max_views=4))
    whole = write_views(store, views)
    # The video 2, 0, 3 of the four views: anchors first, targets after, as the coordinator sends a sweep.
    alone = servicer.LocateUnobserved(
        locate_request(write_views(store, views.select([2, 0, 3])), targets=(2,), anchors=(0, 1)), None
    )
    store.reads = 0
    taken = locate_request(whole, targets=(2,), anchors=(0, 1))
    taken.video[:] = [2, 0, 3]
    reply = servicer.LocateUnobserved(taken, None)
    for name in ("unobserved", "anchor_index", "anchor_xy", "transferred_rgb"):
        assert getattr(reply, name).sha256 == getattr(alone, name).sha256, name
    assert store.reads == 3  # rgb, alpha and depth of the whole set, once
    # Another video of the same views (the other side of a ring) reads nothing again.
    other = locate_request(whole, targets=(1,), anchors=(0,))
    other.video[:] = [0, 1]
    servicer.LocateUnobserved(other, None)
    assert store.reads == 3


@pytest.mark.parametrize(
    ("video", "field"), [([0, 4], "video[1]"), ([1, 0, 1], "video[2]")], ids=["out of range", "repeated"]
)
def test_a_bad_video_is_invalid_argument_naming_the_index(servicer, view_set, video, field):
    request = locate_request(view_set, targets=(1,), anchors=(0,))
    request.video[:] = video
    with pytest.raises(InvalidArgument) as caught:
        servicer.LocateUnobserved(request, None)
    assert str(caught.value).startswith(f"`{field}` ")
