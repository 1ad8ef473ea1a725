"""Two sd-lora inpainter processes sharing one S3 store: both load the same tiny Stable Diffusion
inpainting model from an s3:// prefix; an adapter fitted by one is used by the other, with the same
result the first one gives."""

import numpy as np
import pytest
from tire.v1 import common_pb2, inpainter_pb2, inpainter_pb2_grpc

from services.common.clients import dial
from services.common.tensors import get_tensor, put_tensor
from services.testing.random_models import save_sd_inpainting

SIZE = 64


@pytest.fixture(scope="module")
def model_uri(s3, tmp_path_factory):
    from services.common.store import ObjectStore

    folder = save_sd_inpainting(tmp_path_factory.mktemp("model") / "tiny-inpaint", "tiny")
    uri = f"s3://{s3.bucket}/models/tiny-inpaint-v1"
    ObjectStore(s3.settings).upload_folder(folder, uri)
    return uri


@pytest.fixture(scope="module")
def stubs(launch_service, model_uri, tmp_path_factory):
    channels = []
    for replica in ("a", "b"):
        env = {
            "TIRE_INPAINTER_BACKEND": "sd-lora",
            "TIRE_INPAINTER_MODEL": model_uri,
            "TIRE_INPAINTER_MODEL_CACHE_DIR": str(tmp_path_factory.mktemp(f"cache-{replica}")),
        }
        service = launch_service("services.inpainter.server", "TIRE_INPAINTER_", env)
        channels.append(dial(service.target))
    yield [inpainter_pb2_grpc.InpainterServiceStub(channel) for channel in channels]
    for channel in channels:
        channel.close()


@pytest.mark.slow
def test_an_adapter_fitted_by_one_replica_serves_on_another(stubs, store, model_uri):
    first, second = stubs
    for stub in stubs:
        info = stub.Describe(common_pb2.DescribeRequest(), timeout=10)
        assert info.backend == "sd-lora" and info.model == model_uri

    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    fit = inpainter_pb2.FitSubjectRequest(
        images=put_tensor(store, reference),
        masks=put_tensor(store, np.ones((1, SIZE, SIZE), np.float32)),
        settings=common_pb2.FitSettings(steps=4, rank=2, seed=5),
    )
    *progress, last = first.FitSubject(fit, timeout=120)
    assert [event.progress.step for event in progress] == [1, 2, 3, 4]
    model = last.model
    assert model.backend == "sd-lora" and model.base_model == model_uri

    views = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((2, SIZE, SIZE), np.uint8)
    masks[:, 16:48, 16:48] = 1
    request = inpainter_pb2.InpaintRequest(
        images=put_tensor(store, views),
        masks=put_tensor(store, masks),
        subject=model,
        num_inference_steps=10,
        seed=9,
    )
    results = [
        get_tensor(store, stub.Inpaint(request, timeout=120).images, dtype=np.uint8, shape=views.shape)
        for stub in (second, first)
    ]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0][masks == 0], views[masks == 0])
    assert (results[0][masks == 1] != views[masks == 1]).mean() > 0.5
