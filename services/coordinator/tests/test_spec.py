"""Job-spec checks and defaults: every rule names its field and quotes the value; resolving is idempotent."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common import fit_settings
from services.common.errors import InvalidArgument
from services.coordinator import schedule
from services.coordinator.spec import (
    DEFAULT_LIMITS,
    DEFAULT_ORBIT_STEP_DEG,
    DEFAULT_RESOLUTION,
    resolve_spec,
)

SHA = "ab" * 32


def job_spec(frames: int = 1, **fields) -> coordinator_pb2.JobSpec:
    """A valid spec with ``frames`` time steps, plus ``fields``."""
    return coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(
            frames=[common_pb2.ObjectRef(uri=f"s3://tire/asset/{t}.ply", sha256=SHA) for t in range(frames)]
        ),
        references=[common_pb2.ObjectRef(uri=f"s3://tire/reference/{t}.png") for t in range(frames)],
        **fields,
    )


def f32(value: float) -> float:
    """``value`` as a proto float field holds it."""
    return float(np.float32(value))


# ----------------------------------------------------------------------------------------------------
# Defaults


def test_defaults_are_filled_in():
    spec = job_spec()
    resolved = resolve_spec(spec)
    assert resolved.resolution == DEFAULT_RESOLUTION == 256
    assert resolved.orbit_step_deg == DEFAULT_ORBIT_STEP_DEG == 20.0
    assert resolved.strength == resolved.refine_strength == 0.0  # unset: each stage backend's default
    assert resolved.elevation_deg == 0.0 and resolved.seed == 0
    assert resolved.rings.WhichOneof("mode") == "fixed"
    assert list(resolved.rings.fixed.limits_deg) == list(DEFAULT_LIMITS) == [20.0, 90.0, 180.0]
    assert resolved.fit == fit_settings.resolve_fit_settings(common_pb2.FitSettings())
    assert resolved.fit.HasField("steps") and resolved.fit.prompt == "A photo of sks"
    assert resolved.asset == spec.asset and resolved.references == spec.references
    assert spec == job_spec(), "the input is not changed"


def test_given_values_are_kept():
    spec = job_spec(
        frames=3,
        resolution=512,
        orbit_step_deg=30.0,
        elevation_deg=-30.0,
        rings=coordinator_pb2.RingSchedule(fixed=coordinator_pb2.FixedRings(limits_deg=[30.0, 180.0])),
        strength=0.5,
        refine_strength=1.0,
        fit=common_pb2.FitSettings(steps=10, clusters=3, seed=4),
        seed=7,
        labels={"team": "splats", "run-1.a_b": ""},
    )
    resolved = resolve_spec(spec)
    assert (resolved.resolution, resolved.orbit_step_deg, resolved.elevation_deg) == (512, 30.0, -30.0)
    assert list(resolved.rings.fixed.limits_deg) == [30.0, 180.0]
    assert (resolved.strength, resolved.refine_strength, resolved.seed) == (0.5, 1.0, 7)
    assert (resolved.fit.steps, resolved.fit.clusters, resolved.fit.seed) == (10, 3, 4)
    assert dict(resolved.labels) == {"team": "splats", "run-1.a_b": ""}
    assert len(resolved.asset.frames) == len(resolved.references) == 3


def test_empty_fixed_limits_mean_the_papers_rings():
    spec = job_spec(rings=coordinator_pb2.RingSchedule(fixed=coordinator_pb2.FixedRings()))
    assert list(resolve_spec(spec).rings.fixed.limits_deg) == [20.0, 90.0, 180.0]


def test_adaptive_defaults_follow_the_orbit_step():
    spec = job_spec(
        orbit_step_deg=30.0, rings=coordinator_pb2.RingSchedule(adaptive=coordinator_pb2.AdaptiveRings())
    )
    adaptive = resolve_spec(spec).rings.adaptive
    assert adaptive.max_unobserved_fraction == f32(0.35)
    assert adaptive.min_ring_width_deg == 30.0

    spec.ClearField("orbit_step_deg")
    assert resolve_spec(spec).rings.adaptive.min_ring_width_deg == 20.0
    spec.rings.adaptive.min_ring_width_deg = 60.0
    spec.rings.adaptive.max_unobserved_fraction = 1.0
    adaptive = resolve_spec(spec).rings.adaptive
    assert (adaptive.max_unobserved_fraction, adaptive.min_ring_width_deg) == (1.0, 60.0)


def test_source_only_stays_source_only():
    spec = job_spec(rings=coordinator_pb2.RingSchedule(source_only=coordinator_pb2.SourceOnly()))
    assert resolve_spec(spec).rings.WhichOneof("mode") == "source_only"


@pytest.mark.parametrize(
    "spec",
    [
        job_spec(),
        job_spec(frames=4, orbit_step_deg=7.2, strength=0.15, labels={"a": "b"}),
        job_spec(rings=coordinator_pb2.RingSchedule(adaptive=coordinator_pb2.AdaptiveRings())),
        job_spec(rings=coordinator_pb2.RingSchedule(source_only=coordinator_pb2.SourceOnly())),
        job_spec(fit=common_pb2.FitSettings(learning_rate=3e-4, max_rotation_deg=7.5, flip=False)),
    ],
)
def test_resolving_is_idempotent(spec):
    once = resolve_spec(spec)
    assert resolve_spec(once) == once


def test_a_float32_step_resolves_and_plans():
    resolved = resolve_spec(job_spec(orbit_step_deg=7.2, rings=coordinator_pb2.RingSchedule(adaptive={})))
    assert resolved.orbit_step_deg == f32(7.2)
    assert resolved.rings.adaptive.min_ring_width_deg == f32(7.2)
    plan = schedule.fixed_plan(resolved.orbit_step_deg, DEFAULT_LIMITS)
    assert len(plan.azimuths) == 50
    ring = schedule.next_adaptive_ring(
        plan.azimuths,
        1,
        {0},
        {},
        resolved.rings.adaptive.max_unobserved_fraction,
        resolved.rings.adaptive.min_ring_width_deg,
    )
    assert ring.targets == (1, 49)


def test_the_field_prefix_is_configurable():
    spec = job_spec(resolution=100)
    with pytest.raises(InvalidArgument) as info:
        resolve_spec(spec, field="jobs[2].spec")
    assert info.value.field == "jobs[2].spec.resolution"


# ----------------------------------------------------------------------------------------------------
# Bad specs


def output_formats(*names):
    def change(spec):
        spec.output_formats.extend(names)

    return change


def without_frames(spec):
    del spec.asset.frames[:]
    del spec.references[:]


def frames(count):
    def change(spec):
        spec.CopyFrom(job_spec(frames=count))

    return change


def setter(path: str, value):
    """Set a (possibly nested) scalar field: ``setter("rings.adaptive.min_ring_width_deg", 5.0)``."""

    def change(spec):
        *parents, name = path.split(".")
        message = spec
        for parent in parents:
            message = message[int(parent)] if parent.isdigit() else getattr(message, parent)
        setattr(message, name, value)

    return change


def framing_center(*values):
    def change(spec):
        spec.framing.center[:] = values

    return change


def limits(*values):
    def change(spec):
        spec.rings.fixed.limits_deg[:] = values

    return change


def labels(**values):
    def change(spec):
        spec.labels.update(values)

    return change


BAD = [
    # (change, field, value as quoted, words of the problem)
    (without_frames, "spec.asset.frames", "[]", "at least one splat file"),
    (frames(65), "spec.asset.frames", "65", "at most 64 time steps"),
    (setter("asset.frames.0.uri", "http://x/a.ply"), "spec.asset.frames[0].uri", "'http://x/a.ply'", "s3://"),
    (setter("asset.frames.0.uri", ""), "spec.asset.frames[0].uri", "''", "s3://bucket/key"),
    (setter("asset.frames.0.sha256", "AB" * 32), "spec.asset.frames[0].sha256", "'ABAB", "lower-case hex"),
    (
        lambda s: s.references.add(uri="s3://tire/extra.png"),
        "spec.references",
        "2",
        "one image per time step",
    ),
    (lambda s: s.ClearField("references"), "spec.references", "0", "one image per time step"),
    (setter("references.0.uri", "s3://tire"), "spec.references[0].uri", "'s3://tire'", "s3://"),
    (setter("resolution", 32), "spec.resolution", "32", "between 64 and 1024"),
    (setter("resolution", 1032), "spec.resolution", "1032", "between 64 and 1024"),
    (setter("resolution", 100), "spec.resolution", "100", "multiple of 8"),
    (setter("orbit_step_deg", 4.0), "spec.orbit_step_deg", "4.0", "between 5.0 and 90.0"),
    (setter("orbit_step_deg", 120.0), "spec.orbit_step_deg", "120.0", "between 5.0 and 90.0"),
    (setter("orbit_step_deg", -20.0), "spec.orbit_step_deg", "-20.0", "between 5.0 and 90.0"),
    (setter("orbit_step_deg", 7.0), "spec.orbit_step_deg", "7.0", "divide 360"),
    (setter("orbit_step_deg", 25.0), "spec.orbit_step_deg", "25.0", "divide 360"),
    (setter("orbit_step_deg", math.nan), "spec.orbit_step_deg", "nan", "finite"),
    (setter("orbit_step_deg", math.inf), "spec.orbit_step_deg", "inf", "finite"),
    (setter("elevation_deg", 85.0), "spec.elevation_deg", "85.0", "between -80.0 and 80.0"),
    (setter("elevation_deg", -90.0), "spec.elevation_deg", "-90.0", "between -80.0 and 80.0"),
    (setter("elevation_deg", math.nan), "spec.elevation_deg", "nan", "finite"),
    (framing_center(0.0, 1.0), "spec.framing.center", "[0.0, 1.0]", "3 values (x, y, z), or none"),
    (framing_center(0.0, math.inf, 1.0), "spec.framing.center", "[0.0, inf, 1.0]", "finite"),
    (setter("framing.radius", -1.0), "spec.framing.radius", "-1.0", "positive distance, or 0 to fit"),
    (setter("framing.radius", math.nan), "spec.framing.radius", "nan", "finite"),
    (limits(20.0, 90.0), "spec.rings.fixed.limits_deg[1]", "90.0", "must be 180"),
    (
        limits(90.0, 20.0, 180.0),
        "spec.rings.fixed.limits_deg[1]",
        "20.0",
        "larger than the limit before it (90)",
    ),
    (limits(20.0, 20.0, 180.0), "spec.rings.fixed.limits_deg[1]", "20.0", "increase strictly"),
    (limits(0.0, 180.0), "spec.rings.fixed.limits_deg[0]", "0.0", "(0, 180]"),
    (limits(-10.0, 180.0), "spec.rings.fixed.limits_deg[0]", "-10.0", "(0, 180]"),
    (limits(20.0, 190.0), "spec.rings.fixed.limits_deg[1]", "190.0", "(0, 180]"),
    (limits(20.0, math.nan, 180.0), "spec.rings.fixed.limits_deg[1]", "nan", "(0, 180]"),
    (
        setter("rings.adaptive.max_unobserved_fraction", 0.0),
        "spec.rings.adaptive.max_unobserved_fraction",
        "0.0",
        "(0, 1]",
    ),
    (
        setter("rings.adaptive.max_unobserved_fraction", 1.5),
        "spec.rings.adaptive.max_unobserved_fraction",
        "1.5",
        "(0, 1]",
    ),
    (
        setter("rings.adaptive.max_unobserved_fraction", math.nan),
        "spec.rings.adaptive.max_unobserved_fraction",
        "nan",
        "(0, 1]",
    ),
    (
        setter("rings.adaptive.min_ring_width_deg", 10.0),
        "spec.rings.adaptive.min_ring_width_deg",
        "10.0",
        "between the orbit step (20) and 180",
    ),
    (
        setter("rings.adaptive.min_ring_width_deg", 200.0),
        "spec.rings.adaptive.min_ring_width_deg",
        "200.0",
        "between the orbit step (20) and 180",
    ),
    (
        setter("rings.adaptive.min_ring_width_deg", math.inf),
        "spec.rings.adaptive.min_ring_width_deg",
        "inf",
        "finite",
    ),
    (setter("strength", 1.5), "spec.strength", "1.5", "between 0.0 and 1.0"),
    (setter("strength", -0.1), "spec.strength", f"{f32(-0.1)!r}", "between 0.0 and 1.0"),
    (setter("strength", math.nan), "spec.strength", "nan", "finite"),
    (setter("refine_strength", 2.0), "spec.refine_strength", "2.0", "between 0.0 and 1.0"),
    (setter("refine_strength", -math.inf), "spec.refine_strength", "-inf", "finite"),
    (setter("fit.steps", 0), "spec.fit.steps", "0", "between 1 and 100000"),
    (setter("fit.learning_rate", 0.0), "spec.fit.learning_rate", "0.0", "(0, 1]"),
    (setter("fit.prompt", ""), "spec.fit.prompt", "''", "1 to 1000 characters"),
    (setter("fit.resolution", 100), "spec.fit.resolution", "100", "multiple of 8"),
    (labels(**{f"k{i}": "v" for i in range(17)}), "spec.labels", "17", "at most 16 labels"),
    (labels(Team="x"), "spec.labels", "'Team'", "keys of 1 to 63 characters"),
    (labels(**{"": "x"}), "spec.labels", "''", "keys of 1 to 63 characters"),
    (labels(**{"a" * 64: "x"}), "spec.labels", "'aaaa", "keys of 1 to 63 characters"),
    (labels(**{"a b": "x"}), "spec.labels", "'a b'", "keys of 1 to 63 characters"),
    (labels(note="x" * 257), "spec.labels['note']", "'xxxx", "at most 256 characters"),
    (output_formats("spz", "obj"), "spec.output_formats[1]", "'obj'", "one of ply, spz, glb, sog, splat"),
    (output_formats("spz", "ply", "spz"), "spec.output_formats[2]", "'spz'", "each format once"),
]


@pytest.mark.parametrize(("change", "field", "value", "problem"), BAD)
def test_a_bad_spec_names_the_field_and_the_value(change, field, value, problem):
    spec = job_spec()
    if field.startswith("spec.rings.adaptive"):
        spec.rings.adaptive.SetInParent()
    change(spec)
    with pytest.raises(InvalidArgument) as info:
        resolve_spec(spec)
    message = str(info.value)
    assert info.value.field == field
    assert message.startswith(f"`{field}` ")
    assert f", got {value}" in message
    assert problem in message


def test_boundaries_are_accepted():
    spec = job_spec(
        frames=64,
        resolution=1024,
        orbit_step_deg=90.0,
        elevation_deg=80.0,
        rings=coordinator_pb2.RingSchedule(
            adaptive=coordinator_pb2.AdaptiveRings(max_unobserved_fraction=1.0, min_ring_width_deg=180.0)
        ),
        strength=1.0,
        labels={f"k{i}": "v" * 256 for i in range(16)} | {"a" * 63: ""},
    )
    with pytest.raises(InvalidArgument, match="at most 16 labels"):
        resolve_spec(spec)
    del spec.labels["a" * 63]
    assert resolve_spec(spec).resolution == 1024
    for step in (5.0, 6.0, 7.2, 22.5, 40.0, 72.0):
        assert resolve_spec(job_spec(orbit_step_deg=step, resolution=64)).orbit_step_deg == f32(step)
    assert resolve_spec(job_spec(elevation_deg=-80.0, rings={"fixed": {"limits_deg": [180.0]}}))
