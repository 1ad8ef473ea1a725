"""The ``triton`` inpainter backend: the sd-lora models served by a Triton Inference Server.

The stage service keeps its API, its request checks and its store I/O; Triton owns the model and its
device. ``fit_subject`` streams the ``fit_subject`` model's progress (decoupled), ``inpaint`` calls the
``inpaint`` model (``services.inpainter.triton_model`` has both, and writes their versions). Subject
adapters are ``sd-lora`` adapters: this backend's name is ``sd-lora``, so the subjects it fits serve an
in-process sd-lora replica of the same weights too, and the other way round.

Which version answers: ``version`` pinned, or "" for the one Triton serves (its latest ready one).
``pinned(version)`` is the same backend held to one version: a job runs every call on the version it
started with (``model_version`` in the requests), while a newly published one serves the next jobs.
"""

from __future__ import annotations

import dataclasses
import json
import queue
from collections.abc import Callable

import numpy as np

from services.common.errors import FailedPrecondition, InvalidArgument, TireError, Unavailable
from services.inpainter.contract import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FitConfig,
    InvalidSubject,
    check_fit_inputs,
    check_inpaint_inputs,
)
from services.inpainter.triton_model import FIT, INPAINT

_TIMEOUT_S = 3600.0


class TritonInpaintBackend:
    """``InpaintBackend`` over Triton's gRPC API.

    Args:
        url: Triton's gRPC address, ``host:port``.
        version: the model version to call ("" for the latest Triton serves).

    Raises:
        ImportError: ``tritonclient`` is not installed.
    """

    name = "sd-lora"
    default_strength = 0.3
    """As the in-process sd-lora's: the same models."""
    subject_cache_size = 8  # an SD2 LoRA of rank 16 is 16 MB

    def __init__(self, url: str, version: str = ""):
        import tritonclient.grpc  # noqa: F401  (fail at start, not at the first call)

        self.url = url
        self.version = version

    @property
    def base_model(self) -> str:
        """The models it calls, as ``triton://host:port/inpaint[/version]``."""
        return f"triton://{self.url}/{INPAINT}" + (f"/{self.version}" if self.version else "")

    @property
    def device(self) -> str:
        return f"triton at {self.url} ({INPAINT} and {FIT}, version {self.version or 'latest'})"

    @property
    def model_version(self) -> str:
        """The version a call runs: the pinned one, else the latest version of ``inpaint`` Triton has
        ready ("" when it has none)."""
        if self.version:
            return self.version
        import tritonclient.grpc as triton_grpc

        with triton_grpc.InferenceServerClient(self.url) as client:
            try:
                index = client.get_model_repository_index().models
            except Exception as exc:  # unreachable: UNAVAILABLE, which callers retry
                raise _translate(exc, "model_version") from exc
        ready = [
            int(m.version) for m in index if m.name == INPAINT and m.state == "READY" and m.version.isdigit()
        ]
        return str(max(ready)) if ready else ""

    def pinned(self, version: str) -> TritonInpaintBackend:
        """This backend held to ``version`` (digits)."""
        if not version.isdigit():
            raise InvalidArgument("model_version", version, "must be a Triton model version (digits)")
        return TritonInpaintBackend(self.url, version)

    def ready(self) -> bool:
        """Whether Triton serves a ready version of both models."""
        import tritonclient.grpc as triton_grpc

        try:
            with triton_grpc.InferenceServerClient(self.url) as client:
                return all(client.is_model_ready(model, self.version) for model in (INPAINT, FIT))
        except Exception:  # unreachable: not ready
            return False

    def fit_subject(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        config: FitConfig,
        progress: Callable[[int, int, float], None],
    ) -> bytes:
        """See ``InpaintBackend.fit_subject``: the ``fit_subject`` model's stream, progress passed on."""
        import tritonclient.grpc as triton_grpc

        check_fit_inputs(images, masks)
        inputs = [
            _tensor("IMAGES", np.ascontiguousarray(images, np.uint8), "UINT8"),
            _tensor("MASKS", np.ascontiguousarray(masks, np.float32), "FP32"),
            _tensor(
                "CONFIG", np.array([json.dumps(dataclasses.asdict(config)).encode()], dtype=object), "BYTES"
            ),
        ]
        answers: queue.Queue = queue.Queue()
        with triton_grpc.InferenceServerClient(self.url) as client:
            client.start_stream(callback=lambda result, error: answers.put((result, error)))
            try:
                client.async_stream_infer(FIT, inputs, model_version=self.version)
                while True:
                    result, error = answers.get(timeout=_TIMEOUT_S)
                    if error is not None:
                        raise _translate(error, "settings")
                    artifact = bytes(result.as_numpy("ARTIFACT")[0])
                    if artifact:
                        return artifact
                    step, total = int(result.as_numpy("STEP")[0]), int(result.as_numpy("TOTAL_STEPS")[0])
                    progress(step, total, float(result.as_numpy("LOSS")[0]))
            finally:
                client.stop_stream(cancel_requests=True)

    def inpaint(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        alpha: np.ndarray | None,
        subject: bytes,
        strength: float,
        seed: int,
        *,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
    ) -> np.ndarray:
        """See ``InpaintBackend.inpaint``: one call of the ``inpaint`` model."""
        import tritonclient.grpc as triton_grpc

        check_inpaint_inputs(images, masks, alpha, strength)
        inputs = [
            _tensor("IMAGES", np.ascontiguousarray(images, np.uint8), "UINT8"),
            _tensor("MASKS", np.ascontiguousarray(masks, bool), "BOOL"),
            _tensor("SUBJECT", np.array([subject], dtype=object), "BYTES"),
            _tensor("STRENGTH", np.array([strength], np.float32), "FP32"),
            _tensor("SEED", np.array([seed], np.uint64), "UINT64"),
            _tensor("NUM_INFERENCE_STEPS", np.array([num_inference_steps], np.int32), "INT32"),
            _tensor("GUIDANCE_SCALE", np.array([guidance_scale], np.float32), "FP32"),
        ]
        if alpha is not None:
            inputs.append(_tensor("ALPHA", np.ascontiguousarray(alpha, np.float32), "FP32"))
        with triton_grpc.InferenceServerClient(self.url) as client:
            try:
                result = client.infer(INPAINT, inputs, model_version=self.version, client_timeout=_TIMEOUT_S)
            except Exception as exc:
                raise _translate(exc, "subject") from exc
        return result.as_numpy("INPAINTED")


def _tensor(name: str, array: np.ndarray, datatype: str):
    import tritonclient.grpc as triton_grpc

    value = triton_grpc.InferInput(name, list(array.shape), datatype)
    value.set_data_from_numpy(array)
    return value


def _translate(error: Exception, field: str) -> TireError:
    """Triton's error as this project's: a refused input names ``field``; no ready model is
    FAILED_PRECONDITION; an unreachable server UNAVAILABLE (the coordinator retries it)."""
    status = str(getattr(error, "status", lambda: "")() or "")
    message = error.message() if hasattr(error, "message") else str(error)
    if "INVALID_ARGUMENT" in status:
        if field == "subject":
            return InvalidSubject(message)
        return InvalidArgument(field, "the fit request", f"was refused by the model: {message}")
    if "UNAVAILABLE" in status:
        return Unavailable(f"Triton is unreachable: {message}")
    return FailedPrecondition(f"Triton did not run the model: {message}")
