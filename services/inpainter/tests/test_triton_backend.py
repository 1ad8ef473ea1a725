"""The inpainter's triton backend without a server: what a caller sees when Triton is unreachable."""

import numpy as np
import pytest

from services.common.errors import Unavailable
from services.inpainter.triton_backend import TritonInpaintBackend

pytest.importorskip("tritonclient.grpc")


def test_an_unreachable_triton_is_unavailable_so_callers_retry():
    backend = TritonInpaintBackend("127.0.0.1:1")
    assert not backend.ready()
    with pytest.raises(Unavailable, match="Triton is unreachable"):
        backend.model_version  # noqa: B018
    images = np.zeros((1, 8, 8, 3), np.uint8)
    with pytest.raises(Unavailable):
        backend.inpaint(images, np.ones((1, 8, 8), bool), None, b"adapter", 0.3, 0)
    assert backend.pinned("7").model_version == "7"  # a pinned version needs no server
