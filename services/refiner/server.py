"""The refiner service: ``tire.v1.RefinerService``.

Validates a ``RefineRequest``, reads the views, the update mask and the asset's ``.ply`` from the store,
refines with the configured backend and writes the refined views back as a tensor reference. A request's
``model_version`` holds the call to that version of the models (the triton backend's; "" the one served
now), which Describe's ``model_version`` reports.

Configuration (environment, read once at start):
    TIRE_REFINER_BACKEND              consensus (default), mv-diffusion, or triton (mv-diffusion on Triton)
    TIRE_REFINER_THREADS              consensus: CPU rasterizer threads, 0 = all cores (default 0)
    TIRE_REFINER_CONTRIBUTORS         consensus: K, contributors per pixel that receive its vote (default 8)
    TIRE_REFINER_SOURCE_WEIGHT        consensus: how much more the source view's votes weigh (default 10)
    TIRE_REFINER_MIN_COVERAGE         consensus: alpha above which a pixel votes (default 0.5)
    TIRE_REFINER_MIN_WEIGHT           consensus: summed vote weight under which a Gaussian keeps its colour
                                      (default 0.05)
    TIRE_REFINER_MODEL                mv-diffusion: model URI, required (a local folder, s3://bucket/prefix or
                                      a hub id, e.g. ashawkey/mvdream-sd2.1-diffusers)
    TIRE_REFINER_TRUST_REMOTE_CODE    mv-diffusion: run denoiser code shipped with the model, as MVDream's
                                      (default false; set it only for a model you trust)
    TIRE_REFINER_DEVICE               mv-diffusion: auto (default), cpu, cuda or cuda:N
    TIRE_REFINER_DTYPE                mv-diffusion: auto (default; float16 on a GPU), float32, float16,
                                      bfloat16
    TIRE_REFINER_RESOLUTION           mv-diffusion: square size views are refined at, 0 = their own
                                      (default 256)
    TIRE_REFINER_NUM_INFERENCE_STEPS  mv-diffusion: the full schedule; strength s runs int(steps * s) of it
                                      (default 50)
    TIRE_REFINER_GUIDANCE_SCALE       mv-diffusion: classifier-free guidance, 1 = none (default 1)
    TIRE_REFINER_PROMPT               mv-diffusion: the text views are denoised with (default empty)
    TIRE_REFINER_MAX_JOINT_VIEWS      mv-diffusion: views denoised together; more are split into groups that
                                      each hold the source view (default 32)
    TIRE_REFINER_MODEL_CACHE_DIR      mv-diffusion: where s3:// models are downloaded (default: a temp folder)
    TIRE_REFINER_TRITON_URL           triton: Triton's gRPC address host:port, serving the mv-diffusion model
                                      ``refine`` (services.refiner.triton_model)
    TIRE_REFINER_TRITON_VERSION       triton: the model version to call ("" = the latest Triton serves)
    TIRE_REFINER_MAX_VIEWS            views per request (default 256)
    TIRE_REFINER_MAX_PIXELS           views x height x width per request (default 2**24)
    TIRE_REFINER_MAX_GAUSSIANS        Gaussians per frame (default 10,000,000)
    TIRE_REFINER_PORT, TIRE_REFINER_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tire.v1 import refiner_pb2, refiner_pb2_grpc

from services.common import validation
from services.common.assets import load_frame
from services.common.errors import ConfigError, InvalidArgument
from services.common.gaussians import MAX_GAUSSIANS, random_gaussians
from services.common.server import describe, models_at, run_service, wait_for_models
from services.common.store import BlobStore
from services.common.tensors import get_tensor, put_tensor
from services.common.views import Views, read_views
from services.refiner.backends import BACKENDS, RefineBackend, make_backend

SERVICE_NAME = "tire.v1.RefinerService"


@dataclass(frozen=True)
class RefinerSettings:
    backend: str = "consensus"
    threads: int = 0
    contributors: int = 8
    source_weight: float = 10.0
    min_coverage: float = 0.5
    min_weight: float = 0.05
    max_views: int = 256
    # Each pixel keeps K contributor ids and weights (8 bytes each): 2**24 pixels is about 1 GiB at K=8.
    max_pixels: int = 2**24
    max_gaussians: int = MAX_GAUSSIANS
    model: str = ""
    trust_remote_code: bool = False
    device: str = "auto"
    dtype: str = "auto"
    resolution: int = 256
    num_inference_steps: int = 50
    guidance_scale: float = 1.0
    prompt: str = ""
    max_joint_views: int = 32
    model_cache_dir: str = ""
    triton_url: str = ""
    triton_version: str = ""

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.contributors <= 64, "contributors", "must be between 1 and 64"),
            (
                math.isfinite(self.source_weight) and self.source_weight > 0,
                "source_weight",
                "must be positive",
            ),
            (0.0 < self.min_coverage < 1.0, "min_coverage", "must be between 0 and 1 (exclusive)"),
            (math.isfinite(self.min_weight) and self.min_weight >= 0, "min_weight", "must not be negative"),
            (self.max_views >= 1, "max_views", "must be at least 1"),
            (self.max_pixels >= 1, "max_pixels", "must be at least 1"),
            (self.max_gaussians >= 1, "max_gaussians", "must be at least 1"),
            (0 <= self.resolution <= 4096, "resolution", "must be between 0 and 4096"),
            (1 <= self.num_inference_steps <= 1000, "num_inference_steps", "must be between 1 and 1000"),
            (
                math.isfinite(self.guidance_scale) and self.guidance_scale >= 1.0,
                "guidance_scale",
                "must be at least 1 (1: no guidance)",
            ),
            (self.max_joint_views >= 2, "max_joint_views", "must be at least 2 (the source and one view)"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"RefinerSettings.{name} {problem}, got {getattr(self, name)!r}.")


class RefinerServicer(refiner_pb2_grpc.RefinerServiceServicer):
    def __init__(
        self, backend: RefineBackend, store: BlobStore, settings: RefinerSettings = RefinerSettings()
    ):
        self.backend = backend
        self.store = store
        self.settings = settings

    def Describe(self, request, context):
        model = getattr(self.backend, "model", "")  # the URI of a neural backend's weights
        answer = describe(
            SERVICE_NAME, self.backend.name, self.backend.device, BACKENDS, self.settings, model
        )
        answer.settings["default_strength"] = str(self.backend.default_strength)
        answer.model_version = getattr(self.backend, "model_version", "")
        return answer

    def Refine(self, request, context):
        strength = validation.strength(request.strength, "strength", self.backend.default_strength)
        backend = models_at(self.backend, request.model_version)
        views = read_views(
            self.store,
            request.views,
            field="views",
            max_views=self.settings.max_views,
            max_pixels=self.settings.max_pixels,
        )
        if request.source_index >= len(views):
            raise InvalidArgument(
                "source_index", request.source_index, f"must index one of the {len(views)} views"
            )
        update_mask = self._update_mask(request, views)
        gaussians = load_frame(
            self.store, request.asset, request.time_step, max_gaussians=self.settings.max_gaussians
        )
        rgb = backend.refine(views, update_mask, gaussians, request.source_index, strength, request.seed)
        return refiner_pb2.RefineResponse(rgb=put_tensor(self.store, rgb, previews=True))

    def _update_mask(self, request, views: Views) -> np.ndarray:
        if not request.HasField("update_mask"):
            raise InvalidArgument("update_mask", None, "must be set: a [V, H, W] float32 mask in [0, 1]")
        mask = get_tensor(
            self.store,
            request.update_mask,
            field="update_mask",
            dtype=np.float32,
            shape=views.shape,
            finite=True,
        )
        if mask.size and (mask.min() < 0.0 or mask.max() > 1.0):
            raise InvalidArgument(
                "update_mask", f"values in [{mask.min()}, {mask.max()}]", "must lie in [0, 1]"
            )
        return mask


def build_servicer(settings: RefinerSettings, store: BlobStore) -> RefinerServicer:
    """The servicer with its backend, as the server and in-process callers build it (mv-diffusion loads its
    model here, from ``store`` for an ``s3://`` URI)."""
    if settings.backend == "mv-diffusion":
        options = dict(
            model=settings.model,
            store=store,
            model_cache_dir=settings.model_cache_dir,
            trust_remote_code=settings.trust_remote_code,
            device=settings.device,
            dtype=settings.dtype,
            resolution=settings.resolution,
            num_inference_steps=settings.num_inference_steps,
            guidance_scale=settings.guidance_scale,
            prompt=settings.prompt,
            max_joint_views=settings.max_joint_views,
        )
    elif settings.backend == "triton":
        if not settings.triton_url:
            raise ConfigError("the triton backend needs Triton's address: set TIRE_REFINER_TRITON_URL.")
        options = dict(url=settings.triton_url, version=settings.triton_version)
    else:
        options = dict(
            threads=settings.threads,
            contributors=settings.contributors,
            source_weight=settings.source_weight,
            min_coverage=settings.min_coverage,
            min_weight=settings.min_weight,
        )
    return RefinerServicer(make_backend(settings.backend, **options), store, settings)


def warm_up(servicer: RefinerServicer, triton_wait_s: float = 600.0) -> None:
    """Refine two tiny views so numba compiles (or loads its cache), or the diffusion model runs one
    denoising step on its device, before health says SERVING. The triton backend first waits (up to
    ``triton_wait_s``) for Triton to serve a ready version, then refines two 64 x 64 views through it at
    its default strength (it does not know the served version's schedule or resolution; 64 is a multiple
    of what MVDream and the tiny test models need at resolution 0)."""
    from services.common.cameras import orbit_cameras
    from services.common.rasterizer import rasterize

    backend, side, strength = servicer.backend, 32, 1.0
    wait_for_models(backend, triton_wait_s)
    if hasattr(backend, "ready"):  # served by Triton
        side, strength = 64, backend.default_strength
    elif backend.name == "mv-diffusion":
        side = backend.resolution or backend.components.multiple  # resolution 0 runs at the views' size
        strength = min(1.0, 1.5 / backend.num_inference_steps)  # int(steps * strength) = 1 step
    gaussians, cameras = random_gaussians(64), orbit_cameras([0.0, 30.0], side, side)
    render = rasterize(gaussians, cameras)
    rgb = np.clip(np.rint(render.rgb * 255.0), 0, 255).astype(np.uint8)
    mask = np.zeros(render.alpha.shape, dtype=np.float32)
    mask[1] = 1.0
    backend.refine(Views(rgb, render.alpha, render.depth, cameras), mask, gaussians, 0, strength, 0)


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_REFINER_",
        RefinerSettings,
        build_servicer,
        refiner_pb2_grpc.add_RefinerServiceServicer_to_server,
        warm_up,
    )


if __name__ == "__main__":
    main()
