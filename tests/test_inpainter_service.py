"""The inpainter as a real process: the S3 server and the inpainter on loopback, called through the stub."""

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tire.v1 import common_pb2, inpainter_pb2, inpainter_pb2_grpc

from services.common.clients import dial
from services.common.tensors import get_tensor, put_tensor
from services.inpainter.backends import ColourBackend
from services.inpainter.contract import FitConfig

SIZE = 64


@pytest.fixture(scope="module")
def inpainter(launch_service):
    return launch_service(
        "services.inpainter.server", "TIRE_INPAINTER_", {"TIRE_INPAINTER_BACKEND": "colour"}
    )


@pytest.fixture(scope="module")
def stub(inpainter):
    channel = dial(inpainter.target)
    yield inpainter_pb2_grpc.InpainterServiceStub(channel)
    channel.close()


def scene():
    """A brown textured reference disc, and two views of the same disc drifted to blue-grey, with a hole."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2 < (SIZE / 3) ** 2
    noise = rng.integers(-20, 21, (2, SIZE, SIZE, 1))
    brown = np.where(disc[..., None], np.array([140, 95, 60]) + noise[:1], 0).clip(0, 255).astype(np.uint8)
    blue = np.where(disc[..., None], np.array([100, 115, 140]) + noise, 0).clip(0, 255).astype(np.uint8)
    alpha = np.repeat(disc[None].astype(np.float32), 2, axis=0)
    alpha[:, 28:34, 28:34] = 0.0
    blue[alpha < 0.5] = 0
    return (
        brown,
        disc[None].astype(np.float32),
        blue,
        np.repeat(disc[None], 2, axis=0).astype(np.uint8),
        alpha,
    )


def test_health_serving(inpainter):
    channel = dial(inpainter.target)
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", "tire.v1.InpainterService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    channel.close()


def test_describe(stub):
    info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
    assert (info.service, info.backend, info.model) == ("tire.v1.InpainterService", "colour", "")
    assert info.device.startswith("cpu") and list(info.available_backends) == ["colour", "sd-lora", "triton"]


def test_fit_and_inpaint_through_the_stub_match_in_process(stub, store):
    brown, reference_mask, blue, masks, alpha = scene()
    fit = inpainter_pb2.FitSubjectRequest(
        images=put_tensor(store, brown),
        masks=put_tensor(store, reference_mask),
        settings=common_pb2.FitSettings(steps=12, clusters=6, seed=4),
    )
    events = list(stub.FitSubject(fit, timeout=60))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["progress"] * 12 + ["model"]
    assert [e.progress.step for e in events[:-1]] == list(range(1, 13))
    model = events[-1].model
    assert model.backend == "colour"
    backend = ColourBackend(threads=1)
    artifact = store.get_object(model.artifact)
    assert artifact == backend.fit_subject(
        brown, reference_mask, FitConfig(steps=12, clusters=6, seed=4), lambda *_: None
    )

    reply = stub.Inpaint(
        inpainter_pb2.InpaintRequest(
            images=put_tensor(store, blue),
            masks=put_tensor(store, masks),
            alpha=put_tensor(store, alpha),
            subject=model,
            strength=0.8,
            seed=2,
        ),
        timeout=60,
    )
    out = get_tensor(store, reply.images, dtype=np.uint8, shape=(2, SIZE, SIZE, 3))
    np.testing.assert_array_equal(out, backend.inpaint(blue, masks.astype(bool), alpha, artifact, 0.8, 2))
    np.testing.assert_array_equal(out[masks == 0], blue[masks == 0])
    # Redder and less blue than before, inside the disc.
    inside = masks == 1
    assert out[inside][:, 0].mean() > blue[inside][:, 0].mean() + 10
    assert out[inside][:, 2].mean() < blue[inside][:, 2].mean() - 20
    assert len(reply.images.preview_uris) == 2


def test_bad_requests_are_invalid_argument_naming_the_field(stub, store):
    brown, reference_mask, blue, masks, _ = scene()
    no_foreground = inpainter_pb2.FitSubjectRequest(
        images=put_tensor(store, brown), masks=put_tensor(store, reference_mask * 0)
    )
    with pytest.raises(grpc.RpcError) as info:
        list(stub.FitSubject(no_foreground, timeout=30))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`masks`" in info.value.details()

    subject = inpainter_pb2.SubjectModel(artifact=store.put_bytes(b"not a model", suffix=".safetensors"))
    request = inpainter_pb2.InpaintRequest(
        images=put_tensor(store, blue), masks=put_tensor(store, masks), subject=subject, strength=float("nan")
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Inpaint(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`strength`" in info.value.details()

    request.strength = 0.5
    with pytest.raises(grpc.RpcError) as info:
        stub.Inpaint(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "`subject.artifact`" in info.value.details() and subject.artifact.uri in info.value.details()


def test_a_missing_model_is_not_found(stub, store):
    _, _, blue, masks, _ = scene()
    missing = common_pb2.ObjectRef(uri=store.uri_for("sha256/00/" + "0" * 64 + ".safetensors"))
    request = inpainter_pb2.InpaintRequest(
        images=put_tensor(store, blue),
        masks=put_tensor(store, masks),
        subject=inpainter_pb2.SubjectModel(artifact=missing, backend="colour"),
    )
    with pytest.raises(grpc.RpcError) as info:
        stub.Inpaint(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
