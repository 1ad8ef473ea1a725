"""The ``triton`` inpainter backend: the sd-lora models served by a Triton Inference Server.

The stage service keeps its API, its request checks and its store I/O; Triton owns the model and its
device. ``fit_subject`` streams the ``fit_subject`` model's progress (decoupled), ``inpaint`` calls the
``inpaint`` model (``services.inpainter.triton_model`` declares both). Subject adapters are ``sd-lora``
adapters: this backend's name is ``sd-lora``, so the subjects it fits serve an in-process sd-lora
replica of the same weights too, and the other way round.

Which version answers: ``version`` pinned, or "" for the newest Triton has ready. ``pinned(version)`` is
the same backend held to one version: a job runs every call on the version it started with
(``model_version`` in the requests), while a newly published one serves the next jobs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable

import numpy as np

from services.common.errors import InvalidArgument, NotFound
from services.common.triton import ServedByTriton, TritonModels
from services.inpainter.contract import (
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FitConfig,
    InvalidSubject,
    check_fit_inputs,
    check_inpaint_inputs,
)
from services.inpainter.triton_model import FIT, INPAINT, MODELS


class TritonInpaintBackend(ServedByTriton):
    """``InpaintBackend`` over Triton's gRPC API.

    Args:
        url: Triton's gRPC address, ``host:port``.
        version: the model version to call ("" for the newest Triton has ready).

    Raises:
        ImportError: ``tritonclient`` is not installed.
    """

    name = "sd-lora"
    default_strength = 0.3
    """As the in-process sd-lora's: the same models."""
    subject_cache_size = 8  # an SD2 LoRA of rank 16 is 16 MB

    def __init__(self, url: str, version: str = ""):
        self.models = TritonModels(url, [model.name for model in MODELS], version)
        self.sent: set[str] = set()  # sha256s of the subjects Triton was sent (pinned copies share it)

    def fit_subject(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        config: FitConfig,
        progress: Callable[[int, int, float], None],
    ) -> bytes:
        """See ``InpaintBackend.fit_subject``: the ``fit_subject`` model's stream, progress passed on."""
        check_fit_inputs(images, masks)
        inputs = {
            "IMAGES": images,
            "MASKS": masks,
            "CONFIG": np.array([json.dumps(dataclasses.asdict(config)).encode()], dtype=object),
        }
        for answer in self.models.stream(FIT.name, inputs, _refused_settings):
            artifact = bytes(answer["ARTIFACT"][0])
            if artifact:
                return artifact
            progress(int(answer["STEP"][0]), int(answer["TOTAL_STEPS"][0]), float(answer["LOSS"][0]))
        raise InvalidArgument("settings", "the fit request", "ended without a subject model from Triton")

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
        """See ``InpaintBackend.inpaint``: one request to the ``inpaint`` model (which Triton may batch
        with others), naming the subject by sha256; its bytes go with the first request, and again when
        the model does not hold it (a restarted server, another replica)."""
        check_inpaint_inputs(images, masks, alpha, strength)
        sha256 = hashlib.sha256(subject).hexdigest()
        inputs = {
            "IMAGES": images[None],
            "MASKS": masks[None],
            "SUBJECT_SHA256": np.array([[sha256.encode()]], dtype=object),
            "STRENGTH": np.array([[strength]], np.float32),
            "SEED": np.array([[seed]], np.uint64),
            "NUM_INFERENCE_STEPS": np.array([[num_inference_steps]], np.int32),
            "GUIDANCE_SCALE": np.array([[guidance_scale]], np.float32),
        }
        if alpha is not None:
            inputs["ALPHA"] = alpha[None]
        if sha256 in self.sent:
            try:
                return self.models.infer(INPAINT.name, inputs, InvalidSubject)["INPAINTED"][0]
            except NotFound:
                pass
        inputs["SUBJECT"] = np.array([[subject]], dtype=object)
        inpainted = self.models.infer(INPAINT.name, inputs, InvalidSubject)["INPAINTED"][0]
        self.sent.add(sha256)
        return inpainted


def _refused_settings(message: str) -> InvalidArgument:
    return InvalidArgument("settings", "the fit request", f"was refused by the model: {message}")
