"""JobStore, the same contract on SQLite and on PostgreSQL (a real server, ``postgres_url``): jobs, steps
and events; durability across reopen, paging, cancel, concurrency, leases; each database's migrations."""

import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import (
    ConfigError,
    DatabaseUnavailable,
    FailedPrecondition,
    InvalidArgument,
    LeaseLost,
    NotFound,
)
from services.common.local_server import free_port
from services.coordinator.databases import PostgresDatabase
from services.coordinator.jobstore import JobStore, claim_order
from services.testing.postgres import LocalPostgres, require_postgres

QUEUED = coordinator_pb2.JOB_STATE_QUEUED
RUNNING = coordinator_pb2.JOB_STATE_RUNNING
SUCCEEDED = coordinator_pb2.JOB_STATE_SUCCEEDED
FAILED = coordinator_pb2.JOB_STATE_FAILED
CANCELLED = coordinator_pb2.JOB_STATE_CANCELLED


def spec(seed: int = 0) -> coordinator_pb2.JobSpec:
    return coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[common_pb2.ObjectRef(uri="s3://tire/sha256/ab/asset.ply")]),
        resolution=256,
        seed=seed,
        labels={"who": "test"},
    )


def started(step: str) -> coordinator_pb2.JobEvent:
    return coordinator_pb2.JobEvent(step_started=coordinator_pb2.StepStarted(step=step))


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a test's jobs live: a SQLite file, or a fresh PostgreSQL database; opened as often as the
    test likes (a reopen is a restart, two stores on it are two replicas)."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def store(location):
    with JobStore(location) as jobs:
        yield jobs


@pytest.fixture
def db_path(tmp_path):
    """A SQLite file (for the tests of SQLite's own behaviour)."""
    return tmp_path / "jobs.sqlite"


# ---- create, get, list -------------------------------------------------------------------------------


def test_create_queues_a_job_with_a_fresh_id_and_the_spec(store):
    job, created = store.create(spec(seed=7))
    assert created
    assert job.id.startswith("job-") and len(job.id) == len("job-") + 12
    int(job.id[4:], 16)  # hex
    assert job.state == QUEUED
    assert job.spec == spec(seed=7)
    assert job.created_at == job.updated_at
    assert abs(job.created_at.ToNanoseconds() - time.time_ns()) < 5e9
    assert store.get(job.id) == job
    other, _ = store.create(spec(seed=7))
    assert other.id != job.id


def test_get_unknown_job_is_not_found_naming_the_id(store):
    with pytest.raises(NotFound, match="job-000000000000"):
        store.get("job-000000000000")


def test_list_is_newest_first_and_pages_without_overlap(store):
    ids = [store.create(spec(i))[0].id for i in range(7)]
    seen, token, pages = [], "", 0
    while True:
        jobs, token = store.list(page_size=3, page_token=token)
        seen += [job.id for job in jobs]
        pages += 1
        if not token:
            break
    assert pages == 3
    assert seen == ids[::-1]
    # An exact multiple of the page size ends with an empty token, not an empty extra page.
    jobs, token = store.list(page_size=7)
    assert [job.id for job in jobs] == ids[::-1] and token == ""


def test_list_default_page_size_is_20(store):
    for i in range(21):
        store.create(spec(i))
    jobs, token = store.list(page_size=0)
    assert len(jobs) == 20 and token
    rest, token = store.list(page_token=token)
    assert len(rest) == 1 and token == ""


def test_list_filters_by_state(store):
    a, b, c = (store.create(spec(i))[0].id for i in range(3))
    store.set_state(b, RUNNING)
    store.set_state(c, RUNNING)
    store.set_state(c, FAILED, error="render: boom")
    assert [job.id for job in store.list(state=QUEUED)[0]] == [a]
    assert [job.id for job in store.list(state=RUNNING)[0]] == [b]
    assert [job.id for job in store.list(state=FAILED)[0]] == [c]
    assert store.list(state=SUCCEEDED) == ([], "")
    page, token = store.list(page_size=1, state=RUNNING)
    assert [job.id for job in page] == [b] and token == ""


@pytest.mark.parametrize("page_size", [-1, 101, 1000])
def test_list_rejects_page_size_out_of_range(store, page_size):
    with pytest.raises(
        InvalidArgument, match=r"`page_size` must be between 1 and 100.*got " + str(page_size)
    ):
        store.list(page_size=page_size)


@pytest.mark.parametrize("token", ["garbage", "!!!", "am9iczE6eDoy", "bm9wZToxOjA"])
def test_list_rejects_a_token_it_did_not_issue(store, token):
    store.create(spec())
    with pytest.raises(InvalidArgument, match=r"`page_token` is not a token from a previous ListJobs") as err:
        store.list(page_token=token)
    assert err.value.field == "page_token" and err.value.value == token


def test_list_rejects_a_token_from_another_state_filter(store):
    for i in range(3):
        store.create(spec(i))
    _, token = store.list(page_size=1)
    with pytest.raises(InvalidArgument, match="`page_token` belongs to a listing with `state`"):
        store.list(page_size=1, page_token=token, state=QUEUED)


def test_list_rejects_an_unknown_state(store):
    with pytest.raises(InvalidArgument, match="`state` must be a JobState, got 42"):
        store.list(state=42)


# ---- request_id --------------------------------------------------------------------------------------


def test_same_request_id_returns_the_first_job(store):
    first, created = store.create(spec(1), request_id="req-1")
    again, created_again = store.create(spec(2), request_id="req-1")
    assert created and not created_again
    assert again == first
    other, created_other = store.create(spec(1), request_id="req-2")
    assert created_other and other.id != first.id
    # An empty request_id never deduplicates.
    assert store.create(spec(1))[0].id != store.create(spec(1))[0].id


def test_same_request_id_returns_the_job_as_it_is_now(store):
    first, _ = store.create(spec(), request_id="req")
    store.set_state(first.id, RUNNING)
    again, created = store.create(spec(), request_id="req")
    assert not created and again.id == first.id and again.state == RUNNING


def test_request_id_survives_reopen(location):
    with JobStore(location) as jobs:
        first, _ = jobs.create(spec(), request_id="req-1")
    with JobStore(location) as jobs:
        again, created = jobs.create(spec(), request_id="req-1")
    assert not created and again == first


def test_concurrent_submits_with_one_request_id_make_one_job(store):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: store.create(spec(), request_id="same"), range(32)))
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert len(store.list(page_size=100)[0]) == 1


# ---- state ---------------------------------------------------------------------------------------------


def test_state_moves_forward_and_records_outputs_and_error(store):
    job, _ = store.create(spec())
    running = store.set_state(job.id, RUNNING)
    assert running.state == RUNNING
    assert running.updated_at.ToNanoseconds() >= job.updated_at.ToNanoseconds()
    assert running.created_at == job.created_at
    outputs = coordinator_pb2.JobOutputs(report=common_pb2.ObjectRef(uri="s3://tire/sha256/cd/report.json"))
    done = store.set_state(job.id, SUCCEEDED, outputs=outputs)
    assert done.state == SUCCEEDED and done.outputs == outputs and done.error == ""
    assert store.get(job.id) == done

    failed_job, _ = store.create(spec())
    failed = store.set_state(failed_job.id, FAILED, error="ring2/inpaint: UNAVAILABLE: gone")
    assert failed.error == "ring2/inpaint: UNAVAILABLE: gone"


@pytest.mark.parametrize("final", [SUCCEEDED, FAILED, CANCELLED])
@pytest.mark.parametrize("target", [QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED])
def test_final_states_are_final(store, final, target):
    job, _ = store.create(spec())
    ended = store.set_state(job.id, final, error="x" if final == FAILED else "")
    if target == final:
        assert store.set_state(job.id, target, error="other") == ended  # a no-op: nothing changes
    else:
        name = coordinator_pb2.JobState.Name(final)
        with pytest.raises(FailedPrecondition, match=f"{job.id}.*already {name}"):
            store.set_state(job.id, target)
        assert store.get(job.id) == ended


@pytest.mark.parametrize("state", [coordinator_pb2.JOB_STATE_UNSPECIFIED, 99])
def test_set_state_rejects_unspecified_and_unknown_states(store, state):
    job, _ = store.create(spec())
    with pytest.raises(InvalidArgument, match=f"`state` must be a JobState.*got {state}"):
        store.set_state(job.id, state)


def test_set_progress_is_stored_and_leaves_updated_at(store):
    job, _ = store.create(spec())
    progress = coordinator_pb2.JobProgress(
        steps_done=3, steps_total=9, ring=2, rings_total=3, current_step="x"
    )
    store.set_progress(job.id, progress)
    now = store.get(job.id)
    assert now.progress == progress
    assert now.updated_at == job.updated_at


def test_finish_ends_the_job_and_appends_its_event_once(store):
    job, _ = store.create(spec())
    store.set_state(job.id, RUNNING)
    store.append_event(job.id, started("render"))
    outputs = coordinator_pb2.JobOutputs(report=common_pb2.ObjectRef(uri="s3://tire/sha256/cd/report.json"))
    ended, event = store.finish(job.id, SUCCEEDED, outputs=outputs)
    assert ended.state == SUCCEEDED and ended.outputs == outputs
    assert event.sequence == 2 and event.job_id == job.id
    assert event.finished == coordinator_pb2.JobFinished(state=SUCCEEDED, outputs=outputs)
    # Again: the same event, nothing appended.
    assert store.finish(job.id, SUCCEEDED) == (ended, event)
    assert [e.sequence for e in store.events(job.id)] == [1, 2]
    with pytest.raises(FailedPrecondition):
        store.finish(job.id, FAILED, error="late")


def test_finish_appends_the_missing_event_of_a_job_ended_by_set_state(store):
    job, _ = store.create(spec())
    store.set_state(job.id, FAILED, error="render: bad asset")
    _, event = store.finish(job.id, FAILED)
    assert event.finished.state == FAILED and event.finished.error == "render: bad asset"
    assert store.events(job.id) == [event]


def test_finish_rejects_a_state_that_is_not_final(store):
    job, _ = store.create(spec())
    with pytest.raises(InvalidArgument, match="`state` must be a final JobState"):
        store.finish(job.id, RUNNING)


# ---- cancel --------------------------------------------------------------------------------------------


def test_cancel_of_a_queued_job_ends_it_at_once(store):
    job, _ = store.create(spec())
    cancelled = store.request_cancel(job.id)
    assert cancelled.state == CANCELLED and store.get(job.id) == cancelled
    assert store.cancel_requested(job.id)
    [event] = store.events(job.id)
    assert event.sequence == 1 and event.finished.state == CANCELLED
    # A runner that picked the job up a moment too late cannot revive it.
    with pytest.raises(FailedPrecondition, match="already JOB_STATE_CANCELLED"):
        store.set_state(job.id, RUNNING)
    # Cancelling again changes nothing and appends nothing.
    assert store.request_cancel(job.id) == cancelled
    assert len(store.events(job.id)) == 1


def test_cancel_of_a_running_job_sets_the_flag_only(store):
    job, _ = store.create(spec())
    store.set_state(job.id, RUNNING)
    assert not store.cancel_requested(job.id)
    after = store.request_cancel(job.id)
    assert after.state == RUNNING
    assert store.cancel_requested(job.id)
    assert store.events(job.id) == []
    ended, event = store.finish(job.id, CANCELLED)
    assert ended.state == CANCELLED and event.finished.state == CANCELLED


@pytest.mark.parametrize("final", [SUCCEEDED, FAILED])
def test_cancel_of_a_finished_job_returns_it_unchanged(store, final):
    job, _ = store.create(spec())
    ended = store.set_state(job.id, final)
    assert store.request_cancel(job.id) == ended
    assert not store.cancel_requested(job.id)
    assert store.events(job.id) == []


# ---- steps ---------------------------------------------------------------------------------------------


def test_steps_are_recorded_once_and_survive_reopen(location):
    with JobStore(location) as jobs:
        job, _ = jobs.create(spec())
        assert jobs.step_result(job.id, "render") is None
        first = common_pb2.ObjectRef(uri="s3://b/render")
        jobs.record_step(job.id, "render", first, 1.5)
        jobs.record_step(job.id, "fit_subject", common_pb2.ObjectRef(), 2.0)
        jobs.record_step(job.id, "render", common_pb2.ObjectRef(uri="s3://b/2"), 9.0)  # ignored: first stays
    with JobStore(location) as jobs:
        assert jobs.step_result(job.id, "render") == first.SerializeToString()
        assert jobs.step_result(job.id, "fit_subject") == b""
        assert jobs.step_result(job.id, "ring1/locate") is None
        assert jobs.finished_steps(job.id) == ["render", "fit_subject"]
        assert jobs.step_seconds(job.id) == {"render": 1.5, "fit_subject": 2.0}


def test_steps_are_per_job(store):
    a, _ = store.create(spec())
    b, _ = store.create(spec())
    store.record_step(a.id, "render", common_pb2.ObjectRef(uri="s3://b/a"), 0.1)
    assert store.step_result(b.id, "render") is None
    assert store.finished_steps(b.id) == []


# ---- events --------------------------------------------------------------------------------------------


def test_append_assigns_job_id_sequence_and_time_without_touching_the_argument(store):
    job, _ = store.create(spec())
    event = started("render")
    stored = store.append_event(job.id, event)
    assert event == started("render")
    assert stored.job_id == job.id and stored.sequence == 1
    assert abs(stored.time.ToNanoseconds() - time.time_ns()) < 5e9
    assert stored.step_started.step == "render"
    assert store.append_event(job.id, event).sequence == 2
    other, _ = store.create(spec())
    assert store.append_event(other.id, event).sequence == 1  # sequences are per job
    assert store.events(job.id) == [stored, store.events(job.id)[1]]


def test_events_after_sequence_and_limit_slice_the_history(store):
    job, _ = store.create(spec())
    for i in range(10):
        store.append_event(job.id, started(f"s{i}"))
    assert [e.sequence for e in store.events(job.id)] == list(range(1, 11))
    assert [e.sequence for e in store.events(job.id, after_sequence=7)] == [8, 9, 10]
    assert [e.sequence for e in store.events(job.id, after_sequence=2, limit=3)] == [3, 4, 5]
    assert store.events(job.id, after_sequence=10) == []
    assert [e.step_started.step for e in store.events(job.id, 8)] == ["s8", "s9"]
    with pytest.raises(InvalidArgument, match="`limit` must be positive, got 0"):
        store.events(job.id, limit=0)


def test_concurrent_appends_are_gap_free_per_job(location):
    with JobStore(location) as jobs:
        ids = [jobs.create(spec(i))[0].id for i in range(2)]
        per_thread = 40

        def append(worker: int) -> list[int]:
            job_id = ids[worker % 2]
            return [jobs.append_event(job_id, started(f"w{worker}/{i}")).sequence for i in range(per_thread)]

        with ThreadPoolExecutor(8) as pool:
            returned = list(pool.map(append, range(8)))
        for k, job_id in enumerate(ids):
            sequences = [e.sequence for e in jobs.events(job_id)]
            assert sequences == list(range(1, 4 * per_thread + 1))
            mine = sorted(s for w, seqs in enumerate(returned) if w % 2 == k for s in seqs)
            assert mine == sequences
            # Each thread's own events keep their order.
            for w in range(k, 8, 2):
                steps = [
                    e.step_started.step
                    for e in jobs.events(job_id)
                    if e.step_started.step.startswith(f"w{w}/")
                ]
                assert steps == [f"w{w}/{i}" for i in range(per_thread)]


def test_two_stores_on_one_database_share_sequences(location):
    with JobStore(location) as a, JobStore(location) as b:
        job, _ = a.create(spec())

        def append(jobs: JobStore) -> None:
            for i in range(25):
                jobs.append_event(job.id, started(str(i)))

        threads = [threading.Thread(target=append, args=(s,)) for s in (a, b, a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [e.sequence for e in b.events(job.id)] == list(range(1, 101))
        assert a.events(job.id) == b.events(job.id)


def test_wait_events_returns_at_once_when_there_are_newer_events(store):
    job, _ = store.create(spec())
    store.append_event(job.id, started("render"))
    start = time.monotonic()
    [event] = store.wait_events(job.id, after_sequence=0, timeout=10.0)
    assert event.sequence == 1
    assert time.monotonic() - start < 1.0


def test_wait_events_wakes_on_append(store):
    job, _ = store.create(spec())
    store.append_event(job.id, started("render"))
    waiting = threading.Event()

    def append_later() -> None:
        waiting.wait()
        time.sleep(0.05)
        store.append_event(job.id, started("fit_subject"))

    thread = threading.Thread(target=append_later)
    thread.start()
    start = time.monotonic()
    waiting.set()
    found = store.wait_events(job.id, after_sequence=1, timeout=10.0)
    elapsed = time.monotonic() - start
    thread.join()
    assert [e.sequence for e in found] == [2]
    assert elapsed < 0.4  # woken by the append, well before the poll interval and the timeout


def test_wait_events_sees_appends_through_another_store_on_the_database(location):
    with JobStore(location) as watcher, JobStore(location) as writer:
        job, _ = writer.create(spec())
        timer = threading.Timer(0.05, writer.append_event, args=(job.id, started("render")))
        timer.start()
        start = time.monotonic()
        found = watcher.wait_events(job.id, after_sequence=0, timeout=10.0)
        timer.join()
        assert [e.sequence for e in found] == [1]
        assert time.monotonic() - start < 3.0


def test_wait_events_times_out_empty(store):
    job, _ = store.create(spec())
    store.append_event(job.id, started("render"))
    start = time.monotonic()
    assert store.wait_events(job.id, after_sequence=1, timeout=0.1) == []
    assert 0.09 <= time.monotonic() - start < 1.0


# ---- durability ----------------------------------------------------------------------------------------


def test_reopen_sees_jobs_progress_events_and_unfinished(location):
    with JobStore(location) as jobs:
        queued, _ = jobs.create(spec(0))
        running, _ = jobs.create(spec(1))
        done, _ = jobs.create(spec(2))
        cancelled, _ = jobs.create(spec(3))
        jobs.set_state(running.id, RUNNING)
        jobs.set_progress(running.id, coordinator_pb2.JobProgress(steps_done=2, current_step="ring1/locate"))
        jobs.append_event(running.id, started("render"))
        jobs.request_cancel(running.id)
        jobs.set_state(done.id, RUNNING)
        jobs.finish(done.id, SUCCEEDED)
        jobs.request_cancel(cancelled.id)
        before = {job_id: jobs.get(job_id) for job_id in (queued.id, running.id, done.id, cancelled.id)}
        history = jobs.events(running.id)
    with JobStore(location) as jobs:
        assert jobs.unfinished() == [queued.id, running.id]  # oldest first
        assert {job_id: jobs.get(job_id) for job_id in before} == before
        assert jobs.events(running.id) == history
        assert jobs.cancel_requested(running.id)
        assert jobs.append_event(running.id, started("fit_subject")).sequence == 2
        assert [job.id for job in jobs.list()[0]] == [cancelled.id, done.id, running.id, queued.id]


def test_file_is_in_wal_mode(db_path):
    JobStore(db_path).close()
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_a_file_from_a_newer_schema_is_refused(db_path):
    JobStore(db_path).close()
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA user_version=99")
    db.close()
    with pytest.raises(FailedPrecondition, match="schema version 99"):
        JobStore(db_path)


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.get("job-nope"),
        lambda s: s.set_state("job-nope", RUNNING),
        lambda s: s.finish("job-nope", CANCELLED),
        lambda s: s.set_progress("job-nope", coordinator_pb2.JobProgress()),
        lambda s: s.request_cancel("job-nope"),
        lambda s: s.cancel_requested("job-nope"),
        lambda s: s.step_result("job-nope", "render"),
        lambda s: s.record_step("job-nope", "render", common_pb2.ObjectRef(), 0.0),
        lambda s: s.finished_steps("job-nope"),
        lambda s: s.append_event("job-nope", started("render")),
        lambda s: s.events("job-nope"),
        lambda s: s.wait_events("job-nope", 0, timeout=0.01),
    ],
)
def test_unknown_job_ids_are_not_found_with_the_id_in_the_message(store, call):
    with pytest.raises(NotFound, match="`job_id` 'job-nope'"):
        call(store)


# ---- ownership ------------------------------------------------------------------------------------------


def test_another_principals_job_does_not_exist_for_its_owner_filter(store):
    job, _ = store.create(spec(), owner="alice")
    assert job.owner == "alice"
    assert store.get(job.id, owner="alice") == job
    assert store.get(job.id) == job  # owner=None: the coordinator, or an admin
    store.set_state(job.id, RUNNING)
    for call in (
        lambda: store.get(job.id, owner="bob"),
        lambda: store.request_cancel(job.id, owner="bob"),
        lambda: store.get(job.id, owner=""),
    ):
        with pytest.raises(NotFound, match=f"`job_id` {job.id!r}"):
            call()
    assert not store.cancel_requested(job.id)  # bob's cancel did nothing
    store.finish(job.id, SUCCEEDED)
    with pytest.raises(NotFound, match=f"`job_id` {job.id!r}"):
        store.delete(job.id, owner="bob")
    assert store.get(job.id).state == SUCCEEDED  # still there
    assert store.request_cancel(job.id, owner="alice").state == SUCCEEDED
    store.delete(job.id, owner="alice")
    with pytest.raises(NotFound):
        store.get(job.id)


def test_list_pages_through_one_owners_jobs(store):
    mine, theirs = [], []
    for i in range(9):
        (mine if i % 3 else theirs).append(store.create(spec(i), owner="alice" if i % 3 else "bob")[0].id)
    seen, token = [], ""
    while True:
        jobs, token = store.list(page_size=2, page_token=token, owner="alice")
        assert all(job.owner == "alice" for job in jobs)
        seen += [job.id for job in jobs]
        if not token:
            break
    assert seen == mine[::-1]
    assert [job.id for job in store.list(owner="bob")[0]] == theirs[::-1]
    assert store.list(owner="carol") == ([], "")
    assert len(store.list(page_size=100)[0]) == 9  # owner=None: everybody's
    store.set_state(mine[0], RUNNING)
    store.set_state(theirs[0], RUNNING)
    assert [job.id for job in store.list(state=RUNNING, owner="alice")[0]] == [mine[0]]


def test_request_ids_are_unique_per_owner(store):
    alice, created = store.create(spec(1), request_id="req", owner="alice")
    bob, bob_created = store.create(spec(2), request_id="req", owner="bob")
    assert created and bob_created and alice.id != bob.id
    again, created_again = store.create(spec(3), request_id="req", owner="alice")
    assert not created_again and again == alice
    assert store.create(spec(4), request_id="req", owner="bob")[0] == bob


# ---- objects -------------------------------------------------------------------------------------------


def tensor(uri: str, *previews: str) -> common_pb2.TensorRef:
    return common_pb2.TensorRef(uri=uri, preview_uris=list(previews))


def test_objects_are_recorded_from_spec_steps_events_and_outputs(store):
    job, _ = store.create(spec())
    assert store.objects_of(job.id) == {"s3://tire/sha256/ab/asset.ply"}  # labels are not objects
    store.set_state(job.id, RUNNING)
    store.record_step(job.id, "render", tensor("s3://tire/sha256/01/views", "s3://tire/sha256/02/p.png"), 1.0)
    store.append_event(
        job.id,
        coordinator_pb2.JobEvent(
            step_finished=coordinator_pb2.StepFinished(
                step="fit_subject",
                artifacts=[
                    coordinator_pb2.Artifact(object=common_pb2.ObjectRef(uri="s3://tire/sha256/03/s"))
                ],
            )
        ),
    )
    outputs = coordinator_pb2.JobOutputs(
        repaired=common_pb2.AssetRef(frames=[common_pb2.ObjectRef(uri="s3://tire/sha256/04/out.ply")]),
        rings=[coordinator_pb2.RingOutput(ring=1, inpainted=tensor("s3://tire/sha256/05/ring1"))],
        report=common_pb2.ObjectRef(uri="s3://tire/sha256/06/report.json"),
    )
    store.finish(job.id, SUCCEEDED, outputs=outputs)
    assert store.objects_of(job.id) == {
        "s3://tire/sha256/ab/asset.ply",
        "s3://tire/sha256/01/views",
        "s3://tire/sha256/02/p.png",
        "s3://tire/sha256/03/s",
        "s3://tire/sha256/04/out.ply",
        "s3://tire/sha256/05/ring1",
        "s3://tire/sha256/06/report.json",
    }
    other, _ = store.create(spec())
    assert store.objects_of(other.id) == {"s3://tire/sha256/ab/asset.ply"}
    assert store.in_use(["s3://tire/sha256/04/out.ply", "s3://tire/sha256/99/none"]) == {
        "s3://tire/sha256/04/out.ply"
    }


def test_outputs_given_to_set_state_are_recorded(store):
    job, _ = store.create(spec())
    outputs = coordinator_pb2.JobOutputs(report=common_pb2.ObjectRef(uri="s3://tire/sha256/06/report.json"))
    store.set_state(job.id, SUCCEEDED, outputs=outputs)
    assert "s3://tire/sha256/06/report.json" in store.objects_of(job.id)


@pytest.mark.parametrize("active", [QUEUED, RUNNING])
def test_delete_refuses_a_job_that_is_not_finished(store, active):
    job, _ = store.create(spec())
    if active == RUNNING:
        store.set_state(job.id, RUNNING)
    with pytest.raises(
        FailedPrecondition,
        match=f"{job.id!r} is JOB_STATE_{'QUEUED' if active == QUEUED else 'RUNNING'}: cancel it",
    ):
        store.delete(job.id)
    assert store.get(job.id).state == active
    assert store.objects_of(job.id) == {"s3://tire/sha256/ab/asset.ply"}


def test_delete_removes_the_job_and_releases_only_objects_nothing_else_uses(store):
    uploaded = "s3://tire/sha256/0c/uploaded.ply"
    job, _ = store.create(spec(), owner="alice")
    store.record_step(job.id, "render", tensor("s3://tire/sha256/01/views"), 1.0)
    store.record_step(job.id, "upload", common_pb2.ObjectRef(uri=uploaded), 1.0)
    store.append_event(job.id, started("render"))
    outputs = coordinator_pb2.JobOutputs(report=common_pb2.ObjectRef(uri="s3://tire/sha256/06/report.json"))
    store.set_state(job.id, RUNNING)
    store.finish(job.id, SUCCEEDED, outputs=outputs)
    store.create(spec(), owner="bob")  # bob's job reads the same asset.ply
    store.expect_upload(
        "carol", uploaded, "0c" * 32, 5, "s3://tire/staging/carol/x.ply", time.time_ns() + 10**12
    )

    assert store.delete(job.id, owner="alice", now_ns=1000) == 2
    assert store.released_before(1001) == ["s3://tire/sha256/01/views", "s3://tire/sha256/06/report.json"]
    assert store.released_before(1000) == []
    with pytest.raises(NotFound, match=job.id):
        store.get(job.id)
    with pytest.raises(NotFound, match=job.id):
        store.events(job.id)
    assert store.objects_of(job.id) == set()
    assert store.finished_before(time.time_ns() + 10**12) == []
    with pytest.raises(NotFound, match=job.id):
        store.delete(job.id)


def test_finished_before_names_ended_jobs_oldest_first(store):
    store.create(spec(0))  # queued
    running, _ = store.create(spec(1))
    store.set_state(running.id, RUNNING)
    ended = []
    for i, state in enumerate((SUCCEEDED, FAILED, CANCELLED)):
        job, _ = store.create(spec(i + 2))
        store.finish(job.id, state)
        ended.append(job.id)
    later = time.time_ns() + 10**9
    assert store.finished_before(later) == ended
    assert store.finished_before(later, limit=2) == ended[:2]
    assert store.finished_before(store.get(ended[0]).updated_at.ToNanoseconds()) == []


# ---- uploads -------------------------------------------------------------------------------------------

CONTENT = "s3://tire/sha256/aa/" + "aa" * 32 + ".ply"


def test_an_upload_is_pending_then_verified(store):
    expires = time.time_ns() + 10**12
    assert store.upload("alice", CONTENT) is None
    store.expect_upload("alice", CONTENT, "aa" * 32, 10, "s3://tire/staging/alice/1.ply", expires)
    assert store.upload("alice", CONTENT) == ("aa" * 32, 10, "s3://tire/staging/alice/1.ply")
    assert store.upload("bob", CONTENT) is None  # per principal
    # Asked again: the new staging key and expiry replace the pending one.
    store.expect_upload("alice", CONTENT, "aa" * 32, 10, "s3://tire/staging/alice/2.ply", expires)
    assert store.upload("alice", CONTENT) == ("aa" * 32, 10, "s3://tire/staging/alice/2.ply")
    assert store.in_use([CONTENT, "s3://tire/staging/alice/2.ply", "s3://tire/staging/alice/1.ply"]) == {
        CONTENT,
        "s3://tire/staging/alice/2.ply",
    }
    store.mark_uploaded("alice", CONTENT, expires)
    assert store.upload("alice", CONTENT) == ("aa" * 32, 10, "")


def test_produced_for_names_the_objects_of_a_principals_jobs(store):
    job, _ = store.create(spec(), owner="alice")
    store.record_step(job.id, "render", tensor("s3://tire/sha256/01/views"), 1.0)
    assert store.produced_for("alice", "s3://tire/sha256/01/views")
    assert store.produced_for("alice", "s3://tire/sha256/ab/asset.ply")
    assert not store.produced_for("bob", "s3://tire/sha256/01/views")
    assert not store.produced_for("alice", "s3://tire/sha256/99/other")


def test_drop_expired_uploads_returns_staging_and_releases_unused_verified_objects(store):
    now = time.time_ns()
    named = "s3://tire/sha256/ab/asset.ply"  # a job of bob's names it
    store.create(spec(), owner="bob")
    staged = "s3://tire/sha256/bb/" + "bb" * 32
    kept = "s3://tire/sha256/cc/" + "cc" * 32
    lonely = "s3://tire/sha256/dd/" + "dd" * 32
    both = "s3://tire/sha256/ee/" + "ee" * 32  # carol's upload of it is still live
    store.expect_upload("alice", staged, "bb" * 32, 1, "s3://tire/staging/alice/b", now - 1)
    store.expect_upload("alice", kept, "cc" * 32, 1, "s3://tire/staging/alice/c", now + 10**12)
    for owner, uri, until in (
        ("alice", named, now - 1),
        ("alice", lonely, now - 1),
        ("alice", both, now - 1),
        ("carol", both, now + 10**12),
    ):
        store.expect_upload(owner, uri, uri[-64:], 1, f"s3://tire/staging/{owner}/{uri[-1]}", until)
        store.mark_uploaded(owner, uri, until)

    assert store.drop_expired_uploads(now) == (["s3://tire/staging/alice/b"], 1)
    assert store.released_before(now + 1) == [lonely]
    assert store.upload("alice", staged) is None and store.upload("alice", lonely) is None
    assert store.upload("alice", kept) is not None and store.upload("carol", both) is not None
    assert store.drop_expired_uploads(now) == ([], 0)


# ---- migration from schema 1 ---------------------------------------------------------------------------

# The tables of schema 1, as its JobStore created them (commit 5156567).
_SCHEMA_1 = """
CREATE TABLE IF NOT EXISTS jobs (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    request_id TEXT NOT NULL DEFAULT '',
    state INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL,
    spec BLOB NOT NULL,
    progress BLOB NOT NULL DEFAULT x'',
    outputs BLOB NOT NULL DEFAULT x'',
    error TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_request_id ON jobs (request_id) WHERE request_id != '';
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, row);
CREATE TABLE IF NOT EXISTS steps (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    step TEXT NOT NULL,
    result BLOB NOT NULL,
    seconds REAL NOT NULL,
    UNIQUE (job_id, step)
);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    sequence INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, sequence)
) WITHOUT ROWID;
"""


def schema_1_file(path) -> None:
    """A file as schema 1 left it: one finished job with a request id, its outputs and an event."""
    outputs = coordinator_pb2.JobOutputs(report=common_pb2.ObjectRef(uri="s3://tire/sha256/06/report.json"))
    event = coordinator_pb2.JobEvent(
        job_id="job-000000000001",
        sequence=1,
        step_finished=coordinator_pb2.StepFinished(
            step="render", artifacts=[coordinator_pb2.Artifact(tensor=tensor("s3://tire/sha256/01/views"))]
        ),
    )
    db = sqlite3.connect(path)
    db.executescript(_SCHEMA_1)
    db.execute(
        "INSERT INTO jobs (id, request_id, state, created_ns, updated_ns, spec, outputs)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("job-000000000001", "req", SUCCEEDED, 1, 2, spec().SerializeToString(), outputs.SerializeToString()),
    )
    db.execute(
        "INSERT INTO events (job_id, sequence, event) VALUES (?, ?, ?)",
        ("job-000000000001", 1, event.SerializeToString()),
    )
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


def test_a_schema_1_file_is_migrated(db_path):
    schema_1_file(db_path)
    with JobStore(db_path) as jobs:
        job = jobs.get("job-000000000001")
        assert job.owner == "" and job.state == SUCCEEDED and job.spec == spec()
        assert jobs.get(job.id, owner="") == job
        with pytest.raises(NotFound):
            jobs.get(job.id, owner="alice")
        assert jobs.objects_of(job.id) == {
            "s3://tire/sha256/ab/asset.ply",
            "s3://tire/sha256/01/views",
            "s3://tire/sha256/06/report.json",
        }
        # Request ids are now unique per owner.
        assert jobs.create(spec(), request_id="req") == (job, False)
        mine, created = jobs.create(spec(), request_id="req", owner="alice")
        assert created and mine.owner == "alice"
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 3
    indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "jobs_request_id" not in indexes and "jobs_owner_request_id" in indexes
    db.close()
    # Opened again (another process, or a restart): nothing migrates twice.
    with JobStore(db_path) as a, JobStore(db_path) as b:
        assert a.get(job.id) == b.get(job.id) == job
        assert (
            a.objects_of(job.id)
            == b.objects_of(job.id)
            == {
                "s3://tire/sha256/ab/asset.ply",
                "s3://tire/sha256/01/views",
                "s3://tire/sha256/06/report.json",
            }
        )
        assert a.create(spec(), request_id="req", owner="alice") == (mine, False)
        assert a.delete(job.id) == 2
        assert a.released_before(time.time_ns() + 1) == [
            "s3://tire/sha256/01/views",
            "s3://tire/sha256/06/report.json",
        ]


def test_a_postgresql_database_from_a_newer_schema_is_refused_and_migrations_run_once(postgres_url):
    import psycopg

    with JobStore(postgres_url), JobStore(postgres_url):  # the second finds it migrated
        pass
    with psycopg.connect(postgres_url, autocommit=True) as db:
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == [(1,)]
        db.execute("INSERT INTO schema_migrations (version, applied_ns) VALUES (99, 0)")
    with pytest.raises(FailedPrecondition, match="schema version 99; this coordinator reads up to 1"):
        JobStore(postgres_url)


def test_replicas_starting_together_migrate_one_at_a_time(postgres_url):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: JobStore(postgres_url), range(4)))
    job, _ = stores[0].create(spec())
    assert all(s.get(job.id) == job for s in stores)
    for s in stores:
        s.close()


def test_a_database_url_of_another_scheme_is_refused_without_quoting_it():
    with pytest.raises(
        ConfigError, match="must start with sqlite: or postgresql://, got scheme 'mysql'"
    ) as err:
        JobStore("mysql://root:hunter2@db/tire")
    assert "hunter2" not in str(err.value)


def test_sqlite_urls_name_absolute_and_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with JobStore(f"sqlite://{tmp_path}/a.sqlite") as a, JobStore("sqlite:b.sqlite") as b:
        a.create(spec())
        b.create(spec())
    assert (tmp_path / "a.sqlite").exists() and (tmp_path / "b.sqlite").exists()
    with pytest.raises(ConfigError, match="no host"):
        JobStore("sqlite://host/a.sqlite")


def test_an_unreachable_postgresql_is_unavailable_not_a_crash():
    with pytest.raises(DatabaseUnavailable, match="did not answer"):
        PostgresDatabase(f"postgresql://tire@127.0.0.1:{free_port()}/tire", connect_timeout_s=1.0)


# ---- leases ----------------------------------------------------------------------------------------------


def test_claims_lease_each_job_once_oldest_first_owners_in_turn(store):
    ids = {}
    for name, owner in (("a1", "alice"), ("a2", "alice"), ("a3", "alice"), ("b1", "bob"), ("c1", "carol")):
        ids[name] = store.create(spec(len(ids)), owner=owner)[0].id
    names = {job_id: name for name, job_id in ids.items()}
    assert store.queue_position(ids["a1"]) == 0 and store.queue_position(ids["a3"]) == 4
    claimed = [store.claim("r1", lease_s=30) for _ in range(5)]
    assert [names[job_id] for job_id in claimed] == ["a1", "b1", "c1", "a2", "a3"]
    assert store.claim("r2", lease_s=30) is None  # every job is leased
    assert store.queue_position(ids["a3"]) is None
    assert store.lease_of(ids["b1"])[0] == "r1"
    assert store.renew("r1", lease_s=30) == set(claimed)


def test_an_expired_lease_is_claimed_by_another_replica_and_lost_to_the_first(store):
    job, _ = store.create(spec())
    assert store.claim("r1", lease_s=0.2) == job.id
    assert store.claim("r2", lease_s=30) is None
    time.sleep(0.3)
    assert store.claim("r2", lease_s=30) == job.id
    assert store.renew("r1", lease_s=30) == set()  # r1 must stop running it
    assert store.renew("r2", lease_s=30) == {job.id}
    store.hand_back(job.id, "r1")  # r1's late hand-back changes nothing
    assert store.lease_of(job.id)[0] == "r2"


def test_a_job_handed_back_to_wait_is_claimed_after_its_wait(store):
    job, _ = store.create(spec())
    store.claim("r1", lease_s=30)
    store.hand_back(job.id, "r1", run_after_s=0.3)
    assert store.lease_of(job.id) == ("", 0)
    assert store.claim("r1", lease_s=30) is None
    time.sleep(0.35)
    assert store.claim("r2", lease_s=30) == job.id


def test_cancel_makes_a_waiting_job_claimable_at_once(store):
    job, _ = store.create(spec())
    store.claim("r1", lease_s=30)
    store.set_state(job.id, RUNNING)
    store.hand_back(job.id, "r1", run_after_s=60)
    store.request_cancel(job.id)
    assert store.claim("r2", lease_s=30) == job.id


def test_finishing_ends_the_lease_and_hand_back_all_ends_the_rest(store):
    a, _ = store.create(spec(0))
    b, _ = store.create(spec(1))
    store.claim("r1", lease_s=30)
    store.claim("r1", lease_s=30)
    store.set_state(a.id, RUNNING)
    store.finish(a.id, SUCCEEDED)
    assert store.lease_of(a.id) == ("", 0)
    assert store.renew("r1", lease_s=30) == {b.id}
    assert store.hand_back_all("r1") == 1
    assert store.claim("r2", lease_s=30) == b.id


def test_replicas_claiming_side_by_side_never_share_a_job(location):
    with JobStore(location) as first:
        ids = {first.create(spec(i))[0].id for i in range(40)}
    stores = [JobStore(location) for _ in range(4)]
    try:

        def claim_all(k: int) -> list[str]:
            mine = []
            while (job_id := stores[k].claim(f"r{k}", lease_s=30)) is not None:
                mine.append(job_id)
            return mine

        with ThreadPoolExecutor(4) as pool:
            claimed = [job_id for mine in pool.map(claim_all, range(4)) for job_id in mine]
        assert sorted(claimed) == sorted(ids)
    finally:
        for s in stores:
            s.close()


def test_another_replicas_appends_and_submissions_are_heard(location):
    with JobStore(location) as watcher, JobStore(location) as writer:
        heard_events, heard_ready = [], threading.Event()
        watcher.on_events(heard_events.append)
        watcher.on_jobs_ready(heard_ready.set)
        job, _ = writer.create(spec())
        writer.append_event(job.id, started("render"))
        found = watcher.wait_events(job.id, after_sequence=0, timeout=10.0)
        assert [e.sequence for e in found] == [1]
        if watcher.database.kind == "postgresql":  # SQLite's other processes are polled, not heard
            assert heard_ready.wait(5.0)
            deadline = time.monotonic() + 5
            while job.id not in heard_events and time.monotonic() < deadline:
                time.sleep(0.01)
            assert job.id in heard_events


def test_claim_order_predicts_claims_with_busy_owners_last():
    waiting = [("a1", "alice"), ("a2", "alice"), ("b1", "bob"), ("c1", "carol"), ("b2", "bob")]
    assert claim_order(waiting, {}) == ["a1", "b1", "c1", "a2", "b2"]
    assert claim_order(waiting, {"alice": 2}) == ["b1", "c1", "b2", "a1", "a2"]
    assert claim_order([], {"alice": 1}) == []


def test_a_postgresql_restart_is_unavailable_meanwhile_and_nothing_is_lost():
    require_postgres()
    with LocalPostgres(durable=False) as server, JobStore(server.url) as jobs:
        job, _ = jobs.create(spec())
        jobs.append_event(job.id, started("render"))
        heard: list[str] = []
        jobs.on_events(heard.append)
        server.kill()  # a crash: every connection of the pool breaks
        start = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="try again") as err:
            jobs.get(job.id)
        assert time.monotonic() - start < 15 and "127.0.0.1" not in str(err.value)
        server.start()  # crash recovery; the same store goes on
        assert jobs.get(job.id) == job
        assert [e.sequence for e in jobs.events(job.id)] == [1]
        # The notifications come back too: another replica's append is heard again.
        with JobStore(server.url) as other:
            deadline = time.monotonic() + 15
            while job.id not in heard and time.monotonic() < deadline:
                other.append_event(job.id, started("fit_subject"))
                time.sleep(0.5)
        assert job.id in heard


def test_writes_of_a_replica_that_lost_the_lease_are_refused_and_change_nothing(store):
    job, _ = store.create(spec())
    assert store.claim("r1", lease_s=0.1) == job.id
    store.set_state(job.id, RUNNING, holder="r1")
    store.append_event(job.id, started("render"), holder="r1")
    time.sleep(0.15)
    assert store.claim("r2", lease_s=30) == job.id  # r1 was paused past its lease
    for write in (
        lambda: store.append_event(job.id, started("fit_subject"), holder="r1"),
        lambda: store.record_step(job.id, "render", common_pb2.ObjectRef(uri="s3://x/y"), 1.0, holder="r1"),
        lambda: store.set_progress(job.id, coordinator_pb2.JobProgress(steps_done=9), holder="r1"),
        lambda: store.finish(job.id, SUCCEEDED, holder="r1"),
    ):
        with pytest.raises(LeaseLost, match=f"job {job.id} is not leased to r1"):
            write()
    assert [e.sequence for e in store.events(job.id)] == [1]
    assert store.finished_steps(job.id) == [] and store.get(job.id).state == RUNNING
    store.append_event(job.id, started("fit_subject"), holder="r2")
    assert store.finish(job.id, SUCCEEDED, holder="r2")[1].sequence == 3
