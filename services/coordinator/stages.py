"""The coordinator's view of the five stage services: stubs, whether remote or in-process, and retries.

A ``Stages`` holds one stub per stage. In production each is a generated gRPC stub on a channel from
``services.common.clients.dial`` (``dial_stages``); in embedded mode each is an ``InProcessStub``
around the stage's own servicer (built by ``services.embedded``). Either way the pipeline calls
``stages.renderer.Render(request, timeout=...)``: one code path.

``stage_method`` finds the stage and method that take a request message: the pipeline sends a request
and records the response without naming either.

``call_with_retry`` retries a stage call on UNAVAILABLE and DEADLINE_EXCEEDED with exponential backoff
(a stage restarting, a replica going away); stage calls are idempotent (same inputs, same
content-addressed outputs), so a retry cannot duplicate work.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

import grpc
from google.protobuf import message_factory
from google.protobuf.message import Message

from services.common.clients import dial, error_details, tls_credentials
from services.common.errors import StepFailed, TireError
from services.common.registry import STAGES
from services.common.server import iterate

log = logging.getLogger(__name__)

RETRIED_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
R = TypeVar("R")


@dataclass(frozen=True)
class Stages:
    """One stub per stage service; each answers ``stub.Method(request, timeout=...)``."""

    renderer: Any
    tracker: Any
    inpainter: Any
    refiner: Any
    reconstructor: Any


class InProcessStub:
    """A servicer called like a generated stub: ``stub.Render(request, timeout=...)``.

    Errors are the servicer's own ``TireError``s (the server interceptor is not in the way), which
    ``call_with_retry`` and the pipeline treat like the status codes they map to.
    """

    def __init__(self, servicer: Any):
        self._servicer = servicer

    def __getattr__(self, method: str) -> Callable[..., Any]:
        handler = getattr(self._servicer, method)

        def call(request, timeout: float | None = None, metadata=None):
            answer = handler(request, None)
            # An async stream (a method served with grpc.aio) is read as a stub reads a stream.
            return iterate(answer) if inspect.isasyncgen(answer) else answer

        return call


def dial_stages(
    targets: Mapping[str, str],
    *,
    max_message_bytes: int = 16 * 2**20,
    credentials: grpc.ChannelCredentials | None = None,
) -> Stages:
    """gRPC stubs for every stage; ``targets`` maps each stage's name to ``host:port`` or
    ``dns:///name:port`` (round-robin over every address, for a scaled inpainter); with
    ``credentials`` (``stage_tls``), over TLS."""
    return Stages(
        **{
            stage.name: stage.stub(
                dial(targets[stage.name], max_message_bytes=max_message_bytes, credentials=credentials)
            )
            for stage in STAGES
        }
    )


def stage_tls(ca_file: str, cert_file: str = "", key_file: str = "") -> grpc.ChannelCredentials | None:
    """TLS to the stages (``clients.tls_credentials``); None (plaintext) without ``ca_file``.

    Raises:
        ConfigError: a file cannot be read.
    """
    return tls_credentials(ca_file, cert_file, key_file) if ca_file else None


@dataclass(frozen=True)
class StageMethod:
    """The RPC that takes a request type: ``getattr(getattr(stages, stage), name)(request)``."""

    stage: str  # a field of ``Stages``
    name: str  # the method, for example "Render"
    response_type: type[Message]
    streaming: bool  # the response is a stream


def stage_method(request: Message) -> StageMethod:
    """The stage method whose request type is ``request``'s (every request type has one)."""
    return _methods()[request.DESCRIPTOR.full_name]


@cache
def _methods() -> dict[str, StageMethod]:
    methods = {}
    for stage in STAGES:
        for service in stage.messages.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if method.input_type.full_name == "tire.v1.DescribeRequest":
                    continue  # every service answers Describe: it is asked of a stage by name
                methods[method.input_type.full_name] = StageMethod(
                    stage.name,
                    method.name,
                    message_factory.GetMessageClass(method.output_type),
                    method.server_streaming,
                )
    return methods


@dataclass(frozen=True)
class RetryPolicy:
    """How stage calls are retried: ``attempts`` in all, sleeping ``initial_backoff_s`` x
    ``multiplier``^k (at most ``max_backoff_s``) between them; ``timeout_s`` is each call's deadline.
    A job whose step still fails that way waits ``initial_wait_s``, doubling to ``max_wait_s``, before
    it runs again (``JobRunner.run``)."""

    attempts: int = 6
    initial_backoff_s: float = 0.5
    max_backoff_s: float = 15.0
    multiplier: float = 2.0
    timeout_s: float = 900.0
    initial_wait_s: float = 1.0
    max_wait_s: float = 60.0


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The gRPC status of a failed stage call, remote (``grpc.RpcError``) or in-process (``TireError``).

    A replica at its concurrency limit (``ServerSettings.max_concurrent_rpcs``) refuses a call with
    RESOURCE_EXHAUSTED from gRPC itself, without the rich status every error of ours carries: that is
    UNAVAILABLE here, retried (on the next replica, round_robin) and waited for like one.
    """
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and not _has_rich_status(exc):
            return grpc.StatusCode.UNAVAILABLE
        return exc.code()
    if isinstance(exc, TireError):
        return exc.grpc_code
    return None


def _has_rich_status(exc: grpc.RpcError) -> bool:
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return any(key == "grpc-status-details-bin" for key, _ in trailers or ())


def status_details(exc: BaseException) -> str:
    """The error's sentence, without the gRPC wrapping."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "details"):
        return exc.details() or ""
    return str(exc)


def step_failed(step: str, exc: BaseException) -> StepFailed:
    """A failed stage call (``grpc.RpcError``) or an error of ours, raised by the work of ``step``, as a
    StepFailed: "<step>: <CODE>: <sentence>", with the error's reason and field violations."""
    code = status_code(exc)
    details = error_details(exc)
    return StepFailed(
        f"{step}: {code.name if code else 'error'}: {status_details(exc)}",
        code,
        cause=details.reason,
        field_violations=details.field_violations,
    )


def call_with_retry(
    call: Callable[[], R],
    policy: RetryPolicy,
    *,
    what: str,
    should_stop: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> R:
    """Run ``call()``; on UNAVAILABLE or DEADLINE_EXCEEDED, back off and try again.

    Args:
        call: makes one stage call (it receives no arguments; bind the request and timeout in it).
        policy: attempts and backoff.
        what: names the call in logs, for example "ring2/inpaint/60".
        should_stop: checked before each retry; when true, the last error is raised at once (a
            cancelled job stops retrying).
        sleep: the backoff sleep (tests pass a fake).

    Raises:
        Whatever the last attempt raised, when it is not retried or the attempts are spent.
    """
    backoff = policy.initial_backoff_s
    for attempt in range(1, policy.attempts + 1):
        try:
            return call()
        except (grpc.RpcError, TireError) as exc:
            code = status_code(exc)
            if code not in RETRIED_CODES or attempt == policy.attempts or should_stop():
                raise
            log.warning(
                "%s failed with %s (attempt %d of %d), retrying in %.1f s: %s",
                what,
                code.name,
                attempt,
                policy.attempts,
                backoff,
                status_details(exc),
                extra={"step": what, "code": code.name, "attempt": attempt},
            )
            sleep(backoff)
            backoff = min(backoff * policy.multiplier, policy.max_backoff_s)
    raise AssertionError("unreachable")  # the loop returns or raises
