"""Webhooks: every state change reaches a receiver on loopback, signed as Standard Webhooks says;
failures are retried and recorded; destinations that are not public are refused."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from tire.v1 import common_pb2, coordinator_pb2

from services.common.errors import ConfigError, FailedPrecondition, InvalidArgument
from services.common.store import MemoryStore
from services.coordinator.admission import SubmissionRate
from services.coordinator.framing_check import frame_job
from services.coordinator.jobstore import JobStore
from services.coordinator.pipeline import JobRunner
from services.coordinator.server import CoordinatorSettings
from services.coordinator.spec import resolve_spec
from services.coordinator.stages import InProcessStub, RetryPolicy, Stages
from services.coordinator.webhooks import WebhookDispatcher, check_url, resolve_destination, resume_deliveries
from services.embedded import embedded_servicers
from services.testing.webhooks import WebhookReceiver

ROOT = Path(__file__).parents[3]
MONKEY, FRONT = ROOT / "samples" / "monkey_lgm.ply", ROOT / "samples" / "monkey_front.png"
SECRET = "whsec_" + base64.b64encode(b"a test secret of 32 bytes, long!").decode()


@pytest.fixture
def receiver():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def run_job(
    receiver_url: str, backoff_s: float = 0.01
) -> tuple[JobStore, WebhookDispatcher, coordinator_pb2.Job]:
    store = MemoryStore()
    jobs = JobStore(":memory:")
    dispatcher = WebhookDispatcher(
        jobs.append_event, SECRET, allow_private=True, backoff_s=backoff_s, attempts=3
    )
    jobs.on_state_change(dispatcher.notify)
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(MONKEY.read_bytes(), suffix=".ply")]),
        references=[store.put_bytes(FRONT.read_bytes(), suffix=".png")],
        resolution=64,
        orbit_step_deg=90,
        labels={"customer": "c-17"},
        webhook=coordinator_pb2.Webhook(url=receiver_url),
    )
    job, _ = jobs.create(frame_job(resolve_spec(spec), store))
    stubs = {name: InProcessStub(s) for name, s in embedded_servicers(store, "cpu").items()}
    job = JobRunner(jobs, Stages(**stubs), store, RetryPolicy(attempts=2, initial_backoff_s=0.0)).run(job.id)
    assert dispatcher.wait_idle(30.0)
    return jobs, dispatcher, jobs.get(job.id)


def test_every_state_change_arrives_signed_with_the_outputs(receiver):
    jobs, dispatcher, job = run_job(receiver.url)
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED
    verifier = Webhook(SECRET)
    payloads = [verifier.verify(body, headers) for headers, body in receiver.posts]
    assert [p["type"] for p in payloads] == ["job.queued", "job.running", "job.succeeded"]
    assert [h["webhook-id"] for h, _ in receiver.posts] == [
        f"{job.id}.{s}" for s in ("queued", "running", "succeeded")
    ]
    final = payloads[-1]["data"]
    assert (
        final["job_id"] == job.id
        and final["state"] == "SUCCEEDED"
        and final["labels"] == {"customer": "c-17"}
    )
    repaired = final["outputs"]["repaired_formats"][0]
    assert (
        repaired["format"] == "ply"
        and repaired["asset"]["frames"][0]["sha256"] == job.outputs.repaired.frames[0].sha256
    )
    # Each attempt is in the job's history, the final state's after JobFinished.
    events = jobs.events(job.id, limit=10_000)
    deliveries = [e.webhook for e in events if e.HasField("webhook")]
    assert [(d.type, d.attempt, d.delivered, d.status_code) for d in deliveries] == [
        ("job.queued", 1, True, 204),
        ("job.running", 1, True, 204),
        ("job.succeeded", 1, True, 204),
    ]
    finished = next(e.sequence for e in events if e.HasField("finished"))
    assert events[-1].HasField("webhook") and events[-1].sequence > finished
    dispatcher.close()


def test_a_forged_or_altered_notification_fails_verification(receiver):
    run_job(receiver.url)[1].close()
    headers, body = receiver.posts[-1]
    verifier = Webhook(SECRET)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body.replace(b"SUCCEEDED", b"FAILED"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + base64.b64encode(b"another secret entirely, 32 b..").decode()).verify(
            body, headers
        )
    with pytest.raises(WebhookVerificationError):
        verifier.verify(body, {**headers, "webhook-id": "job-other.succeeded"})


def test_failed_attempts_are_retried_with_backoff_and_recorded():
    receiver = WebhookReceiver(statuses=[500, 503])  # the first notification fails twice, then arrives
    try:
        jobs, dispatcher, job = run_job(receiver.url)
    finally:
        receiver.close()
    dispatcher.close()
    deliveries = [e.webhook for e in jobs.events(job.id, limit=10_000) if e.HasField("webhook")]
    first = [d for d in deliveries if d.type == "job.queued"]
    assert [(d.attempt, d.status_code, d.delivered) for d in first] == [
        (1, 500, False),
        (2, 503, False),
        (3, 204, True),
    ]
    assert first[0].retry_in_s == pytest.approx(0.01) and first[1].retry_in_s == pytest.approx(0.02)
    assert first[0].error == "the receiver answered HTTP 500" and first[2].error == ""
    # The job's later notifications came after the first was delivered, in order.
    assert [d.type for d in deliveries if d.delivered] == ["job.queued", "job.running", "job.succeeded"]


def test_a_receiver_that_never_answers_is_given_up_after_the_attempts():
    jobs, dispatcher, job = run_job("http://127.0.0.1:9/nothing-listens-here")  # the discard port
    dispatcher.close()
    deliveries = [e.webhook for e in jobs.events(job.id, limit=10_000) if e.HasField("webhook")]
    assert job.state == coordinator_pb2.JOB_STATE_SUCCEEDED  # the job does not wait for its webhook
    assert len(deliveries) == 9 and not any(d.delivered for d in deliveries)
    assert {d.error for d in deliveries} == {"no answer from the receiver: ConnectionRefusedError"}
    assert [d.retry_in_s for d in deliveries[:3]] == [pytest.approx(0.01), pytest.approx(0.02), 0.0]


def test_a_final_notification_left_unconcluded_is_sent_by_the_next_coordinator():
    """A coordinator stops while a notification waits to be retried: the job's final one never went out.
    The next coordinator, on the same job store, sends it with the same webhook-id, once."""
    receiver = WebhookReceiver(statuses=[500])  # the first post fails; its retry would wait a minute
    jobs = JobStore(":memory:")
    try:
        first = WebhookDispatcher(jobs.append_event, SECRET, allow_private=True, backoff_s=60.0, attempts=3)
        jobs.on_state_change(first.notify)
        spec = coordinator_pb2.JobSpec(webhook=coordinator_pb2.Webhook(url=receiver.url))
        job, _ = jobs.create(spec)
        jobs.set_state(job.id, coordinator_pb2.JOB_STATE_RUNNING)
        jobs.finish(job.id, coordinator_pb2.JOB_STATE_SUCCEEDED)
        assert receiver.wait_for(1, 10.0)
        first.close()  # the coordinator stops
        (attempt,) = [e.webhook for e in jobs.events(job.id) if e.HasField("webhook")]
        assert (attempt.type, attempt.retry_in_s) == ("job.queued", 60.0)

        then = WebhookDispatcher(jobs.append_event, SECRET, allow_private=True, backoff_s=0.01, attempts=3)
        assert resume_deliveries(then, jobs) == [job.id]
        assert then.wait_idle(10.0)
        headers, _ = receiver.posts[-1]
        assert headers["webhook-id"] == f"{job.id}.succeeded"
        assert resume_deliveries(then, jobs) == []  # delivered: nothing is owed
        later = time.time_ns() + int(then.retry_window_s * 1e9) + 1
        assert resume_deliveries(then, jobs, now_ns=later) == []  # past the window: given up
        then.close()
    finally:
        receiver.close()
    assert len(receiver.posts) == 2


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/hook", "scheme https"),
        ("https://127.0.0.1/hook", "127.0.0.1, which is not"),
        ("https://localhost/hook", "which is not"),
        ("https://[::1]/hook", "::1, which is not"),
        ("https://10.1.2.3/hook", "10.1.2.3, which is not"),
        ("https://192.168.0.4/hook", "which is not"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254, which is not"),
        ("https://0.0.0.0/hook", "which is not"),
        ("https://224.0.0.1/hook", "which is not"),
        ("https://user:pa55@example.com/hook", "user or password"),
        ("ftp://example.com/hook", "scheme https"),
        ("https:///hook", "name a host"),
        ("https://example.com:99999/hook", "must be a URL"),
        ("https://example.com/" + "a" * 2100, "at most 2048"),
    ],
)
def test_destinations_that_are_not_public_are_refused(url: str, problem: str):
    with pytest.raises(InvalidArgument, match=problem) as info:
        resolve_destination(url, "spec.webhook.url", allow_private=False)
    assert info.value.field == "spec.webhook.url"
    assert "pa55" not in str(info.value) and "meta-data" not in str(info.value)


def test_private_destinations_and_http_are_allowed_when_the_operator_says_so():
    assert resolve_destination("http://127.0.0.1:8080/hook", "f", allow_private=True) == "127.0.0.1"
    check_url("https://hooks.example.com/tire", "f", allow_private=False)  # syntax only, no DNS


def test_settings_check_the_secret_without_quoting_it():
    with pytest.raises(ConfigError) as info:
        CoordinatorSettings(webhook_secret="whsec_not base64 at all!!")
    assert "not base64 at all" not in str(info.value)
    CoordinatorSettings(webhook_secret=SECRET)


def test_submit_refuses_a_webhook_without_a_secret_or_to_a_private_address(tmp_path):
    from services.coordinator.server import CoordinatorServicer

    servicer = CoordinatorServicer.__new__(CoordinatorServicer)  # only SubmitJob's first checks run
    servicer.webhooks = None
    servicer.submissions = SubmissionRate(per_second=10.0, burst=10)
    store = MemoryStore()
    spec = coordinator_pb2.JobSpec(
        asset=common_pb2.AssetRef(frames=[store.put_bytes(b"ply", suffix=".ply")]),
        references=[store.put_bytes(b"png", suffix=".png")],
        webhook=coordinator_pb2.Webhook(url="https://hooks.example.com/tire"),
    )

    class Tokens:
        def identify(self, context):
            return type("Caller", (), {"principal": "alice"})()

    servicer.tokens = Tokens()
    request = coordinator_pb2.SubmitJobRequest(spec=spec)
    with pytest.raises(FailedPrecondition, match="no webhook secret"):
        servicer.SubmitJob(request, None)
    servicer.webhooks = WebhookDispatcher(lambda *a: None, SECRET)
    request.spec.webhook.url = "https://127.0.0.1/hook"
    with pytest.raises(InvalidArgument, match=r"spec\.webhook\.url"):
        servicer.SubmitJob(request, None)
    servicer.webhooks.close()
