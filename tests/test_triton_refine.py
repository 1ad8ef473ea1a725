"""The mv-diffusion refiner served by a real tritonserver (``make triton``), with a tiny random-weight
multi-view model of the real architecture: the same bytes as the backend in this process, through the
model and through the refiner service's ``triton`` backend; a view the model refuses is INVALID_ARGUMENT;
a request's model_version holds it to that version while a newer one serves the rest; a version that
cannot load is refused with its reason while the served one keeps answering."""

from __future__ import annotations

import numpy as np
import pytest
from tire.v1 import common_pb2, refiner_pb2

from services.common.assets import store_frame
from services.common.cameras import Cameras
from services.common.errors import InvalidArgument
from services.common.model_repository import write_version
from services.common.store import MemoryStore
from services.common.tensors import get_tensor, put_tensor
from services.common.triton import LocalTriton, TritonLoadError, triton_binary
from services.common.views import Views, write_views
from services.refiner.mv_diffusion import MvDiffusionBackend
from services.refiner.server import RefinerServicer, RefinerSettings, warm_up
from services.refiner.tests.scenes import card, orbit_views
from services.refiner.triton_backend import TritonRefineBackend
from services.refiner.triton_model import MODELS, REFINE, version_settings
from services.testing.random_models import save_mv_refiner

pytestmark = pytest.mark.slow
SIZE, STEPS, SEED = 32, 10, 3
SETTINGS = dict(resolution=0, num_inference_steps=STEPS)  # the tiny model, views at their own size

try:
    triton_binary()
except FileNotFoundError as exc:  # `make test` runs `make triton` first
    pytest.skip(str(exc), allow_module_level=True)

triton_grpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_mv_refiner(tmp_path_factory.mktemp("model") / "tiny-mv", "tiny"))


@pytest.fixture(scope="module")
def newer_model(tmp_path_factory) -> str:
    """Other random weights: version 2."""
    return str(save_mv_refiner(tmp_path_factory.mktemp("model") / "tiny-mv-2", "tiny", seed=1))


@pytest.fixture(scope="module")
def backend(model) -> MvDiffusionBackend:
    return MvDiffusionBackend(model, device="cpu", **SETTINGS)


@pytest.fixture(scope="module")
def triton(model, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    write_version(repository, MODELS, 1, version_settings(model, **SETTINGS))
    with LocalTriton(repository) as server:
        server.load(REFINE.name)
        yield server


@pytest.fixture(scope="module")
def scene():
    """A card seen from four sides, 32 x 32 (view 0, azimuth 0, the source), and an update mask that
    frees every view but the source, partly."""
    gaussians = card(n=1500)
    views = orbit_views(gaussians, azimuths=(0.0, 90.0, 180.0, 270.0), size=SIZE)
    mask = np.random.default_rng(0).uniform(0.2, 1.0, size=views.alpha.shape).astype(np.float32)
    mask[:, :8] = 0.0  # rows kept as they are
    mask[0] = 0.0
    return gaussians, views, mask


def infer(
    url: str, views: Views, mask: np.ndarray, source_index: int, strength: float, seed: int, version=""
):
    def tensor(name: str, array: np.ndarray, datatype: str):
        value = triton_grpc.InferInput(name, list(array.shape), datatype)
        value.set_data_from_numpy(array)
        return value

    inputs = [
        tensor("RGB", views.rgb, "UINT8"),
        tensor("UPDATE_MASK", mask, "FP32"),
        tensor("VIEWMATS", views.cameras.viewmats.astype(np.float32), "FP32"),
        tensor("SOURCE_INDEX", np.array([source_index], np.int32), "INT32"),
        tensor("STRENGTH", np.array([strength], np.float32), "FP32"),
        tensor("SEED", np.array([seed], np.uint64), "UINT64"),
    ]
    with triton_grpc.InferenceServerClient(url) as client:
        return client.infer(REFINE.name, inputs, model_version=version).as_numpy("REFINED")


def refine_request(store, views: Views, mask: np.ndarray, gaussians, **fields) -> refiner_pb2.RefineRequest:
    return refiner_pb2.RefineRequest(
        views=write_views(store, views),
        update_mask=put_tensor(store, mask),
        asset=common_pb2.AssetRef(frames=[store_frame(store, gaussians)]),
        **fields,
    )


def test_triton_serves_the_same_bytes_as_the_backend_in_process(triton, backend, scene):
    gaussians, views, mask = scene
    strength = float(np.float32(0.5))  # what float32 on the wire carries
    served = infer(triton.url, views, mask, 0, strength, SEED)
    expected = backend.refine(views, mask, gaussians, 0, strength, SEED)
    assert served.shape == (4, SIZE, SIZE, 3) and served.dtype == np.uint8
    np.testing.assert_array_equal(served, expected)
    np.testing.assert_array_equal(served[mask == 0], views.rgb[mask == 0])  # kept pixels keep their bytes
    assert (served[mask > 0] != views.rgb[mask > 0]).mean() > 0.5  # the random model moves the others
    # The stage's backend sends what mv-diffusion reads: no Gaussians, no alpha, depth or intrinsics.
    bare = Views(views.rgb, None, None, Cameras(views.cameras.viewmats, np.zeros((4, 3, 3)), SIZE, SIZE))
    np.testing.assert_array_equal(
        TritonRefineBackend(triton.url).refine(bare, mask, None, 0, strength, SEED), expected
    )


def test_a_view_the_model_refuses_is_an_invalid_argument(triton, scene):
    _, views, mask = scene
    at_origin = views.cameras.viewmats.copy()
    at_origin[2] = np.eye(4)  # camera 2 at the world's origin: no direction to condition on
    odd = Views(views.rgb, None, None, Cameras(at_origin, views.cameras.Ks, SIZE, SIZE))
    with pytest.raises(InferenceServerException, match="camera 2 at the origin") as info:
        infer(triton.url, odd, mask, 0, 0.5, SEED)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(InvalidArgument, match="must be square"):  # resolution 0: views of their own size
        TritonRefineBackend(triton.url).refine(
            Views(
                views.rgb[:, :, :24], None, None, Cameras(views.cameras.viewmats, views.cameras.Ks, 24, SIZE)
            ),
            mask[:, :, :24],
            None,
            0,
            0.5,
            SEED,
        )
    with pytest.raises(InferenceServerException, match="source_index 7") as info:
        infer(triton.url, views, mask, 7, 0.5, SEED)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def test_the_refiner_service_on_triton_refines_as_the_backend_in_process(triton, backend, scene):
    gaussians, views, mask = scene
    store = MemoryStore()
    servicer = RefinerServicer(TritonRefineBackend(triton.url), store, RefinerSettings(backend="triton"))
    warm_up(servicer, triton_wait_s=30)  # through Triton
    info = servicer.Describe(common_pb2.DescribeRequest(), None)
    assert (info.backend, info.model, info.model_version) == (
        "mv-diffusion",
        f"triton://{triton.url}/refine",
        "1",
    )
    assert info.settings["default_strength"] == "0.3" and "triton" in info.available_backends

    request = refine_request(store, views, mask, gaussians, seed=SEED)  # strength 0: the default, 0.3
    served = get_tensor(store, servicer.Refine(request, None).rgb)
    in_process = RefinerServicer(backend, store, RefinerSettings(backend="mv-diffusion"))
    np.testing.assert_array_equal(served, get_tensor(store, in_process.Refine(request, None).rgb))
    assert (served != views.rgb).any()
    request.source_index = 9  # the service's own checks stay
    with pytest.raises(InvalidArgument, match="source_index"):
        servicer.Refine(request, None)


def test_a_request_names_the_version_it_runs_and_a_version_that_cannot_load_is_refused(
    triton, backend, newer_model, scene
):
    gaussians, views, mask = scene
    store = MemoryStore()
    servicer = RefinerServicer(TritonRefineBackend(triton.url), store, RefinerSettings(backend="triton"))
    write_version(triton.repository, MODELS, 2, version_settings(newer_model, **SETTINGS))
    triton.load(REFINE.name)
    assert servicer.Describe(common_pb2.DescribeRequest(), None).model_version == "2"

    def refined(model_version: str) -> np.ndarray:
        request = refine_request(store, views, mask, gaussians, seed=SEED, model_version=model_version)
        return get_tensor(store, servicer.Refine(request, None).rgb)

    version_1 = backend.refine(views, mask, gaussians, 0, 0.3, SEED)
    version_2 = MvDiffusionBackend(newer_model, device="cpu", **SETTINGS).refine(
        views, mask, gaussians, 0, 0.3, SEED
    )
    assert (version_1 != version_2).any()
    np.testing.assert_array_equal(refined("1"), version_1)  # pinned: the job's version
    np.testing.assert_array_equal(refined(""), version_2)  # unpinned: the newest
    np.testing.assert_array_equal(refined("2"), version_2)
    with pytest.raises(InvalidArgument, match="model_version"):
        refined("latest")

    write_version(triton.repository, MODELS, 3, version_settings(str(triton.repository / "no-such-model")))
    with pytest.raises(TritonLoadError, match="no-such-model"):
        triton.load(REFINE.name)
    assert servicer.backend.model_version == "2" and servicer.backend.ready()
    np.testing.assert_array_equal(refined(""), version_2)  # the served version keeps answering
