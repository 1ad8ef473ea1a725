"""The project's exception tree, and the one place that maps it to gRPC status codes and error reasons.

    TireError                      any error raised on purpose     code                 reason
    ├── InvalidArgument            a request field is wrong        INVALID_ARGUMENT     INVALID_FIELD
    │   └── AssetError             a .ply or 4D list is malformed  INVALID_ARGUMENT     INVALID_ASSET
    ├── NotFound                   something named does not exist  NOT_FOUND            NOT_FOUND
    │   └── ObjectNotFound         no such object in the store     NOT_FOUND            OBJECT_NOT_FOUND
    ├── Unauthenticated            no credential, or a bad one     UNAUTHENTICATED      UNAUTHENTICATED
    ├── PermissionDenied           not the caller's to touch       PERMISSION_DENIED    PERMISSION_DENIED
    ├── FailedPrecondition         not ready: model not loaded...  FAILED_PRECONDITION  FAILED_PRECONDITION
    │   ├── StoreAuthError         the store rejected our keys     FAILED_PRECONDITION  STORE_AUTH_REJECTED
    │   └── ConfigError            a setting is wrong: no start    FAILED_PRECONDITION  INVALID_CONFIG
    ├── Unimplemented              this backend cannot do that     UNIMPLEMENTED        UNIMPLEMENTED
    ├── ResourceExhausted          a request is over a limit       RESOURCE_EXHAUSTED   RESOURCE_EXHAUSTED
    │   └── ObjectTooLarge         an object is over its size cap  RESOURCE_EXHAUSTED   TOO_LARGE
    ├── IntegrityError             bytes fail their sha256/size    DATA_LOSS            INTEGRITY_CHECK_FAILED
    ├── Unavailable                a server cannot be reached      UNAVAILABLE          UNAVAILABLE, retry 1 s
    │   └── StoreUnavailable       the store cannot be reached     UNAVAILABLE          STORE_UNAVAILABLE, 1 s
    ├── JobCancelled               CancelJob stopped a job         CANCELLED            JOB_CANCELLED
    ├── CallerGone                 a streaming caller went away    CANCELLED            CALLER_GONE
    └── StepFailed                 a job's step failed for good    the stage's code     STEP_FAILED

A stage's own errors subclass these in its contract module (the inpainter's ``InvalidSubject``).

Lower-level exceptions (minio, OSError, numpy) are converted to the most specific class here with
``raise ... from exc``, so a servicer only ever sees this tree. The server bootstrap
(``services.common.server``) ends a call that raised one with the gRPC rich error model: the status code
``grpc_code``, the sentence ``str(err)`` as the status message, and a ``google.rpc.Status`` in the
``grpc-status-details-bin`` trailer whose details are

- ``google.rpc.ErrorInfo(reason, domain=ERROR_DOMAIN, metadata)`` on every error: ``reason`` is a class
  attribute, stable and UPPER_SNAKE, that a program may branch on (the code alone lumps a missing object
  with a missing job, a bad field with a malformed asset); ``metadata`` holds a few short strings
  (``{"field": ...}`` for InvalidArgument);
- ``google.rpc.BadRequest`` with one ``FieldViolation(field, description)`` for InvalidArgument;
- ``google.rpc.RetryInfo(retry_delay)`` where the same call may succeed later (``retry_after_s`` is set:
  Unavailable and its subclasses). RESOURCE_EXHAUSTED gets none: here it always means a request over a
  fixed limit (views, pixels, points, object size), which waiting does not change; a busy condition (a
  full queue) would be a subclass of its own with ``retry_after_s`` set.

A class that sets its own ``grpc_code`` and no ``reason`` gets the code's name as its reason; a class that
sets neither inherits its parent's (so a stage's ``InvalidSubject`` reads INVALID_ARGUMENT, and a
subclass of ObjectNotFound still OBJECT_NOT_FOUND). Reasons are part of the API: rename none.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

# ErrorInfo's domain: the API's proto package, which every service (coordinator and stages) belongs to.
ERROR_DOMAIN = "tire.v1"


class TireError(Exception):
    """Base class. ``str(err)`` is a sentence meant for the caller.

    Attributes:
        grpc_code: the status code a call that raised this ends with.
        reason: ErrorInfo's reason (see the module docstring for its default).
        retry_after_s: RetryInfo's delay in seconds where retrying the same call may help; None (no
            RetryInfo) where it cannot.
    """

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"
    retry_after_s: ClassVar[float | None] = None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "grpc_code" in vars(cls) and "reason" not in vars(cls):
            cls.reason = cls.grpc_code.name

    @property
    def metadata(self) -> dict[str, str]:
        """ErrorInfo's metadata: facts a program may use, as short strings (none by default)."""
        return {}


class InvalidArgument(TireError):
    """A request field has a bad value.

    The message names the field and quotes the value: "`width` must be between 8 and 4096, got 0."
    """

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_FIELD"

    def __init__(self, field: str, value: Any, problem: str):
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"`{field}` {problem}, got {_quote(value)}.")

    @property
    def metadata(self) -> dict[str, str]:
        return {"field": self.field}


class AssetError(TireError):
    """A 3DGS file is malformed: bad header, missing properties, truncated data, NaN/inf, absurd counts."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ASSET"


class NotFound(TireError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class ObjectNotFound(NotFound):
    """The store has no object at the given URI."""

    reason = "OBJECT_NOT_FOUND"


class Unauthenticated(TireError):
    """The call carries no credential, or one this service does not accept."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(TireError):
    """The caller is known but may not touch what the request names (another bucket, another's object)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class FailedPrecondition(TireError):
    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class StoreAuthError(FailedPrecondition):
    """The object store rejected this service's credentials (a deployment problem, not the caller's)."""

    reason = "STORE_AUTH_REJECTED"


class ConfigError(FailedPrecondition, ValueError):
    """A setting is missing, cannot be parsed or is out of range: the service must not start.

    Raised at start-up (``services.common.config``, backend construction); a ``ValueError`` too, as a
    bad value is.
    """

    reason = "INVALID_CONFIG"


class Unimplemented(TireError):
    """This service's backend cannot do what the request asks (another backend can)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    reason = "UNIMPLEMENTED"


class ResourceExhausted(TireError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class ObjectTooLarge(ResourceExhausted):
    """An object is larger than the limit set for reading or writing it."""

    reason = "TOO_LARGE"


class IntegrityError(TireError):
    """Bytes do not match the sha256 or size they were referenced by, or cannot be read as what they claim
    to be (a safetensors file that is not one)."""

    grpc_code = grpc.StatusCode.DATA_LOSS
    reason = "INTEGRITY_CHECK_FAILED"


class Unavailable(TireError):
    """A server this service needs (the object store, Triton) could not be reached; retrying may help."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"
    retry_after_s = 1.0


class StoreUnavailable(Unavailable):
    """The object store could not be reached; retrying may help."""

    reason = "STORE_UNAVAILABLE"


class DatabaseUnavailable(Unavailable):
    """The coordinator's job database could not be reached, or gave up a transaction (a deadlock, a
    restart); retrying may help."""

    reason = "DATABASE_UNAVAILABLE"


class JobCancelled(TireError):
    """CancelJob was called: the job stops before its next step."""

    grpc_code = grpc.StatusCode.CANCELLED
    reason = "JOB_CANCELLED"


class LeaseLost(JobCancelled):
    """Another coordinator replica holds the job's lease now (this one could not renew it in time): this
    one stops before the job's next step and leaves the job to it."""

    reason = "LEASE_LOST"


class CallerGone(TireError):
    """The caller of a streaming call went away: the work it asked for stops."""

    grpc_code = grpc.StatusCode.CANCELLED
    reason = "CALLER_GONE"


class StepFailed(TireError):
    """A job's step failed for good (retries spent, or an error no retry helps).

    ``str(err)`` names the step, the stage's status and its reason: "ring1/inpaint/45: INVALID_ARGUMENT:
    ...". ``grpc_code`` is the stage's status (UNKNOWN when the step failed without one).

    The cause's details travel with it: ``cause`` is the failed call's ErrorInfo reason ("INVALID_ASSET";
    "" when it carried none) and ``field_violations`` its BadRequest's ``(field, description)`` pairs.
    """

    reason = "STEP_FAILED"

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        *,
        cause: str = "",
        field_violations: tuple[tuple[str, str], ...] = (),
    ):
        super().__init__(message)
        self.grpc_code = code or grpc.StatusCode.UNKNOWN
        self.cause = cause
        self.field_violations = field_violations


def _quote(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
