"""Retention: finished jobs past retention go, and the objects only they used after a grace; expired
uploads and old unnamed objects go; running jobs, live uploads, objects named again within the grace
and everything outside sha256/ and staging/ stay."""

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import NotFound, StoreUnavailable
from services.common.store import MemoryStore
from services.coordinator.jobstore import JobStore
from services.coordinator.retention import RELEASE_GRACE_S, Retention, removable

DAY = 86400
RETENTION_S = 30 * DAY
URL_EXPIRY_S = 3600
SUCCEEDED = coordinator_pb2.JOB_STATE_SUCCEEDED
RUNNING = coordinator_pb2.JOB_STATE_RUNNING

# Objects written now are old as of this: later than retention by a day.
LATER = timedelta(seconds=RETENTION_S + DAY)


@pytest.fixture
def jobs():
    with JobStore(":memory:") as store:
        yield store


@pytest.fixture
def blobs():
    return MemoryStore()


@pytest.fixture
def retention(jobs, blobs):
    return Retention(jobs, blobs, retention_s=RETENTION_S, url_expiry_s=URL_EXPIRY_S)


def later(extra: timedelta = timedelta(0)) -> datetime:
    return datetime.now(UTC) + LATER + extra


def job_spec(*inputs: str) -> coordinator_pb2.JobSpec:
    frames = [common_pb2.ObjectRef(uri=uri) for uri in inputs]
    return coordinator_pb2.JobSpec(asset=common_pb2.AssetRef(frames=frames), resolution=256)


def run_job(jobs: JobStore, inputs: list[str], step: str, outputs: list[str], owner: str = "alice") -> str:
    """A job of ``owner`` that read ``inputs``, stored ``step`` and ended with ``outputs``; its id."""
    job, _ = jobs.create(job_spec(*inputs), owner=owner)
    jobs.set_state(job.id, RUNNING)
    jobs.record_step(job.id, "render", common_pb2.TensorRef(uri=step), 1.0)
    frames = [common_pb2.ObjectRef(uri=uri) for uri in outputs]
    jobs.finish(
        job.id, SUCCEEDED, outputs=coordinator_pb2.JobOutputs(repaired=common_pb2.AssetRef(frames=frames))
    )
    return job.id


def content(blobs: MemoryStore, name: str, suffix: str = ".ply") -> str:
    return blobs.put_bytes(name.encode(), suffix=suffix).uri


# ---- jobs ----------------------------------------------------------------------------------------------

GRACE = timedelta(seconds=RELEASE_GRACE_S + 1)


def test_an_old_finished_job_goes_and_its_own_objects_after_the_grace(jobs, blobs, retention):
    shared, uploaded, own_input = content(blobs, "shared"), content(blobs, "uploaded"), content(blobs, "own")
    step, output = content(blobs, "step", ".safetensors"), content(blobs, "output")
    old = run_job(jobs, [shared, uploaded, own_input], step, [output])
    # Another job still reads one input; a live upload (bob's, verified) holds the other.
    other, _ = jobs.create(job_spec(shared), owner="carol")
    jobs.expect_upload("bob", uploaded, "0" * 64, 8, "s3://memory/staging/bob/u.ply", 0)
    jobs.mark_uploaded("bob", uploaded, int(later(timedelta(days=365)).timestamp() * 1e9))

    assert retention.sweep()["jobs"] == 0  # not old yet
    counts = retention.sweep(later())
    assert (counts["jobs"], counts["released"], counts["removed"]) == (1, 3, 0)
    assert jobs.finished_before(int(later().timestamp() * 1e9)) == []
    assert jobs.objects_of(old) == set()
    assert all(blobs.exists(uri) for uri in (step, output, own_input))  # released, kept for the grace
    assert retention.sweep(later(GRACE))["removed"] == 3
    for uri in (step, output, own_input):
        assert not blobs.exists(uri), uri
    assert jobs.get(other.id).state == coordinator_pb2.JOB_STATE_QUEUED
    # Still named, the shared ones survive later passes too.
    retention.sweep(later(2 * GRACE))
    assert blobs.exists(shared) and blobs.exists(uploaded)


def test_a_running_jobs_objects_are_never_deleted_however_old(jobs, blobs, retention):
    asset, step = content(blobs, "asset"), content(blobs, "step", ".safetensors")
    job, _ = jobs.create(job_spec(asset))
    jobs.set_state(job.id, RUNNING)
    jobs.record_step(job.id, "render", common_pb2.TensorRef(uri=step), 1.0)
    for years in (1, 5, 50):
        counts = retention.sweep(later(timedelta(days=365 * years)))
        assert counts == dict.fromkeys(counts, 0)
    assert blobs.exists(asset) and blobs.exists(step)
    assert jobs.get(job.id).state == RUNNING


def test_an_object_stored_again_by_a_running_step_is_not_removed(jobs, blobs, retention):
    render = content(blobs, "the same render", ".safetensors")
    run_job(jobs, [], render, [])  # ended long ago (as of later())
    job, _ = jobs.create(job_spec())
    jobs.set_state(job.id, RUNNING)
    # The running job's render step stores the same bytes again (a no-op under their content key)...
    assert blobs.put_bytes(b"the same render", suffix=".safetensors").uri == render
    assert retention.sweep(later())["released"] == 1  # ...and retention passes before it records them.
    jobs.record_step(job.id, "render", common_pb2.TensorRef(uri=render), 1.0)
    assert retention.sweep(later(GRACE))["removed"] == 0
    assert blobs.exists(render)
    # Named again, it is no longer released: unnamed once more, it starts a new grace.
    jobs.finish(job.id, SUCCEEDED)
    assert jobs.delete(job.id, now_ns=int(later(GRACE).timestamp() * 1e9)) == 1
    assert retention.sweep(later(GRACE))["removed"] == 0
    assert retention.sweep(later(2 * GRACE))["removed"] == 1
    assert not blobs.exists(render)


def test_a_job_deleted_by_its_owner_is_skipped(jobs, blobs, retention, monkeypatch):
    gone = run_job(jobs, [], content(blobs, "s", ".safetensors"), [])
    kept = run_job(jobs, [], content(blobs, "t", ".safetensors"), [])
    listed = jobs.finished_before

    def listed_then_deleted(before_ns: int, limit: int = 100) -> list[str]:
        ids = listed(before_ns, limit)
        jobs.delete(gone)  # DeleteJob, between the listing and the sweep's delete
        return ids

    monkeypatch.setattr(jobs, "finished_before", listed_then_deleted)
    assert retention.sweep(later())["jobs"] == 1
    with pytest.raises(NotFound):
        jobs.get(kept)


# ---- uploads -------------------------------------------------------------------------------------------


def test_a_staged_upload_never_submitted_goes_after_its_expiry(jobs, blobs, retention):
    staging = "s3://memory/staging/alice/abc123.ply"
    blobs.put_at(staging, b"bytes put through the presigned URL")
    now = datetime.now(UTC)
    expires = now + timedelta(seconds=URL_EXPIRY_S)
    target = "s3://memory/sha256/aa/" + "aa" * 32 + ".ply"
    jobs.expect_upload("alice", target, "aa" * 32, 34, staging, int(expires.timestamp() * 1e9))

    assert retention.sweep(now)["staged"] == 0
    assert retention.sweep(expires - timedelta(seconds=1))["staged"] == 0
    assert blobs.exists(staging)
    assert retention.sweep(expires + timedelta(seconds=1))["staged"] == 1  # its key is alice's alone
    assert not blobs.exists(staging)
    assert jobs.upload("alice", target) is None


def test_a_verified_upload_unused_past_its_keep_time_goes(jobs, blobs, retention):
    uploaded = content(blobs, "uploaded")
    keep_until = datetime.now(UTC) + timedelta(days=2)
    jobs.expect_upload("alice", uploaded, "0" * 64, 8, "s3://memory/staging/alice/x.ply", 0)
    jobs.mark_uploaded("alice", uploaded, int(keep_until.timestamp() * 1e9))
    assert retention.sweep(keep_until - timedelta(seconds=1))["released"] == 0
    assert retention.sweep(keep_until + timedelta(seconds=1))["released"] == 1
    assert blobs.exists(uploaded)
    assert retention.sweep(keep_until + GRACE + timedelta(seconds=1))["removed"] == 1
    assert not blobs.exists(uploaded)


def test_without_retention_nothing_expires_but_released_objects_still_go(jobs, blobs):
    retention = Retention(jobs, blobs, retention_s=0, url_expiry_s=URL_EXPIRY_S)
    kept = run_job(jobs, [], content(blobs, "kept", ".safetensors"), [])
    orphan = content(blobs, "orphan", ".safetensors")
    deleted = content(blobs, "deleted", ".safetensors")
    jobs.delete(run_job(jobs, [], deleted, []))  # DeleteJob
    far = datetime.now(UTC) + timedelta(days=3650)
    assert retention.sweep(far)["removed"] == 1
    assert not blobs.exists(deleted) and blobs.exists(orphan)
    assert jobs.get(kept).state == SUCCEEDED


# ---- unnamed objects -----------------------------------------------------------------------------------


def test_an_old_unnamed_object_is_released_then_removed(blobs, retention):
    orphan = content(blobs, "orphan", ".safetensors")
    stray = "s3://memory/staging/mallory/never-announced.ply"
    blobs.put_at(stray, b"x")
    assert retention.sweep(datetime.now(UTC))["released"] == 0  # young: not even seen
    assert retention.sweep(later())["released"] == 2
    assert retention.sweep(later())["released"] == 0  # released once: its time is kept
    assert blobs.exists(orphan) and blobs.exists(stray)
    assert retention.sweep(later(GRACE))["removed"] == 2
    assert not blobs.exists(orphan) and not blobs.exists(stray)


def test_a_staging_object_younger_than_the_url_expiry_stays(jobs, blobs):
    # A retention shorter than the URL expiry: a presigned PUT can still land, so the key is kept.
    retention = Retention(jobs, blobs, retention_s=60, url_expiry_s=URL_EXPIRY_S, grace_s=0)
    stray = "s3://memory/staging/alice/late.ply"
    blobs.put_at(stray, b"x")
    soon = datetime.now(UTC) + timedelta(seconds=URL_EXPIRY_S / 2)
    retention.sweep(soon)
    assert blobs.exists(stray)
    after = datetime.now(UTC) + timedelta(seconds=URL_EXPIRY_S + 60)
    retention.sweep(after)
    retention.sweep(after + timedelta(seconds=1))
    assert not blobs.exists(stray)


def test_objects_outside_sha256_and_staging_are_never_deleted(jobs, blobs, retention):
    kept = [
        "s3://memory/models/x",
        "s3://memory/triton/renderer/1/model.py",
        "s3://memory/sha256-not/x",
        "s3://memory/sha256/zz/not-a-content-key",
        "s3://memory/stagingx/alice/y",
    ]
    for uri in kept:
        blobs.put_at(uri, b"weights")
    run_job(jobs, ["s3://memory/models/x"], "s3://memory/triton/renderer/1/model.py", kept[2:])
    for years in (1, 2, 3):
        retention.sweep(later(timedelta(days=365 * years)))
    assert jobs.list() == ([], "")  # the job went, its objects outside stayed
    for uri in kept:
        assert blobs.exists(uri), uri


def test_only_content_and_staging_keys_of_the_bucket_are_removable():
    blobs = MemoryStore()
    mine = content(blobs, "mine")
    staged = "s3://memory/staging/alice/1.ply"
    key = mine.removeprefix("s3://memory/")
    others = [
        f"s3://other/{key}",
        f"s3://memoryx/{key}",
        "s3://other/staging/alice/1.ply",
        "s3://memory/models/x",
        "s3://memory/staging",
    ]
    assert removable(blobs, [*others, mine, staged]) == [mine, staged]


# ---- run_every -----------------------------------------------------------------------------------------


class FlakyStore(MemoryStore):
    """``modified_before`` raises StoreUnavailable on its first call, then works; counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.called = threading.Condition()

    def modified_before(self, prefix_uri: str, before: datetime) -> list[str]:
        with self.called:
            self.calls += 1
            self.called.notify_all()
            if self.calls == 1:
                raise StoreUnavailable("the object store at 127.0.0.1:9 cannot be reached.")
        return super().modified_before(prefix_uri, before)


def test_run_every_survives_a_failed_pass_and_stops_when_told(jobs, caplog):
    blobs = FlakyStore()
    retention = Retention(jobs, blobs, retention_s=RETENTION_S, url_expiry_s=URL_EXPIRY_S)
    stop = threading.Event()
    thread = threading.Thread(target=retention.run_every, args=(0.01, stop), daemon=True)
    with caplog.at_level(logging.WARNING, logger="services.coordinator.retention"):
        thread.start()
        with blobs.called:
            # The failed pass (1 call), then a whole pass (2 calls) and the start of another.
            assert blobs.called.wait_for(lambda: blobs.calls >= 5, timeout=5)
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()
    warnings = [r for r in caplog.records if r.name == "services.coordinator.retention"]
    assert len(warnings) == 1
    assert "retention sweep failed" in warnings[0].getMessage()
    assert "cannot be reached" in warnings[0].getMessage()


def test_run_every_with_stop_already_set_does_not_sweep(jobs):
    blobs = FlakyStore()
    stop = threading.Event()
    stop.set()
    start = time.monotonic()
    Retention(jobs, blobs, retention_s=RETENTION_S, url_expiry_s=URL_EXPIRY_S).run_every(60, stop)
    assert time.monotonic() - start < 1
    assert blobs.calls == 0
