"""What a stage service makes of Triton's errors (``call_error``): which its callers retry."""

import grpc
import pytest

from services.common.errors import InvalidArgument, NotFound, Unavailable
from services.common.triton import call_error

InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", Unavailable),
        # Just restarted, or loading: the model will be there; the coordinator retries UNAVAILABLE.
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'inpaint' is not found", Unavailable),
        ("StatusCode.NOT_FOUND", "subject 3f2a is not held here: send SUBJECT", NotFound),
        ("StatusCode.INVALID_ARGUMENT", "is not a safetensors file", InvalidArgument),
    ],
)
def test_triton_errors_become_the_codes_callers_act_on(status, message, expected):
    error = call_error(InferenceServerException(message, status=status), "subject")
    assert isinstance(error, expected) and message in str(error)
    assert error.grpc_code != grpc.StatusCode.UNKNOWN
