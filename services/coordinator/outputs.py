"""A finished job's outputs: the repaired asset in each format asked for, contact sheet, change map,
turntable and report.json.

The figures of report.json are defined in ``services.coordinator.report``; this module gathers them
per time step, with the rings, the Gaussians the reconstruction kept, the framing and the timings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tire.v1 import common_pb2, coordinator_pb2, reconstructor_pb2

from services.common.assets import load_frame, store_frame
from services.common.cameras import DEFAULT_RADIUS
from services.common.gaussians import read_ply
from services.common.pictures import before_after_sheet, turntable_gif
from services.common.store import BlobStore
from services.common.tensors import get_tensor, png_bytes
from services.coordinator import report

PNG = "image/png"


@dataclass(frozen=True)
class FrameResult:
    """What one time step produced (references only)."""

    before: common_pb2.ViewSet  # the asset as generated, on the orbit
    after: common_pb2.ViewSet  # the repaired asset, on the same orbit
    repaired: common_pb2.ObjectRef  # the repaired .ply
    rings: Sequence[coordinator_pb2.RingOutput]
    reconstruction: reconstructor_pb2.ReconstructResponse


def job_outputs(
    store: BlobStore,
    job: coordinator_pb2.Job,
    azimuths: Sequence[float],
    results: Sequence[FrameResult],
    step_seconds: dict[str, float],
    models: coordinator_pb2.StageModels,
) -> coordinator_pb2.JobOutputs:
    """Write the pictures and report.json of ``job``; ``results`` holds one entry per time step.

    Args:
        store: where the outputs go (content-addressed).
        job: the job (its id and resolved spec).
        azimuths: the orbit's azimuths, degrees, view 0 the source.
        results: each time step's views, repaired asset and rings.
        step_seconds: each finished step's duration, seconds, by record key.
        models: each stage's backend, model and version, as the job pinned them.
    """
    first = results[0]
    before = get_tensor(store, first.before.rgb, field="render.rgb")
    after = get_tensor(store, first.after.rgb, field="after.rgb")
    alpha = get_tensor(store, first.before.alpha, field="render.alpha")
    sheet = before_after_sheet(before, after, azimuths)
    change = report.change_map(before, after, alpha)
    changes = before_after_sheet(after, change, azimuths, row_names=("after", "change"))
    frames = after if len(results) == 1 else _time_turntable(store, results, len(azimuths))
    figures = report_figures(store, job, azimuths, results, step_seconds, models)
    return coordinator_pb2.JobOutputs(
        repaired=common_pb2.AssetRef(frames=[r.repaired for r in results]),
        repaired_formats=repaired_formats(store, job.spec.output_formats, [r.repaired for r in results]),
        rings=[ring for r in results for ring in r.rings],
        contact_sheet=store.put_bytes(png_bytes(sheet), suffix=".png", media_type=PNG),
        change_map=store.put_bytes(png_bytes(changes), suffix=".png", media_type=PNG),
        turntable=store.put_bytes(turntable_gif(frames), suffix=".gif", media_type="image/gif"),
        report=store.put_bytes(
            json.dumps(figures, indent=2, sort_keys=True).encode(),
            suffix=".json",
            media_type="application/json",
        ),
    )


def repaired_formats(
    store: BlobStore, formats: Sequence[str], repaired: Sequence[common_pb2.ObjectRef]
) -> list[coordinator_pb2.RepairedAsset]:
    """The repaired asset (``repaired``: one `.ply` per time step) in each of ``formats``: the `.ply`
    files themselves, the others written from them (``services.common.formats``)."""
    others = [name for name in formats if name != "ply"]
    decoded = [read_ply(store.get_object(ref)) for ref in repaired] if others else []  # read once
    assets = []
    for name in formats:
        frames = list(repaired) if name == "ply" else [store_frame(store, g, name) for g in decoded]
        assets.append(coordinator_pb2.RepairedAsset(format=name, asset=common_pb2.AssetRef(frames=frames)))
    return assets


def report_figures(
    store: BlobStore,
    job: coordinator_pb2.Job,
    azimuths: Sequence[float],
    results: Sequence[FrameResult],
    step_seconds: dict[str, float],
    models: coordinator_pb2.StageModels,
) -> dict:
    """report.json's content: the stages' models, timings, framing, and per time step its rings, what
    changed where (``report.frame_metrics``) and the reconstruction's counts; 4D: the cross-time ΔE."""
    figures = {
        "job_id": job.id,
        "azimuths_deg": list(azimuths),
        "framing": {
            "center": [round(float(c), 5) for c in job.spec.framing.center] or [0.0, 0.0, 0.0],
            "radius": round(float(job.spec.framing.radius or DEFAULT_RADIUS), 5),
            "warnings": list(job.spec.framing.warnings),
        },
        "models": [
            {"stage": m.stage, "backend": m.backend, "model": m.model, "version": m.version}
            for m in models.models
        ],
        "step_seconds": {step: round(seconds, 3) for step, seconds in step_seconds.items()},
        "frames": [_frame_figures(store, t, result, azimuths) for t, result in enumerate(results)],
        "metrics": report.__doc__,
    }
    if len(results) > 1:
        inputs = [load_frame(store, job.spec.asset, t) for t in range(len(job.spec.asset.frames))]
        outputs = [read_ply(store.get_object(r.repaired)) for r in results]
        figures["cross_time_delta_e"] = {
            "input": report.cross_time_delta_e(inputs),
            "output": report.cross_time_delta_e(outputs),
        }
    return figures


def _frame_figures(store: BlobStore, t: int, result: FrameResult, azimuths: Sequence[float]) -> dict:
    before = get_tensor(store, result.before.rgb, field="render.rgb")
    after = get_tensor(store, result.after.rgb, field="after.rgb")
    alpha = get_tensor(store, result.before.alpha, field="render.alpha")
    view_of = {round(a, 3): i for i, a in enumerate(azimuths)}
    unobserved = np.zeros(alpha.shape, dtype=bool)  # [V, H, W]: what any ring marked
    for ring in result.rings:
        masks = get_tensor(store, ring.unobserved, field="ring.unobserved").astype(bool)
        for azimuth, mask in zip(ring.target_azimuths_deg, masks, strict=True):
            unobserved[view_of[round(azimuth, 3)]] |= mask
    rebuilt = result.reconstruction
    return {
        "time_step": t,
        "rings": [
            {
                "ring": ring.ring,
                "targets_deg": [round(a, 3) for a in ring.target_azimuths_deg],
                "anchors_deg": [round(a, 3) for a in ring.anchor_azimuths_deg],
                "unobserved_fraction": [round(f, 4) for f in ring.unobserved_fraction],
            }
            for ring in result.rings
        ],
        **report.frame_metrics(before, after, alpha, unobserved),
        "gaussians": {
            "locked": rebuilt.gaussians_locked,
            "kept": rebuilt.gaussians_kept,
            "resolved": rebuilt.gaussians_resolved,
            "higher_sh_kept": rebuilt.higher_sh_kept,
        },
        "reconstruction_rms_error": round(rebuilt.rms_error, 5),
    }


def _time_turntable(store: BlobStore, results: Sequence[FrameResult], views: int) -> np.ndarray:
    """4D: ``[max(V, T), H, W, 3]`` uint8, one frame per (time step, azimuth), the asset moving
    while the camera turns."""
    after = [get_tensor(store, r.after.rgb, field="after.rgb") for r in results]
    return np.stack([after[i % len(after)][i % views] for i in range(max(views, len(after)))])
