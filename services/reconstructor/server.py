"""The reconstructor service: ``tire.v1.ReconstructorService``.

Validates a ``ReconstructRequest``, reads the views and the initial asset's frame from the store, fits
the asset to the views with the configured backend and writes the result as a ``.ply`` in
the input's layout (``PLY_LAYOUTS``; INRIA's for an input in another format).

Configuration (environment, read once at start):
    TIRE_RECONSTRUCTOR_BACKEND        colour-solve (default) or gsplat-optimize (needs CUDA)
    TIRE_RECONSTRUCTOR_THREADS        colour-solve: numba threads, 0 = all cores (default 0)
    TIRE_RECONSTRUCTOR_CONTRIBUTORS   colour-solve: top-K contributors per pixel in its model (default 8)
    TIRE_RECONSTRUCTOR_DEVICE         gsplat-optimize: the CUDA device (default cuda)
    TIRE_RECONSTRUCTOR_VIEWS_PER_STEP gsplat-optimize: views rendered per optimisation step (default 4)
    TIRE_RECONSTRUCTOR_LEARNING_RATE_SCALE
                                      gsplat-optimize: factor on 3DGS's learning rates (default 3)
    TIRE_RECONSTRUCTOR_MAX_VIEWS      views per request (default 256)
    TIRE_RECONSTRUCTOR_MAX_PIXELS     views x height x width per request (default 2**23)
    TIRE_RECONSTRUCTOR_MAX_GAUSSIANS  Gaussians per frame (default 2,000,000)
    TIRE_RECONSTRUCTOR_PORT, TIRE_RECONSTRUCTOR_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store

For gsplat-optimize, a request's ``max_iterations`` counts optimisation steps, ``tolerance`` stops them
when the loss improves by less than that fraction, and ``prior_weight`` is unused
(``services.reconstructor.optimize``).

Memory: a colour-solve call peaks at about ``V x H x W x (20 K + 60)`` bytes (contributors, pixel model
and its index; K = 8: 1.8 GB at the default pixel limit, 32 views of 512 x 512), plus a few hundred
bytes per Gaussian, plus 160 bytes a pixel of one locked view at a time (its 20 contributors a pixel:
42 MB at 512 x 512). A gsplat-optimize call keeps the views on the GPU (16 bytes a pixel: 134 MB at the
default limit), the parameters with their gradients and Adam's moments (about 225 bytes a Gaussian
of SH degree 0, 950 of degree 3), and gsplat's buffers for ``views_per_step`` views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tire.v1 import reconstructor_pb2, reconstructor_pb2_grpc

from services.common.assets import read_frame, store_frame
from services.common.errors import InvalidArgument
from services.common.gaussians import random_gaussians
from services.common.server import describe, run_service
from services.common.store import BlobStore
from services.common.views import read_views
from services.reconstructor.backends import make_backend
from services.reconstructor.contract import BACKENDS, ReconstructBackend, SolveOptions

SERVICE_NAME = "tire.v1.ReconstructorService"
MAX_ITERATIONS = 10_000


@dataclass(frozen=True)
class ReconstructorSettings:
    backend: str = "colour-solve"
    threads: int = 0
    contributors: int = 8
    device: str = "cuda"
    views_per_step: int = 4
    learning_rate_scale: float = 3.0
    max_views: int = 256
    max_pixels: int = 2**23
    max_gaussians: int = 2_000_000


class ReconstructorServicer(reconstructor_pb2_grpc.ReconstructorServiceServicer):
    def __init__(
        self,
        backend: ReconstructBackend,
        store: BlobStore,
        settings: ReconstructorSettings = ReconstructorSettings(),
    ):
        self.backend = backend
        self.store = store
        self.settings = settings

    def Describe(self, request, context):
        return describe(SERVICE_NAME, self.backend.name, self.backend.device, BACKENDS, self.settings)

    def Reconstruct(self, request, context):
        options = self._options(request)
        time_steps = self._time_steps(request)
        views = read_views(
            self.store,
            request.views,
            field="views",
            require=("rgb", "alpha"),
            max_views=self.settings.max_views,
            max_pixels=self.settings.max_pixels,
        )
        if len(views) % len(time_steps):
            raise InvalidArgument(
                "views",
                f"{len(views)} views",
                f"must hold the same number of views for each of the {len(time_steps)} frames",
            )
        per_frame = len(views) // len(time_steps)
        frames, layouts = [], []
        for i, t in enumerate(time_steps):
            initial, _, layout = read_frame(
                self.store, request.initial, t, field="initial", max_gaussians=self.settings.max_gaussians
            )
            if frames and len(initial) != len(frames[0][1]):
                raise InvalidArgument(
                    f"initial.frames[{t}]",
                    f"{len(initial)} Gaussians",
                    f"must hold as many Gaussians as frame {time_steps[0]} ({len(frames[0][1])}) to be "
                    "fitted jointly",
                )
            frames.append((views.select(range(i * per_frame, (i + 1) * per_frame)), initial))
            layouts.append(layout)
        view_weights = self._view_weights(request.view_weights, per_frame)
        locked_views = self._locked_views(request.locked_views, per_frame)
        results = self.backend.reconstruct_together(frames, options, view_weights, locked_views)
        first = results[0]
        return reconstructor_pb2.ReconstructResponse(
            ply=store_frame(self.store, first.gaussians, ply_layout=layouts[0]),  # the input's layout
            rms_error=float(np.sqrt(np.mean([r.rms_error**2 for r in results]))),
            iterations=first.iterations,
            gaussians_locked=first.locked,
            gaussians_kept=first.kept,
            gaussians_resolved=first.resolved,
            higher_sh_kept=all(r.higher_sh_kept for r in results),
            joint_plys=[
                store_frame(self.store, r.gaussians, ply_layout=lay)
                for r, lay in zip(results[1:], layouts[1:], strict=True)
            ],
        )

    @staticmethod
    def _time_steps(request) -> list[int]:
        """``time_step`` (its range is checked on loading) then ``joint_time_steps``, none repeated."""
        time_steps = [request.time_step]
        for i, t in enumerate(request.joint_time_steps):
            if t >= len(request.initial.frames):
                raise InvalidArgument(
                    f"joint_time_steps[{i}]",
                    t,
                    f"must be below the asset's {len(request.initial.frames)} time steps",
                )
            if t in time_steps:
                raise InvalidArgument(
                    f"joint_time_steps[{i}]", t, "repeats time_step or an earlier joint time step"
                )
            time_steps.append(t)
        return time_steps

    @staticmethod
    def _locked_views(values, num_views: int) -> list[int]:
        """The locked views' indices: each below the number of views, none repeated."""
        seen: dict[int, int] = {}
        for i, index in enumerate(values):
            if index >= num_views:
                raise InvalidArgument(f"locked_views[{i}]", index, f"must be a view index below {num_views}")
            if index in seen:
                raise InvalidArgument(f"locked_views[{i}]", index, f"repeats locked_views[{seen[index]}]")
            seen[index] = i
        return list(values)

    @staticmethod
    def _view_weights(values, num_views: int) -> np.ndarray | None:
        """``[V]`` float64 view weights, or None for equal weights."""
        if len(values) == 0:
            return None
        if len(values) != num_views:
            raise InvalidArgument(
                "view_weights", f"{len(values)} values", f"must hold one weight per view ({num_views})"
            )
        weights = np.asarray(values, dtype=np.float64)
        for i, weight in enumerate(weights):
            if not (math.isfinite(weight) and weight >= 0.0):
                raise InvalidArgument(f"view_weights[{i}]", float(weight), "must be a finite number >= 0")
        if not weights.any():
            raise InvalidArgument("view_weights", weights.tolist(), "must not all be 0")
        return weights

    @staticmethod
    def _options(request) -> SolveOptions:
        """The request's options, unset fields taking the API's defaults."""
        message, defaults = request.options, SolveOptions()
        keep = message.keep_higher_sh if message.HasField("keep_higher_sh") else defaults.keep_higher_sh
        prior = message.prior_weight if message.HasField("prior_weight") else defaults.prior_weight
        if not (math.isfinite(prior) and prior >= 0.0):
            raise InvalidArgument("options.prior_weight", prior, "must be a finite number >= 0")
        iterations = message.max_iterations if message.HasField("max_iterations") else defaults.max_iterations
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise InvalidArgument(
                "options.max_iterations", iterations, f"must be between 1 and {MAX_ITERATIONS}"
            )
        tolerance = message.tolerance if message.HasField("tolerance") else defaults.tolerance
        if not 0.0 < tolerance < 1.0:  # a NaN fails too
            raise InvalidArgument("options.tolerance", tolerance, "must lie strictly between 0 and 1")
        return SolveOptions(
            keep_higher_sh=keep,
            prior_weight=float(prior),
            max_iterations=int(iterations),
            tolerance=float(tolerance),
        )


def build_servicer(settings: ReconstructorSettings, store: BlobStore) -> ReconstructorServicer:
    """The servicer with its backend, as the server and in-process callers build it."""
    backend = make_backend(
        settings.backend,
        contributors=settings.contributors,
        threads=settings.threads,
        device=settings.device,
        views_per_step=settings.views_per_step,
        learning_rate_scale=settings.learning_rate_scale,
    )
    return ReconstructorServicer(backend, store, settings)


def warm_up(servicer: ReconstructorServicer) -> None:
    """Reconstruct one tiny scene before health says SERVING, so the backend's kernels are built: the numba
    kernels of the colour solve, or gsplat's CUDA extension (compiled on first use) for gsplat-optimize."""
    import numpy as np

    from services.common.cameras import orbit_cameras
    from services.common.rasterizer import rasterize
    from services.common.views import Views

    gaussians, cameras = random_gaussians(64, sh_degree=1), orbit_cameras([0.0, 120.0, 240.0], 32, 32)
    render = rasterize(gaussians, cameras)
    rgb = np.clip(np.rint(render.rgb * 255.0), 0, 255).astype(np.uint8)
    # Views that differ from the asset's render, one of them locked, weighed as a job weighs them: a
    # render of the asset itself changes nothing, so the solve (and its kernels) would never run.
    views = Views(255 - rgb, render.alpha, None, cameras)
    weights = np.array([10.0, 1.0, 1.0])
    for keep_higher_sh in (True, False):
        options = SolveOptions(keep_higher_sh=keep_higher_sh, max_iterations=2)
        servicer.backend.reconstruct(views, gaussians, options, weights, locked_views=(0,))


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_RECONSTRUCTOR_",
        ReconstructorSettings,
        build_servicer,
        reconstructor_pb2_grpc.add_ReconstructorServiceServicer_to_server,
        warm_up,
    )


if __name__ == "__main__":
    main()
