"""The mv-diffusion refiner on a tiny random-weight model saved and loaded like real weights: the mask-aware
loop (the source view's latents are its noised input at every step, from the strength point on), pixel
guarantees, seeds, joint attention across views, the camera convention, the loader and the servicer."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from tire.v1 import common_pb2, refiner_pb2

from services.common.assets import store_frame
from services.common.cameras import Cameras, orbit_cameras
from services.common.config import from_env
from services.common.errors import ConfigError, InvalidArgument
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.common.views import Views, write_views
from services.refiner.mv_denoiser import MultiViewDenoiser
from services.refiner.mv_diffusion import (
    MvDiffusionBackend,
    encode_latents,
    joint_groups,
    mvdream_cameras,
    to_model_pixels,
    view_noise,
)
from services.refiner.server import RefinerSettings, build_servicer, warm_up
from services.refiner.tests.scenes import card, orbit_views
from services.testing.random_models import save_mv_refiner

SIZE, STEPS, SEED = 32, 10, 1
LOAD = dict(device="cpu", resolution=0, num_inference_steps=STEPS)  # tiny model, views at their own size


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_mv_refiner(tmp_path_factory.mktemp("mv") / "tiny", "tiny")


@pytest.fixture(scope="module")
def backend(model_folder):
    return MvDiffusionBackend(str(model_folder), **LOAD)


@pytest.fixture(scope="module")
def scene():
    """A card seen from four sides, 32 x 32; view 0 (azimuth 0) is the source."""
    gaussians = card()
    return gaussians, orbit_views(gaussians, azimuths=(0.0, 90.0, 180.0, 270.0), size=SIZE)


def free_but_source(views: Views) -> np.ndarray:
    mask = np.ones(views.alpha.shape, dtype=np.float32)
    mask[0] = 0.0
    return mask


@pytest.fixture(scope="module")
def reference(backend, scene):
    """The tiny backend's refinement of the scene: every view but the source free, strength 0.3, SEED."""
    gaussians, views = scene
    return backend.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED)


def record_steps(calls: list):
    return lambda i, t, latents, group: calls.append((i, int(t), latents.clone(), list(group)))


def noised_inputs(backend, views: Views, group: list[int], seed: int, t: int) -> torch.Tensor:
    """``[F, C, h, w]`` the group's own latents (encoded together, as the loop does), noised to ``t`` with
    each view's noise: where the loop must hold views whose mask is 0."""
    with torch.no_grad():
        z0 = encode_latents(backend.components.vae, to_model_pixels(views.rgb[group], SIZE))
    noise = torch.stack([view_noise(seed, view, tuple(z0.shape[1:])) for view in group])
    return backend.components.scheduler.add_noise(z0, noise, torch.tensor([t]))


# The loop.


def test_the_source_view_is_its_noised_input_at_every_step_from_the_strength_point(backend, scene, reference):
    gaussians, views = scene
    calls = []
    out = backend.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED, on_step=record_steps(calls))
    np.testing.assert_array_equal(out, reference)  # the callback only watches

    schedule = DDIMScheduler.from_config(backend.components.scheduler.config)
    schedule.set_timesteps(STEPS)
    assert [t for _, t, _, _ in calls] == schedule.timesteps[-3:].tolist()  # int(10 * 0.3) = 3 steps
    assert [i for i, _, _, _ in calls] == [0, 1, 2] and all(group == [0, 1, 2, 3] for *_, group in calls)
    for _, t, latents, group in calls:
        torch.testing.assert_close(
            latents[0], noised_inputs(backend, views, group, SEED, t)[0], rtol=0, atol=0
        )
    # The other views are denoised, not held: after the first step they have left their noised inputs.
    _, t, latents, group = calls[1]
    assert (
        (latents[1:] - noised_inputs(backend, views, group, SEED, t)[1:]).abs().amax(dim=(1, 2, 3)) > 1e-2
    ).all()


def test_free_views_change_masked_pixels_keep_their_bytes_and_the_seed_decides(backend, scene, reference):
    gaussians, views = scene
    for view in (1, 2, 3):
        assert (reference[view] != views.rgb[view]).mean() > 0.5, view
    np.testing.assert_array_equal(reference[0], views.rgb[0])
    np.testing.assert_array_equal(
        backend.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED), reference
    )
    other_seed = backend.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED + 1)
    np.testing.assert_array_equal(other_seed[0], views.rgb[0])
    assert (other_seed[1:] != reference[1:]).mean() > 0.1

    rng = np.random.default_rng(0)
    mask = rng.uniform(0.2, 1.0, size=views.alpha.shape).astype(np.float32)
    mask[rng.uniform(size=mask.shape) < 0.3] = 0.0
    mask[0] = 1.0  # the source view is held fixed whatever its mask says
    out = backend.refine(views, mask, gaussians, 0, 0.3, SEED)
    assert out.shape == views.rgb.shape and out.dtype == np.uint8
    kept = mask == 0
    kept[0] = True
    np.testing.assert_array_equal(out[kept], views.rgb[kept])
    assert (out[~kept] != views.rgb[~kept]).mean() > 0.5


def test_strength_under_one_step_and_an_empty_mask_change_nothing(backend, scene):
    gaussians, views = scene
    calls = []
    out = backend.refine(views, free_but_source(views), gaussians, 0, 0.09, 0, on_step=record_steps(calls))
    np.testing.assert_array_equal(out, views.rgb)
    assert calls == [] and out is not views.rgb
    only_source = np.zeros(views.alpha.shape, dtype=np.float32)
    only_source[0] = 1.0
    np.testing.assert_array_equal(backend.refine(views, only_source, gaussians, 0, 1.0, 0), views.rgb)


def test_views_beyond_max_joint_views_are_grouped_with_the_source(model_folder, backend, scene, reference):
    assert joint_groups(4, 2, 8) == [[0, 1, 2, 3]]
    assert joint_groups(6, 2, 3) == [[2, 0, 1], [2, 3, 4], [2, 5]]
    gaussians, views = scene
    grouped = MvDiffusionBackend(str(model_folder), max_joint_views=2, **LOAD)
    calls = []
    out = grouped.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED, on_step=record_steps(calls))
    assert [group for i, *_, group in calls if i == 0] == [[0, 1], [0, 2], [0, 3]]
    for _, t, latents, group in calls:
        torch.testing.assert_close(
            latents[0], noised_inputs(backend, views, group, SEED, t)[0], rtol=0, atol=0
        )
    np.testing.assert_array_equal(out[0], views.rgb[0])
    # Each view has its own noise either way, but what it attends to differs: pairs refine differently.
    assert (out[1:] != reference[1:]).any()


def test_classifier_free_guidance_runs_and_changes_the_result(model_folder, scene, reference):
    gaussians, views = scene
    guided = MvDiffusionBackend(str(model_folder), guidance_scale=4.0, prompt="a red car", **LOAD)
    out = guided.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED)
    np.testing.assert_array_equal(out[0], views.rgb[0])
    assert (out[1:] != reference[1:]).any()


def test_views_at_their_own_size_must_fit_the_model(backend, scene):
    gaussians, _ = scene
    odd = orbit_views(gaussians, azimuths=(0.0, 90.0), size=24)  # not a multiple of 16
    with pytest.raises(InvalidArgument, match="multiple of 16") as info:
        backend.refine(odd, free_but_source(odd), gaussians, 0, 0.3, 0)
    assert info.value.field == "views"


# The denoiser and the cameras.


def test_joint_attention_mixes_the_views_of_one_object_only(backend):
    denoiser = backend.components.denoiser
    assert isinstance(denoiser, MultiViewDenoiser)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 4, 8, 8, generator=generator)
    context = torch.randn(4, 77, 32, generator=generator)
    camera = torch.randn(4, 16, generator=generator)
    timesteps = torch.full((4,), 500)
    changed = x.clone()
    changed[2] += 1.0

    def run(latents, frames, cameras=camera):
        with torch.no_grad():
            return denoiser(
                x=latents, timesteps=timesteps, context=context, num_frames=frames, camera=cameras
            )

    joint, joint_changed = run(x, 4), run(changed, 4)
    assert joint.shape == x.shape
    assert (joint[0] - joint_changed[0]).abs().max() > 1e-4  # view 0 sees view 2
    torch.testing.assert_close(run(x, 1)[0], run(changed, 1)[0], rtol=0, atol=1e-6)  # per view: it does not
    # Two objects of two views each: view 2 belongs to the second one only.
    pairs, pairs_changed = run(x, 2), run(changed, 2)
    torch.testing.assert_close(pairs[:2], pairs_changed[:2], rtol=0, atol=1e-6)
    assert (pairs[3] - pairs_changed[3]).abs().max() > 1e-4
    # The camera conditions its own view.
    moved = camera.clone()
    moved[1] += 1.0
    assert (run(x, 1, moved)[1] - run(x, 1)[1]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="num_frames=3"):
        run(x, 3)


def test_mvdream_cameras_known_poses():
    poses = mvdream_cameras(orbit_cameras([0.0, 90.0], 32, 32)).reshape(2, 4, 4)
    # Azimuth 0, the camera on +z of the y-up world: at (0, -1, 0) of the z-up world, up along +z,
    # right along +x, looking along +y toward the origin.
    np.testing.assert_allclose(poses[0, :3, 3], [0.0, -1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(poses[0, :3, :3], [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(poses[1, :3, 3], [1.0, 0.0, 0.0], atol=1e-6)  # azimuth 90: on +x
    above = mvdream_cameras(orbit_cameras([0.0], 32, 32, elevation_deg=-30.0))  # LGM: negative is above
    np.testing.assert_allclose(above[0].reshape(4, 4)[:3, 3], [0.0, -np.cos(np.pi / 6), 0.5], atol=1e-6)


@pytest.mark.parametrize("elevation", [-60.0, -15.0, 0.0, 20.0])
@pytest.mark.parametrize("radius", [0.8, 1.5, 4.0])
def test_mvdream_cameras_invariants(elevation, radius):
    azimuths = np.array([0.0, 45.0, 130.0, 180.0, -100.0])
    poses = mvdream_cameras(orbit_cameras(azimuths, 32, 32, elevation, radius)).reshape(-1, 4, 4)
    assert poses.dtype == np.float32
    rotation, position = poses[:, :3, :3].astype(np.float64), poses[:, :3, 3].astype(np.float64)
    np.testing.assert_allclose(poses[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (len(azimuths), 1)))
    np.testing.assert_allclose(
        rotation @ rotation.transpose(0, 2, 1), np.broadcast_to(np.eye(3), rotation.shape), atol=1e-6
    )
    np.testing.assert_allclose(np.linalg.det(rotation), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(position, axis=1), 1.0, atol=1e-6)
    # The position is the orbit's direction (LGM: x = cos e sin a, y = -sin e, z = cos e cos a) in the
    # z-up world (x, y, z) -> (x, -z, y); OpenGL cameras look down -z, so their z axis points back at
    # the camera from the origin.
    a, e = np.deg2rad(azimuths), np.deg2rad(elevation)
    direction = np.stack(
        [np.cos(e) * np.sin(a), -np.cos(e) * np.cos(a), -np.sin(e) * np.ones_like(a)], axis=1
    )
    np.testing.assert_allclose(position, direction, atol=1e-6)
    np.testing.assert_allclose(rotation[:, :, 2], position, atol=1e-6)
    assert (rotation[:, 2, 1] > 0).all()  # the camera's up axis leans toward the world's up (+z)


def test_mvdream_cameras_refuse_a_camera_at_the_origin():
    cameras = orbit_cameras([0.0, 90.0], 32, 32)
    viewmats = cameras.viewmats.copy()
    viewmats[1, :3, 3] = 0.0
    with pytest.raises(InvalidArgument, match="camera 1"):
        mvdream_cameras(Cameras(viewmats, cameras.Ks, 32, 32))


# Loading.


def remote_copy(model_folder, target):
    """``model_folder`` with its denoiser declared as code shipped with the model (a subclass of the
    built-in one, in unet/remote_denoiser.py), as MVDream's ``MultiViewUNetModel`` is."""
    shutil.copytree(model_folder, target)
    config_path = target / "unet" / "config.json"
    config_path.write_text(
        json.dumps({**json.loads(config_path.read_text()), "_class_name": "RemoteDenoiser"})
    )
    index_path = target / "model_index.json"
    index_path.write_text(
        json.dumps({**json.loads(index_path.read_text()), "unet": ["remote_denoiser", "RemoteDenoiser"]})
    )
    (target / "unet" / "remote_denoiser.py").write_text(
        "from services.refiner.mv_denoiser import MultiViewDenoiser\n\n\n"
        "class RemoteDenoiser(MultiViewDenoiser):\n"
        '    """Stands for code that ships with a model."""\n'
    )
    return target


def test_a_denoiser_shipped_as_code_loads_only_when_trusted(
    model_folder, scene, reference, tmp_path, monkeypatch
):
    remote = remote_copy(model_folder, tmp_path / "remote")
    with pytest.raises(ConfigError, match="TIRE_REFINER_TRUST_REMOTE_CODE=true"):
        MvDiffusionBackend(str(remote), **LOAD)

    # diffusers copies trusted code into its modules cache and imports it from there: keep both in tmp_path.
    import diffusers.utils.dynamic_modules_utils as dynamic_modules

    monkeypatch.setattr(dynamic_modules, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    trusted = MvDiffusionBackend(str(remote), trust_remote_code=True, **LOAD)
    denoiser = trusted.components.denoiser
    assert type(denoiser).__name__ == "RemoteDenoiser" and type(denoiser) is not MultiViewDenoiser
    assert (tmp_path / "modules").is_dir()
    # Loading it again does not run the code again: diffusers would execute it into the same module,
    # replacing the classes the first model's code refers to (MVDream's then fails at its first step).
    again = MvDiffusionBackend(str(remote), trust_remote_code=True, **LOAD)
    assert type(again.components.denoiser) is type(denoiser)
    gaussians, views = scene
    np.testing.assert_array_equal(
        trusted.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED), reference
    )

    # Code that imports what is not installed (MVDream's needs xformers) is a configuration error.
    broken = remote_copy(model_folder, tmp_path / "broken")
    (broken / "unet" / "remote_denoiser.py").write_text("import package_that_is_not_installed\n")
    with pytest.raises(ConfigError, match="package_that_is_not_installed"):
        MvDiffusionBackend(str(broken), trust_remote_code=True, **LOAD)
    # So is code that fails otherwise as it runs (with kiui 0.3.5, MVDream's raises NameError).
    (broken / "unet" / "remote_denoiser.py").write_text("Union[int, str]\n")
    with pytest.raises(ConfigError, match="NameError: name 'Union' is not defined"):
        MvDiffusionBackend(str(broken), trust_remote_code=True, **LOAD)


def test_bad_models_and_settings_are_config_errors(model_folder, tmp_path):
    with pytest.raises(ConfigError, match="TIRE_REFINER_MODEL"):
        MvDiffusionBackend("", **LOAD)
    with pytest.raises(ConfigError, match="neither an existing folder"):
        MvDiffusionBackend(str(tmp_path / "missing" / "model"), **LOAD)
    incomplete = shutil.copytree(model_folder, tmp_path / "incomplete")
    shutil.rmtree(incomplete / "tokenizer")
    with pytest.raises(ConfigError, match="lacks tokenizer"):
        MvDiffusionBackend(str(incomplete), **LOAD)
    imagedream = shutil.copytree(model_folder, tmp_path / "imagedream")
    config_path = imagedream / "unet" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "ip_dim": 16}))
    with pytest.raises(ConfigError, match="ImageDream"):
        MvDiffusionBackend(str(imagedream), **LOAD)
    with pytest.raises(ConfigError, match="resolution must be a multiple of 16"):
        MvDiffusionBackend(str(model_folder), **{**LOAD, "resolution": 40})
    with pytest.raises(ConfigError, match="max_joint_views"):
        MvDiffusionBackend(str(model_folder), max_joint_views=1, **LOAD)
    with pytest.raises(ConfigError, match="dtype"):
        MvDiffusionBackend(str(model_folder), **{**LOAD, "dtype": "float16"})


def test_a_model_in_the_object_store_loads_and_matches_the_local_copy(
    model_folder, scene, reference, tmp_path
):
    store = MemoryStore()
    store.upload_folder(model_folder, "s3://memory/models/tiny-mv")
    remote = MvDiffusionBackend(
        "s3://memory/models/tiny-mv", store=store, model_cache_dir=str(tmp_path), **LOAD
    )
    assert remote.model == "s3://memory/models/tiny-mv"
    assert len(list(tmp_path.iterdir())) == 1  # downloaded once, into the cache folder
    gaussians, views = scene
    np.testing.assert_array_equal(
        remote.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED), reference
    )


# The service.


def test_the_servicer_refines_with_mv_diffusion(model_folder, scene, reference):
    store = MemoryStore()
    settings = from_env(
        RefinerSettings,
        "TIRE_REFINER_",
        {
            "TIRE_REFINER_BACKEND": "mv-diffusion",
            "TIRE_REFINER_MODEL": str(model_folder),
            "TIRE_REFINER_DEVICE": "cpu",
            "TIRE_REFINER_RESOLUTION": "0",
            "TIRE_REFINER_NUM_INFERENCE_STEPS": str(STEPS),
        },
    )
    servicer = build_servicer(settings, store)
    warm_up(servicer)
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert (info.backend, info.model) == ("mv-diffusion", str(model_folder))
    assert info.device.startswith("cpu") and "mv-diffusion" in info.available_backends
    assert (
        info.settings["num_inference_steps"] == str(STEPS) and info.settings["trust_remote_code"] == "False"
    )

    gaussians, views = scene
    mask = free_but_source(views)
    request = refiner_pb2.RefineRequest(
        views=write_views(store, views),
        update_mask=put_tensor(store, mask),
        asset=common_pb2.AssetRef(frames=[store_frame(store, gaussians)]),
        source_index=0,
        seed=SEED,
    )
    rgb = get_tensor(store, servicer.Refine(request, None).rgb, dtype=np.uint8, shape=views.rgb.shape)
    np.testing.assert_array_equal(rgb, reference)  # strength 0: the backend's default, 0.3


def test_mv_diffusion_settings_are_checked():
    with pytest.raises(ConfigError, match="guidance_scale"):
        from_env(RefinerSettings, "TIRE_REFINER_", {"TIRE_REFINER_GUIDANCE_SCALE": "0.5"})
    with pytest.raises(ConfigError, match="TIRE_REFINER_TRUST_REMOTE_CODE"):
        from_env(RefinerSettings, "TIRE_REFINER_", {"TIRE_REFINER_TRUST_REMOTE_CODE": "maybe"})
    with pytest.raises(ConfigError, match="max_joint_views"):
        RefinerSettings(max_joint_views=1)
    with pytest.raises(ConfigError, match="TIRE_REFINER_MODEL"):
        build_servicer(RefinerSettings(backend="mv-diffusion"), MemoryStore())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_half_precision_on_the_gpu(model_folder, scene):
    gpu = MvDiffusionBackend(str(model_folder), **{**LOAD, "device": "cuda"})  # dtype auto: float16
    assert "float16" in gpu.device
    gaussians, views = scene
    calls = []
    out = gpu.refine(views, free_but_source(views), gaussians, 0, 0.3, SEED, on_step=record_steps(calls))
    assert len(calls) == 3 and all(torch.isfinite(latents).all() for _, _, latents, _ in calls)
    np.testing.assert_array_equal(out[0], views.rgb[0])
    assert (out[1:] != views.rgb[1:]).mean() > 0.5
