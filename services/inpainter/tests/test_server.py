"""The inpainter servicer in-process, over the in-memory store: streaming, values and request validation."""

import itertools

import numpy as np
import pytest
import safetensors.numpy
from tire.v1 import common_pb2, inpainter_pb2

from services.common.errors import InvalidArgument, ObjectNotFound, ResourceExhausted
from services.common.server import iterate
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.inpainter.backends import ColourBackend
from services.inpainter.colour import canonical_safetensors
from services.inpainter.contract import FitConfig
from services.inpainter.server import (
    InpainterServicer,
    InpainterSettings,
    build_servicer,
    fit_config,
    warm_up,
)

SIZE = 32


@pytest.fixture
def store():
    return MemoryStore()


@pytest.fixture
def servicer(store):
    settings = InpainterSettings(max_views=4, max_pixels=4 * SIZE * SIZE, max_reference_images=2)
    return InpainterServicer(ColourBackend(threads=1), store, settings)


def scene(seed: int = 0, views: int = 3):
    """Reference-ish images: a brown disc on black; views of a blue disc with a hole, masks, alpha."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    noise = rng.integers(-12, 13, (views, SIZE, SIZE, 3))
    brown = np.where(disc[..., None], np.array([140, 95, 60]) + noise, 0).clip(0, 255).astype(np.uint8)
    blue = np.where(disc[..., None], np.array([90, 110, 150]) + noise, 0).clip(0, 255).astype(np.uint8)
    alpha = np.repeat(disc[None].astype(np.float32), views, axis=0)
    alpha[:, 14:18, 14:18] = 0.0
    blue[alpha < 0.5] = 0
    masks = np.repeat(disc[None], views, axis=0).astype(np.uint8)
    return brown, blue, masks, alpha


@pytest.fixture
def refs(store):
    brown, blue, masks, alpha = scene()
    return {
        "references": put_tensor(store, brown[:1]),
        "reference_masks": put_tensor(store, (brown[:1].max(axis=-1) > 0).astype(np.float32)),
        "images": put_tensor(store, blue),
        "masks": put_tensor(store, masks),
        "alpha": put_tensor(store, alpha),
        "arrays": (brown, blue, masks, alpha),
    }


def fit_request(refs, **settings):
    return inpainter_pb2.FitSubjectRequest(
        images=refs["references"],
        masks=refs["reference_masks"],
        settings=common_pb2.FitSettings(**settings),
    )


@pytest.fixture
def subject(servicer, refs):
    *_, last = iterate(servicer.FitSubject(fit_request(refs, seed=1), None))
    return last.model


def inpaint_request(refs, model, **kwargs):
    fields = {"images": refs["images"], "masks": refs["masks"], "alpha": refs["alpha"], "subject": model}
    fields.update(kwargs)
    return inpainter_pb2.InpaintRequest(**fields)


# ----------------------------------------------------------------------------------------------------
# Real calls


def test_fit_subject_streams_progress_then_the_model(servicer, store, refs):
    events = list(iterate(servicer.FitSubject(fit_request(refs, seed=1, clusters=4, steps=20), None)))
    progress = [e.progress for e in events[:-1]]
    assert all(e.WhichOneof("event") == "progress" for e in events[:-1])
    assert [p.step for p in progress] == list(range(1, 21)) and {p.total_steps for p in progress} == {20}
    losses = [p.loss for p in progress]
    assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(losses)) and losses[0] > 0
    elapsed = [p.elapsed_seconds for p in progress]
    assert elapsed == sorted(elapsed) and elapsed[0] >= 0

    model = events[-1].model
    assert events[-1].WhichOneof("event") == "model"
    assert (model.backend, model.base_model) == ("colour", "")
    assert model.artifact.media_type == "application/vnd.safetensors"
    assert model.artifact.uri.endswith(".safetensors")
    artifact = store.get_object(model.artifact)
    brown = refs["arrays"][0]
    expected = ColourBackend().fit_subject(
        brown[:1],
        (brown[:1].max(axis=-1) > 0).astype(np.float32),
        FitConfig(steps=20, clusters=4, seed=1),
        lambda *_: None,
    )
    assert artifact == expected
    assert set(safetensors.numpy.load(artifact)) == {"weights", "means", "covariances"}


def test_fit_subject_defaults_and_determinism(servicer, refs):
    first = list(iterate(servicer.FitSubject(fit_request(refs, seed=5), None)))
    again = list(iterate(servicer.FitSubject(fit_request(refs, seed=5), None)))
    assert len(first) == 51  # the default 400 steps, capped at 50 Lloyd iterations, then the model
    assert first[-1].model.artifact.uri == again[-1].model.artifact.uri  # content-addressed, same bytes


def test_inpaint_matches_the_backend_and_keeps_unmasked_pixels(servicer, store, refs, subject):
    reply = servicer.Inpaint(inpaint_request(refs, subject, seed=3), None)
    out = get_tensor(store, reply.images, dtype=np.uint8, shape=(3, SIZE, SIZE, 3))
    _, blue, masks, alpha = refs["arrays"]
    expected = ColourBackend().inpaint(
        blue, masks.astype(bool), alpha, store.get_object(subject.artifact), 1.0, 3
    )
    np.testing.assert_array_equal(out, expected)  # strength 0 means the colour backend's default, 1.0
    np.testing.assert_array_equal(out[masks == 0], blue[masks == 0])
    assert len(reply.images.preview_uris) == 3
    # The hole (alpha 0 inside the mask) was filled: no black left inside the disc.
    assert out[masks == 1].max(axis=-1).min() > 30

    weaker = servicer.Inpaint(inpaint_request(refs, subject, seed=3, strength=0.3), None)
    assert weaker.images.uri != reply.images.uri
    unchanged = servicer.Inpaint(
        inpaint_request(refs, subject, seed=3, num_inference_steps=10, guidance_scale=1.0), None
    )
    assert unchanged.images.uri == reply.images.uri  # the colour backend ignores diffusion settings


class RecordingBackend(ColourBackend):
    """The colour backend with another default strength, recording the strength each call gets."""

    default_strength = 0.55

    def __init__(self):
        super().__init__(threads=1)
        self.strengths: list[float] = []

    def inpaint(self, images, masks, alpha, subject, strength, seed, **diffusion):
        self.strengths.append(strength)
        return super().inpaint(images, masks, alpha, subject, strength, seed, **diffusion)


def test_strength_zero_reaches_the_backend_as_its_default_strength(store, refs, subject):
    backend = RecordingBackend()
    servicer = InpainterServicer(backend, store, InpainterSettings())
    assert servicer.Describe(common_pb2.DescribeRequest(), None).settings["default_strength"] == "0.55"
    servicer.Inpaint(inpaint_request(refs, subject), None)
    servicer.Inpaint(inpaint_request(refs, subject, strength=0.25), None)
    assert backend.strengths == [0.55, 0.25]
    with pytest.raises(InvalidArgument, match=r"or 0 for the backend's default \(0\.55\)"):
        servicer.Inpaint(inpaint_request(refs, subject, strength=1.5), None)


def test_a_model_version_is_refused_by_a_backend_whose_models_have_none(servicer, refs, subject):
    assert servicer.Describe(common_pb2.DescribeRequest(), None).model_version == ""
    with pytest.raises(
        InvalidArgument, match=r"`model_version` names a version, but 'colour' models have none"
    ):
        servicer.Inpaint(inpaint_request(refs, subject, model_version="3"), None)
    fit = fit_request(refs, seed=1)
    fit.model_version = "3"
    with pytest.raises(InvalidArgument, match="model_version"):
        list(iterate(servicer.FitSubject(fit, None)))


def test_inpaint_without_alpha_and_with_an_empty_mask(servicer, store, refs, subject):
    empty = put_tensor(store, np.zeros((3, SIZE, SIZE), np.uint8))
    reply = servicer.Inpaint(inpaint_request(refs, subject, alpha=None, masks=empty), None)
    np.testing.assert_array_equal(get_tensor(store, reply.images), refs["arrays"][1])


def test_describe_names_backend_and_settings(servicer):
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert info.service == "tire.v1.InpainterService"
    assert (info.backend, info.model, info.device) == ("colour", "", "cpu (1 threads)")
    assert list(info.available_backends) == ["colour", "sd-lora", "triton"]
    assert info.settings["max_views"] == "4" and info.settings["transport_iterations"] == "30"
    assert info.settings["default_strength"] == "1.0"  # what a request's strength 0 means here


def test_build_servicer_and_warm_up(store):
    servicer = build_servicer(InpainterSettings(threads=2, smoothing_sigma=2.0), store)
    assert servicer.backend.threads == 2 and servicer.backend.smoothing_sigma == 2.0
    warm_up(servicer)


def test_fit_config_applies_the_proto_defaults():
    assert fit_config(common_pb2.FitSettings()) == FitConfig()
    config = fit_config(common_pb2.FitSettings(steps=7, clusters=3, flip=False, resolution=512, seed=9))
    assert (config.steps, config.clusters, config.flip, config.resolution, config.seed) == (
        7,
        3,
        False,
        512,
        9,
    )


# ----------------------------------------------------------------------------------------------------
# Bad requests


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"steps": 0}, "settings.steps"),
        ({"clusters": 0}, "settings.clusters"),
        ({"clusters": 65}, "settings.clusters"),
        ({"learning_rate": float("nan")}, "settings.learning_rate"),
        ({"learning_rate": 0.0}, "settings.learning_rate"),
        ({"rank": 0}, "settings.rank"),
        ({"prompt": ""}, "settings.prompt"),
        ({"resolution": 100}, "settings.resolution"),
        ({"max_rotation_deg": -1.0}, "settings.max_rotation_deg"),
        ({"max_rotation_deg": float("inf")}, "settings.max_rotation_deg"),
    ],
)
def test_bad_fit_settings_name_the_field(servicer, refs, settings, field):
    with pytest.raises(InvalidArgument) as info:
        list(iterate(servicer.FitSubject(fit_request(refs, **settings), None)))
    assert info.value.field == field


def test_bad_fit_tensors_name_the_field(servicer, store, refs):
    def fit(**fields):
        request = fit_request(refs)
        for name, value in fields.items():
            if value is None:
                request.ClearField(name)
            else:
                getattr(request, name).CopyFrom(value)
        with pytest.raises(InvalidArgument) as info:
            list(iterate(servicer.FitSubject(request, None)))
        return info.value.field

    masks = np.ones((1, SIZE, SIZE), np.float32)
    assert fit(images=None) == "images"
    assert fit(images=put_tensor(store, np.zeros((1, SIZE, SIZE, 4), np.uint8))) == "images"
    assert fit(images=put_tensor(store, np.zeros((1, SIZE, SIZE, 3), np.float32))) == "images"
    assert fit(images=put_tensor(store, np.zeros((0, SIZE, SIZE, 3), np.uint8))) == "images"
    assert fit(masks=None) == "masks.uri"
    assert fit(masks=put_tensor(store, masks[:, :8])) == "masks"
    assert fit(masks=put_tensor(store, masks * 2)) == "masks"
    assert fit(masks=put_tensor(store, np.full_like(masks, np.nan))) == "masks"
    assert fit(masks=put_tensor(store, masks * 0.5)) == "masks"  # no pixel above 0.5: no foreground


def test_too_many_references_or_pixels_are_resource_exhausted(servicer, store, refs):
    request = fit_request(refs)
    request.images.CopyFrom(put_tensor(store, np.zeros((3, 8, 8, 3), np.uint8)))
    with pytest.raises(ResourceExhausted, match="reference images"):
        list(iterate(servicer.FitSubject(request, None)))
    request.images.CopyFrom(put_tensor(store, np.zeros((1, 80, 80, 3), np.uint8)))
    with pytest.raises(ResourceExhausted, match="pixels"):
        list(iterate(servicer.FitSubject(request, None)))
    big = inpainter_pb2.InpaintRequest(images=put_tensor(store, np.zeros((5, 8, 8, 3), np.uint8)))
    big.subject.artifact.uri = "s3://bucket/x"
    with pytest.raises(ResourceExhausted, match="views"):
        servicer.Inpaint(big, None)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"strength": float("nan")}, "strength"),
        ({"strength": 1.5}, "strength"),
        ({"strength": -0.1}, "strength"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"subject": inpainter_pb2.SubjectModel()}, "subject.artifact.uri"),
        ({"images": None}, "images"),
    ],
)
def test_bad_inpaint_fields_name_the_field(servicer, refs, subject, change, field):
    fields = {name: value for name, value in change.items() if value is not None}
    request = inpaint_request(refs, subject, **fields)
    for name, value in change.items():
        if value is None:
            request.ClearField(name)
    with pytest.raises(InvalidArgument) as info:
        servicer.Inpaint(request, None)
    assert info.value.field == field


def test_bad_inpaint_tensors_name_the_field(servicer, store, refs, subject):
    def inpaint(**fields):
        with pytest.raises(InvalidArgument) as info:
            servicer.Inpaint(inpaint_request(refs, subject, **fields), None)
        return info.value.field

    _, _, masks, alpha = refs["arrays"]
    assert inpaint(masks=put_tensor(store, masks * 2)) == "masks"
    assert inpaint(masks=put_tensor(store, masks[:2])) == "masks"
    assert inpaint(masks=put_tensor(store, masks.astype(bool))) == "masks"
    assert inpaint(alpha=put_tensor(store, alpha * 2)) == "alpha"
    assert inpaint(alpha=put_tensor(store, alpha[:, :, :5])) == "alpha"
    assert inpaint(alpha=put_tensor(store, np.where(alpha > 0, np.inf, alpha).astype(np.float32))) == "alpha"


def test_a_model_of_another_backend_or_a_broken_artifact_is_refused(servicer, store, refs, subject):
    other = inpainter_pb2.SubjectModel(artifact=subject.artifact, backend="sd-lora")
    with pytest.raises(InvalidArgument) as info:
        servicer.Inpaint(inpaint_request(refs, other), None)
    assert info.value.field == "subject.backend"

    lora = canonical_safetensors(
        {"lora_A": np.ones((4, 4), np.float32)}, {"backend": "sd-lora", "format": "1"}
    )
    for data, problem in ((lora, "backend 'sd-lora'"), (b"\x89PNG garbage", "not a readable safetensors")):
        ref = store.put_bytes(data, suffix=".safetensors")
        with pytest.raises(InvalidArgument, match=problem) as info:
            servicer.Inpaint(inpaint_request(refs, inpainter_pb2.SubjectModel(artifact=ref)), None)
        assert info.value.field == "subject.artifact" and ref.uri in str(info.value)


def test_a_missing_model_is_not_found(servicer, store, refs, subject):
    missing = inpainter_pb2.SubjectModel(
        artifact=common_pb2.ObjectRef(uri=subject.artifact.uri.replace("sha256/", "sha256/00")),
        backend="colour",
    )
    with pytest.raises(ObjectNotFound):
        servicer.Inpaint(inpaint_request(refs, missing), None)
    request = fit_request(refs)
    request.images.uri = refs["references"].uri.replace("sha256/", "sha256/00")
    with pytest.raises(ObjectNotFound):
        list(iterate(servicer.FitSubject(request, None)))


def test_a_subject_model_is_read_once_for_many_calls(servicer, store, refs, subject, monkeypatch):
    reads = []
    get_bytes = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda uri, **kw: reads.append(uri) or get_bytes(uri, **kw))
    first = servicer.Inpaint(inpaint_request(refs, subject, seed=3), None)
    again = servicer.Inpaint(inpaint_request(refs, subject, seed=3), None)
    assert first.images.uri == again.images.uri
    assert reads.count(subject.artifact.uri) == 1


def test_the_backend_sizes_the_subject_cache(servicer, store, refs, subject, monkeypatch):
    *_, last = iterate(servicer.FitSubject(fit_request(refs, seed=2), None))
    other = last.model
    monkeypatch.setattr(servicer.backend, "subject_cache_size", 1)
    reads = []
    get_bytes = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda uri, **kw: reads.append(uri) or get_bytes(uri, **kw))
    for model in (subject, other, subject):  # one model kept: the second call evicts the first
        servicer.Inpaint(inpaint_request(refs, model, seed=3), None)
    assert reads.count(subject.artifact.uri) == 2 and reads.count(other.artifact.uri) == 1


def test_alpha_picked_from_a_larger_set_inpaints_as_the_images_own_alpha(servicer, store, refs, subject):
    _, _, _, alpha = refs["arrays"]
    # An orbit's alpha of four views, the images being its views 2, 0 and 3.
    orbit = np.stack([alpha[1], np.zeros_like(alpha[0]), alpha[0], alpha[2]])
    own = servicer.Inpaint(inpaint_request(refs, subject, seed=3), None)
    picked = inpaint_request(refs, subject, seed=3, alpha=put_tensor(store, orbit))
    picked.alpha_views[:] = [2, 0, 3]
    assert servicer.Inpaint(picked, None).images.uri == own.images.uri


def test_an_orbits_alpha_is_read_once_for_all_calls(store, refs, subject, monkeypatch):
    servicer = InpainterServicer(ColourBackend(threads=1), store, InpainterSettings(max_views=4))
    _, _, _, alpha = refs["arrays"]
    request = inpaint_request(refs, subject, seed=3, alpha=put_tensor(store, alpha))
    request.alpha_views[:] = [0, 1, 2]
    reads = []
    original = store.get_bytes
    monkeypatch.setattr(store, "get_bytes", lambda uri, **kw: reads.append(uri) or original(uri, **kw))
    servicer.Inpaint(request, None)
    servicer.Inpaint(request, None)
    assert reads.count(request.alpha.uri) == 1


@pytest.mark.parametrize(
    ("views", "field"), [([0, 1], "alpha_views"), ([0, 1, 3], "alpha_views[2]")], ids=["count", "range"]
)
def test_bad_alpha_views_name_the_field(servicer, refs, subject, views, field):
    request = inpaint_request(refs, subject)
    request.alpha_views[:] = views
    with pytest.raises(InvalidArgument) as caught:
        servicer.Inpaint(request, None)
    assert caught.value.field == field
