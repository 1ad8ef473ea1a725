"""The cotracker tracker served by a real tritonserver (``make triton``), with random weights in
CoTracker3's real architecture (the offline model ``scaled_offline.pth`` holds): the same tracks,
visibilities and masks as the backend in this process, through the ``track`` model and through the
tracker service's ``triton`` backend; a request's ``model_version`` holds it to that version; a version
that cannot load is refused with its reason while the served one keeps answering; a video the model
cannot track is INVALID_ARGUMENT.

Needs the ``cotracker`` package (not on PyPI: ``services.tracker.cotracker.INSTALL_COMMAND``) in the
environment Triton's Python backend runs (``make triton`` puts this one's packages on its path)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from tire.v1 import tracker_pb2

from services.common.model_repository import write_version
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.common.triton import LocalTriton, TritonLoadError, triton_binary
from services.common.views import write_views
from services.tracker.contract import LocateOptions
from services.tracker.server import TrackerServicer, TrackerSettings
from services.tracker.tests.scenes import orbit_views, sphere_gaussians
from services.tracker.triton_model import MODELS, TRACK, TrackModel, version_settings

pytestmark = pytest.mark.slow
SIZE = 24
QUERY_STRIDE = 2
POINTS_PER_CALL = 48
"""Below the number of queries of a target: ``locate_unobserved``'s video takes two model calls."""
TARGETS, ANCHORS = [2], [0]

try:
    triton_binary()
except FileNotFoundError as exc:  # `make test` runs `make triton` first
    pytest.skip(str(exc), allow_module_level=True)

triton_grpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException
torch = pytest.importorskip("torch")
pytest.importorskip("cotracker.predictor", reason="the cotracker package is not installed")

from services.tracker.cotracker import CoTrackerBackend  # noqa: E402
from services.tracker.triton_backend import TritonTrackBackend  # noqa: E402


def save_random_cotracker(path, seed: int) -> str:
    """CoTracker3 offline (the predictor's default architecture) with random weights, as a checkpoint."""
    from cotracker.predictor import CoTrackerPredictor

    torch.manual_seed(seed)
    torch.save(CoTrackerPredictor(checkpoint=None).model.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    """Two checkpoints of different random weights: versions 1 and 2."""
    folder = tmp_path_factory.mktemp("cotracker")
    return [save_random_cotracker(folder / f"random-{seed}.pth", seed) for seed in (0, 1)]


@pytest.fixture(scope="module")
def backend(checkpoints) -> CoTrackerBackend:
    """In this process, as version 1 on Triton."""
    return CoTrackerBackend(checkpoints[0], "cpu", query_stride=QUERY_STRIDE, points_per_call=POINTS_PER_CALL)


@pytest.fixture(scope="module")
def triton(checkpoints, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    write_version(repository, MODELS, 1, version_settings(checkpoints[0], points_per_call=POINTS_PER_CALL))
    with LocalTriton(repository) as server:
        server.load(TRACK.name)
        yield server


@pytest.fixture(scope="module")
def views():
    """A sphere (red where x < 0, blue elsewhere) from azimuths 0, 30 and 60, 24 x 24: target 2's video
    to anchor 0 passes view 1."""
    gaussians = sphere_gaussians(4_000, scale=0.02, colour=(0.1, 0.2, 0.9), colour_negative_x=(0.9, 0.1, 0.1))
    return orbit_views(gaussians, [0, 30, 60], SIZE)


@pytest.fixture(scope="module")
def queries(views) -> np.ndarray:
    """Six foreground pixel centres: four on frame 0, two on frame 2."""
    rows, cols = np.nonzero(views.alpha[0] > 0.5)
    pick = np.linspace(0, len(rows) - 1, 6).astype(int)
    xy = np.stack([cols[pick] + 0.5, rows[pick] + 0.5], axis=1)
    return np.concatenate([np.float32([[0], [0], [0], [0], [2], [2]]), xy], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def expected(backend, views, queries) -> dict:
    """The backend's answers in this process: track both ways, locate_unobserved."""
    return {
        "backward": backend.track(views, queries, True),
        "forward": backend.track(views, queries, False),
        "located": backend.locate_unobserved(views, TARGETS, ANCHORS, LocateOptions()),
    }


def assert_same_located(located, expected) -> None:
    for name in ("unobserved", "anchor_index", "anchor_xy", "transferred_rgb", "unobserved_fraction"):
        np.testing.assert_array_equal(getattr(located, name), getattr(expected, name), err_msg=name)


def test_tracks_through_triton_are_the_backends_in_process(triton, views, queries, expected):
    served = TritonTrackBackend(triton.url, "1", query_stride=QUERY_STRIDE)
    for backward in (True, False):
        tracks, visibility = served.track(views, queries, backward)
        expected_tracks, expected_visibility = expected["backward" if backward else "forward"]
        assert tracks.shape == (3, 6, 2) and tracks.dtype == np.float32 and visibility.dtype == np.bool_
        np.testing.assert_array_equal(tracks, expected_tracks)
        np.testing.assert_array_equal(visibility, expected_visibility)
    assert np.isnan(tracks[:2, 4:]).all()  # forward: nothing before the queries' frame 2


def test_locate_unobserved_through_triton_is_the_backends_in_process(triton, views, expected, backend):
    served = TritonTrackBackend(triton.url, "1", query_stride=QUERY_STRIDE)
    located = served.locate_unobserved(views, TARGETS, ANCHORS, LocateOptions())
    assert_same_located(located, expected["located"])
    foreground = int((views.alpha[TARGETS[0]] > 0.5).sum())
    assert foreground > 4 * POINTS_PER_CALL  # so its queries (one per 2 x 2 cell) took two model calls


def test_a_video_the_model_cannot_track_is_an_invalid_argument(triton):
    def infer(frames: np.ndarray, queries: np.ndarray):
        inputs = []
        for name, array, datatype in (
            ("FRAMES", frames, "UINT8"),
            ("QUERIES", queries, "FP32"),
            ("BACKWARD", np.array([True]), "BOOL"),
        ):
            inputs.append(triton_grpc.InferInput(name, list(array.shape), datatype))
            inputs[-1].set_data_from_numpy(array)
        with triton_grpc.InferenceServerClient(triton.url) as client:
            return client.infer(TRACK.name, inputs)

    with pytest.raises(InferenceServerException, match="at least 2 x 2 pixels") as info:
        infer(np.zeros((2, 1, 8, 3), np.uint8), np.float32([[0, 0.5, 0.5]]))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InferenceServerException, match=r"integer t in \[0, 2\)") as info:
        infer(np.zeros((2, 8, 8, 3), np.uint8), np.float32([[5, 0.5, 0.5]]))
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_tracker_service_on_triton_answers_as_the_backend_in_process(triton, views, queries, expected):
    store = MemoryStore()
    servicer = TrackerServicer(
        TritonTrackBackend(triton.url, query_stride=QUERY_STRIDE), store, TrackerSettings()
    )
    info = servicer.Describe(None, None)
    assert (info.backend, info.model, info.model_version) == (
        "cotracker",
        f"triton://{triton.url}/track",
        "1",
    )
    assert list(info.available_backends) == ["geometric", "cotracker", "triton"]

    view_set = write_views(store, views)
    reply = servicer.Track(
        tracker_pb2.TrackRequest(
            frames=view_set, queries=put_tensor(store, queries), backward_tracking=False, model_version="1"
        ),
        None,
    )
    np.testing.assert_array_equal(get_tensor(store, reply.tracks), expected["forward"][0])
    np.testing.assert_array_equal(get_tensor(store, reply.visibility), expected["forward"][1])

    reply = servicer.LocateUnobserved(
        tracker_pb2.LocateUnobservedRequest(
            views=view_set, target_indices=TARGETS, anchor_indices=ANCHORS, model_version="1"
        ),
        None,
    )
    located = expected["located"]
    np.testing.assert_array_equal(get_tensor(store, reply.unobserved), located.unobserved)
    np.testing.assert_array_equal(get_tensor(store, reply.anchor_index), located.anchor_index)
    np.testing.assert_array_equal(get_tensor(store, reply.anchor_xy), located.anchor_xy)
    np.testing.assert_array_equal(get_tensor(store, reply.transferred_rgb), located.transferred_rgb)
    np.testing.assert_array_equal(reply.unobserved_fraction, located.unobserved_fraction)


def test_model_version_holds_a_request_to_that_version(triton, checkpoints, views, queries, expected):
    write_version(
        triton.repository, MODELS, 2, version_settings(checkpoints[1], points_per_call=POINTS_PER_CALL)
    )
    triton.load(TRACK.name)
    store = MemoryStore()
    servicer = TrackerServicer(
        TritonTrackBackend(triton.url, query_stride=QUERY_STRIDE), store, TrackerSettings()
    )
    assert servicer.Describe(None, None).model_version == "2"  # the newest version, for the next jobs
    view_set = write_views(store, views)

    def tracks(model_version: str) -> np.ndarray:
        request = tracker_pb2.TrackRequest(
            frames=view_set, queries=put_tensor(store, queries), model_version=model_version
        )
        return get_tensor(store, servicer.Track(request, None).tracks)

    # A job that started on version 1 keeps it; one without a version gets the newest, other weights.
    np.testing.assert_array_equal(tracks("1"), expected["forward"][0])
    assert not np.array_equal(tracks(""), expected["forward"][0], equal_nan=True)


def test_a_version_that_cannot_load_is_refused_and_the_served_one_keeps_answering(triton, views, queries):
    served = TritonTrackBackend(triton.url, query_stride=QUERY_STRIDE)
    version = served.model_version
    missing = str(triton.repository / "no-such-checkpoint.pth")
    write_version(triton.repository, MODELS, 3, version_settings(missing))
    with pytest.raises(TritonLoadError, match=r"no-such-checkpoint\.pth"):
        triton.load(TRACK.name)
    with triton_grpc.InferenceServerClient(triton.url) as client:
        assert client.is_model_ready(TRACK.name, version)
        assert not client.is_model_ready(TRACK.name, "3")
    assert served.model_version == version
    tracks, visibility = served.track(views, queries, False)
    assert tracks.shape == (3, 6, 2) and visibility.shape == (3, 6)
    assert np.isfinite(tracks[2]).all()


def test_an_instance_reads_s3_weights_with_the_servers_store_settings(
    s3, store, checkpoints, backend, tmp_path, monkeypatch
):
    weights = tmp_path / "weights"
    weights.mkdir()
    shutil.copy(checkpoints[0], weights / "scaled_offline.pth")
    store.upload_folder(weights, f"s3://{s3.bucket}/models/cotracker")
    uri = f"s3://{s3.bucket}/models/cotracker/scaled_offline.pth"
    write_version(tmp_path / "repository", MODELS, 1, version_settings(uri, points_per_call=7))
    for name, value in s3.env.items():  # what LocalTriton(store=...) gives Triton's models
        monkeypatch.setenv(name, value)
    instance = TrackModel()  # what Triton's stub runs, here in this process
    instance.initialize({"model_repository": str(tmp_path / "repository" / TRACK.name), "model_version": "1"})
    assert instance.backend.points_per_call == 7 and instance.backend.device.startswith("cpu")
    loaded = instance.backend._predictor.model.state_dict()
    for name, value in backend._predictor.model.state_dict().items():
        assert torch.equal(loaded[name], value), name
