"""StepLog: a step runs once and is then read back from its record, with the events and progress it sends."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from tire.v1 import common_pb2, coordinator_pb2, renderer_pb2

from services.common.errors import JobCancelled
from services.coordinator.jobstore import JobStore
from services.coordinator.steps import StepLog


@pytest.fixture
def jobs():
    return JobStore(":memory:")


def new_job(jobs: JobStore) -> str:
    job, _ = jobs.create(coordinator_pb2.JobSpec(resolution=64))
    return job.id


def render_response(uri: str) -> renderer_pb2.RenderResponse:
    rgb = common_pb2.TensorRef(uri=uri, sha256="0" * 64, shape=[1, 2, 2, 3])
    return renderer_pb2.RenderResponse(views=common_pb2.ViewSet(rgb=rgb))


def test_a_recorded_step_is_read_back_not_run_again(jobs):
    job_id = new_job(jobs)
    calls = []

    def work():
        calls.append(1)
        return render_response("s3://b/rgb")

    first = StepLog(jobs, job_id, four_d=False, steps_total=2, rings_total=0).run(
        "render", renderer_pb2.RenderResponse, work
    )
    again = StepLog(jobs, job_id, four_d=False, steps_total=2, rings_total=0).run(
        "render", renderer_pb2.RenderResponse, work
    )
    assert first == again and len(calls) == 1
    finished = [e.step_finished for e in jobs.events(job_id) if e.HasField("step_finished")]
    assert [(f.step, f.resumed) for f in finished] == [("render", False), ("render", True)]
    assert [a.name for a in finished[0].artifacts] == ["views.rgb"]
    assert finished[0].artifacts[0].tensor.uri == "s3://b/rgb"


def test_a_4d_job_keys_records_by_time_step_unless_given_a_key(jobs):
    job_id = new_job(jobs)
    steps = StepLog(jobs, job_id, four_d=True, steps_total=3, rings_total=0)
    steps.run("render", renderer_pb2.RenderResponse, lambda: render_response("s3://b/0"), time_step=0)
    steps.run("render", renderer_pb2.RenderResponse, lambda: render_response("s3://b/1"), time_step=1)
    steps.run(
        "reconstruct",
        renderer_pb2.RenderResponse,
        lambda: render_response("s3://b/j"),
        key="reconstruct/joint",
    )
    assert sorted(jobs.finished_steps(job_id)) == ["reconstruct/joint", "t0/render", "t1/render"]
    assert jobs.get(job_id).progress.steps_done == 3


def test_a_cancelled_job_runs_no_further_step(jobs):
    job_id = new_job(jobs)
    jobs.request_cancel(job_id)
    steps = StepLog(jobs, job_id, four_d=False, steps_total=1, rings_total=0)
    with pytest.raises(JobCancelled):
        steps.run("render", renderer_pb2.RenderResponse, lambda: pytest.fail("a cancelled job ran a step"))


def test_progress_never_counts_more_steps_than_expected_nor_goes_back(jobs):
    job_id = new_job(jobs)
    steps = StepLog(jobs, job_id, four_d=False, steps_total=3, rings_total=2)
    steps.expect_fewer(2)
    for name in ("a", "b"):
        steps.run(name, renderer_pb2.RenderResponse, lambda: render_response("s3://b/x"))
    progress = jobs.get(job_id).progress
    assert (progress.steps_done, progress.steps_total, progress.rings_total) == (2, 2, 2)


def test_ring_progress_counts_targets_in_order_while_they_finish_in_parallel(jobs):
    job_id = new_job(jobs)
    tally = StepLog(jobs, job_id, four_d=False, steps_total=1, rings_total=0).ring_tally(
        ring=3, targets_total=16
    )
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(tally, [0.25] * 8 + [0.75] * 8))
    events = [e.ring_progress for e in jobs.events(job_id) if e.HasField("ring_progress")]
    assert [e.targets_done for e in events] == list(range(1, 17))
    assert events[-1].unobserved_fraction == pytest.approx(0.5)
    assert {(e.ring, e.rings_total, e.targets_total) for e in events} == {(3, 3, 16)}


def test_warnings_already_sent_are_not_sent_again(jobs):
    job_id = new_job(jobs)
    for _ in range(2):
        StepLog(jobs, job_id, four_d=False, steps_total=1, rings_total=0).warn_once(["flat asset", "far"])
    assert [e.warning.message for e in jobs.events(job_id) if e.HasField("warning")] == ["flat asset", "far"]
