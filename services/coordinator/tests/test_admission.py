"""Admission limits: submissions per second and active jobs per caller, open watches."""

from __future__ import annotations

import pytest
from tire.v1 import coordinator_pb2

from services.coordinator.admission import (
    ActiveJobLimitReached,
    SubmissionRate,
    SubmissionRateExceeded,
    WatchLimitReached,
    WatchLimits,
)
from services.coordinator.jobstore import JobStore


def test_submissions_come_in_bursts_then_at_the_rate() -> None:
    now = [0.0]
    rate = SubmissionRate(per_second=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        rate.take("alice")
    with pytest.raises(SubmissionRateExceeded, match=r"alice submits faster than 2 jobs a second") as info:
        rate.take("alice")
    assert "MAX_SUBMISSIONS_PER_S" in str(info.value) and info.value.retry_after_s == 1.0
    rate.take("bob")  # a bucket of its own
    now[0] = 0.5  # one token back
    rate.take("alice")
    with pytest.raises(SubmissionRateExceeded):
        rate.take("alice")


def test_active_jobs_are_limited_per_caller_in_the_creating_transaction() -> None:
    with JobStore(":memory:") as jobs:
        first, _ = jobs.create(coordinator_pb2.JobSpec(), "r1", owner="alice", max_active=2)
        jobs.create(coordinator_pb2.JobSpec(), owner="alice", max_active=2)
        with pytest.raises(ActiveJobLimitReached, match="alice has 2 queued or running jobs"):
            jobs.create(coordinator_pb2.JobSpec(), owner="alice", max_active=2)
        again, created = jobs.create(coordinator_pb2.JobSpec(), "r1", owner="alice", max_active=2)
        assert (again.id, created) == (first.id, False)  # a retried submission is not a new job
        jobs.create(coordinator_pb2.JobSpec(), owner="bob", max_active=2)
        jobs.finish(first.id, coordinator_pb2.JOB_STATE_CANCELLED)
        assert jobs.active("alice") == 1
        jobs.create(coordinator_pb2.JobSpec(), owner="alice", max_active=2)


def test_watches_are_limited_per_caller_and_in_all() -> None:
    limits = WatchLimits(per_caller=2, total=3)
    with limits.admit("alice"), limits.admit("alice"):
        with pytest.raises(WatchLimitReached, match="alice has 2 open WatchJob streams"):
            with limits.admit("alice"):
                pass
        with limits.admit("bob"):
            assert limits.open_watches == 3
            with pytest.raises(WatchLimitReached, match="this coordinator has 3 open WatchJob streams"):
                with limits.admit("carol"):
                    pass
    assert limits.open_watches == 0
