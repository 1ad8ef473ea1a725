"""The reconstructor servicer in-process, over the in-memory store: outputs, defaults and validation."""

import numpy as np
import pytest
from tire.v1 import common_pb2, reconstructor_pb2

from services.common.assets import store_frame
from services.common.cameras import orbit_cameras
from services.common.errors import InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.gaussians import ply_layout, random_gaussians, read_ply, recolour, write_ply
from services.common.rasterizer import rasterize
from services.common.store import MemoryStore
from services.common.views import Views, write_views
from services.reconstructor.backends import ColourSolveBackend
from services.reconstructor.contract import SolveOptions, locked_gaussians
from services.reconstructor.server import ReconstructorServicer, ReconstructorSettings, warm_up

AZIMUTHS = (0, 60, 120, 180, 240, 300)


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    settings = ReconstructorSettings(max_views=8, max_pixels=8 * 48 * 48, max_gaussians=5000)
    return ReconstructorServicer(ColourSolveBackend(), store, settings)


@pytest.fixture(scope="module")
def scene():
    """(true asset, its views over grey, a copy with random colours)."""
    truth = read_ply(write_ply(random_gaussians(1500, sh_degree=1, seed=3)))
    cameras = orbit_cameras(AZIMUTHS, 48, 48, elevation_deg=-15.0)
    render = rasterize(truth, cameras, (0.5, 0.5, 0.5))
    rgb = np.clip(np.rint(render.rgb * 255), 0, 255).astype(np.uint8)
    colours = np.random.default_rng(0).uniform(size=(len(truth), 3))
    return truth, Views(rgb, render.alpha, render.depth, cameras), recolour(truth, colours)


def request_for(store, scene, **kwargs):
    _, views, initial = scene
    return reconstructor_pb2.ReconstructRequest(
        views=write_views(store, views),
        initial=common_pb2.AssetRef(frames=[store_frame(store, initial)]),
        **kwargs,
    )


def test_reconstruct_writes_the_fitted_asset(servicer, store, scene):
    _, views, initial = scene
    reply = servicer.Reconstruct(request_for(store, scene), None)
    assert reply.ply.uri.startswith("s3://memory/") and reply.ply.uri.endswith(".ply")
    assert reply.ply.media_type == "application/x-ply"
    fitted = read_ply(store.get_bytes(reply.ply.uri, sha256=reply.ply.sha256))
    for name in ("means", "log_scales", "quats", "opacity_logits"):
        assert getattr(fitted, name).tobytes() == getattr(initial, name).tobytes()
    assert not fitted.sh[:, 1:].any()  # default: higher bands zeroed
    assert 0 < reply.rms_error < 0.03 and 0 < reply.iterations <= 200
    # The same as the backend called directly (defaults included), byte for byte.
    local = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert store.get_bytes(reply.ply.uri) == write_ply(local.gaussians)
    assert reply.rms_error == pytest.approx(local.rms_error, rel=1e-6)
    assert reply.iterations == local.iterations


@pytest.mark.parametrize("layout", ["lgm", "inria"])
def test_the_repaired_ply_keeps_the_inputs_layout(servicer, store, scene, layout):
    _, views, initial = scene
    asset = store.put_bytes(write_ply(initial, layout), suffix=".ply")
    request = reconstructor_pb2.ReconstructRequest(
        views=write_views(store, views), initial=common_pb2.AssetRef(frames=[asset])
    )
    data = store.get_bytes(servicer.Reconstruct(request, None).ply.uri)
    assert ply_layout(data) == layout
    local = ColourSolveBackend().reconstruct(views, initial, SolveOptions())
    assert data == write_ply(local.gaussians, layout)


def test_options_are_passed_on(servicer, store, scene):
    _, _, initial = scene
    options = reconstructor_pb2.ReconstructOptions(keep_higher_sh=True, max_iterations=2, tolerance=1e-9)
    reply = servicer.Reconstruct(request_for(store, scene, options=options), None)
    fitted = read_ply(store.get_bytes(reply.ply.uri))
    np.testing.assert_array_equal(fitted.sh[:, 1:], initial.sh[:, 1:])
    assert reply.iterations == 2 and reply.higher_sh_kept
    # A prior of 0 is allowed (pure least squares).
    reply = servicer.Reconstruct(
        request_for(store, scene, options=reconstructor_pb2.ReconstructOptions(prior_weight=0.0)), None
    )
    assert reply.rms_error < 0.03


def test_locked_views_are_passed_on_and_the_gaussians_counted(servicer, store, scene):
    truth, views, initial = scene
    reply = servicer.Reconstruct(request_for(store, scene, locked_views=[0, 3]), None)
    fitted = read_ply(store.get_bytes(reply.ply.uri))
    locked = locked_gaussians(initial, views.cameras[[0, 3]])
    assert reply.gaussians_locked == locked.sum() > 0
    assert fitted.sh[locked].tobytes() == initial.sh[locked].tobytes()  # higher bands included
    resolved = np.any(fitted.sh != initial.sh, axis=(1, 2))
    assert reply.gaussians_resolved == resolved.sum() > 0 and not (resolved & locked).any()
    assert reply.gaussians_locked + reply.gaussians_kept + reply.gaussians_resolved == len(truth)
    assert not reply.higher_sh_kept  # the re-solved ones lost theirs (keep_higher_sh is false)
    local = ColourSolveBackend().reconstruct(views, initial, SolveOptions(), None, [0, 3])
    assert store.get_bytes(reply.ply.uri) == write_ply(local.gaussians)
    # Nothing locked by default.
    assert servicer.Reconstruct(request_for(store, scene), None).gaussians_locked == 0


def test_the_time_step_picks_the_frame(servicer, store, scene):
    request = request_for(store, scene, time_step=1)
    request.initial.frames.insert(0, store_frame(store, random_gaussians(10)))
    reply = servicer.Reconstruct(request, None)
    assert len(read_ply(store.get_bytes(reply.ply.uri))) == 1500


def test_describe_names_backend_and_limits(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.ReconstructorService"
    assert info.backend == "colour-solve" and info.device.startswith("cpu")
    assert list(info.available_backends) == ["colour-solve", "gsplat-optimize"]
    assert info.settings["max_views"] == "8" and info.settings["contributors"] == "8"


def drop(field):
    def edit(request):
        request.views.ClearField(field)

    return edit


def set_option(**values):
    def edit(request):
        for name, value in values.items():
            setattr(request.options, name, value)

    return edit


def set_field(**values):
    def edit(request):
        for name, value in values.items():
            setattr(request, name, value)

    return edit


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (drop("alpha"), "views.alpha"),
        (drop("rgb"), "views.rgb"),
        (drop("cameras"), "views.cameras"),
        (lambda r: r.initial.ClearField("frames"), "initial.frames"),
        (lambda r: r.initial.frames[0].ClearField("uri"), "initial.frames[0].uri"),
        (set_field(time_step=1), "time_step"),
        (set_option(prior_weight=-1.0), "options.prior_weight"),
        (set_option(prior_weight=float("inf")), "options.prior_weight"),
        (set_option(max_iterations=0), "options.max_iterations"),
        (set_option(max_iterations=10_001), "options.max_iterations"),
        (set_option(tolerance=0.0), "options.tolerance"),
        (set_option(tolerance=1.0), "options.tolerance"),
        (set_option(tolerance=float("nan")), "options.tolerance"),
        (lambda r: r.views.alpha.shape.__setitem__(0, 5), "views.alpha"),
        (lambda r: r.views.cameras.__setattr__("width", 0), "views.cameras.width"),
        (lambda r: r.view_weights.extend([1.0, 2.0]), "view_weights"),
        (lambda r: r.view_weights.extend([0.0] * len(AZIMUTHS)), "view_weights"),
        (lambda r: r.view_weights.extend([1.0, -1.0] + [1.0] * (len(AZIMUTHS) - 2)), "view_weights[1]"),
        (lambda r: r.view_weights.extend([float("nan")] * len(AZIMUTHS)), "view_weights[0]"),
        (lambda r: r.locked_views.extend([0, len(AZIMUTHS)]), "locked_views[1]"),
        (lambda r: r.locked_views.extend([2, 0, 2]), "locked_views[2]"),
    ],
)
def test_bad_requests_name_the_field(servicer, store, scene, edit, field):
    request = request_for(store, scene)
    edit(request)
    with pytest.raises(InvalidArgument) as info:
        servicer.Reconstruct(request, None)
    assert info.value.field == field


def test_alpha_outside_zero_one_is_refused(servicer, store, scene):
    truth, views, initial = scene
    bad = Views(views.rgb, views.alpha * 2.0, None, views.cameras)
    request = request_for(store, (truth, bad, initial))
    with pytest.raises(InvalidArgument, match=r"`views.alpha` must lie in \[0, 1\]"):
        servicer.Reconstruct(request, None)


def test_missing_objects_are_not_found(servicer, store, scene):
    request = request_for(store, scene)
    request.initial.frames[0].uri = request.initial.frames[0].uri.replace("sha256/", "sha256/00")
    with pytest.raises(ObjectNotFound):
        servicer.Reconstruct(request, None)
    request = request_for(store, scene)
    request.views.rgb.uri = store.uri_for("sha256/00/" + "0" * 64 + ".safetensors")
    with pytest.raises(ObjectNotFound):
        servicer.Reconstruct(request, None)


def test_limits_are_resource_exhausted(store, scene):
    small = ReconstructorServicer(
        ColourSolveBackend(), store, ReconstructorSettings(max_views=4, max_pixels=8 * 48 * 48)
    )
    with pytest.raises(ResourceExhausted, match="6 views"):
        small.Reconstruct(request_for(store, scene), None)
    few_pixels = ReconstructorServicer(ColourSolveBackend(), store, ReconstructorSettings(max_pixels=1000))
    with pytest.raises(ResourceExhausted, match="pixels"):
        few_pixels.Reconstruct(request_for(store, scene), None)
    few_gaussians = ReconstructorServicer(
        ColourSolveBackend(), store, ReconstructorSettings(max_gaussians=1000)
    )
    with pytest.raises(InvalidArgument, match=r"`initial.frames\[0\]`.*1500 vertices"):
        few_gaussians.Reconstruct(request_for(store, scene), None)


def joint_request(store, scene, frames):
    """Time steps 0 and 1 of a two-frame asset (``frames``: its two .ply frames), views one after the
    other: both frames' views are the scene's."""
    _, views, _ = scene
    both = Views(
        np.concatenate([views.rgb] * 2),
        np.concatenate([views.alpha] * 2),
        None,
        views.cameras[list(range(len(views))) * 2],
    )
    return reconstructor_pb2.ReconstructRequest(
        views=write_views(store, both),
        initial=common_pb2.AssetRef(frames=[store_frame(store, f) for f in frames]),
        joint_time_steps=[1],
    )


def test_time_steps_reconstructed_together_share_each_gaussians_colour(store, scene):
    _, _, initial = scene
    wide = ReconstructorSettings(max_views=12, max_pixels=12 * 48 * 48)
    servicer = ReconstructorServicer(ColourSolveBackend(), store, wide)
    other = recolour(initial, np.random.default_rng(1).uniform(size=(len(initial), 3)), keep_higher_sh=True)
    reply = servicer.Reconstruct(joint_request(store, scene, [initial, other]), None)
    assert len(reply.joint_plys) == 1
    first = read_ply(store.get_bytes(reply.ply.uri, sha256=reply.ply.sha256))
    second = read_ply(store.get_bytes(reply.joint_plys[0].uri, sha256=reply.joint_plys[0].sha256))
    assert reply.gaussians_resolved > 1000
    # Each re-solved Gaussian has one colour in both frames; the rest keep each frame's own.
    assert (first.sh == second.sh).all(axis=(1, 2)).sum() == reply.gaussians_resolved
    assert 0 < reply.rms_error < 0.03


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda r: r.joint_time_steps.append(1), "joint_time_steps[1]"),
        (lambda r: r.joint_time_steps.__setitem__(0, 0), "joint_time_steps[0]"),
        (lambda r: r.joint_time_steps.__setitem__(0, 2), "joint_time_steps[0]"),
        (  # 12 views are not the same number for each of 5 time steps
            lambda r: (
                r.joint_time_steps.extend([2, 3, 4]) or r.initial.frames.extend([r.initial.frames[0]] * 3)
            ),
            "views",
        ),
    ],
)
def test_bad_joint_requests_name_the_field(store, scene, edit, field):
    _, _, initial = scene
    servicer = ReconstructorServicer(ColourSolveBackend(), store, ReconstructorSettings(max_views=12))
    request = joint_request(store, scene, [initial, initial])
    edit(request)
    with pytest.raises(InvalidArgument) as info:
        servicer.Reconstruct(request, None)
    assert info.value.field == field


def test_frames_of_different_sizes_are_not_reconstructed_together(store, scene):
    _, _, initial = scene
    servicer = ReconstructorServicer(ColourSolveBackend(), store, ReconstructorSettings(max_views=12))
    request = joint_request(store, scene, [initial, random_gaussians(100)])
    with pytest.raises(
        InvalidArgument, match=r"`initial.frames\[1\]` must hold as many Gaussians as frame 0"
    ):
        servicer.Reconstruct(request, None)


def test_warm_up_runs_the_solve_and_the_lock_a_job_runs(servicer):
    # A warm-up whose views change nothing solves nothing, and leaves the kernels' compilation to the
    # first job.
    results = []
    reconstruct = servicer.backend.reconstruct
    servicer.backend.reconstruct = lambda *args, **kwargs: results.append(reconstruct(*args, **kwargs))
    warm_up(servicer)
    assert results and all(r.resolved > 0 and r.locked > 0 for r in results)
    assert {r.higher_sh_kept for r in results} == {True, False}
