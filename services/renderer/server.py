"""The renderer service: ``tire.v1.RendererService``.

Validates a ``RenderRequest``, reads the asset's ``.ply`` from the store, renders with the configured
backend and writes rgb, alpha and depth back as tensor references.

Configuration (environment, read once at start):
    TIRE_RENDERER_BACKEND      cpu | gsplat | auto (default auto: gsplat when CUDA is present)
    TIRE_RENDERER_THREADS      CPU rasterizer threads, 0 = all cores (default 0)
    TIRE_RENDERER_MAX_VIEWS    views per request (default 256)
    TIRE_RENDERER_MAX_PIXELS   views x height x width per request (default 2**26)
    TIRE_RENDERER_MAX_GAUSSIANS  Gaussians per frame (default 10,000,000)
    TIRE_RENDERER_PORT, TIRE_RENDERER_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from tire.v1 import common_pb2, renderer_pb2, renderer_pb2_grpc

from services.common import validation
from services.common.assets import load_frame
from services.common.cameras import Cameras, cameras_from_orbit, cameras_from_proto, cameras_to_proto
from services.common.errors import InvalidArgument
from services.common.gaussians import MAX_GAUSSIANS, Gaussians, random_gaussians
from services.common.server import describe, run_service
from services.common.store import BlobStore
from services.common.tensors import put_tensor
from services.common.views import check_view_limits
from services.renderer.backends import BACKENDS, RenderBackend, make_backend

SERVICE_NAME = "tire.v1.RendererService"


@dataclass(frozen=True)
class RendererSettings:
    backend: str = "auto"
    threads: int = 0
    max_views: int = 256
    max_pixels: int = 2**26
    max_gaussians: int = MAX_GAUSSIANS


class RendererServicer(renderer_pb2_grpc.RendererServiceServicer):
    def __init__(
        self, backend: RenderBackend, store: BlobStore, settings: RendererSettings = RendererSettings()
    ):
        self.backend = backend
        self.store = store
        self.settings = settings

    def Describe(self, request, context):
        return describe(SERVICE_NAME, self.backend.name, self.backend.device, BACKENDS, self.settings)

    def Render(self, request, context):
        cameras = self._cameras(request)
        background = self._background(request)
        gaussians = self._load_frame(request)
        start = time.perf_counter()
        result = self.backend.render(gaussians, cameras, background)
        seconds = time.perf_counter() - start
        rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)
        previews = request.write_previews
        return renderer_pb2.RenderResponse(
            views=common_pb2.ViewSet(
                rgb=put_tensor(self.store, rgb, previews=previews),
                alpha=put_tensor(self.store, result.alpha.astype(np.float32), previews=previews),
                depth=put_tensor(self.store, result.depth.astype(np.float32)),
                cameras=cameras_to_proto(cameras),
                background_rgb=background.tolist(),
            ),
            backend=self.backend.name,
            num_gaussians=len(gaussians),
            render_seconds=seconds,
        )

    def _cameras(self, request) -> Cameras:
        which = request.WhichOneof("views")
        if which is None:
            raise InvalidArgument("views", None, "must be set: give either `cameras` or `orbit`")
        cameras = (
            cameras_from_proto(request.cameras) if which == "cameras" else cameras_from_orbit(request.orbit)
        )
        check_view_limits(
            which,
            len(cameras),
            cameras.height,
            cameras.width,
            max_views=self.settings.max_views,
            max_pixels=self.settings.max_pixels,
        )
        return cameras

    @staticmethod
    def _background(request) -> np.ndarray:
        if not request.background_rgb:
            return np.zeros(3, dtype=np.float32)
        return validation.colour(request.background_rgb, "background_rgb")

    def _load_frame(self, request) -> Gaussians:
        return load_frame(
            self.store, request.asset, request.time_step, max_gaussians=self.settings.max_gaussians
        )


def build_servicer(settings: RendererSettings, store: BlobStore) -> RendererServicer:
    """The servicer with its backend, as the server and in-process callers build it."""
    return RendererServicer(make_backend(settings.backend, settings.threads), store, settings)


def warm_up(servicer: RendererServicer) -> None:
    """Render one tiny scene so JIT compilation or CUDA start-up happens before health says SERVING."""
    from services.common.cameras import orbit_cameras

    servicer.backend.render(random_gaussians(64), orbit_cameras([0.0], 32, 32), np.zeros(3, np.float32))


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_RENDERER_",
        RendererSettings,
        build_servicer,
        renderer_pb2_grpc.add_RendererServiceServicer_to_server,
        warm_up,
    )


if __name__ == "__main__":
    main()
