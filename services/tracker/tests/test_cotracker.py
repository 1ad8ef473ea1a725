"""The cotracker backend: the orbit video and its order, the masks against the geometric backend's with a
predictor that returns exact tracks, the pixel convention, and the errors of a missing package or
checkpoint. Tests of the real CoTracker3 need the package and TIRE_TEST_COTRACKER_CHECKPOINT."""

import os
import sys
import types

import cv2
import grpc
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from services.common.cameras import orbit_cameras  # noqa: E402
from services.common.config import from_env  # noqa: E402
from services.common.errors import (  # noqa: E402
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
)
from services.common.store import MemoryStore  # noqa: E402
from services.testing.synthetic import textured_blob  # noqa: E402
from services.tracker.backends import GeometricBackend, make_backend  # noqa: E402
from services.tracker.contract import LocateOptions  # noqa: E402
from services.tracker.cotracker import (  # noqa: E402
    CHECKPOINT_SETTING,
    INSTALL_COMMAND,
    CoTrackerBackend,
    from_cotracker_xy,
    grid_queries,
    orbit_path,
    to_cotracker_xy,
)
from services.tracker.server import TrackerSettings, build_servicer, warm_up  # noqa: E402
from services.tracker.tests.scenes import orbit_views, plane_views, sphere_gaussians  # noqa: E402
from services.tracker.tests.test_backends import check_conventions  # noqa: E402

EXACT = LocateOptions(min_region_pixels=0, dilation_pixels=0)
# Anchor at 0; targets at 90 and 150 (their videos pass 60 and 30), and at -60 (no view between).
AZIMUTHS = [0, 30, 60, 90, 150, -60]
TARGETS = [3, 4, 5]
PATHS = {3: [3, 2, 1, 0], 4: [4, 3, 2, 1, 0], 5: [5, 0]}
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.2, 0.9)


class GeometricPredictor:
    """A ``Predictor`` with exact tracks: it finds the views the video's frames are, and answers with the
    geometric backend's ``track`` (exact for splat assets) in CoTracker's pixel convention. It records
    the frames (as view indices) and the queries of every call."""

    def __init__(self, views):
        self.views = views
        self.calls = []

    def __call__(self, video, queries, backward_tracking=False):
        frames = video[0].permute(0, 2, 3, 1).numpy()
        ids = [int(np.flatnonzero((self.views.rgb == f).all(axis=(1, 2, 3)))[0]) for f in frames]
        q = queries[0].numpy().astype(np.float64)
        self.calls.append((ids, q, backward_tracking))
        ours = np.concatenate([q[:, :1], q[:, 1:] + 0.5], axis=1).astype(np.float32)
        tracks, visibility = GeometricBackend().track(self.views.select(ids), ours, backward_tracking)
        # CoTracker always reports a position; a point with no 3D point stays where it was asked.
        tracks = np.where(np.isnan(tracks), ours[None, :, 1:], tracks) - 0.5
        return torch.from_numpy(tracks)[None], torch.from_numpy(visibility)[None]


class StaticPredictor(torch.nn.Module):
    """Stands in for ``cotracker.predictor.CoTrackerPredictor``: a model with weights, and tracks that
    stay where they were asked, visible everywhere."""

    def __init__(self, checkpoint="./checkpoints/scaled_offline.pth"):
        super().__init__()
        self.checkpoint = checkpoint
        self.model = torch.nn.Linear(3, 2)
        self.calls = []

    def forward(self, video, queries=None, backward_tracking=False):
        self.calls.append((video.clone(), queries.clone(), backward_tracking))
        tracks = queries[:, None, :, 1:].expand(-1, video.shape[1], -1, -1).clone()
        return tracks, torch.ones(tracks.shape[:3], dtype=torch.bool)


@pytest.fixture
def fake_cotracker(monkeypatch):
    """``cotracker.predictor`` importable, with ``StaticPredictor`` as its ``CoTrackerPredictor``."""
    package = types.ModuleType("cotracker")
    module = types.ModuleType("cotracker.predictor")
    module.CoTrackerPredictor = StaticPredictor
    package.predictor = module
    monkeypatch.setitem(sys.modules, "cotracker", package)
    monkeypatch.setitem(sys.modules, "cotracker.predictor", module)


@pytest.fixture
def checkpoint(tmp_path):
    """A checkpoint of ``StaticPredictor``'s model, wrapped in {"model": ...} as training checkpoints are."""
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, 0.25)
    path = tmp_path / "scaled_offline.pth"
    torch.save({"model": model.state_dict()}, path)
    return str(path)


@pytest.fixture(scope="module")
def sphere():
    """A sphere of radius 0.4 (red where x < 0, blue elsewhere) from ``AZIMUTHS``, 64 x 64."""
    return orbit_views(
        sphere_gaussians(20_000, scale=0.009, colour=BLUE, colour_negative_x=RED), AZIMUTHS, 64
    )


def exact_backend(views, **kwargs):
    predictor = GeometricPredictor(views)
    return CoTrackerBackend(device="cpu", predictor=predictor, **kwargs), predictor


# -- the orbit video ------------------------------------------------------------------------------------


def test_orbit_path_goes_the_shorter_way_through_the_views_between():
    cams = orbit_cameras([340, 20, 10, 350, 0, 200, 100, 10], 8, 8)
    assert orbit_path(cams, 0, 1) == [0, 3, 4, 2, 7, 1]  # across azimuth 0; equal azimuths by index
    assert orbit_path(cams, 1, 0) == [1, 2, 7, 4, 3, 0]
    assert orbit_path(cams, 1, 6) == [1, 6]
    assert orbit_path(cams, 6, 0) == [6, 1, 2, 7, 4, 3, 0]  # 100 -> 340 is shorter downwards
    # Half way round, the path takes increasing azimuths; views at an end's azimuth are not between.
    half = orbit_cameras([0, 180, 90, 270, 0, 180], 8, 8)
    assert orbit_path(half, 0, 1) == [0, 2, 1]
    assert orbit_path(half, 1, 0) == [1, 3, 0]
    # Elevation does not change the order.
    assert orbit_path(orbit_cameras([0, 60, 30], 8, 8, elevation_deg=-30.0), 0, 1) == [0, 2, 1]


def test_videos_run_from_each_target_to_its_nearest_anchor(sphere):
    backend, predictor = exact_backend(sphere)
    backend.locate_unobserved(sphere, TARGETS, [0], EXACT)
    assert [ids for ids, _, _ in predictor.calls] == [PATHS[t] for t in TARGETS]
    for (_, queries, backward), t in zip(predictor.calls, TARGETS, strict=True):
        assert not backward and (queries[:, 0] == 0).all()
        # Every foreground pixel centre of the target, in CoTracker's convention.
        rows, cols = np.nonzero(sphere.alpha[t] > 0.5)
        np.testing.assert_array_equal(queries[:, 1:], np.stack([cols, rows], axis=1))
    # With two anchors, each target's video ends at the nearer one.
    predictor.calls.clear()
    backend.locate_unobserved(sphere, [2, 4, 5], [1, 3], EXACT)
    assert [ids for ids, _, _ in predictor.calls] == [[2, 1], [4, 3], [5, 0, 1]]


# -- masks against the geometric backend ----------------------------------------------------------------


@pytest.mark.parametrize("options", [EXACT, LocateOptions()])
def test_exact_tracks_give_the_geometric_masks(sphere, options):
    located = exact_backend(sphere)[0].locate_unobserved(sphere, TARGETS, [0], options)
    expected = GeometricBackend().locate_unobserved(sphere, TARGETS, [0], options)
    check_conventions(located, sphere, TARGETS, options)
    for i in range(len(TARGETS)):
        foreground = np.count_nonzero(sphere.alpha[TARGETS[i]] > 0.5)
        # The geometric backend counts a point observed when any pixel of its bilinear stencil is
        # foreground; this one when the pixel containing it is: they differ at the anchor's silhouette.
        assert np.count_nonzero(located.unobserved[i] != expected.unobserved[i]) <= 0.01 * foreground
        assert abs(located.unobserved_fraction[i] - expected.unobserved_fraction[i]) < 0.01
    both = (located.anchor_index == 0) & (expected.anchor_index == 0)
    assert both.sum() > 0.98 * (expected.anchor_index == 0).sum()
    np.testing.assert_allclose(located.anchor_xy[both], expected.anchor_xy[both], atol=1e-4)
    # The same colours, except next to the anchor's silhouette, where its half-covered pixels (darker over
    # black) may or may not be read, each backend testing depth against its own estimate.
    xy = located.anchor_xy[both]
    interior = cv2.erode((sphere.alpha[0] > 0.5).astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    inside = interior[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    assert inside.mean() > 0.5
    difference = np.abs(located.transferred_rgb[both].astype(int) - expected.transferred_rgb[both])
    assert difference[inside].max() <= 1
    assert located.unobserved_fraction[1] > 0.9  # azimuth 150: the anchor sees little of it


def test_observed_pixels_take_the_anchors_colours(sphere):
    # Swap red and blue in the anchor: observed pixels follow it, the rest keep the target's colour.
    swapped = sphere.rgb.copy()
    swapped[0] = sphere.rgb[0][..., ::-1]
    views = type(sphere)(swapped, sphere.alpha, sphere.depth, sphere.cameras)
    located = exact_backend(views)[0].locate_unobserved(views, [1], [0], LocateOptions())
    target, out = views.rgb[1].astype(int), located.transferred_rgb[0].astype(int)
    observed = located.anchor_index[0] == 0
    was_red = observed & (target[..., 0] > target[..., 2] + 100)
    was_blue = observed & (target[..., 2] > target[..., 0] + 100)
    assert was_red.sum() > 100 and was_blue.sum() > 100
    assert (out[was_red][:, 2] > out[was_red][:, 0]).mean() > 0.95
    assert (out[was_blue][:, 0] > out[was_blue][:, 2]).mean() > 0.95
    np.testing.assert_array_equal(out[~observed], target[~observed])


def test_invisible_tracks_and_tracks_off_the_anchor_are_unobserved():
    # Two views of one pose and plane; the predictor moves the left half of the queries off the image
    # and calls the top half occluded.
    alphas = np.ones((2, 8, 8), np.float32)
    views = plane_views(alphas)

    def predictor(video, queries, backward_tracking=False):
        tracks = queries[:, None, :, 1:].repeat(1, video.shape[1], 1, 1)
        tracks[:, -1, queries[0, :, 1] < 4, 0] = -3.0
        visibility = torch.ones(tracks.shape[:3], dtype=torch.bool)
        visibility[:, -1, queries[0, :, 2] < 4] = False
        return tracks, visibility

    backend = CoTrackerBackend(device="cpu", predictor=predictor)
    located = backend.locate_unobserved(views, [1], [0], EXACT)
    expected = np.ones((8, 8), bool)
    expected[4:, 4:] = False
    np.testing.assert_array_equal(located.unobserved[0], expected)
    np.testing.assert_allclose(located.unobserved_fraction, [0.75])
    check_conventions(located, views, [1], EXACT)


def test_subsampled_queries_fill_every_pixel(sphere):
    targets = [1, 2, 3]
    backend, predictor = exact_backend(sphere, query_stride=3)
    located = backend.locate_unobserved(sphere, targets, [0], EXACT)
    dense = exact_backend(sphere)[0].locate_unobserved(sphere, targets, [0], EXACT)
    check_conventions(located, sphere, targets, EXACT)
    near_edge = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    for i, t in enumerate(targets):
        foreground = sphere.alpha[t] > 0.5
        assert len(predictor.calls[i][1]) < 0.15 * foreground.sum()
        # A 3 x 3 cell shares one answer: only pixels within 2 of the dense mask's edge may change.
        mask = dense.unobserved[i].astype(np.uint8)
        edge = cv2.dilate(mask, np.ones((3, 3), np.uint8)) != cv2.erode(mask, np.ones((3, 3), np.uint8))
        near = cv2.dilate(edge.astype(np.uint8), near_edge).astype(bool)
        changed = located.unobserved[i] != dense.unobserved[i]
        assert changed.sum() < 0.06 * foreground.sum() and (changed & ~near).sum() <= 3
        # Positions shifted from the cell's query: close, though off by pixels where the surface grazes.
        both = (located.anchor_index[i] == 0) & (dense.anchor_index[i] == 0)
        error = np.linalg.norm(located.anchor_xy[i][both] - dense.anchor_xy[i][both], axis=-1)
        assert np.median(error) < 0.75 and error.max() < 6.0


def test_grid_queries_cover_every_cell_with_foreground():
    foreground = np.zeros((7, 9), bool)
    foreground[1:6, 1:8] = True
    foreground[:, 0] = True  # a thin column at the left edge
    queries, query_of = grid_queries(foreground, 3)
    flat = np.flatnonzero(foreground)
    assert np.all(np.diff(queries) > 0) and foreground.reshape(-1)[queries].all()

    # One query per 3 x 3 cell that holds foreground, in the same cell as each of its pixels.
    def cell(index):
        rows, cols = np.divmod(index, 9)
        return rows // 3 * 3 + cols // 3

    assert len(queries) == len(np.unique(cell(flat))) == 7  # the bottom row's cells hold only the column
    np.testing.assert_array_equal(cell(queries[query_of]), cell(flat))
    assert 4 * 9 + 4 in queries  # a full cell's centre pixel
    np.testing.assert_array_equal(grid_queries(foreground, 1)[0], flat)
    np.testing.assert_array_equal(grid_queries(foreground, 1)[1], np.arange(len(flat)))


def test_chunked_calls_give_the_same_result(sphere):
    whole = exact_backend(sphere)[0].locate_unobserved(sphere, [3], [0], LocateOptions())
    backend, predictor = exact_backend(sphere, points_per_call=300)
    chunked = backend.locate_unobserved(sphere, [3], [0], LocateOptions())
    assert len(predictor.calls) > 3 and max(len(q) for _, q, _ in predictor.calls) == 300
    for name in ("unobserved", "anchor_index", "anchor_xy", "transferred_rgb", "unobserved_fraction"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))


def test_a_target_without_foreground_is_not_tracked():
    alphas = np.zeros((2, 8, 8), np.float32)
    alphas[0, 2:6, 2:6] = 1.0
    predictor = GeometricPredictor(plane_views(alphas))
    located = CoTrackerBackend(device="cpu", predictor=predictor).locate_unobserved(
        plane_views(alphas), [1], [0], LocateOptions()
    )
    assert predictor.calls == [] and located.unobserved_fraction.tolist() == [0.0]
    assert (located.anchor_index == -1).all()


# -- Track and the pixel convention ---------------------------------------------------------------------


def test_pixel_convention_round_trip():
    xy = np.array([[0.5, 0.5], [63.5, 0.5], [10.25, 7.75]], np.float32)
    np.testing.assert_array_equal(to_cotracker_xy(xy), [[0.0, 0.0], [63.0, 0.0], [9.75, 7.25]])
    np.testing.assert_array_equal(from_cotracker_xy(to_cotracker_xy(xy)), xy)
    assert to_cotracker_xy(xy).dtype == np.float32


def test_cotracker_resize_puts_pixel_centres_at_integers():
    # CoTracker resizes frames with align_corners=True to its model size and scales positions by
    # (model_size - 1) / (size - 1). A single bright pixel must come back, through that scaling and
    # from_cotracker_xy, at its centre in this project's convention.
    h, w, model = 12, 16, (45, 61)
    image = torch.zeros(1, 1, h, w)
    image[0, 0, 7, 3] = 1.0
    resized = torch.nn.functional.interpolate(image, model, mode="bilinear", align_corners=True)[0, 0]
    row, col = np.unravel_index(int(resized.argmax()), model)
    xy = np.array([col * (w - 1) / (model[1] - 1), row * (h - 1) / (model[0] - 1)])
    np.testing.assert_allclose(from_cotracker_xy(xy), [3.5, 7.5])


def test_track_converts_positions_and_leaves_earlier_frames_undefined_without_backward():
    views = plane_views(np.ones((3, 8, 8), np.float32))
    predictor = StaticPredictor()
    backend = CoTrackerBackend(device="cpu", predictor=predictor)
    queries = np.array([[1, 2.5, 3.25], [0, 0.5, 7.5]], np.float32)
    tracks, visibility = backend.track(views, queries, backward=True)
    video, sent, backward = predictor.calls[-1]
    assert backward and video.shape == (1, 3, 3, 8, 8) and video.dtype == torch.float32
    np.testing.assert_array_equal(video[0].permute(0, 2, 3, 1).numpy(), views.rgb)
    np.testing.assert_array_equal(sent[0].numpy(), [[1, 2.0, 2.75], [0, 0.0, 7.0]])
    assert tracks.shape == (3, 2, 2) and tracks.dtype == np.float32 and visibility.dtype == np.bool_
    np.testing.assert_array_equal(tracks, np.broadcast_to(queries[:, 1:], (3, 2, 2)))
    assert visibility.all()
    tracks, visibility = backend.track(views, queries, backward=False)
    assert not predictor.calls[-1][2]
    assert np.isnan(tracks[0, 0]).all() and not visibility[0, 0]
    assert np.isfinite(tracks[1:, 0]).all() and np.isfinite(tracks[:, 1]).all() and visibility[:, 1].all()


def test_frames_under_two_pixels_are_refused():
    backend = CoTrackerBackend(device="cpu", predictor=StaticPredictor())
    with pytest.raises(InvalidArgument, match="2 x 2") as info:
        backend.track(plane_views(np.ones((2, 1, 8), np.float32)), np.float32([[0, 0.5, 0.5]]), True)
    assert info.value.field == "frames"


# -- building it: package, checkpoint, settings ---------------------------------------------------------


def test_a_missing_package_says_how_to_install_it(monkeypatch, checkpoint):
    monkeypatch.setitem(sys.modules, "cotracker.predictor", None)  # import fails, installed or not
    with pytest.raises(FailedPrecondition, match="not on PyPI") as info:
        CoTrackerBackend(checkpoint, device="cpu")
    assert INSTALL_COMMAND in str(info.value) and info.value.grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(FailedPrecondition, match="pip install git"):
        build_servicer(TrackerSettings(backend="cotracker", cotracker_checkpoint=checkpoint), MemoryStore())


def test_a_missing_checkpoint_names_the_setting(fake_cotracker, tmp_path):
    for value in ("", str(tmp_path / "nowhere.pth")):
        with pytest.raises(FailedPrecondition, match=CHECKPOINT_SETTING) as info:
            CoTrackerBackend(value, device="cpu")
        message = str(info.value)
        assert "scaled_offline.pth" in message and "huggingface.co/facebook/cotracker3" in message
    with pytest.raises(FailedPrecondition, match=f"{CHECKPOINT_SETTING} is not set"):
        build_servicer(TrackerSettings(backend="cotracker"), MemoryStore())


def test_a_checkpoint_that_is_not_the_weights_is_refused(fake_cotracker, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    other_model = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(5, 5).state_dict(), other_model)
    pickled = tmp_path / "pickled.pth"
    torch.save(types.SimpleNamespace(weight=1), pickled)  # weights_only loading never unpickles this
    for path in (garbage, other_model, pickled):
        with pytest.raises(FailedPrecondition, match="does not hold CoTracker3 offline weights"):
            CoTrackerBackend(str(path), device="cpu")


def test_the_checkpoint_is_loaded_into_the_predictor(fake_cotracker, checkpoint):
    backend = CoTrackerBackend(checkpoint, device="cpu")
    predictor = backend._predictor
    assert isinstance(predictor, StaticPredictor) and predictor.checkpoint is None and not predictor.training
    np.testing.assert_array_equal(predictor.model.weight.detach().numpy(), np.full((2, 3), 0.25))
    assert backend.device.startswith("cpu (") and backend.device.endswith("float32)")


def test_settings_build_and_warm_up(fake_cotracker, checkpoint):
    settings = from_env(
        TrackerSettings,
        "TIRE_TRACKER_",
        {
            "TIRE_TRACKER_BACKEND": "cotracker",
            "TIRE_TRACKER_COTRACKER_CHECKPOINT": checkpoint,
            "TIRE_TRACKER_DEVICE": "cpu",
            "TIRE_TRACKER_QUERY_STRIDE": "2",
            "TIRE_TRACKER_POINTS_PER_CALL": "100",
        },
    )
    servicer = build_servicer(settings, MemoryStore())
    backend = servicer.backend
    assert backend.name == "cotracker" and (backend.query_stride, backend.points_per_call) == (2, 100)
    warm_up(servicer)
    calls = backend._predictor.calls
    assert [video.shape[1] for video, _, _ in calls] == [2, 2]  # a locate and a track, two frames each
    assert make_backend("cotracker", cotracker_checkpoint=checkpoint, device="cpu").name == "cotracker"
    with pytest.raises(ConfigError, match="device"):
        make_backend("cotracker", cotracker_checkpoint=checkpoint, device="tpu")
    for name in ("QUERY_STRIDE", "POINTS_PER_CALL"):
        with pytest.raises(ConfigError, match=name.lower()):
            from_env(TrackerSettings, "TIRE_TRACKER_", {f"TIRE_TRACKER_{name}": "0"})


# -- the real CoTracker3 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_backend():
    pytest.importorskip("cotracker")
    checkpoint = os.environ.get("TIRE_TEST_COTRACKER_CHECKPOINT", "")
    if not checkpoint:
        pytest.skip("set TIRE_TEST_COTRACKER_CHECKPOINT to the path of CoTracker3's scaled_offline.pth")
    return CoTrackerBackend(checkpoint)


@pytest.fixture(scope="module")
def blob():
    """The textured blob (texture to track) from azimuth 0 to 90 in steps of 15 degrees, 96 x 96."""
    return orbit_views(textured_blob(12_000), [0, 15, 30, 45, 60, 75, 90], 96)


@pytest.mark.slow
def test_real_cotracker_agrees_with_the_geometric_answer(real_backend, blob):
    targets = [2, 6]  # 30 and 90 degrees from the anchor
    located = real_backend.locate_unobserved(blob, targets, [0], LocateOptions())
    expected = GeometricBackend().locate_unobserved(blob, targets, [0], LocateOptions())
    check_conventions(located, blob, targets, LocateOptions())
    np.testing.assert_allclose(located.unobserved_fraction, expected.unobserved_fraction, atol=0.1)
    for i in range(len(targets)):
        union = located.unobserved[i] | expected.unobserved[i]
        if union.sum() > 50:
            assert (located.unobserved[i] & expected.unobserved[i]).sum() > 0.6 * union.sum()
    both = (located.anchor_index == 0) & (expected.anchor_index == 0)
    error = np.linalg.norm(located.anchor_xy[both] - expected.anchor_xy[both], axis=-1)
    assert np.median(error) < 1.5


@pytest.mark.slow
def test_real_cotracker_tracks_follow_the_projections(real_backend, blob):
    # Points on the front of the blob, visible from 0 to 90 degrees: tracks from frame 0 follow their
    # projections (the geometric backend's tracks).
    rows, cols = np.nonzero(blob.alpha[0] > 0.5)
    pick = np.linspace(0, len(rows) - 1, 40).astype(int)
    queries = np.stack([np.zeros(40), cols[pick] + 0.5, rows[pick] + 0.5], axis=1).astype(np.float32)
    tracks, visibility = real_backend.track(blob, queries, backward=False)
    expected, expected_visibility = GeometricBackend().track(blob, queries, False)
    seen = visibility & expected_visibility
    assert seen[1:3].mean() > 0.8
    assert np.median(np.linalg.norm(tracks - expected, axis=-1)[seen]) < 1.5
