"""Inpainter backends: one narrow interface, ``InpaintBackend``.

- ``colour`` (``ColourBackend``): the subject model is the colour statistics of the references'
  foreground (a Gaussian mixture in CIELab, ``services.inpainter.colour``); inpainting fills holes and
  transfers those colours onto the masked region, keeping its structure. CPU, no weights.

- ``sd-lora`` (``services.inpainter.sd_lora.SdLoraBackend``): Stable Diffusion inpainting with a LoRA
  fitted to the subject, as in the paper. Needs the ``diffusion`` extra (torch, diffusers, peft); a GPU in
  production. Imported only when chosen.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from services.common import fit_settings
from services.common.config import ConfigError
from services.inpainter.colour import ColourModel, InvalidSubject, fit_colour_model, inpaint_view

__all__ = [
    "BACKENDS",
    "ColourBackend",
    "FitConfig",
    "InpaintBackend",
    "InvalidSubject",
    "make_backend",
]

BACKENDS = ("colour", "sd-lora")

DEFAULT_NUM_INFERENCE_STEPS = 50
DEFAULT_GUIDANCE_SCALE = 7.5


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


class InpaintBackend(Protocol):
    """Fits subject models and inpaints with them. Implementations never see protobuf or the store."""

    name: str
    base_model: str  # the base model subject models are fitted on; "" for backends without one

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


class ColourBackend:
    """The subject's colours, transferred onto masked regions (see ``services.inpainter.colour``).

    Args:
        threads: views inpainted in parallel (0: every core).
        transport_iterations: sliced-optimal-transport iterations per view.
        transport_samples: masked colours each view's transport is fitted on, at most, and samples
            drawn from the subject model for it.
        smoothing_sigma: spatial smoothing of the colour displacement, pixels.
        fill_radius: Telea radius for filling holes, pixels.
        max_fit_samples: foreground pixels the colour model is fitted on, at most.
        max_fit_iterations: cap on Lloyd iterations (``FitConfig.steps`` is usually a LoRA's 400).
    """

    name = "colour"
    base_model = ""

    def __init__(
        self,
        *,
        threads: int = 0,
        transport_iterations: int = 30,
        transport_samples: int = 4096,
        smoothing_sigma: float = 3.0,
        fill_radius: int = 3,
        max_fit_samples: int = 20_000,
        max_fit_iterations: int = 50,
    ):
        checks = [
            (threads >= 0, "threads", threads),
            (transport_iterations >= 1, "transport_iterations", transport_iterations),
            (transport_samples >= 2, "transport_samples", transport_samples),
            (0 <= smoothing_sigma <= 100, "smoothing_sigma", smoothing_sigma),
            (1 <= fill_radius <= 64, "fill_radius", fill_radius),
            (max_fit_samples >= 1, "max_fit_samples", max_fit_samples),
            (max_fit_iterations >= 1, "max_fit_iterations", max_fit_iterations),
        ]
        for ok, name, value in checks:
            if not ok:
                raise ConfigError(f"colour backend: {name} is out of range, got {value!r}.")
        self.threads = threads or os.cpu_count() or 1
        self.transport_iterations = transport_iterations
        self.transport_samples = transport_samples
        self.smoothing_sigma = smoothing_sigma
        self.fill_radius = fill_radius
        self.max_fit_samples = max_fit_samples
        self.max_fit_iterations = max_fit_iterations

    @property
    def device(self) -> str:
        return f"cpu ({self.threads} threads)"

    def fit_subject(
        self,
        images: np.ndarray,
        masks: np.ndarray,
        config: FitConfig,
        progress: Callable[[int, int, float], None],
    ) -> bytes:
        """K-means of the foreground's Lab colours: ``min(config.steps, max_fit_iterations)`` Lloyd
        iterations, ``config.clusters`` clusters, progress loss = mean squared Lab distance."""
        check_fit_inputs(images, masks)
        iterations = min(config.steps, self.max_fit_iterations)
        model = fit_colour_model(
            images,
            masks,
            clusters=config.clusters,
            iterations=iterations,
            seed=config.seed,
            max_samples=self.max_fit_samples,
            progress=progress,
        )
        return model.to_bytes(
            clusters=str(config.clusters), iterations=str(iterations), seed=str(config.seed)
        )

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
        """Fill holes, then move each drifted region onto the palette of the observed surface near it
        (``colour.inpaint_view``; the subject's whole palette where too little is observed), per
        view, with ``np.random.default_rng([seed, view])``. ``num_inference_steps`` and
        ``guidance_scale`` are ignored (no diffusion here)."""
        model = ColourModel.from_bytes(subject)
        check_inpaint_inputs(images, masks, alpha, strength)
        if strength == 0:
            return images.copy()

        def one(view: int) -> np.ndarray:
            return inpaint_view(
                images[view],
                masks[view],
                None if alpha is None else alpha[view],
                model,
                strength=float(strength),
                rng=np.random.default_rng([seed, view]),
                iterations=self.transport_iterations,
                samples=self.transport_samples,
                sigma=self.smoothing_sigma,
                fill_radius=self.fill_radius,
            )

        if self.threads == 1 or len(images) == 1:
            views = [one(v) for v in range(len(images))]
        else:
            with ThreadPoolExecutor(min(self.threads, len(images)), thread_name_prefix="inpaint") as pool:
                views = list(pool.map(one, range(len(images))))
        return np.stack(views)


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


def make_backend(name: str, **options) -> InpaintBackend:
    """The backend called ``name`` ("colour" or "sd-lora"), built with ``options`` (its constructor's
    keywords).

    Raises:
        ConfigError: an unknown backend name, or an option out of range.
    """
    if name == "colour":
        return ColourBackend(**options)
    if name == "sd-lora":
        from services.inpainter.sd_lora import SdLoraBackend

        return SdLoraBackend(**options)
    raise ConfigError(f"unknown inpainter backend {name!r}; this build has {', '.join(BACKENDS)}")
