"""ViewSet reading and writing, asset frames, and the background estimate, over the in-memory store."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tire.v1 import common_pb2

from services.common.assets import load_frame, store_frame
from services.common.cameras import cameras_to_proto, orbit_cameras
from services.common.errors import InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.gaussians import random_gaussians, read_ply
from services.common.rasterizer import rasterize
from services.common.server import describe
from services.common.store import MemoryStore
from services.common.tensors import put_tensor
from services.common.views import Views, estimate_background, read_views, write_views

MONKEY = Path(__file__).parents[3] / "samples" / "monkey_lgm.ply"


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def views() -> Views:
    cameras = orbit_cameras([0.0, 90.0, 180.0], 24, 16)
    result = rasterize(random_gaussians(300, seed=3), cameras, background=(1.0, 1.0, 1.0))
    rgb = np.clip(np.rint(result.rgb * 255), 0, 255).astype(np.uint8)
    return Views(rgb, result.alpha, result.depth, cameras)


def test_views_round_trip_through_the_store(store, views):
    message = write_views(store, views, previews=True)
    back = read_views(store, message)
    assert back.shape == (3, 16, 24) and len(back) == 3
    np.testing.assert_array_equal(back.rgb, views.rgb)
    np.testing.assert_array_equal(back.alpha, views.alpha)
    np.testing.assert_array_equal(back.depth, views.depth)
    np.testing.assert_allclose(back.cameras.viewmats, views.cameras.viewmats, atol=1e-6)
    assert len(message.rgb.preview_uris) == 3 and not message.depth.preview_uris


def test_the_background_travels_with_the_views_and_is_estimated_only_when_unnamed(store, views):
    # The fixture's views were rendered over white and do not name it: it is estimated from empty pixels.
    np.testing.assert_array_equal(views.background, [1.0, 1.0, 1.0])
    grey = Views(views.rgb, views.alpha, views.depth, views.cameras, np.float32([0.5, 0.5, 0.5]))
    message = write_views(store, grey)
    assert list(message.background_rgb) == [0.5, 0.5, 0.5]
    np.testing.assert_array_equal(read_views(store, message).background, [0.5, 0.5, 0.5])
    np.testing.assert_array_equal(grey.select([1]).background, [0.5, 0.5, 0.5])
    del message.background_rgb[:]  # an older caller's ViewSet
    np.testing.assert_array_equal(read_views(store, message).background, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("background", [[0.5, 0.5], [0.0, 2.0, 0.0], [0.0, float("nan"), 0.0]])
def test_a_bad_background_is_refused_naming_the_field(store, views, background):
    message = write_views(store, views)
    message.background_rgb[:] = background
    with pytest.raises(InvalidArgument, match=r"`views\.background_rgb` must be 3 finite floats in \[0, 1\]"):
        read_views(store, message)


def test_select_picks_views_in_order(views):
    picked = views.select([2, 0])
    np.testing.assert_array_equal(picked.rgb, views.rgb[[2, 0]])
    np.testing.assert_array_equal(picked.cameras.viewmats, views.cameras.viewmats[[2, 0]])


def test_optional_components_stay_none_and_required_ones_are_named(store, views):
    message = write_views(store, Views(views.rgb, views.alpha, None, views.cameras))
    assert read_views(store, message, require=("rgb", "alpha")).depth is None
    with pytest.raises(InvalidArgument, match=r"`views\.depth` must be set"):
        read_views(store, message)
    with pytest.raises(InvalidArgument, match=r"`frames\.cameras`"):
        read_views(store, common_pb2.ViewSet(), field="frames")


def test_tensor_shapes_must_match_the_cameras(store, views):
    message = write_views(store, views)
    message.alpha.CopyFrom(put_tensor(store, views.alpha[:2]))
    with pytest.raises(InvalidArgument, match=r"`views\.alpha`"):
        read_views(store, message)


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [("alpha", 1.5, r"\[0, 1\]"), ("depth", -1.0, "non-negative"), ("depth", np.nan, "finite")],
)
def test_bad_values_are_refused(store, views, name, value, problem):
    array = getattr(views, name).copy()
    array[1, 3, 4] = value
    message = write_views(store, views)
    getattr(message, name).CopyFrom(put_tensor(store, array))
    with pytest.raises(InvalidArgument, match=rf"`views\.{name}`.*{problem}"):
        read_views(store, message)


def test_limits_are_resource_exhausted(store, views):
    message = write_views(store, views)
    with pytest.raises(ResourceExhausted, match="3 views"):
        read_views(store, message, max_views=2)
    with pytest.raises(ResourceExhausted, match="1152 pixels"):
        read_views(store, message, max_pixels=1000)


def test_estimate_background_reads_the_empty_pixels(views):
    np.testing.assert_allclose(estimate_background(views.rgb, views.alpha), [1.0, 1.0, 1.0])
    full = np.ones_like(views.alpha)
    np.testing.assert_array_equal(estimate_background(views.rgb, full), [0.0, 0.0, 0.0])


def test_load_frame_reads_the_time_step(store):
    ref = store.put_bytes(MONKEY.read_bytes(), suffix=".ply")
    other = store_frame(store, random_gaussians(10, seed=1))
    asset = common_pb2.AssetRef(frames=[ref, other])
    assert len(load_frame(store, asset, 0)) == len(read_ply(MONKEY))
    assert len(load_frame(store, asset, 1)) == 10
    with pytest.raises(InvalidArgument, match="`time_step`"):
        load_frame(store, asset, 2)
    with pytest.raises(InvalidArgument, match=r"`initial\.frames`"):
        load_frame(store, common_pb2.AssetRef(), 0, field="initial")


def test_load_frame_errors_name_the_frame(store):
    bad = store.put_bytes(b"ply\nformat ascii 1.0\nend_header\n", suffix=".ply")
    with pytest.raises(InvalidArgument, match=r"`asset\.frames\[0\]`.*not a splat file this reads"):
        load_frame(store, common_pb2.AssetRef(frames=[bad]), 0)
    missing = common_pb2.ObjectRef(uri=store.uri_for("sha256/00/" + "0" * 64 + ".ply"))
    with pytest.raises(ObjectNotFound):
        load_frame(store, common_pb2.AssetRef(frames=[missing]), 0)


def test_describe_reports_settings_as_strings():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Settings:
        backend: str = "cpu"
        max_views: int = 8

    answer = describe("tire.v1.X", "cpu", "cpu (2 threads)", ("cpu", "gpu"), Settings(), model="m")
    assert (answer.service, answer.backend, answer.model, answer.device) == (
        "tire.v1.X",
        "cpu",
        "m",
        "cpu (2 threads)",
    )
    assert list(answer.available_backends) == ["cpu", "gpu"]
    assert dict(answer.settings) == {"backend": "cpu", "max_views": "8"}
    assert answer.version


def test_cameras_in_a_viewset_are_validated(store, views):
    message = write_views(store, views)
    message.cameras.CopyFrom(cameras_to_proto(views.cameras))
    message.cameras.width = 0
    with pytest.raises(InvalidArgument, match=r"`views\.cameras\.width`"):
        read_views(store, message)
