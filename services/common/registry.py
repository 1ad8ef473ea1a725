"""The services of TIRE, written once: the five stages in pipeline order, and the coordinator.

Each entry names the service's gRPC definition (messages and client stub), the module that serves it
and the class of its settings (imported only where every service runs in one process: embedded mode
and ``tire up``; no service imports another), its environment prefix, and its port in a local stack.
The coordinator's stage stubs, the coordinator's default stage targets, embedded mode and ``tire up``
all read this registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from tire.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    inpainter_pb2,
    inpainter_pb2_grpc,
    reconstructor_pb2,
    reconstructor_pb2_grpc,
    refiner_pb2,
    refiner_pb2_grpc,
    renderer_pb2,
    renderer_pb2_grpc,
    tracker_pb2,
    tracker_pb2_grpc,
)

BASE_PORT = 50051
"""The coordinator's gRPC port in a local stack; each stage listens at ``BASE_PORT + port_offset``."""


@dataclass(frozen=True)
class Service:
    """One service of TIRE.

    Attributes:
        name: "renderer", ..., "coordinator": the package under ``services/`` and the field of
            ``services.coordinator.stages.Stages``.
        messages: the generated module of its messages (``tire.v1.renderer_pb2``).
        stub: the generated client stub class.
        server: the module that serves it (``main``, ``build_servicer``), imported by name.
        settings: the name of its settings class in ``server``.
        port_offset: its gRPC port in a local stack is ``BASE_PORT + port_offset`` (metrics: + 1000).
        triton_models: the module that declares its models on Triton (``MODELS``, ``version_settings``),
            "" for a stage whose models Triton does not serve.
    """

    name: str
    messages: ModuleType
    stub: type
    server: str
    settings: str
    port_offset: int
    triton_models: str = ""

    @property
    def env_prefix(self) -> str:
        """Its settings' environment prefix, for example ``TIRE_RENDERER_``."""
        return f"TIRE_{self.name.upper()}_"

    @property
    def local_target(self) -> str:
        """Where it listens in a local stack (``tire up``), for example ``localhost:50052``."""
        return f"localhost:{BASE_PORT + self.port_offset}"


STAGES = (
    Service(
        "renderer",
        renderer_pb2,
        renderer_pb2_grpc.RendererServiceStub,
        "services.renderer.server",
        "RendererSettings",
        1,
    ),
    Service(
        "tracker",
        tracker_pb2,
        tracker_pb2_grpc.TrackerServiceStub,
        "services.tracker.server",
        "TrackerSettings",
        2,
        "services.tracker.triton_model",
    ),
    Service(
        "inpainter",
        inpainter_pb2,
        inpainter_pb2_grpc.InpainterServiceStub,
        "services.inpainter.server",
        "InpainterSettings",
        3,
        "services.inpainter.triton_model",
    ),
    Service(
        "refiner",
        refiner_pb2,
        refiner_pb2_grpc.RefinerServiceStub,
        "services.refiner.server",
        "RefinerSettings",
        4,
        "services.refiner.triton_model",
    ),
    Service(
        "reconstructor",
        reconstructor_pb2,
        reconstructor_pb2_grpc.ReconstructorServiceStub,
        "services.reconstructor.server",
        "ReconstructorSettings",
        5,
    ),
)
"""The five stages, in the order a job first calls them."""

COORDINATOR = Service(
    "coordinator",
    coordinator_pb2,
    coordinator_pb2_grpc.CoordinatorServiceStub,
    "services.coordinator.server",
    "CoordinatorSettings",
    0,
)

STAGE_NAMES = tuple(stage.name for stage in STAGES)
TRITON_STAGES = tuple(stage.name for stage in STAGES if stage.triton_models)
"""The stages whose models Triton can serve."""


def stage(name: str) -> Service:
    """The stage called ``name``; ``KeyError`` for any other name."""
    for service in STAGES:
        if service.name == name:
            return service
    raise KeyError(f"no stage named {name!r}; the stages are {', '.join(STAGE_NAMES)}")
