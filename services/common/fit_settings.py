"""Defaults and checks of ``tire.v1.FitSettings``, in one place for every service that reads them.

The inpainter applies them to a ``FitSubject`` request; the coordinator applies them to a job's
``spec.fit`` at submit time, so a bad setting fails the submission instead of the job's fit step.
Services never import each other, so both use this module.

The defaults are the proto's. ``resolution`` 0 stands for the backend's native training size (512 for
Stable Diffusion); the colour backend ignores it.
"""

from __future__ import annotations

import math

import numpy as np
from tire.v1 import common_pb2

from services.common import validation

DEFAULT_STEPS = 400
DEFAULT_LEARNING_RATE = 1e-4
DEFAULT_RANK = 16
DEFAULT_PROMPT = "A photo of sks"
DEFAULT_RESOLUTION = 0  # the backend's native size
DEFAULT_FLIP = True
DEFAULT_MAX_ROTATION_DEG = 15.0
DEFAULT_CLUSTERS = 8

MAX_STEPS = 100_000
MAX_RANK = 1024
MAX_PROMPT_CHARS = 1000
MIN_RESOLUTION, MAX_RESOLUTION = 64, 4096
MAX_ROTATION_DEG = 180.0
MAX_CLUSTERS = 64


def resolve_fit_settings(message: common_pb2.FitSettings, field: str = "settings") -> common_pb2.FitSettings:
    """A copy of ``message`` with every optional field set: its value, or the default when unset.

    Each value is checked: steps 1..100000; learning_rate finite in (0, 1]; rank 1..1024; prompt 1..1000
    characters; resolution 0 (native) or a multiple of 8 in 64..4096; max_rotation_deg in [0, 180];
    clusters 1..64. ``seed`` is copied. Resolving a resolved message returns an equal message.

    Args:
        message: the settings as a client sent them.
        field: the path of ``message`` in the request, used in error messages ("settings", "spec.fit").

    Raises:
        InvalidArgument: a value out of range, naming ``f"{field}.<name>"``.
    """

    def get(name: str, default):
        return getattr(message, name) if message.HasField(name) else default

    steps = validation.positive_int(get("steps", DEFAULT_STEPS), f"{field}.steps", maximum=MAX_STEPS)
    learning_rate = get("learning_rate", DEFAULT_LEARNING_RATE)
    validation.require(
        math.isfinite(learning_rate) and 0 < learning_rate <= 1,
        f"{field}.learning_rate",
        learning_rate,
        "must be in (0, 1]",
    )
    rank = validation.positive_int(get("rank", DEFAULT_RANK), f"{field}.rank", maximum=MAX_RANK)
    prompt = get("prompt", DEFAULT_PROMPT)
    validation.require(
        0 < len(prompt) <= MAX_PROMPT_CHARS,
        f"{field}.prompt",
        prompt,
        f"must hold 1 to {MAX_PROMPT_CHARS} characters",
    )
    resolution = get("resolution", DEFAULT_RESOLUTION)
    validation.require(
        resolution == DEFAULT_RESOLUTION
        or (MIN_RESOLUTION <= resolution <= MAX_RESOLUTION and resolution % 8 == 0),
        f"{field}.resolution",
        resolution,
        f"must be a multiple of 8 between {MIN_RESOLUTION} and {MAX_RESOLUTION}",
    )
    max_rotation = validation.in_range(
        get("max_rotation_deg", DEFAULT_MAX_ROTATION_DEG), f"{field}.max_rotation_deg", 0.0, MAX_ROTATION_DEG
    )
    clusters = validation.positive_int(
        get("clusters", DEFAULT_CLUSTERS), f"{field}.clusters", maximum=MAX_CLUSTERS
    )
    return common_pb2.FitSettings(
        steps=steps,
        learning_rate=learning_rate,
        rank=rank,
        prompt=prompt,
        resolution=resolution,
        flip=get("flip", DEFAULT_FLIP),
        max_rotation_deg=max_rotation,
        clusters=clusters,
        seed=message.seed,
    )


def float32_decimal(value: float) -> float:
    """The shortest decimal that rounds to the same float32 as ``value``, as a Python float.

    Proto ``float`` fields hold float32: ``learning_rate = 1e-4`` reads back as 9.99999974738e-05. This
    returns 1e-4 again, so values read from a message equal the decimal constants they were set from.
    """
    return float(str(np.float32(value)))
