"""The refiner servicer in-process, over the in-memory store: values, Describe and request validation."""

import numpy as np
import pytest
from tire.v1 import common_pb2, refiner_pb2

from services.common.assets import store_frame
from services.common.config import from_env
from services.common.errors import ConfigError, InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.common.views import write_views
from services.refiner.backends import ConsensusBackend
from services.refiner.server import RefinerServicer, RefinerSettings, build_servicer
from services.refiner.tests.scenes import card, orbit_views, tint

V, SIZE = 3, 48


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    settings = RefinerSettings(max_views=4, max_pixels=4 * SIZE * SIZE, max_gaussians=10_000)
    return RefinerServicer(ConsensusBackend(), store, settings)


@pytest.fixture(scope="module")
def scene():
    gaussians = card()
    views = orbit_views(gaussians, size=SIZE)
    return gaussians, tint(tint(views, 1, (80, 0, 0)), 2, (0, 0, 80))


@pytest.fixture
def valid_request(store, scene):
    """A valid request: the tinted views, M = 1 but on the source, the card; strength unset."""
    gaussians, views = scene
    mask = np.ones(views.alpha.shape, dtype=np.float32)
    mask[0] = 0.0
    return refiner_pb2.RefineRequest(
        views=write_views(store, views),
        update_mask=put_tensor(store, mask),
        asset=common_pb2.AssetRef(frames=[store_frame(store, gaussians)]),
        source_index=0,
    )


def test_refine_writes_what_the_backend_computes(servicer, store, scene, valid_request):
    gaussians, views = scene
    valid_request.strength = 0.8
    reply = servicer.Refine(valid_request, None)
    rgb = get_tensor(store, reply.rgb, dtype=np.uint8, shape=(V, SIZE, SIZE, 3))
    mask = get_tensor(store, valid_request.update_mask)
    np.testing.assert_array_equal(rgb, ConsensusBackend().refine(views, mask, gaussians, 0, 0.8, 0))
    np.testing.assert_array_equal(rgb[0], views.rgb[0])
    assert (rgb[1:] != views.rgb[1:]).any()
    assert len(reply.rgb.preview_uris) == V
    # Same request, same object: retries are idempotent.
    assert servicer.Refine(valid_request, None).rgb.uri == reply.rgb.uri


def test_strength_zero_means_the_backends_default(servicer, store, scene, valid_request):
    gaussians, views = scene
    rgb = get_tensor(store, servicer.Refine(valid_request, None).rgb)
    mask = get_tensor(store, valid_request.update_mask)
    np.testing.assert_array_equal(rgb, ConsensusBackend().refine(views, mask, gaussians, 0, 0.3, 0))


class RecordingBackend(ConsensusBackend):
    """The consensus backend with another default strength, recording the strength each call gets."""

    default_strength = 0.55

    def __init__(self):
        super().__init__()
        self.strengths: list[float] = []

    def refine(self, views, update_mask, gaussians, source_index, strength, seed):
        self.strengths.append(strength)
        return super().refine(views, update_mask, gaussians, source_index, strength, seed)


def test_strength_zero_reaches_the_backend_as_its_default_strength(store, valid_request):
    backend = RecordingBackend()
    servicer = RefinerServicer(backend, store, RefinerSettings())
    assert servicer.Describe(common_pb2.DescribeRequest(), None).settings["default_strength"] == "0.55"
    servicer.Refine(valid_request, None)
    valid_request.strength = 0.25
    servicer.Refine(valid_request, None)
    assert backend.strengths == [0.55, 0.25]
    valid_request.strength = 1.5
    with pytest.raises(InvalidArgument, match=r"or 0 for the backend's default \(0\.55\)"):
        servicer.Refine(valid_request, None)


def test_describe_names_backend_and_settings(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.RefinerService"
    assert info.backend == "consensus" and info.device.startswith("cpu")
    assert list(info.available_backends) == ["consensus", "mv-diffusion", "triton"]
    assert info.settings["max_views"] == "4" and info.settings["source_weight"] == "10.0"
    assert info.settings["default_strength"] == "0.3"  # what a request's strength 0 means here


def test_settings_from_the_environment(store):
    settings = from_env(
        RefinerSettings,
        "TIRE_REFINER_",
        {"TIRE_REFINER_CONTRIBUTORS": "4", "TIRE_REFINER_SOURCE_WEIGHT": "3"},
    )
    servicer = build_servicer(settings, store)
    assert (servicer.backend.contributors, servicer.backend.source_weight) == (4, 3.0)
    with pytest.raises(ConfigError, match="min_coverage"):
        from_env(RefinerSettings, "TIRE_REFINER_", {"TIRE_REFINER_MIN_COVERAGE": "1.5"})
    with pytest.raises(ConfigError, match="backend"):
        build_servicer(RefinerSettings(backend="diffusion"), store)


def set_tensor(name, array):
    """An edit that points the request field ``name`` (e.g. "views.alpha") at a stored ``array``."""

    def edit(request, store):
        message = request
        for part in name.split("."):
            message = getattr(message, part)
        message.CopyFrom(put_tensor(store, np.asarray(array)))

    return edit


def set_field(name, value):
    return lambda request, store: setattr(request, name, value)


def clear(*path):
    def edit(request, store):
        message = request
        for part in path[:-1]:
            message = getattr(message, part)
        message.ClearField(path[-1])

    return edit


MASK = (V, SIZE, SIZE)
BAD = {
    "update_mask missing": (clear("update_mask"), "update_mask"),
    "update_mask shape": (set_tensor("update_mask", np.ones((V, SIZE, 9), np.float32)), "update_mask"),
    "update_mask views": (set_tensor("update_mask", np.ones((2, SIZE, SIZE), np.float32)), "update_mask"),
    "update_mask dtype": (set_tensor("update_mask", np.ones(MASK, np.uint8)), "update_mask"),
    "update_mask over 1": (set_tensor("update_mask", np.full(MASK, 1.5, np.float32)), "update_mask"),
    "update_mask negative": (set_tensor("update_mask", np.full(MASK, -0.1, np.float32)), "update_mask"),
    "update_mask nan": (set_tensor("update_mask", np.full(MASK, np.nan, np.float32)), "update_mask"),
    "source_index": (set_field("source_index", V), "source_index"),
    "strength over 1": (set_field("strength", 1.5), "strength"),
    "strength negative": (set_field("strength", -0.2), "strength"),
    "strength nan": (set_field("strength", float("nan")), "strength"),
    "views missing": (clear("views"), "views.cameras"),
    "views depth missing": (clear("views", "depth"), "views.depth"),
    "views alpha shape": (set_tensor("views.alpha", np.ones((*MASK, 1), np.float32)), "views.alpha"),
    "asset missing": (clear("asset"), "asset.frames"),
    "time_step": (set_field("time_step", 1), "time_step"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_name_the_field(servicer, store, valid_request, case):
    edit, field = BAD[case]
    edit(valid_request, store)
    with pytest.raises(InvalidArgument) as info:
        servicer.Refine(valid_request, None)
    assert info.value.field == field


def test_missing_objects_are_not_found(servicer, store, valid_request):
    missing = store.uri_for("sha256/00/" + "0" * 64 + ".ply")
    valid_request.asset.frames[0].CopyFrom(common_pb2.ObjectRef(uri=missing))
    with pytest.raises(ObjectNotFound):
        servicer.Refine(valid_request, None)


def test_limits_are_enforced(store, valid_request):
    small = RefinerServicer(ConsensusBackend(), store, RefinerSettings(max_views=2))
    with pytest.raises(ResourceExhausted, match="views"):
        small.Refine(valid_request, None)
    small = RefinerServicer(ConsensusBackend(), store, RefinerSettings(max_pixels=V * SIZE * SIZE - 1))
    with pytest.raises(ResourceExhausted, match="pixels"):
        small.Refine(valid_request, None)
    small = RefinerServicer(ConsensusBackend(), store, RefinerSettings(max_gaussians=100))
    with pytest.raises(InvalidArgument, match="vertices"):
        small.Refine(valid_request, None)
