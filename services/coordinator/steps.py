"""A job's steps as the ``JobStore`` records them, and the events and progress they send.

    steps = StepLog(jobs, job_id, four_d=False, steps_total=12, rings_total=3)
    views = steps.run("render", RenderResponse, lambda: stub.Render(request), time_step=0)

A step's result (a protobuf message of references) is recorded when it finishes; run again, a step
already recorded returns its record (``StepFinished.resumed``) instead of running. Records are keyed
``tT/name`` in a 4D job and ``name`` in a 3D one. Every step starts with a cancellation check, so a
cancelled job stops before its next step; and with a check of the job's lease, so a replica that lost
it to another stops there too (``LeaseLost``), leaving the job to the other.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import JobCancelled, LeaseLost, StepFailed, TireError
from services.coordinator.jobstore import JobStore, Lease
from services.coordinator.stages import step_failed

JOB = coordinator_pb2
_RING_STEP = re.compile(r"ring(\d+)/")
M = TypeVar("M", bound=Message)


class StepLog:
    """The steps, events and progress of one execution of one job.

    Args:
        jobs: the durable job state.
        job_id: the job.
        four_d: whether the job has several time steps (step records are then keyed ``tT/name``).
        steps_total: the steps the job is expected to run, for ``JobProgress`` (``expect_fewer``
            lowers it when the plan merges steps).
        rings_total: the rings planned (0 in adaptive mode, where they are chosen as the job runs).
        lease: this replica's lease of the job (None: no leases, in-process): asked before each step,
            and named by each write, which is refused once another replica holds the job.
    """

    def __init__(
        self,
        jobs: JobStore,
        job_id: str,
        *,
        four_d: bool,
        steps_total: int,
        rings_total: int,
        lease: Lease | None = None,
    ):
        self.jobs = jobs
        self.lease = lease
        self.holder = lease.holder if lease is not None else None
        self.job_id = job_id
        self.four_d = four_d
        self.rings_total = rings_total
        self._lock = threading.Lock()  # progress counters and the events whose order they define
        self._steps_done = 0
        self._steps_total = steps_total
        self._ring = 0  # the ring of the latest ring step started

    def run(
        self,
        name: str,
        result_type: type[M],
        work: Callable[[], M],
        time_step: int = 0,
        key: str = "",
        model: coordinator_pb2.StageModel | None = None,
    ) -> M:
        """``work()`` as the step ``name`` of time step ``time_step``, unless it already finished.

        Args:
            name: the step's name in events and in report.json, for example "ring1/inpaint/45".
            result_type: the message ``work`` returns (a record is parsed back into it).
            work: runs the step; its result is recorded.
            time_step: the time step the step belongs to.
            key: the record's key; default ``tT/name`` (4D) or ``name`` (3D).
            model: the stage model the step's call runs, for its ``StepStarted`` event.

        Raises:
            JobCancelled: CancelJob was called.
            LeaseLost: another replica runs the job now.
        """
        if self.cancel_requested():
            raise JobCancelled("the job was cancelled")
        key = key or (f"t{time_step}/{name}" if self.four_d else name)
        recorded = self.jobs.step_result(self.job_id, key)
        if recorded is not None:
            result = result_type.FromString(recorded)
            self._finished(name, time_step, 0.0, result, resumed=True)
            return result
        self._event(step_started=JOB.StepStarted(step=name, time_step=time_step, model=model))
        self._set_progress(current=name)
        start = time.perf_counter()
        try:
            result = work()
        except JobCancelled:
            raise
        except Exception as exc:
            raise self.failed(name, time_step, exc) from exc
        seconds = time.perf_counter() - start
        self.jobs.record_step(self.job_id, key, result, seconds, holder=self.holder)
        self._finished(name, time_step, seconds, result, resumed=False)
        return result

    def failed(self, name: str, time_step: int, exc: Exception) -> Exception:
        """The error to raise for step ``name`` failing with ``exc``, once its ``StepFailure`` event is
        sent: a ``StepFailed`` naming the step and the canonical code ("render: INVALID_ARGUMENT: ..."),
        or ``exc`` itself when it is not one of ours (a bug: INTERNAL, its text left to the log). Either
        way it gains ``step`` (the step's name) and ``structured`` (the event's ``StepFailure``)."""
        if getattr(exc, "structured", None) is not None:
            return exc  # an inner step already reported it
        if isinstance(exc, StepFailed):
            failure = exc
            structured = JOB.StepFailure(
                code=exc.grpc_code.name,
                message=str(exc),
                reason=exc.cause or exc.grpc_code.name,
                field_violations=[
                    JOB.FieldViolation(field=field, description=description)
                    for field, description in exc.field_violations
                ],
            )
        elif isinstance(exc, TireError):
            return self.failed(name, time_step, step_failed(name, exc))
        else:
            failure = exc
            message = f"{name}: INTERNAL: see the coordinator's log"
            structured = JOB.StepFailure(code="INTERNAL", message=message, reason="INTERNAL")
        structured.step, structured.time_step = name, time_step
        self._event(step_failed=structured)
        failure.structured = structured  # type: ignore[attr-defined]
        failure.step = name  # type: ignore[attr-defined]
        return failure

    def waiting(self, step: str, retry_in_s: float) -> None:
        """A ``Waiting`` event: the job goes on by itself in ``retry_in_s`` seconds."""
        self._event(waiting=JOB.Waiting(step=step, retry_in_s=retry_in_s))

    def cancel_requested(self) -> bool:
        """Whether CancelJob was called (``run`` then raises ``JobCancelled``; retries stop).

        Raises:
            LeaseLost: another replica runs the job now (retries stop too).
        """
        if self.lease is not None and not self.lease.held():
            raise LeaseLost(f"job {self.job_id} is leased to another coordinator replica now")
        return self.jobs.cancel_requested(self.job_id)

    def expect_fewer(self, steps: int) -> None:
        """The plan merged ``steps`` steps into others (a joint reconstruction of 4D time steps)."""
        with self._lock:
            self._steps_total -= steps

    def warning(self, message: str) -> None:
        """A ``Warning`` event."""
        self._event(warning=JOB.Warning(message=message))

    def warn_once(self, messages: Iterable[str]) -> None:
        """A ``Warning`` event per message, unless an earlier run of the job sent it: these are the
        job's first events."""
        messages = list(messages)
        if not messages:
            return
        first = self.jobs.events(self.job_id, 0, limit=len(messages))
        sent = {event.warning.message for event in first if event.HasField("warning")}
        for message in messages:
            if message not in sent:
                self.warning(message)

    def fit_progress(self, progress: common_pb2.FitProgress) -> None:
        """A ``FitEvent``: the subject fit's step and loss."""
        self._event(fit=JOB.FitEvent(progress=progress))

    def ring_tally(self, ring: int, targets_total: int) -> Callable[[float], None]:
        """A function to call as each target of ring ``ring`` is inpainted, with the target's
        unobserved fraction: it sends a ``RingProgress`` event (targets done, their mean fraction).

        Events are sent under the lock that counts them, so ``targets_done`` never goes backwards in
        the history while targets finish in parallel.
        """
        fractions: list[float] = []

        def target_done(fraction: float) -> None:
            with self._lock:
                fractions.append(fraction)
                progress = JOB.RingProgress(
                    ring=ring,
                    rings_total=max(self.rings_total, ring),
                    targets_done=len(fractions),
                    targets_total=targets_total,
                    unobserved_fraction=sum(fractions) / len(fractions),
                )
                self._event(ring_progress=progress)

        return target_done

    def _finished(self, name: str, time_step: int, seconds: float, result: Message, resumed: bool) -> None:
        with self._lock:
            self._steps_done += 1
        self._set_progress(current="")
        finished = JOB.StepFinished(
            step=name, time_step=time_step, seconds=seconds, resumed=resumed, artifacts=artifacts(result)
        )
        self._event(step_finished=finished)

    def _set_progress(self, current: str) -> None:
        with self._lock:  # under the lock: steps_done never goes back
            ring = _RING_STEP.match(current)
            if ring:
                self._ring = int(ring.group(1))
            progress = JOB.JobProgress(
                steps_done=self._steps_done,
                steps_total=max(self._steps_total, self._steps_done),
                ring=self._ring,
                rings_total=max(self.rings_total, self._ring),
                current_step=current,
            )
            self.jobs.set_progress(self.job_id, progress, holder=self.holder)

    def _event(self, **kind: Message) -> None:
        self.jobs.append_event(self.job_id, JOB.JobEvent(**kind), holder=self.holder)


def artifacts(result: Message) -> list[coordinator_pb2.Artifact]:
    """The references a step's result holds, named by field, for ``StepFinished`` events."""
    found = []
    for descriptor, value in result.ListFields():
        if isinstance(value, common_pb2.TensorRef):
            found.append(JOB.Artifact(name=descriptor.name, tensor=value))
        elif isinstance(value, common_pb2.ObjectRef):
            found.append(JOB.Artifact(name=descriptor.name, object=value))
        elif isinstance(value, common_pb2.ViewSet):
            for part in ("rgb", "alpha", "depth"):
                if value.HasField(part):
                    found.append(JOB.Artifact(name=f"{descriptor.name}.{part}", tensor=getattr(value, part)))
    return found
