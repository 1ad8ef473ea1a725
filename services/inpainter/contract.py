"""The inpainter stage's contract: the backend interface, its options, its error, and the input checks
every backend runs.

``InpaintBackend`` is what the service calls: ``fit_subject`` turns reference images into a subject
model (an artifact of bytes), ``inpaint`` repaints the masked pixels of views with one. ``FitConfig``
holds how to fit, ``InvalidSubject`` is the error for a model a backend cannot use, ``BACKENDS`` names
the implementations (``services.inpainter.backends`` builds them).

Conventions: images ``[V, H, W, 3]`` uint8 sRGB, masks ``[V, H, W]`` (bool to inpaint, float32 in
[0, 1] to fit), alpha ``[V, H, W]`` float32 coverage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from services.common import fit_settings
from services.common.errors import TireError

BACKENDS = ("colour", "sd-lora", "triton")

DEFAULT_NUM_INFERENCE_STEPS = 50
DEFAULT_GUIDANCE_SCALE = 7.5


class InvalidSubject(TireError):
    """A subject-model artifact that cannot be read, or that another backend made (the server names
    the request field that referred to it)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class FitConfig:
    """How to fit a subject model (``tire.v1.FitSettings`` with the proto's defaults applied; the defaults
    live in ``services.common.fit_settings``).

    Attributes:
        steps: optimisation steps (LoRA); the colour backend runs ``min(steps, its cap)`` Lloyd
            iterations.
        learning_rate, rank, prompt, flip, max_rotation_deg: LoRA training (the colour backend ignores
            them).
        resolution: training resolution in pixels, 0 for the backend's native size (colour ignores it).
        clusters: colour clusters (colour backend).
        seed: the same inputs and seed give the same model.
    """

    steps: int = fit_settings.DEFAULT_STEPS
    learning_rate: float = fit_settings.DEFAULT_LEARNING_RATE
    rank: int = fit_settings.DEFAULT_RANK
    prompt: str = fit_settings.DEFAULT_PROMPT
    resolution: int = fit_settings.DEFAULT_RESOLUTION
    flip: bool = fit_settings.DEFAULT_FLIP
    max_rotation_deg: float = fit_settings.DEFAULT_MAX_ROTATION_DEG
    clusters: int = fit_settings.DEFAULT_CLUSTERS
    seed: int = 0


@dataclass(frozen=True)
class InpaintCall:
    """The arguments of one ``InpaintBackend.inpaint`` call, for backends that run several together."""

    images: np.ndarray
    masks: np.ndarray
    alpha: np.ndarray | None
    subject: bytes
    strength: float
    seed: int
    num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE


class InpaintBackend(Protocol):
    """Fits subject models and inpaints with them. Implementations never see protobuf or the store."""

    name: str
    base_model: str  # the base model subject models are fitted on; "" for backends without one
    default_strength: float  # what a request's strength 0 (unset) means for this backend
    subject_cache_size: int  # subject models the server keeps in memory for the next calls (their size)

    @property
    def device(self) -> str:
        """Where it computes, for Describe, for example "cpu (2 threads)"."""
        ...

    def fit_subject(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        config: FitConfig,
        progress: Callable[[int, int, float], None],
    ) -> bytes:
        """Fit a subject model to reference images.

        Args:
            images: ``[R, H, W, 3]`` uint8 references.
            masks: ``[R, H, W]`` float32 in [0, 1], the foreground (at least one pixel above 0.5).
            config: how to fit.
            progress: called as ``progress(step, total_steps, loss)`` as the fit goes; may raise to
                stop the fit (the exception propagates).

        Returns:
            The model artifact's bytes (safetensors), deterministic for the inputs and ``config.seed``.
        """
        ...

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
        """Inpaint the masked pixels of V views with a subject model.

        Args:
            images: ``[V, H, W, 3]`` uint8.
            masks: ``[V, H, W]`` bool, True where pixels may change.
            alpha: ``[V, H, W]`` float32 coverage in [0, 1], or None; masked pixels with alpha < 0.5
                (foreground without rendered content) are filled from their surroundings.
            subject: the artifact ``fit_subject`` returned (possibly another replica's).
            strength: in [0, 1], how far to move toward the subject; 0 returns ``images`` unchanged.
            seed: the same inputs and seed give the same result.
            num_inference_steps, guidance_scale: diffusion sampling (ignored by backends without it).

        Returns:
            ``[V, H, W, 3]`` uint8; pixels where ``masks`` is False are bit-identical to ``images``.

        Raises:
            InvalidSubject: ``subject`` is unreadable or another backend's model.
        """
        ...


def check_fit_inputs(images: np.ndarray, masks: np.ndarray) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be [R, H, W, 3] uint8, got {list(images.shape)} {images.dtype}")
    if masks.shape != images.shape[:3] or masks.dtype != np.float32:
        raise ValueError(
            f"masks must be [R, H, W] float32 like images, got {list(masks.shape)} {masks.dtype}"
        )


def check_inpaint_inputs(
    images: np.ndarray, masks: np.ndarray, alpha: np.ndarray | None, strength: float
) -> None:
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be [V, H, W, 3] uint8, got {list(images.shape)} {images.dtype}")
    if masks.shape != images.shape[:3] or masks.dtype != np.bool_:
        raise ValueError(f"masks must be [V, H, W] bool like images, got {list(masks.shape)} {masks.dtype}")
    if alpha is not None and (alpha.shape != images.shape[:3] or alpha.dtype != np.float32):
        raise ValueError(
            f"alpha must be [V, H, W] float32 like images, got {list(alpha.shape)} {alpha.dtype}"
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength!r}")
