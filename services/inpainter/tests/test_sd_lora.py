"""The sd-lora backend on a tiny Stable Diffusion inpainting pipeline (random weights, real architecture),
saved with save_pretrained and loaded through the production path: LoRA fitting, the adapter artifact,
the strength schedule, compositing, and two servers sharing one store."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from tire.v1 import common_pb2, inpainter_pb2  # noqa: E402

from services.common.errors import ConfigError, InvalidArgument  # noqa: E402
from services.common.server import iterate  # noqa: E402
from services.common.store import MemoryStore  # noqa: E402
from services.common.tensors import get_tensor, put_tensor  # noqa: E402
from services.inpainter.artifacts import canonical_safetensors, read_safetensors_metadata  # noqa: E402
from services.inpainter.contract import FitConfig, InvalidSubject  # noqa: E402
from services.inpainter.sd_lora import SdLoraBackend  # noqa: E402
from services.inpainter.server import InpainterSettings, build_servicer, warm_up  # noqa: E402
from services.testing.random_models import save_sd_inpainting  # noqa: E402

SIZE = 64  # the tiny model's native resolution (UNet sample size 8 x VAE factor 8)
# One fixed image, no augmentation: 30 steps of a tiny random-weight model lower its loss by about 10%.
FIT = FitConfig(steps=30, learning_rate=1e-2, rank=4, flip=False, max_rotation_deg=0.0, seed=3)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(save_sd_inpainting(tmp_path_factory.mktemp("sd") / "tiny-inpaint", "tiny"))


@pytest.fixture(scope="module")
def backend(model_dir):
    return SdLoraBackend(model_dir, batch_size=2)


def references(count: int = 2, seed: int = 0):
    """A textured brown disc on grey, and its foreground mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    stripes = (np.sin(xx / 3.0) * 40)[..., None]
    brown = np.array([140, 95, 60]) + stripes + rng.integers(-10, 11, (count, SIZE, SIZE, 3))
    images = np.where(disc[..., None], brown, 128).clip(0, 255).astype(np.uint8)
    return images, np.repeat(disc[None].astype(np.float32), count, axis=0)


def views(count: int = 3, seed: int = 1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((count, SIZE, SIZE), bool)
    masks[:, 16:48, 20:44] = True
    return images, masks


@pytest.fixture(scope="module")
def subject(backend):
    images, masks = references(count=1)
    progress = []
    artifact = backend.fit_subject(images, masks, FIT, lambda *event: progress.append(event))
    return artifact, progress


def test_lora_steps_lower_the_masked_loss(backend, subject):
    artifact, progress = subject
    images, masks = references(count=1)
    assert [step for step, _, _ in progress] == list(range(1, 31))
    assert all(total == 30 and np.isfinite(loss) for _, total, loss in progress)
    before = backend.subject_loss(images, masks, None, seed=5)
    after = backend.subject_loss(images, masks, artifact, seed=5)
    assert after < 0.95 * before


def test_the_loss_ignores_what_is_outside_the_foreground(backend, subject):
    artifact, _ = subject
    images, masks = references(count=1)
    repainted = images.copy()
    repainted[masks < 0.5] = np.random.default_rng(9).integers(0, 256, (int((masks < 0.5).sum()), 3))
    assert backend.subject_loss(repainted, masks, artifact, seed=5) == pytest.approx(
        backend.subject_loss(images, masks, artifact, seed=5), rel=0.05
    )


def test_the_adapter_is_a_deterministic_described_artifact(backend, subject, model_dir):
    artifact, _ = subject
    images, masks = references(count=1)
    assert backend.fit_subject(images, masks, FIT, lambda *_: None) == artifact
    metadata = read_safetensors_metadata(artifact)
    assert metadata["backend"] == "sd-lora" and metadata["base_model"] == model_dir
    assert metadata["rank"] == "4" and metadata["prompt"] == "A photo of sks"
    other = backend.fit_subject(images, masks, FitConfig(steps=2, rank=4, seed=4), lambda *_: None)
    assert other != artifact


def test_inpaint_changes_only_masked_pixels_and_is_deterministic(backend, subject):
    artifact, _ = subject
    images, masks = views()
    out = backend.inpaint(images, masks, None, artifact, 0.3, seed=11, num_inference_steps=10)
    assert out.shape == images.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out[~masks], images[~masks])
    assert (out[masks] != images[masks]).mean() > 0.5
    np.testing.assert_array_equal(
        backend.inpaint(images, masks, None, artifact, 0.3, seed=11, num_inference_steps=10), out
    )
    assert not np.array_equal(
        backend.inpaint(images, masks, None, artifact, 0.3, seed=12, num_inference_steps=10), out
    )
    np.testing.assert_array_equal(backend.inpaint(images, masks, None, artifact, 0.0, seed=11), images)


@pytest.mark.parametrize(("strength", "expected"), [(0.3, 6), (1.0, 20), (0.01, 1)])
def test_strength_runs_the_tail_of_the_schedule(backend, subject, strength, expected):
    artifact, _ = subject
    images, masks = views(count=1)
    seen = []
    backend.inpaint(
        images,
        masks,
        None,
        artifact,
        strength,
        seed=0,
        num_inference_steps=20,
        on_step=lambda i, t, z: seen.append(t),
    )
    assert len(seen) == expected
    backend.scheduler.set_timesteps(20)
    assert seen == [int(t) for t in backend.scheduler.timesteps[20 - expected :]]


def test_guidance_changes_the_result(backend, subject):
    artifact, _ = subject
    images, masks = views(count=1)
    plain, guided = (
        backend.inpaint(images, masks, None, artifact, 0.5, seed=0, num_inference_steps=6, guidance_scale=g)
        for g in (1.0, 7.0)
    )
    assert not np.array_equal(plain, guided)


def test_views_of_any_size_come_back_at_their_size(backend, subject):
    artifact, _ = subject
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    masks = np.zeros((2, 40, 56), bool)
    masks[:, 10:30, 10:30] = True
    out = backend.inpaint(images, masks, None, artifact, 0.3, seed=0, num_inference_steps=4)
    assert out.shape == images.shape
    np.testing.assert_array_equal(out[~masks], images[~masks])


def test_foreign_artifacts_are_invalid_subjects(backend, subject, tmp_path):
    artifact, _ = subject
    images, masks = views(count=1)
    colour = canonical_safetensors({"weights": np.ones(2, np.float32)}, {"backend": "colour", "format": "1"})
    for data, problem in ((colour, "'colour' model"), (b"garbage!", "not a safetensors")):
        with pytest.raises(InvalidSubject, match=problem):
            backend.inpaint(images, masks, None, data, 0.3, seed=0)
    other = SdLoraBackend(str(save_sd_inpainting(tmp_path / "other", "tiny", seed=1)))
    with pytest.raises(InvalidSubject, match="fitted on base model"):
        other.inpaint(images, masks, None, artifact, 0.3, seed=0)
    metadata = read_safetensors_metadata(artifact)
    wrong_rank = canonical_safetensors({"unet.x.lora_A.weight": np.ones((2, 2), np.float32)}, metadata)
    with pytest.raises(InvalidSubject, match=r"cannot be loaded|do not fit"):
        backend.inpaint(images, masks, None, wrong_rank, 0.3, seed=0)


def test_a_training_resolution_off_the_grid_names_the_setting(backend):
    images, masks = references(count=1)
    with pytest.raises(InvalidArgument, match=r"settings\.resolution"):
        backend.fit_subject(images, masks, FitConfig(steps=1, resolution=72), lambda *_: None)


def test_bad_models_and_settings_are_config_errors(tmp_path, model_dir):
    from diffusers import UNet2DConditionModel

    from services.testing.random_models import UNET

    folder = save_sd_inpainting(tmp_path / "text2img", "tiny")
    UNet2DConditionModel(in_channels=4, out_channels=4, **UNET["tiny"]).save_pretrained(folder / "unet")
    with pytest.raises(ConfigError, match="9"):
        SdLoraBackend(str(folder))
    with pytest.raises(ConfigError, match="neither an existing folder"):
        SdLoraBackend(str(tmp_path / "missing" / "model"))
    with pytest.raises(ConfigError, match="resolution"):
        SdLoraBackend(model_dir, resolution=100)
    with pytest.raises(ConfigError, match="dtype"):
        SdLoraBackend(model_dir, device="cpu", dtype="float16")
    with pytest.raises(ConfigError, match="TIRE_INPAINTER_MODEL"):
        build_servicer(InpainterSettings(backend="sd-lora"), MemoryStore())


def fit_and_inpaint(servicer, store, images, masks):
    """FitSubject then Inpaint through the servicer; returns (subject model, inpainted views)."""
    refs, ref_masks = references(count=1)
    request = inpainter_pb2.FitSubjectRequest(
        images=put_tensor(store, refs),
        masks=put_tensor(store, ref_masks),
        settings=common_pb2.FitSettings(steps=3, rank=2, seed=1),
    )
    *progress, last = iterate(servicer.FitSubject(request, None))
    assert [event.progress.step for event in progress] == [1, 2, 3]
    return last.model, inpaint(servicer, store, last.model, images, masks)


def inpaint(servicer, store, model, images, masks):
    response = servicer.Inpaint(
        inpainter_pb2.InpaintRequest(
            images=put_tensor(store, images),
            masks=put_tensor(store, masks.astype(np.uint8)),
            subject=model,
            num_inference_steps=6,
            seed=3,
        ),
        None,
    )
    return get_tensor(store, response.images, field="images", dtype=np.uint8, shape=images.shape)


def test_a_second_server_uses_the_adapter_the_first_one_fitted(model_dir):
    store = MemoryStore()
    settings = InpainterSettings(backend="sd-lora", model=model_dir)
    first, second = build_servicer(settings, store), build_servicer(settings, store)
    warm_up(first)
    images, masks = views(count=2)
    model, out = fit_and_inpaint(first, store, images, masks)
    assert model.backend == "sd-lora" and model.base_model == model_dir
    assert store.get_object(model.artifact)[:8]  # the adapter round-trips through the store
    np.testing.assert_array_equal(inpaint(second, store, model, images, masks), out)
    np.testing.assert_array_equal(out[~masks], images[~masks])
    info = second.Describe(None, None)
    assert info.backend == "sd-lora" and info.model == model_dir and info.device.startswith("cpu")


def test_a_model_in_the_object_store_loads(model_dir, tmp_path):
    store = MemoryStore(bucket="models")
    uris = store.upload_folder(model_dir, "s3://models/sd/tiny-inpaint")
    assert "s3://models/sd/tiny-inpaint/unet/config.json" in uris
    backend = SdLoraBackend("s3://models/sd/tiny-inpaint", store=store, model_cache_dir=str(tmp_path))
    assert backend.base_model == "s3://models/sd/tiny-inpaint" and backend.resolution == SIZE
    cached = list(tmp_path.iterdir())
    SdLoraBackend("s3://models/sd/tiny-inpaint", store=store, model_cache_dir=str(tmp_path))
    assert list(tmp_path.iterdir()) == cached  # downloaded once


def test_wrong_backend_subject_is_rejected_by_the_server(model_dir):
    store = MemoryStore()
    servicer = build_servicer(InpainterSettings(backend="sd-lora", model=model_dir), store)
    colour = canonical_safetensors({"weights": np.ones(2, np.float32)}, {"backend": "colour", "format": "1"})
    images, masks = views(count=1)
    model = inpainter_pb2.SubjectModel(artifact=store.put_bytes(colour, suffix=".safetensors"))
    with pytest.raises(InvalidArgument, match=r"subject\.artifact"):
        inpaint(servicer, store, model, images, masks)
