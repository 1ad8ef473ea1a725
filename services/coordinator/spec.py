"""A job's spec: every check and every default, applied once when the job is submitted.

``resolve_spec`` returns the spec with its defaults filled in (``Job.spec`` is "the spec as submitted,
with defaults filled in"), so later steps read values, never "0 means the default"; the one exception
is a strength of 0, which is sent on as 0: the default belongs to the stage's backend. A bad spec fails
``SubmitJob`` with ``INVALID_ARGUMENT`` naming the field ("`spec.rings.fixed.limits_deg[2]` must be 180,
the last limit, got 170.0."), instead of failing a step of the job later.

Angles are degrees; proto ``float`` fields hold float32, so a value such as 7.2 is checked as the
float32 it arrives as (7.1999998...), with the schedule's tolerances.
"""

from __future__ import annotations

import math
import re

from tire.v1 import common_pb2, coordinator_pb2

from services.common import validation
from services.common.errors import InvalidArgument
from services.common.fit_settings import resolve_fit_settings
from services.common.formats import WRITABLE
from services.common.store import addressed_sha256
from services.common.validation import MAX_LABEL_VALUE_CHARS, require
from services.coordinator import schedule

DEFAULT_RESOLUTION = 256
MIN_RESOLUTION, MAX_RESOLUTION = 64, 1024
DEFAULT_ORBIT_STEP_DEG = 20.0
MIN_ORBIT_STEP_DEG, MAX_ORBIT_STEP_DEG = 5.0, 90.0
MAX_ELEVATION_DEG = 80.0
DEFAULT_LIMITS = (20.0, 90.0, 180.0)
DEFAULT_MAX_UNOBSERVED_FRACTION = 0.35
MAX_TIME_STEPS = 64
MAX_LABELS = 16
MAX_MEDIA_TYPE_CHARS = 255

_LABEL_KEY = re.compile(r"[a-z0-9_.-]{1,63}")


def spec_defaults() -> dict[str, str]:
    """What ``resolve_spec`` fills in for unset fields, by field path, as the coordinator's Describe
    reports them under ``default.``; also the accepted ranges, under ``range.``."""
    fit = resolve_fit_settings(common_pb2.FitSettings())
    return {
        "default.resolution": str(DEFAULT_RESOLUTION),
        "range.resolution": f"{MIN_RESOLUTION} to {MAX_RESOLUTION}, a multiple of 8",
        "default.orbit_step_deg": f"{DEFAULT_ORBIT_STEP_DEG:g}",
        "range.orbit_step_deg": f"{MIN_ORBIT_STEP_DEG:g} to {MAX_ORBIT_STEP_DEG:g}, dividing 360",
        "default.elevation_deg": "0",
        "range.elevation_deg": f"{-MAX_ELEVATION_DEG:g} to {MAX_ELEVATION_DEG:g}",
        "default.rings.fixed.limits_deg": ",".join(f"{limit:g}" for limit in DEFAULT_LIMITS),
        "default.rings.adaptive.max_unobserved_fraction": f"{DEFAULT_MAX_UNOBSERVED_FRACTION:g}",
        "default.fit.steps": str(fit.steps),
        "default.output_formats": "the asset's own",
        "output_formats": ",".join(WRITABLE),
    }


def resolve_spec(spec: coordinator_pb2.JobSpec, field: str = "spec") -> coordinator_pb2.JobSpec:
    """A checked copy of ``spec`` with every default filled in; ``spec`` itself is not changed.

    Defaults: resolution 256; orbit_step_deg 20; rings: fixed with limits [20, 90, 180] when unset or
    when ``fixed.limits_deg`` is empty; adaptive: max_unobserved_fraction 0.35 and min_ring_width_deg
    the orbit step when unset; fit: every field set
    (``services.common.fit_settings.resolve_fit_settings``). A strength of 0 stays 0: the stage's
    backend applies its own default (``default_strength``, in its Describe). Resolving a resolved spec
    returns an equal spec.

    Checks: the asset has 1 to 64 frames, each an ``s3://`` URI (with a 64-hex-digit sha256 when one is
    given); one reference image per frame, each an ``s3://`` URI; resolution a multiple of 8 in
    64..1024; orbit_step_deg finite, in [5, 90], and 360 a multiple of it; elevation_deg finite in
    [-80, 80]; framing: a centre of 0 or 3 finite values and a finite radius >= 0 (an empty centre
    and a radius of 0 are fitted to the asset later, by ``framing_check.frame_job``, which needs the
    store); fixed limits strictly increasing, each in (0, 180], the last 180; adaptive
    max_unobserved_fraction in (0, 1], min_ring_width_deg finite, at least the orbit step and at most
    180; strength and refine_strength finite in [0, 1]; at most 16 labels, keys of 1 to 63 characters
    of [a-z0-9_.-], values of at most 256 characters; output formats each a name of ``WRITABLE``, once.

    Args:
        spec: the spec as the client sent it.
        field: its path in the request, the prefix of every field named in errors.

    Raises:
        InvalidArgument: the first bad field, named by its full path, for example
            ``spec.asset.frames[1].uri`` or ``spec.rings.adaptive.min_ring_width_deg``.
    """
    resolved = coordinator_pb2.JobSpec()
    resolved.CopyFrom(spec)

    # 1. What to repair: the asset's frames and one reference per frame.
    frames = resolved.asset.frames
    require(
        len(frames) > 0, f"{field}.asset.frames", [], "must hold at least one splat file (one per time step)"
    )
    require(
        len(frames) <= MAX_TIME_STEPS,
        f"{field}.asset.frames",
        len(frames),
        f"must hold at most {MAX_TIME_STEPS} time steps (frames)",
    )
    for i, frame in enumerate(frames):
        _check_object(frame, f"{field}.asset.frames[{i}]")
    require(
        len(resolved.references) == len(frames),
        f"{field}.references",
        len(resolved.references),
        f"must hold exactly one image per time step of the asset ({len(frames)})",
    )
    for i, reference in enumerate(resolved.references):
        _check_object(reference, f"{field}.references[{i}]")

    # 2. The views: resolution and orbit.
    if resolved.resolution == 0:
        resolved.resolution = DEFAULT_RESOLUTION
    require(
        MIN_RESOLUTION <= resolved.resolution <= MAX_RESOLUTION and resolved.resolution % 8 == 0,
        f"{field}.resolution",
        resolved.resolution,
        f"must be a multiple of 8 between {MIN_RESOLUTION} and {MAX_RESOLUTION} pixels",
    )
    step = _orbit_step(resolved.orbit_step_deg, f"{field}.orbit_step_deg")
    resolved.orbit_step_deg = step
    validation.finite(resolved.elevation_deg, f"{field}.elevation_deg")
    validation.in_range(
        resolved.elevation_deg, f"{field}.elevation_deg", -MAX_ELEVATION_DEG, MAX_ELEVATION_DEG
    )
    _check_framing(resolved.framing, f"{field}.framing")

    # 3. The ring schedule.
    _resolve_rings(resolved.rings, resolved.orbit_step_deg, f"{field}.rings")

    # 4. Strengths and the subject fit.
    for name in ("strength", "refine_strength"):
        validation.finite(getattr(resolved, name), f"{field}.{name}")
        validation.in_range(getattr(resolved, name), f"{field}.{name}", 0.0, 1.0)
    resolved.fit.CopyFrom(resolve_fit_settings(resolved.fit, f"{field}.fit"))
    if not resolved.fit.seed:
        resolved.fit.seed = resolved.seed  # the job's seed reaches the subject fit unless one is given

    # 5. Labels.
    require(
        len(resolved.labels) <= MAX_LABELS,
        f"{field}.labels",
        len(resolved.labels),
        f"must hold at most {MAX_LABELS} labels",
    )
    for key in sorted(resolved.labels):
        require(
            _LABEL_KEY.fullmatch(key) is not None,
            f"{field}.labels",
            key,
            "must have keys of 1 to 63 characters from a-z, 0-9, '_', '.' and '-'",
        )
        value = resolved.labels[key]
        require(
            len(value) <= MAX_LABEL_VALUE_CHARS,
            f"{field}.labels[{key!r}]",
            value,
            f"must hold at most {MAX_LABEL_VALUE_CHARS} characters",
        )

    # 6. Output formats (empty: the asset's own, which frame_job reads from the asset).
    seen: set[str] = set()
    for i, name in enumerate(resolved.output_formats):
        require(
            name in WRITABLE, f"{field}.output_formats[{i}]", name, f"must be one of {', '.join(WRITABLE)}"
        )
        require(name not in seen, f"{field}.output_formats[{i}]", name, "must name each format once")
        seen.add(name)
    return resolved


def input_refs(spec: coordinator_pb2.JobSpec, field: str = "spec") -> list[tuple[str, common_pb2.ObjectRef]]:
    """The objects a job reads, each with its field name: the asset's frames, then the references."""
    refs = [(f"{field}.asset.frames[{i}]", ref) for i, ref in enumerate(spec.asset.frames)]
    return refs + [(f"{field}.references[{i}]", ref) for i, ref in enumerate(spec.references)]


def check_uploaded(spec: coordinator_pb2.JobSpec, bucket_uri: str, field: str = "spec") -> None:
    """A client's job reads only what was uploaded to this deployment: each frame and reference must be
    a content-addressed object (``sha256/ab/<sha256><suffix>``, what ``CreateUpload`` hands out) under
    ``bucket_uri`` (``s3://<the store's bucket>/``), its ``sha256`` the one its key names.

    Raises:
        InvalidArgument: naming the reference's ``uri`` or ``sha256`` field and saying why.
    """
    for name, ref in input_refs(spec, field):
        if not ref.uri.startswith(bucket_uri):
            raise InvalidArgument(
                f"{name}.uri", ref.uri, f"must be an object of this deployment ({bucket_uri}...): upload it"
            )
        addressed = addressed_sha256(ref.uri)
        if addressed is None:
            raise InvalidArgument(
                f"{name}.uri",
                ref.uri,
                "must be a content-addressed key sha256/ab/<sha256><suffix>: upload it",
            )
        if ref.sha256 != addressed:
            raise InvalidArgument(
                f"{name}.sha256", ref.sha256 or "(unset)", "must be the sha256 its URI names"
            )


def _check_object(ref, field: str) -> None:
    """An ``ObjectRef`` the job will read: an ``s3://`` URI, and a well-formed sha256 if one is given."""
    validation.s3_uri(ref.uri, f"{field}.uri")
    validation.text(ref.media_type, f"{field}.media_type", MAX_MEDIA_TYPE_CHARS)
    if ref.sha256:
        validation.sha256(ref.sha256, f"{field}.sha256")


def _check_framing(framing: coordinator_pb2.Framing, field: str) -> None:
    """A pinned framing's values: a centre of none or 3 finite values, a finite radius >= 0 (0: fit)."""
    center = list(framing.center)
    require(
        len(center) in (0, 3),
        f"{field}.center",
        center,
        "must hold 3 values (x, y, z), or none to fit the centre to the asset",
    )
    require(all(math.isfinite(v) for v in center), f"{field}.center", center, "must be finite")
    validation.finite(framing.radius, f"{field}.radius")
    require(
        framing.radius >= 0,
        f"{field}.radius",
        framing.radius,
        "must be a positive distance, or 0 to fit the radius to the asset",
    )


def _orbit_step(value: float, field: str) -> float:
    """The orbit step in degrees: 0 means the default; otherwise finite, in [5, 90], dividing 360."""
    if value == 0:
        return DEFAULT_ORBIT_STEP_DEG
    validation.finite(value, field)
    validation.in_range(value, field, MIN_ORBIT_STEP_DEG, MAX_ORBIT_STEP_DEG)
    require(
        schedule.divides_circle(value), field, value, "must divide 360 degrees into a whole number of views"
    )
    return value


def _resolve_rings(rings: coordinator_pb2.RingSchedule, step_deg: float, field: str) -> None:
    """Check ``rings`` in place and fill its defaults (the paper's fixed rings when unset)."""
    mode = rings.WhichOneof("mode")
    if mode is None or (mode == "fixed" and len(rings.fixed.limits_deg) == 0):
        rings.fixed.limits_deg[:] = DEFAULT_LIMITS
    elif mode == "fixed":
        limits = list(rings.fixed.limits_deg)
        for i, limit in enumerate(limits):
            name = f"{field}.fixed.limits_deg[{i}]"
            require(0 < limit <= 180, name, limit, "must be in (0, 180] degrees")
            if i > 0:
                require(
                    limit > limits[i - 1],
                    name,
                    limit,
                    f"must be larger than the limit before it ({limits[i - 1]:g}): limits increase strictly",
                )
        last = len(limits) - 1
        require(
            limits[last] == 180,
            f"{field}.fixed.limits_deg[{last}]",
            limits[last],
            "must be 180, the last limit (the rings cover the whole orbit)",
        )
    elif mode == "adaptive":
        adaptive = rings.adaptive
        if not adaptive.HasField("max_unobserved_fraction"):
            adaptive.max_unobserved_fraction = DEFAULT_MAX_UNOBSERVED_FRACTION
        fraction = adaptive.max_unobserved_fraction
        require(0 < fraction <= 1, f"{field}.adaptive.max_unobserved_fraction", fraction, "must be in (0, 1]")
        if not adaptive.HasField("min_ring_width_deg"):
            adaptive.min_ring_width_deg = step_deg
        width = adaptive.min_ring_width_deg
        name = f"{field}.adaptive.min_ring_width_deg"
        validation.finite(width, name)
        require(
            step_deg <= width <= 180,
            name,
            width,
            f"must be between the orbit step ({step_deg:g}) and 180 degrees",
        )
    # source_only has no fields.
