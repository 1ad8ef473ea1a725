"""Request checks for servicers: each raises ``errors.InvalidArgument`` naming the field and the value.

Each helper returns the value it checked, so a servicer can write
``width = positive_int(request.width, "width", maximum=4096)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Sequence, Sized
from typing import Any, TypeVar

import numpy as np

from services.common.errors import InvalidArgument

T = TypeVar("T")
N = TypeVar("N", int, float)
S = TypeVar("S", bound=Sized)

# S3 bucket naming rules (3-63 chars: lower-case letters, digits, dots, hyphens), then a non-empty key.
_S3_URI = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/.+")
_SHA256 = re.compile(r"[0-9a-f]{64}")

MAX_URI_CHARS = 1024
"""The longest object URI any request may hold (S3 keys are at most 1024 bytes)."""
MAX_LABEL_VALUE_CHARS = 256
"""The longest value of a job's label (``JobSpec.labels``)."""


def require(condition: bool, field: str, value: Any, problem: str) -> None:
    """Raise ``InvalidArgument(field, value, problem)`` unless ``condition`` holds."""
    if not condition:
        raise InvalidArgument(field, value, problem)


def positive_int(value: int, field: str, maximum: int | None = None) -> int:
    """An integer >= 1 (and <= ``maximum`` when given); bools are not integers here."""
    require(isinstance(value, int) and not isinstance(value, bool), field, value, "must be an integer")
    if maximum is None:
        require(value >= 1, field, value, "must be positive")
    else:
        require(1 <= value <= maximum, field, value, f"must be between 1 and {maximum}")
    return value


def in_range(value: N, field: str, lo: float, hi: float) -> N:
    """``lo <= value <= hi`` (a NaN fails)."""
    require(lo <= value <= hi, field, value, f"must be between {lo} and {hi}")
    return value


def finite(value: float, field: str) -> float:
    """A finite number: not NaN, not infinite."""
    require(math.isfinite(value), field, value, "must be a finite number")
    return value


def strength(value: float, field: str, default: float) -> float:
    """A stage request's strength in (0, 1]; 0 (unset) means ``default``, the stage backend's own."""
    require(
        math.isfinite(value) and 0.0 <= value <= 1.0,
        field,
        value,
        f"must be in (0, 1], or 0 for the backend's default ({default})",
    )
    return default if value == 0 else float(value)


def one_of(value: T, field: str, choices: Collection[T]) -> T:
    """``value`` is one of ``choices``."""
    require(value in choices, field, value, "must be one of " + ", ".join(map(repr, choices)))
    return value


def non_empty(value: S, field: str) -> S:
    """A string, bytes or repeated field with at least one element."""
    require(len(value) > 0, field, value, "must not be empty")
    return value


def s3_uri(value: str, field: str) -> str:
    """An object URI ``s3://bucket/key`` with a valid bucket name and a non-empty key, at most
    ``MAX_URI_CHARS`` characters."""
    text(value, field, MAX_URI_CHARS)
    require(
        isinstance(value, str) and _S3_URI.fullmatch(value) is not None,
        field,
        value,
        "must be an object URI like s3://bucket/key",
    )
    return value


def text(value: str, field: str, max_chars: int) -> str:
    """A string of at most ``max_chars`` characters (messages stay small whatever clients send)."""
    require(
        len(value) <= max_chars, field, f"{len(value)} characters", f"must be at most {max_chars} characters"
    )
    return value


def colour(values: Sequence[float], field: str) -> np.ndarray:
    """An RGB colour: 3 finite numbers in [0, 1]; returned as ``[3]`` float32."""
    rgb = np.asarray(values, dtype=np.float32)
    require(
        rgb.shape == (3,) and bool(np.isfinite(rgb).all()) and bool(((rgb >= 0) & (rgb <= 1)).all()),
        field,
        [float(v) for v in values],
        "must be 3 finite floats in [0, 1]",
    )
    return rgb


def sha256(value: str, field: str) -> str:
    """A SHA-256 digest written as 64 lower-case hex digits."""
    require(
        isinstance(value, str) and _SHA256.fullmatch(value) is not None,
        field,
        value,
        "must be 64 lower-case hex digits",
    )
    return value
