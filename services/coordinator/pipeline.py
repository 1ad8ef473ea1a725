"""One TIRE job, step by step, over the stage stubs: the ring schedule enacted.

    runner = JobRunner(jobs, stages, store)
    runner.run(job_id)          # to the end; after a crash, call again: finished steps are not redone

The plan (``_Run.execute``); each stage call is one step, recorded when it finishes:

0. A ``Warning`` event per ``spec.framing.warnings`` (framing checks the job was forced past);
   ``models``: each stage's model and version (Describe), pinned: every call of the job names its
   version, so a model published while the job runs serves the next jobs only.
1. ``fit_subject``: one subject model from every reference image, shared by every time step; it
   fits while the time steps render.
2. Per time step (in parallel for 4D):
   a. ``render``: the orbit views (rgb, alpha, depth) of the asset as generated, on the orbit that
      ``spec.framing`` fixes (fitted to the asset at submit; unset: LGM's, around the origin);
   b. rings, in order (adaptive mode chooses each ring from a ``ringK/probe`` of the remaining views):
      ``ringK/locate/+`` and ``ringK/locate/-``: on each side, the tracker carries each target's
      pixels back to the anchors (over the orbit as this ring sees it: earlier rings' targets already
      repaired); observed pixels take the anchors' appearance, the rest is the unobserved mask;
      ``ringK/inpaint/AZ``: one inpainter call per target, all of a ring's targets in parallel (the
      inpainter scales out; round-robin spreads these calls over its replicas);
   c. ``refine``: every view together, the source view fixed (update mask 0).
3. ``reconstruct``: the refined views back into the Gaussians (the time steps of a 4D asset whose
   Gaussians correspond in one call, so that a surface point keeps one colour: ``reconstruct/joint``).
4. ``after``: the repaired asset on the orbit.
5. ``outputs``: contact sheet, change map, turntable, report.json (``services.coordinator.outputs``).

A step already recorded is not run again (``services.coordinator.steps``). Steps are deterministic and
every object is content-addressed, so a resumed job ends with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

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

from services.common.errors import FailedPrecondition, JobCancelled, LeaseLost, StepFailed, TireError
from services.common.gaussians import frames_correspond, read_ply
from services.common.pictures import mask_overlay
from services.common.registry import STAGES
from services.common.store import BlobStore
from services.common.tensors import PREVIEW_COMPRESS_LEVEL, get_tensor, png_bytes, put_tensor, read_png
from services.coordinator import schedule
from services.coordinator.appearance import carry_repairs
from services.coordinator.jobstore import FINAL_STATES, JobStore, Lease
from services.coordinator.outputs import PNG, FrameResult, job_outputs
from services.coordinator.stages import (
    RETRIED_CODES,
    RetryPolicy,
    Stages,
    call_with_retry,
    stage_method,
    step_failed,
)
from services.coordinator.steps import StepLog

log = logging.getLogger(__name__)

BACKGROUND = (1.0, 1.0, 1.0)  # views are composited on white; every ViewSet of the job says so
REFINE_MARGIN = np.ones((7, 7), np.uint8)  # the refiner may also move 3 pixels around what was repainted
JOB = coordinator_pb2


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
        self._waits: dict[str, float] = {}  # job id -> the wait before its next run, seconds

    def run(self, job_id: str, lease: Lease | None = None) -> coordinator_pb2.Job:
        """Run (or resume) the job to its end, and return it.

        ``lease``: this replica's lease of the job (``JobQueue``; None in-process). Once another replica
        holds the job (``lease.held()`` before a step, or a write refused), the run stops there and
        returns the job as it is, to its new holder.

        A job that fails for a reason waiting cures (a step's code is UNAVAILABLE or DEADLINE_EXCEEDED
        once its retries are spent: the object store or a stage is down) is not failed: it gets a
        ``Waiting`` event and is returned still RUNNING, to be run again in ``retry_in_s(job_id)``
        seconds (``JobQueue`` does); its finished steps are not run again. Any other failure ends it
        FAILED, ``Job.error`` naming the step and the code ("render: INVALID_ARGUMENT: ...").
        """
        try:
            return self._run(job_id, lease)
        except LeaseLost:
            log.warning("job %s: lease lost, left to its new holder", job_id, extra={"job_id": job_id})
            return self.jobs.get(job_id)

    def _run(self, job_id: str, lease: Lease | None) -> coordinator_pb2.Job:
        holder = lease.holder if lease is not None else None
        job = self.jobs.get(job_id)
        if job.state in (JOB.JOB_STATE_SUCCEEDED, JOB.JOB_STATE_FAILED, JOB.JOB_STATE_CANCELLED):
            return job
        if self.jobs.cancel_requested(job_id):
            return self._finish(job_id, JOB.JOB_STATE_CANCELLED, holder=holder)
        try:
            self.jobs.set_state(job_id, JOB.JOB_STATE_RUNNING, holder=holder)
        except FailedPrecondition:  # cancelled (and so finished) while it waited in the queue
            return self.jobs.get(job_id)
        execution = None
        try:
            execution = _Run(self, job, lease)
            outputs = execution.execute()
        except LeaseLost:  # before JobCancelled, its base: not cancelled, only another's now
            raise
        except JobCancelled:
            return self._finish(job_id, JOB.JOB_STATE_CANCELLED, holder=holder)
        except Exception as exc:
            steps = (
                execution.steps
                if execution
                else StepLog(self.jobs, job_id, four_d=False, steps_total=0, rings_total=0, lease=lease)
            )
            failure = steps.failed("job", 0, exc)
            if not isinstance(failure, TireError):  # a bug: fail the job, keep the coordinator
                log.error("job %s failed unexpectedly", job_id, exc_info=exc, extra={"job_id": job_id})
            elif failure.grpc_code in RETRIED_CODES:
                delay = self._waits.get(job_id, 0.0) * 2 or self.retry.initial_wait_s
                self._waits[job_id] = min(delay, self.retry.max_wait_s)
                log.warning(
                    "job %s waits %.0f s: %s", job_id, self._waits[job_id], failure, extra={"job_id": job_id}
                )
                steps.waiting(failure.step, self._waits[job_id])
                return self.jobs.get(job_id)
            else:
                log.warning("job %s failed: %s", job_id, failure, extra={"job_id": job_id})
            return self._finish(job_id, JOB.JOB_STATE_FAILED, failure=failure.structured, holder=holder)
        return self._finish(job_id, JOB.JOB_STATE_SUCCEEDED, outputs=outputs, holder=holder)

    def run_to_end(self, job_id: str) -> coordinator_pb2.Job:
        """``run`` again after each wait until the job ends (in-process use: ``tire run``, tests)."""
        job = self.run(job_id)
        while job.state not in FINAL_STATES:
            time.sleep(self.retry_in_s(job_id))
            job = self.run(job_id)
        return job

    def retry_in_s(self, job_id: str) -> float:
        """Seconds until a waiting job should run again (0 for a job that is not waiting)."""
        return self._waits.get(job_id, 0.0)

    def _finish(
        self, job_id: str, state: int, *, outputs=None, failure=None, holder=None
    ) -> coordinator_pb2.Job:
        self._waits.pop(job_id, None)
        # The state and its event at once.
        job, _ = self.jobs.finish(job_id, state, outputs=outputs, failure=failure, holder=holder)
        return job


class _Run:
    """One execution of one job: the plan, and how each step calls its stage."""

    def __init__(self, runner: JobRunner, job: coordinator_pb2.Job, lease: Lease | None = None):
        self.runner = runner
        self.stages = runner.stages
        self.store = runner.store
        self.job = job
        self.spec = job.spec
        self.plan = _initial_plan(self.spec)
        frames = len(self.spec.asset.frames)
        per_frame = 4 + sum(len(r.sweeps) + len(r.targets) for r in self.plan.rings)
        self.steps = StepLog(
            runner.jobs,
            job.id,
            four_d=frames > 1,
            steps_total=3 + frames * per_frame,
            rings_total=len(self.plan.rings),
            lease=lease,
        )

    # ----- the plan --------------------------------------------------------------------------

    def execute(self) -> coordinator_pb2.JobOutputs:
        frames = range(len(self.spec.asset.frames))
        # 0. What the job was forced past (framing checks), first and once; the stages' models, pinned:
        #    a model published while the job runs serves the next jobs, and a resumed job keeps its own.
        self.steps.warn_once(self.spec.framing.warnings)
        self.models = self.steps.run("models", JOB.StageModels, self._describe_models)
        with ThreadPoolExecutor(1, thread_name_prefix="fit-subject") as fitting:
            # 1. Fit the subject once, on every reference image, while the time steps render.
            subject = fitting.submit(self._fit_subject)
            # 2. Render, repaint ring by ring and refine each time step; inpainting waits for the subject.
            repainted = self._fan_out(lambda t: self._repaint(t, subject.result), frames)
        # 3. Back into Gaussians (a 4D asset's time steps in one solve).
        rebuilt = self._reconstruct(repainted)
        # 4. The repaired asset on the orbit.
        after = self._fan_out(
            lambda t: self.call("after", self._render_request(rebuilt[t].ply), t).views, frames
        )
        # 5. The pictures and report.json.
        results = [
            FrameResult(r.before, views, b.ply, r.rings, b.response)
            for r, views, b in zip(repainted, after, rebuilt, strict=True)
        ]
        return self.steps.run(
            "outputs",
            JOB.JobOutputs,
            lambda: job_outputs(
                self.store,
                self.job,
                self.plan.azimuths,
                results,
                self.runner.jobs.step_seconds(self.job.id),
                self.models,
            ),
        )

    def _repaint(self, t: int, subject: Callable[[], inpainter_pb2.SubjectModel]) -> _Repainted:
        """2. Time step ``t``: render it, repaint it ring by ring, refine every view together."""
        # a. The asset as generated.
        before = self.call("render", self._render_request(*self.spec.asset.frames, time_step=t), t).views
        orbit = _Orbit.load(self.store, before)
        # b. The rings, each repainting its targets in ``orbit``.
        rings = [self._ring(ring, orbit, subject, t) for ring in self._rings(orbit, t)]
        # c. Every view refined together where the rings repainted (a little beyond, to blend the edge):
        #    the source view (index 0) and what anchors saw are fixed, so what was right stays right.
        views = orbit.current(self.store)
        refine = refiner_pb2.RefineRequest(
            views=views,
            update_mask=put_tensor(self.store, orbit.refine_mask()),
            asset=self.spec.asset,
            time_step=t,
            source_index=0,
            strength=self.spec.refine_strength,
            seed=self.spec.seed,
        )
        views.rgb.CopyFrom(self.call("refine", refine, t).rgb)
        return _Repainted(before, views, rings)

    def _ring(
        self,
        ring: schedule.Ring,
        orbit: _Orbit,
        subject: Callable[[], inpainter_pb2.SubjectModel],
        t: int,
    ) -> coordinator_pb2.RingOutput:
        """2b. Ring ``ring`` of time step ``t``: its targets repainted in ``orbit``; returns its record."""
        k = ring.number
        # Where each target's pixels land in the anchors, per side, both sides at once, in one view set.
        views = orbit.current(self.store)
        located = self._fan_out(
            lambda sweep: self._locate(f"ring{k}/locate/{self._side(sweep)}", views, sweep, t), ring.sweeps
        )
        # Observed pixels take the change their anchor went through (``carry_repairs``): a pixel whose
        # anchor needed no repair keeps its own colour, unblurred. The rest is each target's mask.
        targets = {}
        for sweep, response in zip(ring.sweeps, located, strict=True):
            targets.update(self._carry(sweep, response, orbit))
        # One inpainter call per target, every target of the ring at once.
        tally = self.steps.ring_tally(k, len(ring.targets))

        def inpaint(view: int) -> np.ndarray:
            target = targets[view]
            request = inpainter_pb2.InpaintRequest(
                images=put_tensor(self.store, target.image[None]),
                masks=put_tensor(self.store, target.unobserved[None]),
                alpha=orbit.rendered.alpha,  # the whole orbit's, which the inpainter reads once
                alpha_views=[view],
                subject=subject(),
                strength=self.spec.strength,
                seed=(self.spec.seed + view) % 2**64,  # a uint64: a seed near 2**64 wraps
            )
            response = self.call(f"ring{k}/inpaint/{round(self.plan.azimuths[view])}", request, t)
            tally(target.fraction)
            return get_tensor(self.store, response.images, field="inpaint.images")[0]

        images = self._fan_out(inpaint, ring.targets)
        for view, image in zip(ring.targets, images, strict=True):
            orbit.repainted(view, image, targets[view].unobserved)
        return self._ring_output(ring, [targets[view] for view in ring.targets], images, t)

    def _reconstruct(self, repainted: list[_Repainted]) -> list[_Rebuilt]:
        """3. The refined views back into Gaussians, one ``_Rebuilt`` per time step.

        The time steps of a 4D asset whose Gaussians correspond (``frames_correspond``) go into one
        solve, where a Gaussian has one colour in every time step: solved apart, each time step's
        inpainting and the non-uniqueness of a least-squares fit of overlapping Gaussians gave one
        surface point a different colour in each. A reconstructor that cannot (gsplat-optimize:
        UNIMPLEMENTED; too many pixels for one call: RESOURCE_EXHAUSTED) fits them one by one, with a
        warning.
        """
        frames = len(repainted)
        if frames > 1 and self._frames_correspond():
            joint = self._reconstruct_request(
                views=self._joint_views([r.views for r in repainted]), joint_time_steps=range(1, frames)
            )
            try:
                response = self.call("reconstruct", joint, key="reconstruct/joint")
            except StepFailed as exc:
                if exc.grpc_code not in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.RESOURCE_EXHAUSTED):
                    raise
                self.steps.warning(
                    f"time steps reconstructed one by one, so colours may differ across time: {exc}"
                )
            else:
                self.steps.expect_fewer(frames - 1)  # one reconstruct step, not one per time step
                return [_Rebuilt(ply, response) for ply in [response.ply, *response.joint_plys]]

        def one(t: int) -> _Rebuilt:
            request = self._reconstruct_request(views=repainted[t].views, time_step=t)
            response = self.call("reconstruct", request, t)
            return _Rebuilt(response.ply, response)

        return self._fan_out(one, range(frames))

    # ----- rings ----------------------------------------------------------------------------

    def _rings(self, orbit: _Orbit, t: int) -> Iterator[schedule.Ring]:
        """The rings of time step ``t``: the plan's, or chosen one by one in adaptive mode from a
        probe of the views not yet repaired (``orbit`` changes as each ring is run)."""
        if self.spec.rings.WhichOneof("mode") != "adaptive":
            yield from self.plan.rings
            return
        adaptive = self.spec.rings.adaptive
        azimuths = self.plan.azimuths
        done = {0}
        number = 1
        previous: tuple[int, ...] = (0,)
        while len(done) < len(azimuths):
            remaining = tuple(i for i in range(len(azimuths)) if i not in done)
            probe_all = schedule.Sweep(video=(*previous, *remaining), targets=remaining, anchors=previous)
            probe = self._locate(f"ring{number}/probe", orbit, probe_all, t)
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

    def _side(self, sweep: schedule.Sweep) -> str:
        return "+" if self.plan.signed(sweep.targets[0]) > 0 else "-"

    def _locate(
        self, name: str, views: common_pb2.ViewSet, sweep: schedule.Sweep, t: int
    ) -> tracker_pb2.LocateUnobservedResponse:
        """The step ``name``: LocateUnobserved over the orbit video ``sweep.video`` (orbit indices) of
        ``views``, the whole orbit (the tracker reads it once for all of a ring's sweeps)."""
        position = {view: i for i, view in enumerate(sweep.video)}
        request = tracker_pb2.LocateUnobservedRequest(
            views=views,
            video=sweep.video,
            target_indices=[position[i] for i in sweep.targets],
            anchor_indices=[position[i] for i in sweep.anchors],
        )
        return self.call(name, request, t)

    def _carry(
        self, sweep: schedule.Sweep, located: tracker_pb2.LocateUnobservedResponse, orbit: _Orbit
    ) -> dict[int, _Target]:
        """Each target of ``sweep``: its rendered view with the anchors' repairs carried onto the
        pixels they observe, and its unobserved mask."""
        unobserved = get_tensor(self.store, located.unobserved, field="locate.unobserved")
        anchor_index = get_tensor(self.store, located.anchor_index, field="locate.anchor_index")
        anchor_xy = get_tensor(self.store, located.anchor_xy, field="locate.anchor_xy")
        repaired = [orbit.rgb[view] for view in sweep.video]
        rendered = [orbit.rendered_rgb[view] for view in sweep.video]
        return {
            view: _Target(
                image=carry_repairs(
                    orbit.rendered_rgb[view], anchor_index[j], anchor_xy[j], repaired, rendered
                ),
                unobserved=unobserved[j],
                fraction=located.unobserved_fraction[j],
            )
            for j, view in enumerate(sweep.targets)
        }

    def _ring_output(
        self, ring: schedule.Ring, targets: list[_Target], inpainted: list[np.ndarray], t: int
    ) -> coordinator_pb2.RingOutput:
        """Ring ``ring``'s record: its targets' masks (with overlay previews) and inpainted views."""
        masks = np.stack([target.unobserved for target in targets])
        overlays = mask_overlay(np.stack([target.image for target in targets]), masks)
        unobserved = put_tensor(self.store, masks)
        unobserved.preview_uris.extend(
            self.store.put_bytes(png_bytes(o, PREVIEW_COMPRESS_LEVEL), suffix=".png", media_type=PNG).uri
            for o in overlays
        )
        return JOB.RingOutput(
            ring=ring.number,
            time_step=t,
            target_azimuths_deg=[self.plan.azimuths[i] for i in ring.targets],
            anchor_azimuths_deg=[self.plan.azimuths[i] for i in ring.anchors],
            unobserved=unobserved,
            inpainted=put_tensor(self.store, np.stack(inpainted), previews=True),
            unobserved_fraction=[target.fraction for target in targets],
        )

    # ----- stage calls ----------------------------------------------------------------------

    def call(self, name: str, request: Message, time_step: int = 0, key: str = "") -> Message:
        """The step ``name``: ``request`` sent to the stage method that takes it (retried), on the model
        version the job pinned for that stage, and its response recorded; a step already recorded
        returns its record. See ``StepLog.run``."""
        method = stage_method(request)
        model = self._model(method.stage)
        if "model_version" in request.DESCRIPTOR.fields_by_name:
            request.model_version = model.version
        send = getattr(getattr(self.stages, method.stage), method.name)
        timeout = self.runner.retry.timeout_s
        return self.steps.run(
            name,
            method.response_type,
            lambda: self._retried(name, lambda: send(request, timeout=timeout)),
            time_step,
            key,
            model,
        )

    def _describe_models(self) -> coordinator_pb2.StageModels:
        """Each stage's backend, model and the model version its calls will run (Describe)."""
        models = JOB.StageModels()
        timeout = self.runner.retry.timeout_s
        for stage in STAGES:
            describe = getattr(self.stages, stage.name).Describe
            request = common_pb2.DescribeRequest()
            info = self._retried(f"models/{stage.name}", lambda d=describe, r=request: d(r, timeout=timeout))
            models.models.add(
                stage=stage.name, backend=info.backend, model=info.model, version=info.model_version
            )
        return models

    def _model(self, stage: str) -> coordinator_pb2.StageModel:
        """The stage's model as the job pinned it (its ``version`` "" when its models have none)."""
        return next((m for m in self.models.models if m.stage == stage), JOB.StageModel(stage=stage))

    def _fit_subject(self) -> inpainter_pb2.SubjectModel:
        """1. The step ``fit_subject``: FitSubject's stream, its progress sent as ``FitEvent``s."""
        return self.steps.run(
            "fit_subject",
            inpainter_pb2.SubjectModel,
            lambda: self._retried("fit_subject", self._fit),
            model=self._model("inpainter"),
        )

    def _fit(self) -> inpainter_pb2.SubjectModel:
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
            model_version=self._model("inpainter").version,
        )
        model = None
        for response in self.stages.inpainter.FitSubject(request, timeout=self.runner.retry.timeout_s):
            if response.HasField("progress"):
                self.steps.fit_progress(response.progress)
            else:
                model = response.model
        if model is None:
            raise StepFailed("fit_subject: the inpainter ended the stream without a model")
        return model

    def _retried(self, name: str, call: Callable[[], Message]) -> Message:
        """``call()``, retried per the runner's policy; a failure for good becomes ``StepFailed``."""
        try:
            return call_with_retry(
                call, self.runner.retry, what=name, should_stop=self.steps.cancel_requested
            )
        except (JobCancelled, StepFailed):
            raise
        except (grpc.RpcError, TireError) as exc:
            raise step_failed(name, exc) from exc

    def _render_request(
        self, *frames: common_pb2.ObjectRef, time_step: int = 0
    ) -> renderer_pb2.RenderRequest:
        """Render ``frames`` (a 3D asset, or a 4D asset's time step ``time_step``) on the job's orbit."""
        spec = self.spec
        orbit = common_pb2.Orbit(
            azimuths_deg=list(self.plan.azimuths),
            elevation_deg=spec.elevation_deg,
            resolution=spec.resolution,
            center=list(spec.framing.center),  # the framing SubmitJob fitted (unset: origin, 1.5)
            radius=spec.framing.radius,
        )
        return renderer_pb2.RenderRequest(
            asset=common_pb2.AssetRef(frames=frames),
            time_step=time_step,
            orbit=orbit,
            background_rgb=BACKGROUND,
            write_previews=True,
        )

    def _reconstruct_request(self, **fields) -> reconstructor_pb2.ReconstructRequest:
        """A Reconstruct of the job's asset, the source view locked and weighed ``source_weight``."""
        return reconstructor_pb2.ReconstructRequest(
            initial=self.spec.asset,
            view_weights=[self.runner.source_weight] + [1.0] * (len(self.plan.azimuths) - 1),
            locked_views=[0],
            **fields,
        )

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
            rgb=put_tensor(self.store, rgb),
            alpha=put_tensor(self.store, alpha),
            cameras=cameras,
            background_rgb=views[0].background_rgb,
        )

    def _fan_out(self, work: Callable, items: Sequence) -> list:
        """``[work(item) for item in items]``, up to ``max_parallel_calls`` at once, in order."""
        items = list(items)
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(len(items), self.runner.max_parallel_calls)) as pool:
            return list(pool.map(work, items))


def _initial_plan(spec: coordinator_pb2.JobSpec) -> schedule.Plan:
    """The orbit and the rings known before the job runs (none in adaptive mode)."""
    mode = spec.rings.WhichOneof("mode")
    if mode == "source_only":
        return schedule.source_only_plan(spec.orbit_step_deg)
    if mode == "adaptive":
        return schedule.Plan(azimuths=schedule.orbit_azimuths(spec.orbit_step_deg), rings=())
    return schedule.fixed_plan(spec.orbit_step_deg, list(spec.rings.fixed.limits_deg))


@dataclass(frozen=True)
class _Target:
    """One target view of a ring, before inpainting."""

    image: np.ndarray  # [H, W, 3] uint8: rendered, with the anchors' repairs carried onto what they see
    unobserved: np.ndarray  # [H, W] float32 in {0, 1}: what no anchor sees, to inpaint
    fraction: float  # the unobserved share of the target's foreground


@dataclass(frozen=True)
class _Repainted:
    """One time step, repainted and refined: its render, the views to reconstruct, its rings."""

    before: common_pb2.ViewSet
    views: common_pb2.ViewSet
    rings: list[coordinator_pb2.RingOutput]


@dataclass(frozen=True)
class _Rebuilt:
    """One time step back in Gaussians: its .ply and the reconstruction (shared by a joint solve's)."""

    ply: common_pb2.ObjectRef
    response: reconstructor_pb2.ReconstructResponse


class _Orbit:
    """The orbit of one time step as the rings change it: rgb evolves, geometry does not.

    Attributes:
        rendered: the render's view set (references).
        rendered_rgb: ``[V, H, W, 3]`` uint8 as rendered; never changed.
        rgb: ``[V, H, W, 3]`` uint8, each target's view replaced as it is repaired.
        unobserved: ``[V, H, W]`` bool, what the rings repainted.
    """

    def __init__(self, rendered: common_pb2.ViewSet, rgb: np.ndarray):
        self.rendered = rendered
        self.rendered_rgb = rgb
        self.rgb = rgb.copy()
        self.unobserved = np.zeros(rgb.shape[:3], dtype=bool)
        self._rgb: common_pb2.TensorRef | None = rendered.rgb  # ``rgb`` in the store, None once stale

    @classmethod
    def load(cls, store: BlobStore, rendered: common_pb2.ViewSet) -> _Orbit:
        return cls(rendered, get_tensor(store, rendered.rgb, field="render.rgb"))

    def repainted(self, view: int, rgb: np.ndarray, unobserved: np.ndarray) -> None:
        """View ``view`` is now ``rgb`` (``[H, W, 3]`` uint8); ``unobserved`` (``[H, W]``) was inpainted."""
        self.rgb[view] = rgb
        self.unobserved[view] |= unobserved.astype(bool)
        self._rgb = None

    def refine_mask(self) -> np.ndarray:
        """``[V, H, W]`` float32 in {0, 1}: what the rings repainted and ``REFINE_MARGIN`` around it,
        0 on the source view (index 0)."""
        mask = np.stack([cv2.dilate(m.astype(np.uint8), REFINE_MARGIN) for m in self.unobserved])
        mask = mask.astype(np.float32)
        mask[0] = 0.0
        return mask

    def current(self, store: BlobStore) -> common_pb2.ViewSet:
        """Every view with its current colours (a new message each call): the render's own references
        until a view is repainted, then the colours written once, until the next repaint."""
        if self._rgb is None:
            self._rgb = put_tensor(store, self.rgb)
        rendered = self.rendered
        return common_pb2.ViewSet(
            rgb=self._rgb,
            alpha=rendered.alpha,
            depth=rendered.depth,
            cameras=rendered.cameras,
            background_rgb=rendered.background_rgb,
        )
