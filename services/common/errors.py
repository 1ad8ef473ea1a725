"""The project's exception tree, and the one place that maps it to gRPC status codes.

    TireError                      any error this project raises on purpose
    ├── InvalidArgument            a request field is wrong       INVALID_ARGUMENT
    │   └── AssetError             a .ply (or 4D list) is malformed INVALID_ARGUMENT
    ├── NotFound                   something named does not exist NOT_FOUND
    │   └── ObjectNotFound         no such object in the store     NOT_FOUND
    ├── FailedPrecondition         not ready: model not loaded...  FAILED_PRECONDITION
    │   ├── StoreAuthError         the store rejected our keys     FAILED_PRECONDITION
    │   └── ConfigError            a setting is wrong: no start    FAILED_PRECONDITION
    ├── ResourceExhausted          a limit or a queue is full      RESOURCE_EXHAUSTED
    │   └── ObjectTooLarge         an object is over its size cap  RESOURCE_EXHAUSTED
    ├── IntegrityError             bytes do not match their sha256 DATA_LOSS
    ├── Unavailable                a server cannot be reached      UNAVAILABLE
    │   └── StoreUnavailable       the store cannot be reached     UNAVAILABLE
    ├── JobCancelled               CancelJob stopped a job         CANCELLED
    ├── CallerGone                 a streaming caller went away    CANCELLED
    └── StepFailed                 a job's step failed for good    the stage's code

A stage's own errors subclass these in its contract module (the inpainter's ``InvalidSubject``).

Lower-level exceptions (minio, OSError, numpy) are converted to the most specific class here with
``raise ... from exc``, so a servicer only ever sees this tree. ``grpc_code`` is read by the server
bootstrap (``services.common.server``) to abort a call with the right status.
"""

from __future__ import annotations

from typing import Any

import grpc


class TireError(Exception):
    """Base class. ``str(err)`` is a sentence meant for the caller."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(TireError):
    """A request field has a bad value.

    The message names the field and quotes the value: "`width` must be between 8 and 4096, got 0."
    """

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, value: Any, problem: str):
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"`{field}` {problem}, got {_quote(value)}.")


class AssetError(TireError):
    """A 3DGS file is malformed: bad header, missing properties, truncated data, NaN/inf, absurd counts."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TireError):
    grpc_code = grpc.StatusCode.NOT_FOUND


class ObjectNotFound(NotFound):
    """The store has no object at the given URI."""


class Unauthenticated(TireError):
    """The call carries no credential, or one this service does not accept."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TireError):
    """The caller is known but may not touch what the request names (another bucket, another's object)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED


class FailedPrecondition(TireError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class StoreAuthError(FailedPrecondition):
    """The object store rejected this service's credentials (a deployment problem, not the caller's)."""


class ConfigError(FailedPrecondition, ValueError):
    """A setting is missing, cannot be parsed or is out of range: the service must not start.

    Raised at start-up (``services.common.config``, backend construction); a ``ValueError`` too, as a
    bad value is.
    """


class Unimplemented(TireError):
    """This service's backend cannot do what the request asks (another backend can)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class ResourceExhausted(TireError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ObjectTooLarge(ResourceExhausted):
    """An object is larger than the limit set for reading or writing it."""


class IntegrityError(TireError):
    """Bytes read back do not hash to the sha256 they were referenced by."""

    grpc_code = grpc.StatusCode.DATA_LOSS


class Unavailable(TireError):
    """A server this service needs (the object store, Triton) could not be reached; retrying may help."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class StoreUnavailable(Unavailable):
    """The object store could not be reached; retrying may help."""


class JobCancelled(TireError):
    """CancelJob was called: the job stops before its next step."""

    grpc_code = grpc.StatusCode.CANCELLED


class CallerGone(TireError):
    """The caller of a streaming call went away: the work it asked for stops."""

    grpc_code = grpc.StatusCode.CANCELLED


class StepFailed(TireError):
    """A job's step failed for good (retries spent, or an error no retry helps).

    ``str(err)`` names the step, the stage's status and its reason: "ring1/inpaint/45: INVALID_ARGUMENT:
    ...". ``grpc_code`` is the stage's status (UNKNOWN when the step failed without one).
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.grpc_code = code or grpc.StatusCode.UNKNOWN


def _quote(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
