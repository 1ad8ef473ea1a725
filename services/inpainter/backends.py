"""Inpainter backends: the implementations of ``services.inpainter.contract.InpaintBackend``, and
``make_backend``, which builds the configured one.

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

import numpy as np

from services.common.errors import ConfigError
from services.inpainter.colour import ColourModel, fit_colour_model, inpaint_view
from services.inpainter.contract import (
    BACKENDS,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FitConfig,
    InpaintBackend,
    check_fit_inputs,
    check_inpaint_inputs,
)

__all__ = ["ColourBackend", "make_backend"]


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
    subject_cache_size = 64  # a colour model is a few kB
    default_strength = 1.0
    """Strength is linear here, the fraction of the way to the subject's colours: drifted pixels move
    all the way by default (only the pixels that fit no part of the subject move at all)."""

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


def make_backend(name: str, **options) -> InpaintBackend:
    """The backend called ``name`` ("colour", "sd-lora" or "triton"), built with ``options`` (its
    constructor's keywords).

    Raises:
        ConfigError: an unknown backend name, or an option out of range.
    """
    if name == "colour":
        return ColourBackend(**options)
    if name == "sd-lora":
        from services.inpainter.sd_lora import SdLoraBackend

        return SdLoraBackend(**options)
    if name == "triton":
        from services.inpainter.triton_backend import TritonInpaintBackend

        return TritonInpaintBackend(**options)
    raise ConfigError(f"unknown inpainter backend {name!r}; this build has {', '.join(BACKENDS)}")
