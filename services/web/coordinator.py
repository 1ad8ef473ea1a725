"""The console's one way to the coordinator: its public gRPC API, as the signed-in person.

Every call carries that person's bearer token (``authorization`` metadata), so the coordinator decides
what they may see and do, exactly as for any other client; the console holds no credentials of its own.
One ``grpc.aio`` channel serves every session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tire.v1 import coordinator_pb2, coordinator_pb2_grpc

from services.client import Credentials, uses_plaintext
from services.common.clients import dial, error_details, tls_credentials
from services.web.settings import WebSettings

CALL_TIMEOUT_S = 30.0
MAX_MESSAGE_BYTES = 64 * 2**20  # a job with many rings and time steps lists many references

# The HTTP status a console request answers for each canonical gRPC code of the call behind it.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


@dataclass(frozen=True)
class ApiError(Exception):
    """A failed call, in the API's structured form: what the page shows.

    Attributes:
        code: the canonical gRPC code's name ("INVALID_ARGUMENT").
        message: the coordinator's sentence.
        reason: its ErrorInfo reason ("INVALID_FIELD"; "" when none).
        fields: BadRequest's ``(field, description)`` pairs.
    """

    code: str
    message: str
    reason: str = ""
    fields: tuple[tuple[str, str], ...] = ()

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 502)

    def as_json(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "reason": self.reason,
            "fields": [{"field": field, "description": text} for field, text in self.fields],
        }

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> ApiError:
        details = error_details(exc)
        return cls(exc.code().name, exc.details() or "", details.reason, details.field_violations)


class Coordinator:
    """The coordinator's API for the console; ``open`` inside the event loop that uses it."""

    def __init__(self, settings: WebSettings):
        self.target = settings.coordinator
        self._credentials = Credentials(
            ca_file=settings.coordinator_ca_file, plaintext=settings.coordinator_plaintext or None
        )
        self._channel: grpc.aio.Channel | None = None

    async def open(self) -> None:
        tls = None
        if not uses_plaintext(self.target, self._credentials):
            tls = tls_credentials(self._credentials.ca_file)
        self._channel = dial(
            self.target, max_message_bytes=MAX_MESSAGE_BYTES, credentials=tls, asynchronous=True
        )
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def call(self, method: str, request, token: str, timeout_s: float = CALL_TIMEOUT_S):
        """``method`` (a unary RPC's name: "ListJobs") with ``token``'s identity.

        Raises:
            ApiError: the call failed; its code, sentence and details.
        """
        rpc = getattr(self._stub, method)
        try:
            return await rpc(request, timeout=timeout_s, metadata=_bearer(token))
        except grpc.aio.AioRpcError as exc:
            raise ApiError.from_rpc(exc) from None

    async def watch(
        self, job_id: str, token: str, after_sequence: int = 0
    ) -> AsyncIterator[coordinator_pb2.JobEvent]:
        """The job's events after ``after_sequence``, until it ends (``WatchJob``; events only).

        Raises:
            ApiError: the stream failed (UNAVAILABLE when the coordinator went away: resume from the last
                sequence seen).
        """
        request = coordinator_pb2.WatchJobRequest(job_id=job_id, after_sequence=after_sequence)
        stream = self._stub.WatchJob(request, metadata=_bearer(token))
        try:
            async for response in stream:
                if response.HasField("event"):
                    yield response.event
        except grpc.aio.AioRpcError as exc:
            raise ApiError.from_rpc(exc) from None
        finally:
            stream.cancel()

    async def serving(self, timeout_s: float = 2.0) -> bool:
        """Whether the coordinator answers its health check with SERVING."""
        try:
            answer = await self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
