"""The refiner's triton backend without a server: what a caller sees when Triton is unreachable, and how
the service is configured for it."""

import numpy as np
import pytest

from services.common.cameras import orbit_cameras
from services.common.errors import ConfigError, Unavailable
from services.common.store import MemoryStore
from services.common.views import Views
from services.refiner.backends import make_backend
from services.refiner.server import RefinerSettings, build_servicer

pytest.importorskip("tritonclient.grpc")


def test_an_unreachable_triton_is_unavailable_so_callers_retry():
    backend = make_backend("triton", url="127.0.0.1:1")
    assert (backend.name, backend.default_strength) == ("mv-diffusion", 0.3)  # as the model it serves
    assert not backend.ready()
    with pytest.raises(Unavailable, match="Triton is unreachable"):
        backend.model_version  # noqa: B018
    rgb = np.zeros((2, 16, 16, 3), np.uint8)
    views = Views(rgb, None, None, orbit_cameras([0.0, 90.0], 16, 16))
    with pytest.raises(Unavailable):
        backend.refine(views, np.ones((2, 16, 16), np.float32), None, 0, 0.3, 0)
    pinned = backend.pinned("7")
    assert pinned.model_version == "7" and pinned.model == "triton://127.0.0.1:1/refine/7"  # needs no server


def test_the_service_needs_tritons_address():
    with pytest.raises(ConfigError, match="TIRE_REFINER_TRITON_URL"):
        build_servicer(RefinerSettings(backend="triton"), MemoryStore())
    servicer = build_servicer(RefinerSettings(backend="triton", triton_url="127.0.0.1:1"), MemoryStore())
    assert servicer.backend.device == "triton at 127.0.0.1:1 (refine, version latest)"
