"""Signed webhook notifications of a job's state changes (``JobSpec.webhook``).

    dispatcher = WebhookDispatcher(jobs, secret, allow_private=False)
    jobs.on_state_change(dispatcher.notify)      # every state change of every job, after its commit

Each state change of a job with a webhook becomes one notification: a JSON body
``{"type": "job.succeeded", "timestamp": ..., "data": {"job_id", "state", "labels", "error", "outputs"}}``
(outputs as ``JobOutputs`` in JSON, every file with its sha256), posted with the Standard Webhooks
headers (``webhook-id``: ``{job_id}.{state}``, the same on every attempt; ``webhook-timestamp``;
``webhook-signature``: ``v1,`` and the base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the
coordinator's secret, computed by the ``standardwebhooks`` library). An answer other than 2xx, or none,
is retried after 2, 4, 8 ... seconds (``backoff_s`` doubling, at most 5 minutes) until ``attempts`` is
reached; each attempt is appended to the job's events as a ``WebhookDelivery``. A job's notifications
go out in order (RUNNING is delivered or given up before SUCCEEDED is tried); different jobs' go out in
parallel (``max_workers``).

Destinations (``check_url``, then ``resolve_destination`` at SubmitJob and again before every attempt):
https only, no user or password in the URL, and a host that resolves to public addresses only; the
connection goes to the address that was checked (the name is not resolved a second time), and
redirects are not followed. ``allow_private`` (an operator setting, for development and tests) also
allows http, and loopback, private and link-local addresses.

Not kept across a restart: notifications still waiting for a retry when the coordinator stops are not
sent by the next one (their attempts so far are in the job's events).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import ipaddress
import json
import logging
import queue
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from google.protobuf import json_format
from standardwebhooks import Webhook
from tire.v1 import coordinator_pb2

from services.common.errors import InvalidArgument
from services.common.validation import require
from services.coordinator.jobstore import JobStore

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
MAX_BACKOFF_S = 300.0
NOTIFIED_STATES = {
    coordinator_pb2.JOB_STATE_QUEUED: "job.queued",
    coordinator_pb2.JOB_STATE_RUNNING: "job.running",
    coordinator_pb2.JOB_STATE_SUCCEEDED: "job.succeeded",
    coordinator_pb2.JOB_STATE_FAILED: "job.failed",
    coordinator_pb2.JOB_STATE_CANCELLED: "job.cancelled",
}


def check_url(url: str, field: str, *, allow_private: bool) -> None:
    """What can be told of a webhook URL without the network: scheme, host, port, no credentials.

    Raises:
        InvalidArgument: naming ``field``.
    """
    require(len(url) <= MAX_URL_CHARS, field, f"{len(url)} characters", f"must be at most {MAX_URL_CHARS}")
    # The URL itself is never quoted back: it may hold credentials or tokens in its path or query.
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidArgument(field, "(not shown)", "must be a URL") from None
    schemes = ("https", "http") if allow_private else ("https",)
    require(parts.scheme in schemes, field, parts.scheme, f"must be a URL with scheme {' or '.join(schemes)}")
    require(bool(parts.hostname), field, "(not shown)", "must name a host")
    # The URL is kept in the job's spec, which GetJob returns: credentials would be echoed.
    no_credentials = parts.username is None and parts.password is None
    require(no_credentials, field, "(not shown)", "must not hold a user or password")
    require(port is None or 0 < port < 65536, field, port, "must have a port in 1..65535")


def resolve_destination(url: str, field: str, *, allow_private: bool) -> str:
    """The address to connect to for ``url``: its host's first address, every one of them checked.

    Raises:
        InvalidArgument: the host does not resolve, or resolves to an address that is not public
            (loopback, private, link-local, multicast, reserved, unspecified) and ``allow_private`` is
            not set.
    """
    check_url(url, field, allow_private=allow_private)
    parts = urlsplit(url)
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 443, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise InvalidArgument(field, parts.hostname, f"must name a host that resolves ({exc})") from None
    addresses = [info[4][0] for info in infos]
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        require(
            allow_private or (ip.is_global and not ip.is_multicast),
            field,
            parts.hostname,
            f"must resolve to public addresses only; it resolves to {ip}, which is not",
        )
    return addresses[0]


def webhook_secret_is_valid(secret: str) -> bool:
    """``whsec_`` and the base64 of 24 to 64 bytes, as Standard Webhooks secrets are."""
    try:
        key = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except (ValueError, binascii.Error):
        return False
    return 24 <= len(key) <= 64


def notification(job: coordinator_pb2.Job) -> tuple[str, str, bytes]:
    """(type, webhook-id, body) of the notification of ``job``'s current state."""
    kind = NOTIFIED_STATES[job.state]
    data = {
        "job_id": job.id,
        "state": coordinator_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_"),
        "labels": dict(job.spec.labels),
        "error": job.error,
        "outputs": json_format.MessageToDict(job.outputs, preserving_proto_field_name=True),
    }
    body = {"type": kind, "timestamp": datetime.now(UTC).isoformat(), "data": data}
    return kind, f"{job.id}.{kind.removeprefix('job.')}", json.dumps(body, sort_keys=True).encode()


@dataclass(frozen=True)
class _Pending:
    job_id: str
    url: str
    kind: str
    webhook_id: str
    body: bytes


class WebhookDispatcher:
    """Posts each state change of jobs that name a webhook, and records every attempt.

    Args:
        append_event: ``JobStore.append_event``, where each attempt's ``WebhookDelivery`` goes.
        secret: the Standard Webhooks secret (``whsec_`` and base64, or the raw bytes).
        allow_private: allow http and non-public destinations (development, tests).
        attempts: tries per notification.
        backoff_s: wait before the second try; it doubles for each later one, up to 5 minutes.
        timeout_s: seconds each try may take.
        max_workers: jobs whose notifications go out at the same time.
    """

    def __init__(
        self,
        append_event: Callable[[str, coordinator_pb2.JobEvent], object],
        secret: str | bytes,
        *,
        allow_private: bool = False,
        attempts: int = 8,
        backoff_s: float = 2.0,
        timeout_s: float = 10.0,
        max_workers: int = 4,
    ):
        self._append_event = append_event
        self._signer = Webhook(secret)
        self.allow_private = allow_private
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self._ready: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # jobs with notifications to send
        self._lock = threading.Lock()
        self._queues: dict[str, deque[_Pending]] = {}  # per job, while a worker drains it
        self._idle = threading.Condition(self._lock)
        self._closed = threading.Event()
        # Daemon threads: a retry that waits minutes must not hold up the coordinator's exit.
        self._workers = [
            threading.Thread(target=self._work, name=f"webhook-{i}", daemon=True) for i in range(max_workers)
        ]
        for worker in self._workers:
            worker.start()

    def notify(self, job: coordinator_pb2.Job) -> None:
        """Queue the notification of ``job``'s new state (a JobStore state listener)."""
        if not job.spec.webhook.url or job.state not in NOTIFIED_STATES or self._closed.is_set():
            return
        kind, webhook_id, body = notification(job)
        pending = _Pending(job.id, job.spec.webhook.url, kind, webhook_id, body)
        with self._lock:
            queue = self._queues.get(job.id)
            if queue is not None:
                queue.append(pending)  # its worker sends it after the earlier ones
                return
            self._queues[job.id] = deque([pending])
        self._ready.put(job.id)

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing is queued or being sent (for tests and shutdown)."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._queues:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self) -> None:
        """Stop: queued notifications are dropped, a retry that waits ends (the next coordinator sends
        the final ones that were owed: ``resume_deliveries``). A post in flight is waited for, up to its
        timeout, so that its attempt is recorded with when it would have been retried."""
        self._closed.set()
        for _ in self._workers:
            self._ready.put(None)
        deadline = time.monotonic() + self.timeout_s + 1.0
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (job_id := self._ready.get()) is not None:
            self._drain(job_id)

    def _drain(self, job_id: str) -> None:
        while True:
            with self._lock:
                queue = self._queues[job_id]
                if not queue or self._closed.is_set():
                    del self._queues[job_id]
                    self._idle.notify_all()
                    return
                pending = queue[0]
            try:
                self._deliver(pending)
            except Exception:  # a bug here must not stop the job's later notifications
                log.exception("webhook delivery of %s failed unexpectedly", pending.webhook_id)
            with self._lock:
                queue.popleft()

    def _deliver(self, pending: _Pending) -> None:
        for attempt in range(1, self.attempts + 1):
            status, error = self._post(pending)
            delivered = 200 <= status < 300
            concluded = delivered or attempt == self.attempts
            # An attempt cut short by close() still says when it would have been retried: a coordinator
            # that starts again sends what is unconcluded (``resume_deliveries``).
            wait = 0.0 if concluded else min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1))
            event = coordinator_pb2.JobEvent(
                webhook=coordinator_pb2.WebhookDelivery(
                    type=pending.kind,
                    webhook_id=pending.webhook_id,
                    attempt=attempt,
                    status_code=status,
                    error="" if delivered else error,
                    delivered=delivered,
                    retry_in_s=wait,
                )
            )
            self._append_event(pending.job_id, event)
            if concluded or self._closed.wait(wait):
                return

    @property
    def retry_window_s(self) -> float:
        """The longest a notification can take, from its first attempt to its last."""
        waits = sum(min(MAX_BACKOFF_S, self.backoff_s * 2**i) for i in range(self.attempts - 1))
        return waits + self.attempts * self.timeout_s

    def _post(self, pending: _Pending) -> tuple[int, str]:
        """One try: (HTTP status or 0, why it failed)."""
        try:
            address = resolve_destination(pending.url, "spec.webhook.url", allow_private=self.allow_private)
        except InvalidArgument as exc:
            return 0, str(exc)
        timestamp = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": "tire-coordinator",
            "webhook-id": pending.webhook_id,
            "webhook-timestamp": str(int(timestamp.timestamp())),
            "webhook-signature": self._signer.sign(pending.webhook_id, timestamp, pending.body),
        }
        parts = urlsplit(pending.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pinned = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
        connection = pinned(parts.hostname, parts.port, address, self.timeout_s)
        try:
            connection.request("POST", target, body=pending.body, headers=headers)
            response = connection.getresponse()
            response.read(64 * 1024)  # a receiver's body is not used; read a little to end cleanly
            status = response.status
        except (OSError, http.client.HTTPException) as exc:
            return 0, f"no answer from the receiver: {type(exc).__name__}"
        finally:
            connection.close()
        return status, "" if 200 <= status < 300 else f"the receiver answered HTTP {status}"


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """HTTP to ``address`` for ``host``: the name is not resolved again (the address was checked)."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to ``address`` for ``host``: TLS sends the host's name and checks its certificate."""

    def __init__(self, host: str, port: int | None, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._address = address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def resume_deliveries(dispatcher: WebhookDispatcher, jobs: JobStore, now_ns: int | None = None) -> list[str]:
    """Queue again the final notification of each job that ended within the dispatcher's retry window
    and whose delivery a stopped coordinator left unconcluded (neither delivered nor given up): at
    least once, across restarts, for the state a receiver waits for. Its webhook-id is the one the
    receiver may have seen, so that it can drop a repeat.

    Args:
        dispatcher: where the notifications go.
        jobs: the jobs and their events.
        now_ns: Unix ns (default: now).

    Returns:
        The ids of the jobs whose notification was queued again.
    """
    now_ns = time.time_ns() if now_ns is None else now_ns
    resumed = []
    for job_id in jobs.finished_since(now_ns - int(dispatcher.retry_window_s * 1e9)):
        job = jobs.get(job_id)
        if not job.spec.webhook.url:
            continue
        kind, concluded, after = NOTIFIED_STATES[job.state], False, 0
        while page := jobs.events(job_id, after):
            after = page[-1].sequence
            concluded = concluded or any(
                event.webhook.type == kind and event.webhook.retry_in_s == 0.0
                for event in page
                if event.HasField("webhook")
            )
        if not concluded:
            dispatcher.notify(job)
            resumed.append(job_id)
    return resumed
