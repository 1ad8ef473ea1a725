"""Frame a job's orbit on its asset, or refuse the job: ``frame_job``, run once when a job is submitted.

    spec = frame_job(resolve_spec(request.spec), store)   # SubmitJob, `tire run`, benchmarks

``frame_job`` reads the asset's frames from the store, fits the orbit's centre and radius to them
(``services.common.framing.fit_framing``; the parts the spec pins are kept), runs the framing checks
and writes the result into ``spec.framing``, so ``Job.spec`` records the orbit every render of the job
uses (before and after, and after a resume), and GetJob shows it.

The fit takes about 0.1 s of CPU on a 50k-Gaussian asset and depends only on the frames' content and
the orbit, so it is kept for the last ``FRAMING_CACHE_SIZE`` (assets, orbit) by the frames' sha256: a
thousand submissions of one asset fit it once.

A failed check refuses the job: ``FailedPrecondition`` (FAILED_PRECONDITION at SubmitJob) with the
checks' sentences. With ``spec.force`` the sentences go into ``spec.framing.warnings`` instead, and the
pipeline sends them as ``Warning`` events when the job starts and writes them into report.json. An
asset without a visible Gaussian is refused even with ``force``.
"""

from __future__ import annotations

import collections
import contextlib
import threading

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
    key = _cache_key(spec)
    # One fit per key at a time: submissions of one asset that arrive together wait for the first.
    with _stripes[hash(key) % len(_stripes)] if key else contextlib.nullcontext():
        with _lock:
            fitted = _fitted.get(key) if key else None
            if fitted is not None:
                _fitted.move_to_end(key)
        if fitted is None:
            read = [
                read_frame(store, spec.asset, t, field=f"{field}.asset")
                for t in range(len(spec.asset.frames))
            ]
            fitted = job_framing(spec, [frame.gaussians for frame in read]), read[0].format
            if key:
                with _lock:
                    _fitted[key] = fitted
                    while len(_fitted) > FRAMING_CACHE_SIZE:
                        _fitted.popitem(last=False)
    framing, asset_format = fitted
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
        framed.output_formats.append(asset_format if asset_format in WRITABLE else "ply")
    return framed


FRAMING_CACHE_SIZE = 256
_fitted: collections.OrderedDict[tuple, tuple[Framing, str]] = collections.OrderedDict()
_lock = threading.Lock()
_stripes = tuple(threading.Lock() for _ in range(64))  # one fit per key at a time


def _cache_key(spec: coordinator_pb2.JobSpec) -> tuple | None:
    """What the fit depends on: the frames' content and the orbit; None when a frame names no sha256."""
    digests = tuple(ref.sha256 for ref in spec.asset.frames)
    if not digests or not all(digests):
        return None
    orbit = (spec.orbit_step_deg, spec.elevation_deg, tuple(spec.framing.center), spec.framing.radius)
    return digests, orbit


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
