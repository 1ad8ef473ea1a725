"""The one gRPC client factory: every channel is made here.

Service-to-service channels are plaintext unless given credentials: in the cluster, TLS (and peer
identity) is the service mesh's job, or mutual TLS set up by the deployment. Clients of the public API
(``services.client``) pass TLS and call credentials.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.common.errors import ConfigError, InvalidArgument, TireError

MiB = 1024 * 1024

# Client keepalive ping period. The server bootstrap (services.common.server) derives the smallest
# ping interval it accepts from this, so a client never draws a GOAWAY "too_many_pings".
KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000

_STATUS_TRAILER = "grpc-status-details-bin"  # where the rich error model travels

# gRPC rejects a retry policy with maxAttempts < 2 and silently caps it at 5.
_MAX_ATTEMPTS = 5


def service_config(retries: int, timeout_s: float | None) -> dict:
    """The channel's service config: round-robin over all resolved addresses, retry on UNAVAILABLE."""
    method: dict = {"name": [{}]}  # an empty name matches every method of every service
    if retries > 0:
        method["retryPolicy"] = {
            "maxAttempts": min(retries + 1, _MAX_ATTEMPTS),
            "initialBackoff": "0.1s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    if timeout_s is not None:
        method["timeout"] = f"{timeout_s:.3f}s"
    return {"loadBalancingConfig": [{"round_robin": {}}], "methodConfig": [method]}


def dial(
    target: str,
    *,
    max_message_bytes: int = 16 * MiB,
    retries: int = 4,
    timeout_s: float | None = None,
    credentials: grpc.ChannelCredentials | None = None,
    asynchronous: bool = False,
) -> grpc.Channel | grpc.aio.Channel:
    """Open a channel to ``target``: TLS with ``credentials``, else plaintext (encrypted by the mesh).

    Args:
        target: ``dns:///renderer:50051`` (every address the name resolves to is used, round-robin)
            or ``127.0.0.1:50051``.
        max_message_bytes: limit on each message sent and received; match the server's.
        retries: how many times a call failing with UNAVAILABLE is retried (exponential backoff from
            0.1 s to 2 s); at most 4, 0 disables. Only UNAVAILABLE is retried: the call did not run, or a
            service said retrying may help (``errors.StoreUnavailable``).
        timeout_s: default deadline for every call on the channel; a per-call ``timeout=`` overrides it.
        credentials: TLS (and call) credentials, e.g. ``grpc.ssl_channel_credentials(...)``.
        asynchronous: a ``grpc.aio`` channel (made inside the event loop that uses it).

    The channel connects lazily; use ``wait_ready`` to block until the server is reachable.
    """
    options = [
        ("grpc.service_config", json.dumps(service_config(retries, timeout_s))),
        # Without this, a service config published in DNS TXT records could replace ours.
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        # The default (2) stops keepalive pings on an idle connection after two, defeating them.
        ("grpc.http2.max_pings_without_data", 0),
    ]
    kind = grpc.aio if asynchronous else grpc
    if credentials is not None:
        return kind.secure_channel(target, credentials, options=options)
    return kind.insecure_channel(target, options=options)


def tls_credentials(ca_file: str = "", cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials:
    """Client TLS trusting the PEM CA certificates of ``ca_file`` ("": the system's roots) and, for a
    server that asks for one (mutual TLS), presenting ``cert_file`` and ``key_file``.

    Raises:
        ConfigError: a file cannot be read.
    """
    try:
        roots, cert, key = (
            Path(path).read_bytes() if path else None for path in (ca_file, cert_file, key_file)
        )
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS file {exc.filename}: {exc.strerror}.") from None
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key, certificate_chain=cert)


def wait_ready(channel: grpc.Channel, timeout_s: float, target: str = "the server") -> None:
    """Block until ``channel`` is connected.

    Raises:
        TimeoutError: it did not connect within ``timeout_s``.
    """
    future = grpc.channel_ready_future(channel)
    try:
        future.result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        future.cancel()  # stop watching the channel's connectivity
        raise TimeoutError(f"{target} not ready after {timeout_s} s") from None


def wait_serving(target: str, timeout_s: float, *, alive: Callable[[], bool] = lambda: True) -> bool:
    """Poll ``target``'s ``grpc.health.v1`` check until it says SERVING.

    Args:
        target: the server, as for ``dial``.
        timeout_s: how long to wait.
        alive: checked between polls; False (e.g. the server's process exited) ends the wait.

    Returns:
        True once SERVING; False when the time ran out or ``alive()`` turned False.
    """
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    channel = dial(target)
    health = health_pb2_grpc.HealthStub(channel)
    try:
        while True:
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return True
            except grpc.RpcError:
                pass
            if not alive() or time.monotonic() > deadline:
                return False
            time.sleep(0.25)
    finally:
        channel.close()


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call's ``google.rpc.Status`` trailer (the rich error model) says beside its code.

    Attributes:
        reason: ErrorInfo's reason ("INVALID_FIELD", "STORE_UNAVAILABLE"...; "" when the call had none).
        metadata: ErrorInfo's metadata.
        field_violations: BadRequest's ``(field, description)`` pairs.
        retry_after_s: RetryInfo's delay in seconds; None when the call carried no RetryInfo.
    """

    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: tuple[tuple[str, str], ...] = ()
    retry_after_s: float | None = None


def error_details(exc: BaseException) -> ErrorDetails:
    """The rich error details of a failed call: read from a ``grpc.RpcError``'s trailers, or from one of
    our own errors raised in process (as the server bootstrap would have sent them). Anything else, or a
    call without the trailer, gives empty details."""
    if isinstance(exc, TireError):
        fields = ((exc.field, str(exc)),) if isinstance(exc, InvalidArgument) else ()
        return ErrorDetails(exc.reason, dict(exc.metadata), fields, exc.retry_after_s)
    if isinstance(exc, grpc.aio.AioRpcError):  # not a grpc.Call: its trailer is read as it is
        trailer = dict(exc.trailing_metadata() or ()).get(_STATUS_TRAILER)
        return status_details(status_pb2.Status.FromString(trailer) if trailer else None)
    try:
        status = rpc_status.from_call(exc) if isinstance(exc, grpc.Call) else None
    except ValueError:  # a trailer that contradicts the call's own code or message
        status = None
    return status_details(status)


def status_details(status: status_pb2.Status | None) -> ErrorDetails:
    """What a ``google.rpc.Status``'s details say (empty details for None)."""
    details = ErrorDetails()
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            details = replace(details, reason=info.reason, metadata=dict(info.metadata))
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            pairs = tuple((v.field, v.description) for v in request.field_violations)
            details = replace(details, field_violations=details.field_violations + pairs)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            details = replace(details, retry_after_s=retry.retry_delay.ToTimedelta().total_seconds())
    return details
