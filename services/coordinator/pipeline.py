"""One TIRE job, step by step, over the stage stubs: the ring schedule enacted.

    runner = JobRunner(jobs, stages, store)
    runner.run(job_id)          # to the end; after a crash, call again: finished steps are not redone

One subject fit, shared by every time step, runs while the time steps (in parallel for 4D) render:

0. A ``Warning`` event per ``spec.framing.warnings`` (framing checks the job was forced past).
1. ``render``: the orbit views (rgb, alpha, depth) of the asset as generated, on the orbit that
   ``spec.framing`` fixes (fitted to the asset at submit; unset: LGM's, around the origin).
2. Rings, in order (adaptive mode chooses each ring from a ``probe`` of the remaining views):
   a. ``ringK/locate/+`` and ``ringK/locate/-``: on each side, the tracker carries each target's
      pixels back to the anchors (over the orbit as this ring sees it: earlier rings' targets already
      repaired); observed pixels take the anchors' appearance, the rest is the unobserved mask;
   b. ``ringK/inpaint/AZ``: one inpainter call per target (the inpainter scales out; round-robin
      spreads these calls over its replicas), all of a ring's targets in parallel.
3. ``refine``: every view together, the source view fixed (update mask 0).
4. ``reconstruct``: the refined views back into the Gaussians (the time steps of a 4D asset whose
   Gaussians correspond in one call, so that a surface point keeps one colour: step
   ``reconstruct/joint``); ``after``: the repaired asset's orbit.
5. ``outputs``: contact sheet, turntable, ring masks, report.json.

Every step's result (a protobuf message of references) is recorded in the ``JobStore`` when it
finishes; a step already recorded is not run again (``StepFinished.resumed``). Steps are
deterministic and every object is content-addressed, so a resumed job ends with the same bytes as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import cv2
import grpc
import numpy as np
from google.protobuf.message import Message
from tire.v1 import (
    common_pb2,
    coordinator_pb2,
    inpainter_pb2,
    reconstructor_pb2,
    refiner_pb2,
    renderer_pb2,
    tracker_pb2,
)

from services.common.cameras import DEFAULT_RADIUS
from services.common.errors import FailedPrecondition, TireError
from services.common.gaussians import frames_correspond, read_ply
from services.common.pictures import before_after_sheet, mask_overlay, turntable_gif
from services.common.store import BlobStore
from services.common.tensors import get_tensor, png_bytes, put_tensor, read_png
from services.coordinator import report, schedule
from services.coordinator.appearance import carry_repairs
from services.coordinator.jobstore import JobStore
from services.coordinator.stages import RetryPolicy, Stages, call_with_retry, status_code, status_details

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
BACKGROUND = (1.0, 1.0, 1.0)  # views are composited on white; stages estimate it from empty pixels
PNG = "image/png"
REFINE_MARGIN = np.ones((7, 7), np.uint8)  # the refiner may also move 3 pixels around what was repainted

JOB = coordinator_pb2


class JobCancelled(Exception):
    """CancelJob was called: stop before the next step."""


class StepFailed(Exception):
    """A step failed for good; the message names the step and the stage's reason."""


@dataclass
class FrameResult:
    """What one time step produced (references only)."""

    before: common_pb2.ViewSet
    after: common_pb2.ViewSet
    repaired: common_pb2.ObjectRef
    rings: list[coordinator_pb2.RingOutput] = field(default_factory=list)
    reconstruction: reconstructor_pb2.ReconstructResponse = field(
        default_factory=reconstructor_pb2.ReconstructResponse
    )


@dataclass
class _Repainted:
    """One time step, repainted and refined: its render, the views to reconstruct, its rings."""

    before: common_pb2.ViewSet
    views: common_pb2.ViewSet
    rings: list[coordinator_pb2.RingOutput]


@dataclass
class _Rebuilt:
    """One time step back in Gaussians: its .ply and the reconstruction (shared by a joint solve's)."""

    ply: common_pb2.ObjectRef
    response: reconstructor_pb2.ReconstructResponse


class JobRunner:
    """Runs jobs over ``stages``, recording every step in ``jobs``.

    Args:
        jobs: the durable job state.
        stages: the stage stubs (gRPC or in-process).
        store: the object store the stages share.
        retry: how stage calls are retried.
        max_parallel_calls: stage calls in flight at once per fan-out (sweeps, targets, time steps).
        source_weight: the source view's weight in the reconstruction (the others weigh 1): the
            repaired asset keeps what the source shows, as the source view is fixed in refinement.
    """

    def __init__(
        self,
        jobs: JobStore,
        stages: Stages,
        store: BlobStore,
        retry: RetryPolicy | None = None,
        max_parallel_calls: int = 4,
        source_weight: float = 10.0,
    ):
        self.jobs = jobs
        self.stages = stages
        self.store = store
        self.retry = retry or RetryPolicy()
        self.max_parallel_calls = max_parallel_calls
        self.source_weight = source_weight

    def run(self, job_id: str) -> coordinator_pb2.Job:
        """Run (or resume) the job to its end; return it in its final state."""
        job = self.jobs.get(job_id)
        if job.state in (JOB.JOB_STATE_SUCCEEDED, JOB.JOB_STATE_FAILED, JOB.JOB_STATE_CANCELLED):
            return job
        try:
            if self.jobs.cancel_requested(job_id):
                raise JobCancelled
            self.jobs.set_state(job_id, JOB.JOB_STATE_RUNNING)
        except FailedPrecondition:  # cancelled (and so finished) while it waited in the queue
            return self.jobs.get(job_id)
        except JobCancelled:
            return self._finish(job_id, JOB.JOB_STATE_CANCELLED)
        try:
            outputs = _Run(self, job).execute()
        except JobCancelled:
            return self._finish(job_id, JOB.JOB_STATE_CANCELLED)
        except StepFailed as exc:
            log.warning("job %s failed: %s", job_id, exc, extra={"job_id": job_id})
            return self._finish(job_id, JOB.JOB_STATE_FAILED, error=str(exc))
        except Exception as exc:  # a bug: fail the job, keep the coordinator
            log.exception("job %s failed unexpectedly", job_id, extra={"job_id": job_id})
            return self._finish(job_id, JOB.JOB_STATE_FAILED, error=f"internal error: {exc!r}")
        return self._finish(job_id, JOB.JOB_STATE_SUCCEEDED, outputs=outputs)

    def _finish(self, job_id: str, state: int, *, error: str = "", outputs=None) -> coordinator_pb2.Job:
        job, _ = self.jobs.finish(job_id, state, error=error, outputs=outputs)  # state and event at once
        return job


class _Run:
    """One execution of one job: the steps, their records and events."""

    def __init__(self, runner: JobRunner, job: coordinator_pb2.Job):
        self.runner = runner
        self.jobs = runner.jobs
        self.stages = runner.stages
        self.store = runner.store
        self.job_id = job.id
        self.spec = job.spec
        self.plan = self._initial_plan()
        self._progress_lock = threading.Lock()
        self._steps_done = 0
        frames = len(self.spec.asset.frames)
        per_frame = 4 + sum(len(r.sweeps) + len(r.targets) for r in self.plan.rings)
        self._steps_total = 2 + frames * per_frame

    # ----- the job ---------------------------------------------------------------------------

    def execute(self) -> coordinator_pb2.JobOutputs:
        self._warn()  # 0. What the job was forced past (framing checks), first and once.
        frames = range(len(self.spec.asset.frames))
        with ThreadPoolExecutor(1, thread_name_prefix="fit-subject") as fitting:
            # 1. Fit the subject once, on every reference frame, while the time steps render.
            fit = fitting.submit(self.step, "fit_subject", inpainter_pb2.SubjectModel, self._fit_subject)
            # 2-3. Repaint every time step (in parallel for 4D); inpainting waits for the subject.
            repainted = self._fan_out(lambda t: self._repaint_frame(t, fit.result), frames)
        # 4. Back into Gaussians (a 4D asset's time steps in one solve), and the repaired orbits.
        rebuilt = self._reconstruct(repainted)
        results = self._fan_out(lambda t: self._after(repainted[t], rebuilt[t], t), frames)
        # 5. The pictures and the report.
        return self.step("outputs", JOB.JobOutputs, lambda: self._outputs(results))

    def _repaint_frame(self, t: int, subject: Callable[[], inpainter_pb2.SubjectModel]) -> _Repainted:
        """Render time step ``t``, repaint it ring by ring, and refine every view together."""
        before = self.step(
            "render", renderer_pb2.RenderResponse, lambda: self._render(self.spec.asset, t), t
        ).views
        rgb = get_tensor(self.store, before.rgb, field="render.rgb")
        alpha = get_tensor(self.store, before.alpha, field="render.alpha")
        depth = get_tensor(self.store, before.depth, field="render.depth")
        state = _Orbit(before, rgb, alpha, depth)

        rings = [self._run_ring(ring, state, subject, t) for ring in self._rings(state, t)]

        # Refine every view together, where the rings repainted (a little beyond, to blend the edge):
        # the source view (index 0) and what anchors saw are fixed, so what was right stays right.
        mask = np.stack([cv2.dilate(m.astype(np.uint8), REFINE_MARGIN) for m in state.unobserved])
        mask = mask.astype(np.float32)
        mask[0] = 0.0
        views = state.viewset(put_tensor(self.store, state.rgb))
        refined = self.step(
            "refine",
            refiner_pb2.RefineResponse,
            lambda: self._call(
                "refine",
                self.stages.refiner.Refine,
                refiner_pb2.RefineRequest(
                    views=views,
                    update_mask=put_tensor(self.store, mask),
                    asset=self.spec.asset,
                    time_step=t,
                    source_index=0,
                    strength=self.spec.refine_strength,
                    seed=self.spec.seed,
                ),
            ),
            t,
        )
        views.rgb.CopyFrom(refined.rgb)
        return _Repainted(before, views, rings)

    def _reconstruct(self, repainted: list[_Repainted]) -> list[_Rebuilt]:
        """The refined views back into Gaussians, one ``_Rebuilt`` per time step.

        The time steps of a 4D asset whose Gaussians correspond (``frames_correspond``) go into one
        solve, where a Gaussian has one colour in every time step: solved apart, each time step's
        inpainting and the non-uniqueness of a least-squares fit of overlapping Gaussians gave one
        surface point a different colour in each. A reconstructor that cannot (gsplat-optimize:
        UNIMPLEMENTED; too many pixels for one call: RESOURCE_EXHAUSTED) fits them one by one, with a
        warning.
        """
        frames = len(repainted)

        def request(**fields) -> reconstructor_pb2.ReconstructRequest:
            return reconstructor_pb2.ReconstructRequest(
                initial=self.spec.asset,
                view_weights=[self.runner.source_weight] + [1.0] * (len(self.plan.azimuths) - 1),
                locked_views=[0],
                **fields,
            )

        if frames > 1 and self._frames_correspond():
            try:
                joint = self.step(
                    "reconstruct",
                    reconstructor_pb2.ReconstructResponse,
                    lambda: self._call(
                        "reconstruct",
                        self.stages.reconstructor.Reconstruct,
                        request(
                            views=self._joint_views([r.views for r in repainted]),
                            joint_time_steps=range(1, frames),
                        ),
                    ),
                    key="reconstruct/joint",
                )
                with self._progress_lock:
                    self._steps_total -= frames - 1  # one reconstruct step, not one per time step
                return [_Rebuilt(ply, joint) for ply in [joint.ply, *joint.joint_plys]]
            except StepFailed as exc:
                code = status_code(exc.__cause__) if exc.__cause__ is not None else None
                if code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                self._warning(
                    f"time steps reconstructed one by one, so colours may differ across time: {exc}"
                )

        def one(t: int) -> _Rebuilt:
            response = self.step(
                "reconstruct",
                reconstructor_pb2.ReconstructResponse,
                lambda: self._call(
                    "reconstruct",
                    self.stages.reconstructor.Reconstruct,
                    request(views=repainted[t].views, time_step=t),
                ),
                t,
            )
            return _Rebuilt(response.ply, response)

        return self._fan_out(one, range(frames))

    def _after(self, repainted: _Repainted, rebuilt: _Rebuilt, t: int) -> FrameResult:
        """Render the repaired time step ``t`` on the orbit."""
        after = self.step(
            "after",
            renderer_pb2.RenderResponse,
            lambda: self._render(common_pb2.AssetRef(frames=[rebuilt.ply]), 0),
            t,
        ).views
        return FrameResult(repainted.before, after, rebuilt.ply, repainted.rings, rebuilt.response)

    def _frames_correspond(self) -> bool:
        frames = [read_ply(self.store.get_object(ref)) for ref in self.spec.asset.frames]
        return frames_correspond(frames)

    def _joint_views(self, views: Sequence[common_pb2.ViewSet]) -> common_pb2.ViewSet:
        """The time steps' views one after another (rgb and alpha: the reconstructor needs no depth)."""
        rgb = np.concatenate([get_tensor(self.store, v.rgb, field="refine.rgb") for v in views])
        alpha = np.concatenate([get_tensor(self.store, v.alpha, field="render.alpha") for v in views])
        cameras = common_pb2.CameraSet(width=views[0].cameras.width, height=views[0].cameras.height)
        for v in views:
            cameras.cameras.extend(v.cameras.cameras)
        return common_pb2.ViewSet(
            rgb=put_tensor(self.store, rgb), alpha=put_tensor(self.store, alpha), cameras=cameras
        )

    # ----- rings ----------------------------------------------------------------------------

    def _initial_plan(self) -> schedule.Plan:
        rings = self.spec.rings
        step_deg = self.spec.orbit_step_deg
        mode = rings.WhichOneof("mode")
        if mode == "source_only":
            return schedule.source_only_plan(step_deg)
        if mode == "adaptive":
            return schedule.Plan(azimuths=schedule.orbit_azimuths(step_deg), rings=())
        return schedule.fixed_plan(step_deg, list(rings.fixed.limits_deg))

    def _rings(self, state: _Orbit, t: int):
        """The rings of this time step: the plan's, or chosen one by one in adaptive mode."""
        if self.spec.rings.WhichOneof("mode") != "adaptive":
            yield from self.plan.rings
            return
        adaptive = self.spec.rings.adaptive
        azimuths = self.plan.azimuths
        done = {0}
        number = 1
        previous: tuple[int, ...] = (0,)
        while len(done) < len(azimuths):
            remaining = [i for i in range(len(azimuths)) if i not in done]
            probe = self._locate(f"ring{number}/probe", state, previous, tuple(remaining), t)
            fractions = dict(zip(remaining, probe.unobserved_fraction, strict=True))
            ring = schedule.next_adaptive_ring(
                azimuths,
                number,
                done,
                fractions,
                adaptive.max_unobserved_fraction,
                adaptive.min_ring_width_deg,
                anchors=previous,
            )
            yield ring
            done.update(ring.targets)
            previous = ring.targets
            number += 1

    def _run_ring(
        self,
        ring: schedule.Ring,
        state: _Orbit,
        subject: Callable[[], inpainter_pb2.SubjectModel],
        t: int,
    ) -> coordinator_pb2.RingOutput:
        k = ring.number
        # a. Where each target's pixels land in the anchors, per side.
        located = self._fan_out(
            lambda pair: self._locate(
                f"ring{k}/locate/{pair[0]}", state, pair[1].anchors, pair[1].targets, t, pair[1].video
            ),
            [("+" if self.plan.signed(sweep.targets[0]) > 0 else "-", sweep) for sweep in ring.sweeps],
        )
        #    Observed pixels take the change their anchor went through (``carry_repairs``): a pixel
        #    whose anchor needed no repair keeps its own colour, unblurred.
        per_target: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        for sweep, response in zip(ring.sweeps, located, strict=True):
            unobserved = get_tensor(self.store, response.unobserved, field="locate.unobserved")
            anchor_index = get_tensor(self.store, response.anchor_index, field="locate.anchor_index")
            anchor_xy = get_tensor(self.store, response.anchor_xy, field="locate.anchor_xy")
            video = list(sweep.video)
            for j, target in enumerate(sweep.targets):
                image = carry_repairs(
                    state.rendered_rgb[target],
                    anchor_index[j],
                    anchor_xy[j],
                    [state.rgb[view] for view in video],
                    [state.rendered_rgb[view] for view in video],
                )
                per_target[target] = (image, unobserved[j], response.unobserved_fraction[j])

        # b. Inpaint each target's unobserved pixels, all targets of the ring in parallel.
        anchors = [self.plan.azimuths[i] for i in ring.anchors]
        return self._inpaint_targets(f"ring{k}", k, ring.targets, anchors, per_target, state, subject, t)

    def _inpaint_targets(
        self,
        prefix: str,
        k: int,
        targets: Sequence[int],
        anchor_azimuths: Sequence[float],
        per_target: dict[int, tuple[np.ndarray, np.ndarray, float]],
        state: _Orbit,
        subject: Callable[[], inpainter_pb2.SubjectModel],
        t: int,
    ) -> coordinator_pb2.RingOutput:
        """One inpainter call per target (``per_target``: image, unobserved mask, unobserved fraction),
        in parallel; the results go into ``state``. Returns ring ``k``'s record."""
        done = []

        def inpaint(target: int) -> np.ndarray:
            image, mask, fraction = per_target[target]
            name = f"{prefix}/inpaint/{round(self.plan.azimuths[target])}"
            response = self.step(
                name,
                inpainter_pb2.InpaintResponse,
                lambda: self._call(
                    name,
                    self.stages.inpainter.Inpaint,
                    inpainter_pb2.InpaintRequest(
                        images=put_tensor(self.store, image[None]),
                        masks=put_tensor(self.store, mask[None]),
                        alpha=put_tensor(self.store, state.alpha[target][None]),
                        subject=subject(),
                        strength=self.spec.strength,
                        seed=self.spec.seed + target,
                    ),
                ),
                t,
            )
            with self._progress_lock:
                done.append(fraction)
                ring_progress = JOB.RingProgress(
                    ring=k,
                    rings_total=max(len(self.plan.rings), k),
                    targets_done=len(done),
                    targets_total=len(targets),
                    unobserved_fraction=float(np.mean(done)),
                )
                # Appended under the lock too, so that targets_done never goes backwards in the history.
                self.jobs.append_event(self.job_id, JOB.JobEvent(ring_progress=ring_progress))
            return get_tensor(self.store, response.images, field="inpaint.images")[0]

        images = self._fan_out(inpaint, targets)
        for target, image in zip(targets, images, strict=True):
            state.rgb[target] = image
            state.unobserved[target] |= per_target[target][1].astype(bool)

        masks = np.stack([per_target[target][1] for target in targets])
        overlays = mask_overlay(np.stack([per_target[target][0] for target in targets]), masks)
        unobserved = put_tensor(self.store, masks)
        unobserved.preview_uris.extend(
            self.store.put_bytes(png_bytes(o), suffix=".png", media_type=PNG).uri for o in overlays
        )
        return JOB.RingOutput(
            ring=k,
            time_step=t,
            target_azimuths_deg=[self.plan.azimuths[i] for i in targets],
            anchor_azimuths_deg=list(anchor_azimuths),
            unobserved=unobserved,
            inpainted=put_tensor(self.store, np.stack(images), previews=True),
            unobserved_fraction=[per_target[target][2] for target in targets],
        )

    def _locate(
        self,
        name: str,
        state: _Orbit,
        anchors: Sequence[int],
        targets: Sequence[int],
        t: int,
        video: Sequence[int] | None = None,
    ) -> tracker_pb2.LocateUnobservedResponse:
        """LocateUnobserved over the orbit video ``video`` (default: anchors, then targets)."""
        order = list(video) if video is not None else [*anchors, *targets]
        position = {view: i for i, view in enumerate(order)}
        request = tracker_pb2.LocateUnobservedRequest(
            views=state.subset(self.store, order),
            target_indices=[position[i] for i in targets],
            anchor_indices=[position[i] for i in anchors],
        )
        return self.step(
            name,
            tracker_pb2.LocateUnobservedResponse,
            lambda: self._call(name, self.stages.tracker.LocateUnobserved, request),
            t,
        )

    # ----- stage calls ----------------------------------------------------------------------

    def _render(self, asset: common_pb2.AssetRef, t: int) -> renderer_pb2.RenderResponse:
        spec = self.spec
        orbit = common_pb2.Orbit(
            azimuths_deg=list(self.plan.azimuths),
            elevation_deg=spec.elevation_deg,
            resolution=spec.resolution,
            center=list(spec.framing.center),  # the framing SubmitJob fitted (unset: origin, 1.5)
            radius=spec.framing.radius,
        )
        request = renderer_pb2.RenderRequest(
            asset=asset, time_step=t, orbit=orbit, background_rgb=BACKGROUND, write_previews=True
        )
        return self._call("render", self.stages.renderer.Render, request)

    def _fit_subject(self) -> inpainter_pb2.SubjectModel:
        images, masks = [], []
        for i, ref in enumerate(self.spec.references):
            rgba = read_png(self.store.get_object(ref), field=f"spec.references[{i}]", mode="RGBA")
            images.append(rgba[..., :3])
            masks.append(rgba[..., 3].astype(np.float32) / 255.0)
        shapes = {image.shape for image in images}
        if len(shapes) > 1:
            raise StepFailed(f"fit_subject: the reference images differ in size: {sorted(shapes)}")
        request = inpainter_pb2.FitSubjectRequest(
            images=put_tensor(self.store, np.stack(images)),
            masks=put_tensor(self.store, np.stack(masks)),
            settings=self.spec.fit,
        )

        def fit() -> inpainter_pb2.SubjectModel:
            model = None
            stream = self.stages.inpainter.FitSubject(request, timeout=self.runner.retry.timeout_s)
            for response in stream:
                if response.HasField("progress"):
                    self.jobs.append_event(
                        self.job_id, JOB.JobEvent(fit=JOB.FitEvent(progress=response.progress))
                    )
                else:
                    model = response.model
            if model is None:
                raise StepFailed("fit_subject: the inpainter ended the stream without a model")
            return model

        return self._retried("fit_subject", fit)

    def _call(self, name: str, method: Callable, request: Message):
        return self._retried(name, lambda: method(request, timeout=self.runner.retry.timeout_s))

    def _retried(self, name: str, call: Callable):
        try:
            return call_with_retry(
                call,
                self.runner.retry,
                what=name,
                should_stop=lambda: self.jobs.cancel_requested(self.job_id),
            )
        except (grpc.RpcError, TireError) as exc:
            code = status_code(exc)
            raise StepFailed(f"{name}: {code.name if code else 'error'}: {status_details(exc)}") from exc

    # ----- steps, records, events -----------------------------------------------------------

    def _warn(self) -> None:
        """A Warning event per ``spec.framing.warnings``, unless an earlier run of the job sent them."""
        warnings = list(self.spec.framing.warnings)
        if not warnings:
            return
        first = self.jobs.events(self.job_id, 0, limit=len(warnings))  # they are the job's first events
        sent = {event.warning.message for event in first if event.HasField("warning")}
        for message in warnings:
            if message not in sent:
                self._warning(message)

    def _warning(self, message: str) -> None:
        self.jobs.append_event(self.job_id, JOB.JobEvent(warning=JOB.Warning(message=message)))

    def step(
        self,
        name: str,
        result_type: type[M],
        run: Callable[[], M],
        time_step: int = 0,
        key: str | None = None,
    ) -> M:
        """Run ``run`` as the step ``name`` unless it already finished (then return its record).

        The record's ``key`` is ``tT/name`` in a 4D job, ``name`` in a 3D one, unless given."""
        if self.jobs.cancel_requested(self.job_id):
            raise JobCancelled
        if key is None:
            key = f"t{time_step}/{name}" if len(self.spec.asset.frames) > 1 else name
        recorded = self.jobs.step_result(self.job_id, key)
        if recorded is not None:
            result = result_type.FromString(recorded)
            self._event_finished(name, time_step, 0.0, result, resumed=True)
            return result
        self.jobs.append_event(
            self.job_id, JOB.JobEvent(step_started=JOB.StepStarted(step=name, time_step=time_step))
        )
        self._set_progress(current=name)
        start = time.perf_counter()
        result = run()
        seconds = time.perf_counter() - start
        self.jobs.record_step(self.job_id, key, result.SerializeToString(), seconds)
        self._event_finished(name, time_step, seconds, result, resumed=False)
        return result

    def _event_finished(self, name: str, t: int, seconds: float, result: Message, resumed: bool) -> None:
        with self._progress_lock:
            self._steps_done += 1
        self._set_progress(current="")
        finished = JOB.StepFinished(
            step=name, time_step=t, seconds=seconds, resumed=resumed, artifacts=_artifacts(result)
        )
        self.jobs.append_event(self.job_id, JOB.JobEvent(step_finished=finished))

    def _set_progress(self, current: str) -> None:
        with self._progress_lock:
            progress = JOB.JobProgress(
                steps_done=self._steps_done,
                steps_total=max(self._steps_total, self._steps_done),
                rings_total=len(self.plan.rings),
                current_step=current,
            )
            self.jobs.set_progress(self.job_id, progress)  # under the lock: steps_done never goes back

    def _fan_out(self, work: Callable, items: Sequence) -> list:
        """``[work(item) for item in items]``, up to ``max_parallel_calls`` at once, in order."""
        items = list(items)
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(len(items), self.runner.max_parallel_calls)) as pool:
            return list(pool.map(work, items))

    # ----- outputs --------------------------------------------------------------------------

    def _outputs(self, results: list[FrameResult]) -> coordinator_pb2.JobOutputs:
        store = self.store
        first = results[0]
        before = get_tensor(store, first.before.rgb, field="render.rgb")
        after = get_tensor(store, first.after.rgb, field="after.rgb")
        alpha = get_tensor(store, first.before.alpha, field="render.alpha")
        sheet = before_after_sheet(before, after, self.plan.azimuths)
        changes = before_after_sheet(
            after, report.change_map(before, after, alpha), self.plan.azimuths, row_names=("after", "change")
        )
        frames = after if len(results) == 1 else self._time_turntable(results)
        figures = self._report(results)
        return JOB.JobOutputs(
            repaired=common_pb2.AssetRef(frames=[r.repaired for r in results]),
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

    def _time_turntable(self, results: list[FrameResult]) -> np.ndarray:
        """4D: one frame per (time step, azimuth), the asset moving while the camera turns."""
        views = [get_tensor(self.store, r.after.rgb, field="after.rgb") for r in results]
        count = len(self.plan.azimuths)
        return np.stack([views[i % len(views)][i % count] for i in range(max(count, len(views)))])

    def _report(self, results: list[FrameResult]) -> dict:
        """report.json: timings, rings, and what changed where (``services.coordinator.report``)."""
        timings = {step: round(seconds, 3) for step, seconds in self.jobs.step_seconds(self.job_id).items()}
        azimuth_index = {round(a, 3): i for i, a in enumerate(self.plan.azimuths)}
        frames = []
        for t, result in enumerate(results):
            before = get_tensor(self.store, result.before.rgb, field="render.rgb")
            after = get_tensor(self.store, result.after.rgb, field="after.rgb")
            alpha = get_tensor(self.store, result.before.alpha, field="render.alpha")
            unobserved = np.zeros(alpha.shape, dtype=bool)
            for ring in result.rings:
                masks = get_tensor(self.store, ring.unobserved, field="ring.unobserved").astype(bool)
                for azimuth, mask in zip(ring.target_azimuths_deg, masks, strict=True):
                    unobserved[azimuth_index[round(azimuth, 3)]] |= mask
            rebuilt = result.reconstruction
            frames.append(
                {
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
            )
        framing = self.spec.framing
        figures = {
            "job_id": self.job_id,
            "azimuths_deg": list(self.plan.azimuths),
            "framing": {
                "center": [round(float(c), 5) for c in framing.center] or [0.0, 0.0, 0.0],
                "radius": round(float(framing.radius or DEFAULT_RADIUS), 5),
                "warnings": list(framing.warnings),
            },
            "step_seconds": timings,
            "frames": frames,
            "metrics": report.__doc__,
        }
        if len(results) > 1:
            inputs = [read_ply(self.store.get_object(ref)) for ref in self.spec.asset.frames]
            outputs = [read_ply(self.store.get_object(r.repaired)) for r in results]
            figures["cross_time_delta_e"] = {
                "input": report.cross_time_delta_e(inputs),
                "output": report.cross_time_delta_e(outputs),
            }
        return figures


@dataclass
class _Orbit:
    """The orbit of one time step as the rings change it: rgb evolves, geometry does not."""

    rendered: common_pb2.ViewSet
    rgb: np.ndarray  # [V, H, W, 3] uint8, updated as targets are repaired
    alpha: np.ndarray  # [V, H, W] float32
    depth: np.ndarray  # [V, H, W] float32

    def __post_init__(self) -> None:
        self.rendered_rgb = self.rgb  # [V, H, W, 3] uint8, as rendered; never changed
        self.rgb = self.rgb.copy()
        self.unobserved = np.zeros(self.alpha.shape, dtype=bool)  # [V, H, W]: what the rings repainted

    def viewset(self, rgb: common_pb2.TensorRef) -> common_pb2.ViewSet:
        """Every view, with ``rgb`` in place of the rendered colours."""
        return common_pb2.ViewSet(
            rgb=rgb, alpha=self.rendered.alpha, depth=self.rendered.depth, cameras=self.rendered.cameras
        )

    def subset(self, store: BlobStore, order: Sequence[int]) -> common_pb2.ViewSet:
        """The views ``order`` (orbit indices), in that order, with their current colours."""
        index = list(order)
        cameras = common_pb2.CameraSet(
            width=self.rendered.cameras.width,
            height=self.rendered.cameras.height,
            cameras=[self.rendered.cameras.cameras[i] for i in index],
        )
        return common_pb2.ViewSet(
            rgb=put_tensor(store, self.rgb[index]),
            alpha=put_tensor(store, self.alpha[index]),
            depth=put_tensor(store, self.depth[index]),
            cameras=cameras,
        )


def _artifacts(result: Message) -> list[coordinator_pb2.Artifact]:
    """The references a step's result holds, named by field, for StepFinished events."""
    artifacts = []
    for descriptor, value in result.ListFields():
        if isinstance(value, common_pb2.TensorRef):
            artifacts.append(JOB.Artifact(name=descriptor.name, tensor=value))
        elif isinstance(value, common_pb2.ObjectRef):
            artifacts.append(JOB.Artifact(name=descriptor.name, object=value))
        elif isinstance(value, common_pb2.ViewSet):
            for part in ("rgb", "alpha", "depth"):
                if value.HasField(part):
                    artifacts.append(
                        JOB.Artifact(name=f"{descriptor.name}.{part}", tensor=getattr(value, part))
                    )
    return artifacts
