"""FitSettings defaults and checks, shared by the inpainter and the coordinator."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tire.v1 import common_pb2

from services.common import fit_settings
from services.common.errors import InvalidArgument
from services.common.fit_settings import float32_decimal, resolve_fit_settings

OPTIONAL = ("steps", "learning_rate", "rank", "prompt", "resolution", "flip", "max_rotation_deg", "clusters")


def test_unset_fields_take_the_defaults():
    message = common_pb2.FitSettings()
    resolved = resolve_fit_settings(message)
    assert all(resolved.HasField(name) for name in OPTIONAL)
    assert (resolved.steps, resolved.rank, resolved.clusters, resolved.resolution) == (400, 16, 8, 0)
    assert (resolved.prompt, resolved.flip, resolved.seed) == ("A photo of sks", True, 0)
    assert resolved.learning_rate == np.float32(fit_settings.DEFAULT_LEARNING_RATE)
    assert resolved.max_rotation_deg == fit_settings.DEFAULT_MAX_ROTATION_DEG == 15.0
    assert message == common_pb2.FitSettings(), "the input is not changed"


def test_given_values_are_kept():
    message = common_pb2.FitSettings(
        steps=7,
        learning_rate=0.5,
        rank=4,
        prompt="A photo of zwx",
        resolution=512,
        flip=False,
        max_rotation_deg=0.0,
        clusters=3,
        seed=9,
    )
    assert resolve_fit_settings(message) == message


def test_resolving_is_idempotent():
    for message in (common_pb2.FitSettings(), common_pb2.FitSettings(learning_rate=3e-4, seed=2)):
        once = resolve_fit_settings(message)
        assert resolve_fit_settings(once) == once


@pytest.mark.parametrize(
    "fields",
    [
        {"steps": 100_000},
        {"steps": 1},
        {"learning_rate": 1.0},
        {"rank": 1024},
        {"prompt": "x" * 1000},
        {"resolution": 0},
        {"resolution": 64},
        {"resolution": 4096},
        {"max_rotation_deg": 180.0},
        {"clusters": 1},
        {"clusters": 64},
    ],
)
def test_boundaries_are_accepted(fields):
    resolved = resolve_fit_settings(common_pb2.FitSettings(**fields))
    for name, value in fields.items():
        assert getattr(resolved, name) == value


@pytest.mark.parametrize(
    ("fields", "name", "value", "problem"),
    [
        ({"steps": 0}, "steps", "0", "must be between 1 and 100000"),
        ({"steps": 100_001}, "steps", "100001", "must be between 1 and 100000"),
        ({"learning_rate": 0.0}, "learning_rate", "0.0", "must be in (0, 1]"),
        ({"learning_rate": 2.0}, "learning_rate", "2.0", "must be in (0, 1]"),
        ({"learning_rate": math.nan}, "learning_rate", "nan", "must be in (0, 1]"),
        ({"learning_rate": math.inf}, "learning_rate", "inf", "must be in (0, 1]"),
        ({"rank": 0}, "rank", "0", "must be between 1 and 1024"),
        ({"rank": 1025}, "rank", "1025", "must be between 1 and 1024"),
        ({"prompt": ""}, "prompt", "''", "must hold 1 to 1000 characters"),
        ({"prompt": "x" * 1001}, "prompt", "'xxx", "must hold 1 to 1000 characters"),
        ({"resolution": 100}, "resolution", "100", "must be a multiple of 8 between 64 and 4096"),
        ({"resolution": 8}, "resolution", "8", "must be a multiple of 8 between 64 and 4096"),
        ({"resolution": 4104}, "resolution", "4104", "must be a multiple of 8 between 64 and 4096"),
        ({"max_rotation_deg": -1.0}, "max_rotation_deg", "-1.0", "must be between 0.0 and 180.0"),
        ({"max_rotation_deg": math.inf}, "max_rotation_deg", "inf", "must be between 0.0 and 180.0"),
        ({"clusters": 0}, "clusters", "0", "must be between 1 and 64"),
        ({"clusters": 65}, "clusters", "65", "must be between 1 and 64"),
    ],
)
@pytest.mark.parametrize("prefix", ["settings", "spec.fit"])
def test_a_bad_value_names_the_field(fields, name, value, problem, prefix):
    with pytest.raises(InvalidArgument) as info:
        resolve_fit_settings(common_pb2.FitSettings(**fields), prefix)
    assert info.value.field == f"{prefix}.{name}"
    assert str(info.value).startswith(f"`{prefix}.{name}` {problem}, got {value}")


def test_float32_decimal_gives_back_the_written_decimal():
    assert common_pb2.FitSettings(learning_rate=1e-4).learning_rate != 1e-4  # float32 storage
    for value in (1e-4, 2.5e-5, 0.3, 15.0, 7.2, 1.0, 0.0):
        assert float32_decimal(common_pb2.FitSettings(learning_rate=value).learning_rate) == value
    resolved = resolve_fit_settings(common_pb2.FitSettings())
    assert float32_decimal(resolved.learning_rate) == fit_settings.DEFAULT_LEARNING_RATE
