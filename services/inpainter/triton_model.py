"""The sd-lora inpainter as two Triton Python-backend models: the same ``SdLoraBackend``, served.

    publish(store, "s3://models/triton", MODELS, version_settings("s3://models/sd2-inpaint"), triton_url)

Triton runs each class below in its Python backend's stub process: ``initialize`` builds the backend
from its version's settings (the weights' URI, resolution, batch size; ``services.common.model_repository``)
on the device Triton gives the instance, ``execute`` runs requests, ``finalize`` lets it go. No maths
lives here.

Subject adapters travel by reference: a request names its adapter by sha256 and carries its bytes only
the first time (an SD2 adapter is 13 MB); the model keeps the last ``SUBJECTS_KEPT`` by sha256 and answers
NOT_FOUND for one it does not hold (a restarted server, another replica), and the caller sends the bytes
again. Triton never reads the object store on a caller's behalf.

``inpaint`` batches dynamically: requests that arrive within ``BATCH_DELAY_US`` of each other (the
targets of a ring, other jobs' calls) reach one ``execute``, and those with the same subject and
schedule share UNet batches (``SdLoraBackend.inpaint_together``). Its tensors, for V views of H x W
pixels, each with a leading batch dimension of 1 per request:

    IMAGES               UINT8 [1, V, H, W, 3]
    MASKS                BOOL  [1, V, H, W]     True where pixels may change
    ALPHA                FP32  [1, V, H, W]     optional: coverage
    SUBJECT_SHA256       BYTES [1, 1]           the subject adapter's sha256, hex
    SUBJECT              BYTES [1, 1]           optional: its safetensors bytes (needed once per server)
    STRENGTH             FP32  [1, 1]           in (0, 1]
    SEED                 UINT64 [1, 1]
    NUM_INFERENCE_STEPS  INT32 [1, 1]
    GUIDANCE_SCALE       FP32  [1, 1]
    -> INPAINTED         UINT8 [1, V, H, W, 3]

``fit_subject``'s, for R references (decoupled: one response per training step, then the adapter):

    IMAGES               UINT8 [R, H, W, 3]
    MASKS                FP32  [R, H, W]     foreground in [0, 1]
    CONFIG               BYTES [1]           ``FitConfig`` as JSON
    -> STEP, TOTAL_STEPS INT32 [1], LOSS FP32 [1], ARTIFACT BYTES [1] (empty until the last response)

A subject or a setting the backend cannot use answers INVALID_ARGUMENT with the backend's sentence.
"""

from __future__ import annotations

import json

import numpy as np

from services.common.model_repository import Tensor, TritonModel

MAX_BATCH_REQUESTS = 8
"""The most ``inpaint`` requests Triton hands one ``execute``."""
BATCH_DELAY_US = 20_000
"""How long the first ``inpaint`` request waits for others to join its batch (a call takes seconds)."""
SUBJECTS_KEPT = 16
"""Subject adapters an ``inpaint`` instance keeps by sha256 (SD2 rank-16 adapters: 13 MB each)."""

_IMAGES = Tensor("IMAGES", "TYPE_UINT8", (-1, -1, -1, 3))
INPAINT = TritonModel(
    "inpaint",
    "services.inpainter.triton_model:InpaintModel",
    inputs=(
        _IMAGES,
        Tensor("MASKS", "TYPE_BOOL", (-1, -1, -1)),
        Tensor("ALPHA", "TYPE_FP32", (-1, -1, -1), optional=True),
        Tensor("SUBJECT_SHA256", "TYPE_STRING", (1,)),
        Tensor("SUBJECT", "TYPE_STRING", (1,), optional=True),
        Tensor("STRENGTH", "TYPE_FP32", (1,)),
        Tensor("SEED", "TYPE_UINT64", (1,)),
        Tensor("NUM_INFERENCE_STEPS", "TYPE_INT32", (1,)),
        Tensor("GUIDANCE_SCALE", "TYPE_FP32", (1,)),
    ),
    outputs=(Tensor("INPAINTED", "TYPE_UINT8", (-1, -1, -1, 3)),),
    max_batch_size=MAX_BATCH_REQUESTS,
    dynamic_batching=True,
    batch_delay_us=BATCH_DELAY_US,
)
FIT = TritonModel(
    "fit_subject",
    "services.inpainter.triton_model:FitSubjectModel",
    inputs=(
        _IMAGES,
        Tensor("MASKS", "TYPE_FP32", (-1, -1, -1)),
        Tensor("CONFIG", "TYPE_STRING", (1,)),
    ),
    outputs=(
        Tensor("STEP", "TYPE_INT32", (1,)),
        Tensor("TOTAL_STEPS", "TYPE_INT32", (1,)),
        Tensor("LOSS", "TYPE_FP32", (1,)),
        Tensor("ARTIFACT", "TYPE_STRING", (1,)),
    ),
    decoupled=True,
)
MODELS = (INPAINT, FIT)
"""The inpainter's models on Triton; a version of the stage is a version of both."""


def version_settings(
    weights: str, *, resolution: int = 0, batch_size: int = 4, model_cache_dir: str = ""
) -> dict:
    """What a version of ``MODELS`` serves: ``SdLoraBackend``'s arguments.

    Args:
        weights: the inpainting pipeline's URI (a local folder, an ``s3://`` prefix, a hub id), as
            ``TIRE_INPAINTER_MODEL``.
        resolution, batch_size, model_cache_dir: as ``SdLoraBackend``'s.
    """
    return {
        "model": weights,
        "resolution": resolution,
        "batch_size": batch_size,
        "model_cache_dir": model_cache_dir,
    }


def _backend(args: dict[str, str]):
    """The ``SdLoraBackend`` of a Triton model instance: its version's settings, Triton's device."""
    from services.common.model_repository import instance_device, version_settings, weights_store
    from services.inpainter.sd_lora import SdLoraBackend

    settings = version_settings(args)
    return SdLoraBackend(
        settings["model"],
        store=weights_store(settings["model"]),
        model_cache_dir=settings["model_cache_dir"],
        device=instance_device(args),
        resolution=settings["resolution"],
        batch_size=settings["batch_size"],
    )


class InpaintModel:
    """``inpaint``: Triton's Python-backend lifecycle around ``SdLoraBackend.inpaint_together``."""

    def initialize(self, args: dict[str, str]) -> None:
        from collections import OrderedDict

        self.backend = _backend(args)
        self.subjects: OrderedDict[str, bytes] = OrderedDict()  # sha256 hex -> adapter, least recent first

    def subject(self, sha256: str, sent: np.ndarray | None) -> bytes:
        """The adapter ``sha256`` names: ``sent`` (checked against it, then kept) or the one kept.

        Raises:
            ValueError: ``sent`` does not hash to ``sha256``.
            KeyError: nothing sent and none kept.
        """
        import hashlib

        if sent is not None:
            data = bytes(sent[0])
            if hashlib.sha256(data).hexdigest() != sha256:
                raise ValueError(f"SUBJECT does not hash to SUBJECT_SHA256 {sha256}")
            self.subjects[sha256] = data
            while len(self.subjects) > SUBJECTS_KEPT:
                self.subjects.popitem(last=False)
        self.subjects.move_to_end(sha256)  # KeyError when neither sent nor kept
        return self.subjects[sha256]

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from services.inpainter.contract import InpaintCall

        def call(request) -> InpaintCall | Exception:
            def tensor(name: str) -> np.ndarray | None:
                found = pb_utils.get_input_tensor_by_name(request, name)
                if found is None:
                    return None
                array = found.as_numpy()
                if array.shape[0] != 1:
                    raise ValueError(f"{name} must hold one call (batch dimension 1): {list(array.shape)}")
                return array[0]

            try:
                sha256 = bytes(tensor("SUBJECT_SHA256")[0]).decode("ascii", "replace")
                try:
                    subject = self.subject(sha256, tensor("SUBJECT"))
                except KeyError:
                    return LookupError(f"subject {sha256} is not held here: send SUBJECT")
                return InpaintCall(
                    tensor("IMAGES"),
                    tensor("MASKS"),
                    tensor("ALPHA"),
                    subject,
                    float(tensor("STRENGTH")[0]),
                    int(tensor("SEED")[0]),
                    int(tensor("NUM_INFERENCE_STEPS")[0]),
                    float(tensor("GUIDANCE_SCALE")[0]),
                )
            except ValueError as exc:
                return exc

        calls = [call(request) for request in requests]
        runnable = [c for c in calls if isinstance(c, InpaintCall)]
        results = iter(self.backend.inpaint_together(runnable))
        responses = []
        for result in (next(results) if isinstance(c, InpaintCall) else c for c in calls):
            if isinstance(result, LookupError):  # a subject not held: the caller sends its bytes
                error = pb_utils.TritonError(str(result), pb_utils.TritonError.NOT_FOUND)
                responses.append(pb_utils.InferenceResponse(error=error))
            elif isinstance(result, Exception):  # a subject it cannot use, a bad input
                error = pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INPAINTED", result[None])]))
        return responses

    def finalize(self) -> None:
        self.backend = None


class FitSubjectModel:
    """``fit_subject`` (decoupled): ``SdLoraBackend.fit_subject``, one response per training step
    (STEP, TOTAL_STEPS, LOSS) and a last one with the adapter (ARTIFACT)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.backend = _backend(args)

    def execute(self, requests: list) -> None:
        import triton_python_backend_utils as pb_utils

        from services.common.errors import TireError
        from services.inpainter.contract import FitConfig

        for request in requests:
            sender = request.get_response_sender()

            def tensor(name: str, request=request) -> np.ndarray:
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            def progress(step: int, total: int, loss: float, sender=sender) -> None:
                sender.send(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor("STEP", np.array([step], np.int32)),
                            pb_utils.Tensor("TOTAL_STEPS", np.array([total], np.int32)),
                            pb_utils.Tensor("LOSS", np.array([loss], np.float32)),
                            pb_utils.Tensor("ARTIFACT", np.array([b""], dtype=object)),
                        ]
                    )
                )

            try:
                config = FitConfig(**json.loads(bytes(tensor("CONFIG")[0])))
                artifact = self.backend.fit_subject(tensor("IMAGES"), tensor("MASKS"), config, progress)
            except (TireError, TypeError, ValueError) as exc:  # a setting or an input it cannot use
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            final = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("STEP", np.array([config.steps], np.int32)),
                    pb_utils.Tensor("TOTAL_STEPS", np.array([config.steps], np.int32)),
                    pb_utils.Tensor("LOSS", np.array([np.nan], np.float32)),
                    pb_utils.Tensor("ARTIFACT", np.array([artifact], dtype=object)),
                ]
            )
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.backend = None
