"""The tracker's triton backend without a server: what a caller sees when Triton is unreachable, and how
the service builds it."""

import numpy as np
import pytest

from services.common.config import from_env
from services.common.errors import ConfigError, FailedPrecondition, InvalidArgument, Unavailable
from services.common.store import MemoryStore
from services.tracker.contract import LocateOptions
from services.tracker.server import TrackerServicer, TrackerSettings, build_servicer, warm_up
from services.tracker.tests.scenes import plane_views
from services.tracker.triton_backend import TritonTrackBackend

pytest.importorskip("tritonclient.grpc")


def test_an_unreachable_triton_is_unavailable_so_callers_retry():
    backend = TritonTrackBackend("127.0.0.1:1")
    assert not backend.ready()
    with pytest.raises(Unavailable, match="Triton is unreachable"):
        backend.model_version  # noqa: B018
    views = plane_views(np.ones((2, 8, 8), np.float32))
    with pytest.raises(Unavailable):
        backend.track(views, np.float32([[0, 4.5, 4.5]]), True)
    with pytest.raises(Unavailable):
        backend.locate_unobserved(views, [1], [0], LocateOptions())
    assert backend.pinned("7").model_version == "7"  # a pinned version needs no server


def test_a_video_it_cannot_track_is_refused_before_the_call():
    backend = TritonTrackBackend("127.0.0.1:1")  # unreachable: the check comes first
    with pytest.raises(InvalidArgument, match="2 x 2") as info:
        backend.track(plane_views(np.ones((2, 1, 8), np.float32)), np.float32([[0, 0.5, 0.5]]), True)
    assert info.value.field == "frames"


def test_settings_build_a_triton_backend_named_cotracker():
    environ = {
        "TIRE_TRACKER_BACKEND": "triton",
        "TIRE_TRACKER_TRITON_URL": "127.0.0.1:1",
        "TIRE_TRACKER_TRITON_VERSION": "3",
        "TIRE_TRACKER_QUERY_STRIDE": "2",
    }
    servicer = build_servicer(from_env(TrackerSettings, "TIRE_TRACKER_", environ), MemoryStore())
    backend = servicer.backend
    assert isinstance(backend, TritonTrackBackend)
    assert (backend.name, backend.query_stride, backend.model_version) == ("cotracker", 2, "3")
    info = servicer.Describe(None, None)
    assert (info.backend, info.model, info.model_version) == (
        "cotracker",
        "triton://127.0.0.1:1/track/3",
        "3",
    )
    assert backend.pinned("4").query_stride == 2
    with pytest.raises(ConfigError, match="TIRE_TRACKER_TRITON_URL"):
        build_servicer(TrackerSettings(backend="triton"), MemoryStore())
    with pytest.raises(InvalidArgument, match="model_version"):
        backend.pinned("latest")


def test_warm_up_first_waits_for_triton_to_serve_a_version():
    servicer = TrackerServicer(TritonTrackBackend("127.0.0.1:1"), MemoryStore())
    with pytest.raises(FailedPrecondition, match="Triton serves no ready version"):
        warm_up(servicer, triton_wait_s=0.0)
