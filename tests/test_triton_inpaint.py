"""The sd-lora inpainter served by a real tritonserver (``make triton``), with a tiny Stable Diffusion
inpainting model of the real architecture: the same bytes as the backend in this process, through the
models and through the inpainter service's ``triton`` backend; a version that cannot load is refused
with its reason while the served one keeps answering; a subject it cannot use is INVALID_ARGUMENT."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from tire.v1 import common_pb2, coordinator_pb2, inpainter_pb2

from services.cli import main
from services.common.model_repository import published_versions, write_version
from services.common.server import iterate
from services.common.store import MemoryStore, ObjectStore
from services.common.triton import (
    LocalTriton,
    TritonLoadError,
    model_states,
    triton_binary,
    triton_repository,
)
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.spec import resolve_spec
from services.coordinator.stages import InProcessStub, RetryPolicy, Stages, status_code, status_details
from services.embedded import embedded_servicers
from services.inpainter.contract import FitConfig
from services.inpainter.sd_lora import SdLoraBackend
from services.inpainter.server import InpainterServicer, InpainterSettings, fit_config
from services.inpainter.triton_backend import TritonInpaintBackend
from services.inpainter.triton_model import FIT, INPAINT, MODELS, version_settings
from services.testing.random_models import save_sd_inpainting

pytestmark = pytest.mark.slow
SIZE = 64
SAMPLES = Path(__file__).parents[1] / "samples"

try:
    triton_binary()
except FileNotFoundError as exc:  # `make test` runs `make triton` first
    pytest.skip(str(exc), allow_module_level=True)

triton_grpc = pytest.importorskip("tritonclient.grpc")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> str:
    return str(save_sd_inpainting(tmp_path_factory.mktemp("model") / "tiny-inpaint", "tiny"))


@pytest.fixture(scope="module")
def backend(model) -> SdLoraBackend:
    return SdLoraBackend(model, device="cpu")


@pytest.fixture(scope="module")
def subject(backend) -> bytes:
    reference = np.random.default_rng(0).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    config = FitConfig(steps=2, rank=2, resolution=SIZE, seed=5)
    return backend.fit_subject(reference, np.ones((1, SIZE, SIZE), np.float32), config, lambda *_: None)


@pytest.fixture(scope="module")
def triton(model, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    write_version(repository, MODELS, 1, version_settings(model))
    with LocalTriton(repository) as server:
        server.load(INPAINT.name)
        server.load(FIT.name)
        yield server


def views(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[:, 16:48, 16:48] = True
    alpha = np.ones((2, SIZE, SIZE), np.float32)
    alpha[:, 30:34, 30:34] = 0.0  # a hole, filled before denoising
    return images, masks, alpha


def infer(
    url: str,
    images,
    masks,
    alpha,
    subject: bytes | None,
    strength: float,
    seed: int,
    steps: int = 4,
    sha256: str = "",
):
    """One ``inpaint`` request; ``subject`` None sends only its ``sha256`` (by reference)."""

    def tensor(name: str, array: np.ndarray, datatype: str):
        value = triton_grpc.InferInput(name, list(array.shape), datatype)
        value.set_data_from_numpy(array)
        return value

    sha256 = sha256 or hashlib.sha256(subject).hexdigest()
    inputs = [  # one call: a batch dimension of 1 (the model batches calls dynamically)
        tensor("IMAGES", images[None], "UINT8"),
        tensor("MASKS", masks[None], "BOOL"),
        tensor("ALPHA", alpha[None], "FP32"),
        tensor("SUBJECT_SHA256", np.array([[sha256.encode()]], dtype=object), "BYTES"),
        tensor("STRENGTH", np.array([[strength]], np.float32), "FP32"),
        tensor("SEED", np.array([[seed]], np.uint64), "UINT64"),
        tensor("NUM_INFERENCE_STEPS", np.array([[steps]], np.int32), "INT32"),
        tensor("GUIDANCE_SCALE", np.array([[7.5]], np.float32), "FP32"),
    ]
    if subject is not None:
        inputs.append(tensor("SUBJECT", np.array([[subject]], dtype=object), "BYTES"))
    with triton_grpc.InferenceServerClient(url) as client:
        return client.infer("inpaint", inputs).as_numpy("INPAINTED")[0]


def test_triton_serves_the_same_bytes_as_the_backend_in_process(triton, backend, subject):
    images, masks, alpha = views()
    served = infer(triton.url, images, masks, alpha, subject, 0.5, 3)
    expected = backend.inpaint(images, masks, alpha, subject, 0.5, 3, num_inference_steps=4)
    assert served.shape == (2, SIZE, SIZE, 3) and served.dtype == np.uint8
    np.testing.assert_array_equal(served, expected)
    np.testing.assert_array_equal(served[~masks], images[~masks])  # unmasked pixels untouched
    assert (served[masks] != images[masks]).any()


def test_a_subject_travels_once_then_by_its_sha256(triton, backend, subject):
    images, masks, alpha = views(seed=5)
    other = hashlib.sha256(b"an adapter never sent").hexdigest()
    with pytest.raises(InferenceServerException, match=other) as info:
        infer(triton.url, images, masks, alpha, None, 0.5, 3, sha256=other)
    assert info.value.status() == "StatusCode.NOT_FOUND"  # the caller then sends the bytes
    with pytest.raises(InferenceServerException, match="does not hash") as info:
        infer(triton.url, images, masks, alpha, subject, 0.5, 3, sha256=other)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"

    infer(triton.url, images, masks, alpha, subject, 0.5, 3)  # held from now on
    by_reference = infer(
        triton.url, images, masks, alpha, None, 0.5, 3, sha256=hashlib.sha256(subject).hexdigest()
    )
    expected = backend.inpaint(images, masks, alpha, subject, 0.5, 3, num_inference_steps=4)
    np.testing.assert_array_equal(by_reference, expected)


def test_a_subject_the_model_cannot_use_is_an_invalid_argument(triton):
    images, masks, alpha = views()
    with pytest.raises(InferenceServerException, match="safetensors") as info:
        infer(triton.url, images, masks, alpha, b"not an adapter", 0.5, 3)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"


def batch_sizes(url: str) -> Counter:
    """How many times Triton ran ``inpaint`` on each number of requests at once."""
    with triton_grpc.InferenceServerClient(url) as client:
        (stats,) = client.get_inference_statistics(INPAINT.name).model_stats[:1]
    return Counter({s.batch_size: s.compute_infer.count for s in stats.batch_stats})


def test_calls_that_arrive_together_run_as_one_batch_with_the_results_of_calls_alone(
    triton, backend, subject
):
    callers = 4
    arrive = threading.Barrier(callers)
    before = batch_sizes(triton.url)

    def call(seed: int) -> np.ndarray:
        images, masks, alpha = views(seed)
        arrive.wait()  # as a ring's targets, or several jobs' calls, arrive
        return infer(triton.url, images, masks, alpha, subject, 0.5, seed)

    with ThreadPoolExecutor(callers) as pool:
        served = list(pool.map(call, range(callers)))
    ran = batch_sizes(triton.url) - before
    assert sum(size * count for size, count in ran.items()) == callers
    assert max(ran) > 1, f"every call ran alone: {dict(ran)}"
    for seed, result in enumerate(served):
        images, masks, alpha = views(seed)
        alone = backend.inpaint(images, masks, alpha, subject, 0.5, seed, num_inference_steps=4)
        # Views share UNet batches with other calls' views; each view's noise is its own (seeded), so
        # only the batch's arithmetic could differ: bitwise equal on this CPU, one level allowed.
        np.testing.assert_allclose(result, alone, atol=1)


def test_a_version_that_cannot_load_is_refused_and_the_served_one_keeps_answering(triton, subject):
    write_version(triton.repository, MODELS, 2, version_settings(str(triton.repository / "no-such-model")))
    with pytest.raises(TritonLoadError, match="no-such-model"):
        triton.load(INPAINT.name)
    with triton_grpc.InferenceServerClient(triton.url) as client:
        assert client.is_model_ready("inpaint", "1")
    images, masks, alpha = views()
    assert infer(triton.url, images, masks, alpha, subject, 0.5, 3).shape == (2, SIZE, SIZE, 3)


def test_the_inpainter_service_on_triton_fits_and_inpaints_as_the_backend_in_process(triton, backend):
    from services.common.tensors import get_tensor, put_tensor

    store = MemoryStore()
    servicer = InpainterServicer(TritonInpaintBackend(triton.url, "1"), store, InpainterSettings())
    info = servicer.Describe(None, None)
    assert (info.backend, info.model) == ("sd-lora", f"triton://{triton.url}/inpaint/1")

    reference = np.random.default_rng(2).integers(0, 256, (1, SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.ones((1, SIZE, SIZE), np.float32)
    settings = common_pb2.FitSettings(steps=3, rank=2, resolution=SIZE, seed=9)
    request = inpainter_pb2.FitSubjectRequest(
        images=put_tensor(store, reference), masks=put_tensor(store, mask), settings=settings
    )
    *progress, last = iterate(servicer.FitSubject(request, None))
    assert [event.progress.step for event in progress] == [1, 2, 3]  # streamed from Triton, step by step
    served_subject = store.get_object(last.model.artifact)
    assert served_subject == backend.fit_subject(reference, mask, fit_config(settings), lambda *_: None)

    images, masks, alpha = views(seed=4)
    reply = servicer.Inpaint(
        inpainter_pb2.InpaintRequest(
            images=put_tensor(store, images),
            masks=put_tensor(store, masks.astype(np.uint8)),
            alpha=put_tensor(store, alpha),
            subject=last.model,
            strength=0.4,
            seed=11,
            num_inference_steps=4,
        ),
        None,
    )
    expected = backend.inpaint(images, masks, alpha, served_subject, 0.4, 11, num_inference_steps=4)
    np.testing.assert_array_equal(get_tensor(store, reply.images), expected)


def monkey_job(store, stages: Stages, retry: RetryPolicy) -> tuple[bytes, dict]:
    """A small job on the monkey sample through ``stages``: its repaired asset and its report."""
    jobs = JobStore(":memory:")
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes((SAMPLES / "monkey_lgm.ply").read_bytes())]),
        references=[store.put_bytes((SAMPLES / "monkey_front.png").read_bytes(), suffix=".png")],
        resolution=SIZE,
        orbit_step_deg=90,
        fit=common_pb2.FitSettings(steps=2, rank=2),
    )
    job, _ = jobs.create(resolve_spec(spec))
    job = JobRunner(jobs, stages, store, retry).run(job.id)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED, job.error
    report = json.loads(store.get_bytes(job.outputs.report.uri))
    return store.get_object(job.outputs.repaired.frames[0]), report


def test_a_job_keeps_the_model_version_it_started_with_while_a_new_one_is_published(triton, tmp_path):
    store = MemoryStore()
    stubs = {name: InProcessStub(s) for name, s in embedded_servicers(store, "cpu").items()}
    inpainter = InProcessStub(InpainterServicer(TritonInpaintBackend(triton.url), store, InpainterSettings()))
    versions_called: list[str] = []
    pid = triton.pid
    newer = str(save_sd_inpainting(tmp_path / "tiny-inpaint-v2", "tiny", seed=1))

    class Publishing:
        """The inpainter's stub; just before the first Inpaint of all, version 2 is published."""

        def __getattr__(self, method):
            def call(request, timeout=None):
                if method == "Inpaint" and "published" not in versions_called:
                    versions_called.append("published")
                    write_version(triton.repository, MODELS, 2, version_settings(newer))
                    triton.load(INPAINT.name)
                    triton.load(FIT.name)
                if method in ("Inpaint", "FitSubject"):
                    versions_called.append(request.model_version)
                return getattr(inpainter, method)(request, timeout=timeout)

            return call

    stages = Stages(**{**stubs, "inpainter": Publishing()})
    retry = RetryPolicy(attempts=2, initial_backoff_s=0)

    def run_job() -> dict[str, str]:
        _, report = monkey_job(store, stages, retry)
        return {m["stage"]: m["version"] for m in report["models"]}

    first = run_job()
    first_calls = versions_called[:]
    second = run_job()
    second_calls = versions_called[len(first_calls) :]
    # Every call of the first job ran the version it began on, though version 2 arrived mid-job.
    assert first["inpainter"] == "1" and set(first_calls) - {"published"} == {"1"}
    assert second["inpainter"] == "2" and set(second_calls) == {"2"}  # the next job: the new version
    assert first["renderer"] == "" and triton.pid == pid  # unversioned stages; the server never restarted


def test_models_publish_list_and_rollback_through_a_repository_in_the_store(
    s3, model, tmp_path, monkeypatch, capsys
):
    store = ObjectStore(s3.settings)
    repository = f"s3://{s3.bucket}/triton-repository"
    weights = f"s3://{s3.bucket}/models/tiny-inpaint"
    store.upload_folder(model, weights)
    for name, value in s3.env.items():
        monkeypatch.setenv(name, value)
    # Triton refuses to start on an empty prefix: init makes it a repository.
    assert main(["models", "init", "--repository", repository]) == 0
    assert main(["models", "init", "--repository", repository]) == 0  # twice: left as it is
    assert "left as it is" in capsys.readouterr().out

    with LocalTriton(triton_repository(s3.settings, repository), store=s3.settings) as server:
        publish = ["models", "publish", "inpainter", weights, "--repository", repository]
        assert main([*publish, "--triton", server.url]) == 0  # version 1
        assert "version 1" in capsys.readouterr().out
        assert (
            main(
                [
                    "models",
                    "publish",
                    "inpainter",
                    weights,
                    "--repository",
                    repository,
                    "--triton",
                    server.url,
                ]
            )
            == 0
        )
        assert "version 2" in capsys.readouterr().out
        broken = f"s3://{s3.bucket}/models/missing"
        assert (
            main(
                ["models", "publish", "inpainter", broken, "--repository", repository, "--triton", server.url]
            )
            == 1
        )
        assert "models/missing" in capsys.readouterr().err  # Triton's reason
        ready = {(name, version) for name, version, state, _ in model_states(server.url) if state == "READY"}
        assert {(INPAINT.name, "2"), (FIT.name, "2")} <= ready  # the broken version 3 never took traffic
        assert published_versions(store, repository, MODELS) == [1, 2]  # and left the repository
        assert TritonInpaintBackend(server.url).model_version == "2"
        assert main(["models", "list", "--repository", repository, "--triton", server.url]) == 0
        listing = capsys.readouterr().out
        assert "versions 1, 2\n" in listing and "READY" in listing
        rollback = [
            "models",
            "rollback",
            "inpainter",
            "1",
            "--repository",
            repository,
            "--triton",
            server.url,
        ]
        assert main(rollback) == 0 and "version 3" in capsys.readouterr().out
        settings = [store.get_bytes(f"{repository}/{INPAINT.name}/{v}/backend.json") for v in (1, 3)]
        assert settings[0] == settings[1] and TritonInpaintBackend(server.url).model_version == "3"

        # What a deployment runs after every install and upgrade: weights served already change nothing.
        sync = ["models", "sync", "--repository", repository, "--triton", server.url]
        assert main([*sync, f"inpainter={weights}"]) == 0
        assert "already serves" in capsys.readouterr().out
        swapped = f"s3://{s3.bucket}/models/tiny-inpaint-retrained"
        store.upload_folder(model, swapped)
        assert main([*sync, f"inpainter={swapped}"]) == 0
        assert "version 4" in capsys.readouterr().out
        assert published_versions(store, repository, MODELS) == [1, 2, 3, 4]
        assert TritonInpaintBackend(server.url).model_version == "4"


def test_a_job_finishes_with_the_same_outputs_when_triton_dies_mid_job(model, tmp_path):
    repository = tmp_path / "repository"
    write_version(repository, MODELS, 1, version_settings(model))
    store = MemoryStore()
    stubs = {name: InProcessStub(s) for name, s in embedded_servicers(store, "cpu").items()}
    retry = RetryPolicy(attempts=8, initial_backoff_s=0.5, max_backoff_s=4.0)
    with LocalTriton(repository) as server:
        for name in (INPAINT.name, FIT.name):
            server.load(name)
        inpainter = InProcessStub(
            InpainterServicer(TritonInpaintBackend(server.url), store, InpainterSettings())
        )
        undisturbed, _ = monkey_job(store, Stages(**{**stubs, "inpainter": inpainter}), retry)

        failures: list[str] = []
        kill_once = threading.Lock()
        restarted = threading.Event()

        def restart() -> None:
            time.sleep(1.0)
            server.start()  # the same ports, the same repository
            for name in (INPAINT.name, FIT.name):
                server.load(name)
            restarted.set()

        class Dying:
            """The inpainter's stub; Triton dies as the job's first Inpaint call goes out, mid-job (its
            calls of the ring run at once: each meets a dead server or a restarting one)."""

            def __getattr__(self, method):
                def call(request, timeout=None):
                    if method == "Inpaint" and kill_once.acquire(blocking=False):
                        os.killpg(server.pid, signal.SIGKILL)  # the server and its models' stubs at once
                        server.stop()
                        threading.Thread(target=restart).start()
                    try:
                        return getattr(inpainter, method)(request, timeout=timeout)
                    except Exception as exc:
                        failures.append(f"{status_code(exc).name}: {status_details(exc)}")
                        raise

                return call

        repaired, report = monkey_job(store, Stages(**{**stubs, "inpainter": Dying()}), retry)
        assert restarted.wait(60) and failures, "no call met the dead Triton"
        assert all(f.startswith("UNAVAILABLE") for f in failures), failures  # retried, not failed
        assert repaired == undisturbed
        assert {m["stage"]: m["version"] for m in report["models"]}["inpainter"] == "1"
