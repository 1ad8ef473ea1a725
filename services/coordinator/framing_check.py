"""Frame a job's orbit on its asset, or refuse the job: ``frame_job``, run once when a job is submitted.

    spec = frame_job(resolve_spec(request.spec), store)   # SubmitJob, `tire run`, benchmarks

``frame_job`` reads the asset's frames from the store, fits the orbit's centre and radius to them
(``services.common.framing.fit_framing``; the parts the spec pins are kept), runs the framing checks
and writes the result into ``spec.framing``, so ``Job.spec`` records the orbit every render of the job
uses (before and after, and after a resume), and GetJob shows it.

A failed check refuses the job: ``FailedPrecondition`` (FAILED_PRECONDITION at SubmitJob) with the
checks' sentences. With ``spec.force`` the sentences go into ``spec.framing.warnings`` instead, and the
pipeline sends them as ``Warning`` events when the job starts and writes them into report.json. An
asset without a visible Gaussian is refused even with ``force``.
"""

from __future__ import annotations

from tire.v1 import coordinator_pb2

from services.common.assets import read_frame
from services.common.cameras import DEFAULT_FOVY_DEG
from services.common.formats import WRITABLE
from services.common.framing import Framing, fit_framing
from services.common.store import BlobStore
from services.coordinator import schedule


def frame_job(
    spec: coordinator_pb2.JobSpec, store: BlobStore, field: str = "spec"
) -> coordinator_pb2.JobSpec:
    """A copy of the resolved ``spec`` with ``framing`` fitted (where not pinned) and checked.

    Args:
        spec: a spec from ``resolve_spec`` (its orbit step and framing values already checked).
        store: the store holding the asset's frames.
        field: the spec's path in the request, the prefix of fields named in errors.

    Returns:
        The spec with ``framing.center`` (3 values), ``framing.radius``, ``framing.extent`` set,
        ``framing.warnings`` holding the failed checks' sentences when ``spec.force`` (else empty), and
        ``output_formats`` the asset's own format when it was empty (`.ply` for one that is only read).

    Raises:
        FailedPrecondition: a framing check failed and ``spec.force`` is not set, or the asset is empty.
        InvalidArgument: a frame that is not a splat file (naming ``{field}.asset.frames[t]``).
        ObjectNotFound, IntegrityError, ...: from the store.
    """
    read = [read_frame(store, spec.asset, t, field=f"{field}.asset") for t in range(len(spec.asset.frames))]
    frames = [frame.gaussians for frame in read]
    framing = job_framing(spec, frames)
    warnings = framing.require(force=spec.force)
    framed = coordinator_pb2.JobSpec()
    framed.CopyFrom(spec)
    framed.framing.CopyFrom(
        coordinator_pb2.Framing(
            center=framing.center.tolist(),
            radius=framing.radius,
            warnings=warnings,
            extent=framing.extent,
        )
    )
    if not framed.output_formats:  # the asset's own format, where it is one we write
        framed.output_formats.append(read[0].format if read[0].format in WRITABLE else "ply")
    return framed


def job_framing(spec: coordinator_pb2.JobSpec, frames) -> Framing:
    """The framing of the job's orbit (its azimuths and elevation) on ``frames``, fitted where not pinned.

    Args:
        spec: a resolved spec.
        frames: the asset's ``Gaussians``, one per time step.
    """
    return fit_framing(
        frames,
        schedule.orbit_azimuths(spec.orbit_step_deg),
        spec.elevation_deg,
        DEFAULT_FOVY_DEG,
        center=list(spec.framing.center) or None,
        radius=spec.framing.radius or None,
    )
