"""The inpainter service: ``tire.v1.InpainterService``.

``FitSubject`` validates the reference images and masks, fits a subject model with the configured
backend (streaming its progress), and stores the model as an artifact any replica can use.
``Inpaint`` validates views, masks, optional alpha and the subject model, and writes the inpainted views
back as a tensor reference (with PNG previews). Inpaint's ``strength`` 0 means the backend's
``default_strength`` (colour 1.0, sd-lora 0.3), which Describe reports.

The sd-lora backend (``services.inpainter.sd_lora``) loads its model at start, fits LoRA adapters and
inpaints with them; a second replica with the same model uses the first one's adapters. The colour
backend checks, then ignores, the LoRA fields of ``FitSettings`` (learning_rate, rank, prompt,
resolution, flip, max_rotation_deg) and Inpaint's ``num_inference_steps`` and ``guidance_scale``; it
runs ``min(steps, MAX_FIT_ITERATIONS)`` k-means iterations as its fitting steps.

Configuration (environment, read once at start):
    TIRE_INPAINTER_BACKEND                colour, sd-lora or triton (default colour)
    TIRE_INPAINTER_THREADS                views inpainted in parallel, 0 = all cores (default 0)
    TIRE_INPAINTER_MAX_VIEWS              views per Inpaint request (default 256)
    TIRE_INPAINTER_MAX_PIXELS             views x height x width per request, Inpaint and FitSubject
                                          (default 2**26)
    TIRE_INPAINTER_MAX_REFERENCE_IMAGES   reference images per FitSubject request (default 64)
    TIRE_INPAINTER_MAX_SUBJECT_BYTES      size of a subject-model artifact read by Inpaint (default 1 GiB)
    TIRE_INPAINTER_TRANSPORT_ITERATIONS   colour: sliced-optimal-transport iterations per view (default 30)
    TIRE_INPAINTER_TRANSPORT_SAMPLES      colour: colours and model samples per view's transport (4096)
    TIRE_INPAINTER_SMOOTHING_SIGMA        colour: smoothing of the colour displacement, pixels (default 3)
    TIRE_INPAINTER_FILL_RADIUS            colour: Telea radius for filling holes, pixels (default 3)
    TIRE_INPAINTER_MAX_FIT_SAMPLES        colour: foreground pixels the model is fitted on (default 20000)
    TIRE_INPAINTER_MAX_FIT_ITERATIONS     colour: cap on Lloyd iterations (FitSettings.steps) (default 50)
    TIRE_INPAINTER_MODEL                  sd-lora: the inpainting pipeline, a local folder, s3://bucket/prefix
                                          or hub id (for example stabilityai/stable-diffusion-2-inpainting)
    TIRE_INPAINTER_MODEL_CACHE_DIR        sd-lora: where s3:// models are downloaded ("" = a temp folder)
    TIRE_INPAINTER_DEVICE                 sd-lora: auto, cpu, cuda or cuda:N (default auto)
    TIRE_INPAINTER_DTYPE                  sd-lora: auto (float16 on GPU), float32, float16, bfloat16
    TIRE_INPAINTER_RESOLUTION             sd-lora: square working size, multiple of 64, 0 = the model's (0)
    TIRE_INPAINTER_BATCH_SIZE             sd-lora: views per UNet call (default 4)
    TIRE_INPAINTER_FIT_BATCH_SIZE         sd-lora: references per training step (default 1)
    TIRE_INPAINTER_ADAPTER_CACHE_SIZE     sd-lora: adapters kept loaded in the UNet (default 4)
    TIRE_INPAINTER_TRITON_URL             triton: Triton's gRPC address host:port, serving the sd-lora models
                                          ``inpaint`` and ``fit_subject`` (services.inpainter.triton_model)
    TIRE_INPAINTER_TRITON_VERSION         triton: the model version to call ("" = the latest Triton serves)
    TIRE_INPAINTER_PORT, TIRE_INPAINTER_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np
from tire.v1 import common_pb2, inpainter_pb2, inpainter_pb2_grpc

from services.common import validation
from services.common.errors import ConfigError, InvalidArgument
from services.common.fit_settings import float32_decimal, resolve_fit_settings
from services.common.server import (
    Finished,
    describe,
    models_at,
    relay_progress,
    run_service,
    wait_for_models,
)
from services.common.store import BlobStore
from services.common.tensors import TENSOR_CACHE_MIB, TensorCache, get_tensor, put_tensor
from services.common.views import check_view_limits
from services.inpainter.backends import make_backend
from services.inpainter.contract import (
    BACKENDS,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_NUM_INFERENCE_STEPS,
    FitConfig,
    InpaintBackend,
    InvalidSubject,
)

SERVICE_NAME = "tire.v1.InpainterService"
ARTIFACT_MEDIA_TYPE = "application/vnd.safetensors"
GiB = 1024**3


@dataclass(frozen=True)
class InpainterSettings:
    backend: str = "colour"
    threads: int = 0
    max_views: int = 256
    max_pixels: int = 2**26
    max_reference_images: int = 64
    max_subject_bytes: int = GiB
    transport_iterations: int = 30
    transport_samples: int = 4096
    smoothing_sigma: float = 3.0
    fill_radius: int = 3
    max_fit_samples: int = 20_000
    max_fit_iterations: int = 50
    model: str = ""
    model_cache_dir: str = ""
    device: str = "auto"
    dtype: str = "auto"
    resolution: int = 0
    batch_size: int = 4
    fit_batch_size: int = 1
    adapter_cache_size: int = 4
    triton_url: str = ""
    triton_version: str = ""
    view_cache_mib: int = TENSOR_CACHE_MIB  # recent alpha tensors kept by sha256 (`alpha_views`)

    def __post_init__(self) -> None:
        if self.view_cache_mib < 0:
            raise ConfigError(
                f"InpainterSettings.view_cache_mib must not be negative, got {self.view_cache_mib!r}."
            )
        for name in ("max_views", "max_pixels", "max_reference_images", "max_subject_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(
                    f"InpainterSettings.{name} must be at least 1, got {getattr(self, name)!r}."
                )


class InpainterServicer(inpainter_pb2_grpc.InpainterServiceServicer):
    def __init__(
        self, backend: InpaintBackend, store: BlobStore, settings: InpainterSettings = InpainterSettings()
    ):
        self.backend = backend
        self.store = store
        self.settings = settings
        self._subjects: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # verified bytes, LRU
        self._subjects_lock = threading.Lock()
        self._views = TensorCache(settings.view_cache_mib * 2**20)

    def Describe(self, request, context):
        answer = describe(
            SERVICE_NAME,
            self.backend.name,
            self.backend.device,
            BACKENDS,
            self.settings,
            self.backend.base_model,
        )
        answer.settings["default_strength"] = str(self.backend.default_strength)
        answer.model_version = getattr(self.backend, "model_version", "")
        return answer

    async def FitSubject(self, request, context) -> AsyncIterator[inpainter_pb2.FitSubjectResponse]:
        """An async generator (the service is served with grpc.aio): while the fit runs in a thread of
        its own, the stream waits for its progress holding no thread of the server's pool."""
        fit = await asyncio.to_thread(self._fit_of, request)
        artifact = b""
        async for event in relay_progress(fit):
            if isinstance(event, Finished):
                artifact = event.result
            else:
                yield inpainter_pb2.FitSubjectResponse(progress=event)
        ref = await asyncio.to_thread(
            self.store.put_bytes, artifact, suffix=".safetensors", media_type=ARTIFACT_MEDIA_TYPE
        )
        yield inpainter_pb2.FitSubjectResponse(
            model=inpainter_pb2.SubjectModel(
                artifact=ref, backend=self.backend.name, base_model=self.backend.base_model
            )
        )

    def _fit_of(self, request) -> Callable[[Callable[[common_pb2.FitProgress], None]], bytes]:
        """The fit a FitSubject request asks for, checked and its inputs read: ``fit(report)`` returns
        the subject model's artifact."""
        config = fit_config(request.settings)
        backend = models_at(self.backend, request.model_version)
        images = self._image_stack(request, "images", self.settings.max_reference_images, "reference images")
        r, h, w = images.shape[:3]
        masks = get_tensor(
            self.store, request.masks, field="masks", dtype=np.float32, shape=(r, h, w), finite=True
        )
        if masks.min() < 0.0 or masks.max() > 1.0:
            raise InvalidArgument("masks", f"values in [{masks.min()}, {masks.max()}]", "must lie in [0, 1]")
        if not (masks > 0.5).any():
            raise InvalidArgument(
                "masks", f"maximum {masks.max()}", "must mark at least one foreground pixel (> 0.5)"
            )
        start = time.monotonic()

        def fit(report: Callable[[common_pb2.FitProgress], None]) -> bytes:
            def progress(step: int, total: int, loss: float) -> None:
                elapsed = time.monotonic() - start
                report(
                    common_pb2.FitProgress(step=step, total_steps=total, loss=loss, elapsed_seconds=elapsed)
                )

            return backend.fit_subject(images, masks, config, progress)

        return fit

    def Inpaint(self, request, context):
        strength = validation.strength(request.strength, "strength", self.backend.default_strength)
        steps = DEFAULT_NUM_INFERENCE_STEPS
        if request.HasField("num_inference_steps"):
            steps = validation.positive_int(request.num_inference_steps, "num_inference_steps", maximum=1000)
        guidance = DEFAULT_GUIDANCE_SCALE
        if request.HasField("guidance_scale"):
            guidance = validation.in_range(request.guidance_scale, "guidance_scale", 0.0, 100.0)
        self._check_subject_message(request.subject)
        backend = models_at(self.backend, request.model_version)

        images = self._image_stack(request, "images", self.settings.max_views, "views")
        v, h, w = images.shape[:3]
        masks = get_tensor(self.store, request.masks, field="masks", dtype=np.uint8, shape=(v, h, w))
        if masks.max(initial=0) > 1:
            raise InvalidArgument("masks", f"maximum {masks.max()}", "must hold only 0 and 1")
        alpha = self._alpha(request, v, h, w) if request.HasField("alpha") and request.alpha.uri else None
        artifact = request.subject.artifact
        subject = self._subject_bytes(artifact)

        try:
            out = backend.inpaint(
                images,
                masks.astype(bool),
                alpha,
                subject,
                strength,
                request.seed,
                num_inference_steps=steps,
                guidance_scale=guidance,
            )
        except InvalidSubject as exc:
            raise InvalidArgument(
                "subject.artifact", artifact.uri, f"is not a {self.backend.name!r} subject model: it {exc}"
            ) from exc
        return inpainter_pb2.InpaintResponse(images=put_tensor(self.store, out, previews=True))

    def _subject_bytes(self, artifact) -> bytes:
        """The subject model's bytes; models named by sha256 are kept for the next calls (a job sends
        every view of every ring with the same model)."""
        if not artifact.sha256:
            return self.store.get_bytes(artifact.uri, max_bytes=self.settings.max_subject_bytes)
        key = (artifact.uri, artifact.sha256)
        with self._subjects_lock:
            if key in self._subjects:
                self._subjects.move_to_end(key)
                return self._subjects[key]
        data = self.store.get_bytes(
            artifact.uri, sha256=artifact.sha256, max_bytes=self.settings.max_subject_bytes
        )
        with self._subjects_lock:
            self._subjects[key] = data
            while len(self._subjects) > self.backend.subject_cache_size:
                self._subjects.popitem(last=False)
        return data

    def _alpha(self, request, v: int, h: int, w: int) -> np.ndarray:
        """``[V, H, W]`` float32 in [0, 1]: ``alpha`` itself, or the rows ``alpha_views`` picks from it
        (read through the cache: the same orbit's alpha comes with every call of a job)."""
        if not request.alpha_views:
            alpha = get_tensor(
                self.store, request.alpha, field="alpha", dtype=np.float32, shape=(v, h, w), finite=True
            )
        else:
            if len(request.alpha_views) != v:
                raise InvalidArgument(
                    "alpha_views", f"{len(request.alpha_views)} indices", f"must name one view per image, {v}"
                )
            shape = list(request.alpha.shape)
            if len(shape) == 3:
                check_view_limits(
                    "alpha",
                    shape[0],
                    h,
                    w,
                    max_views=self.settings.max_views,
                    max_pixels=self.settings.max_pixels,
                )
            every = self._views.get_tensor(
                self.store, request.alpha, field="alpha", dtype=np.float32, shape=(None, h, w), finite=True
            )
            for i, view in enumerate(request.alpha_views):
                if view >= len(every):
                    raise InvalidArgument(
                        f"alpha_views[{i}]",
                        view,
                        f"must be below the number of views in `alpha`, {len(every)}",
                    )
            alpha = every[list(request.alpha_views)]
        if alpha.min() < 0.0 or alpha.max() > 1.0:
            raise InvalidArgument("alpha", f"values in [{alpha.min()}, {alpha.max()}]", "must lie in [0, 1]")
        return alpha

    def _image_stack(self, request, field: str, max_items: int, what: str) -> np.ndarray:
        """``[N, H, W, 3]`` uint8 from ``request.<field>``, its declared size checked before reading."""
        if not request.HasField(field):
            raise InvalidArgument(field, None, "must be set")
        ref = getattr(request, field)
        shape = list(ref.shape)
        if len(shape) == 4 and shape[3] == 3:
            n, h, w = shape[:3]
            check_view_limits(
                field, n, h, w, max_views=max_items, max_pixels=self.settings.max_pixels, what=what
            )
        images = get_tensor(self.store, ref, field=field, dtype=np.uint8, shape=(None, None, None, 3))
        if 0 in images.shape:
            raise InvalidArgument(
                field, f"shape {list(images.shape)}", "must hold at least one image of at least 1x1 pixels"
            )
        return images

    def _check_subject_message(self, subject: inpainter_pb2.SubjectModel) -> None:
        if not subject.artifact.uri:
            raise InvalidArgument(
                "subject.artifact.uri",
                subject.artifact.uri,
                "must be the s3:// URI of a model from FitSubject",
            )
        if subject.backend and subject.backend != self.backend.name:
            raise InvalidArgument(
                "subject.backend",
                subject.backend,
                f"must be {self.backend.name!r}, the backend of this inpainter",
            )


def fit_config(settings: common_pb2.FitSettings) -> FitConfig:
    """``FitSettings`` with the proto's defaults applied to unset fields, each value checked
    (``services.common.fit_settings.resolve_fit_settings``, shared with the coordinator).

    Float fields come back as the decimals they were written as (1e-4, not float32's 9.99999974738e-05).

    Raises:
        InvalidArgument: a value out of range, naming ``settings.<field>``.
    """
    resolved = resolve_fit_settings(settings, "settings")
    return FitConfig(
        steps=resolved.steps,
        learning_rate=float32_decimal(resolved.learning_rate),
        rank=resolved.rank,
        prompt=resolved.prompt,
        resolution=resolved.resolution,
        flip=resolved.flip,
        max_rotation_deg=float32_decimal(resolved.max_rotation_deg),
        clusters=resolved.clusters,
        seed=resolved.seed,
    )


def build_servicer(settings: InpainterSettings, store: BlobStore) -> InpainterServicer:
    """The servicer with its backend, as the server and in-process callers build it."""
    if settings.backend == "sd-lora":
        if not settings.model:
            raise ConfigError("the sd-lora backend needs a model: set TIRE_INPAINTER_MODEL.")
        options = dict(
            model=settings.model,
            store=store,
            model_cache_dir=settings.model_cache_dir,
            device=settings.device,
            dtype=settings.dtype,
            resolution=settings.resolution,
            batch_size=settings.batch_size,
            fit_batch_size=settings.fit_batch_size,
            adapter_cache_size=settings.adapter_cache_size,
        )
    elif settings.backend == "triton":
        if not settings.triton_url:
            raise ConfigError("the triton backend needs Triton's address: set TIRE_INPAINTER_TRITON_URL.")
        options = dict(url=settings.triton_url, version=settings.triton_version)
    else:
        options = dict(
            threads=settings.threads,
            transport_iterations=settings.transport_iterations,
            transport_samples=settings.transport_samples,
            smoothing_sigma=settings.smoothing_sigma,
            fill_radius=settings.fill_radius,
            max_fit_samples=settings.max_fit_samples,
            max_fit_iterations=settings.max_fit_iterations,
        )
    return InpainterServicer(make_backend(settings.backend, **options), store, settings)


def warm_up(servicer: InpainterServicer, triton_wait_s: float = 600.0) -> None:
    """Fit and inpaint one tiny image before SERVING: the colour backend compiles its numba kernel, the
    sd-lora backend runs one training and one denoising step through every component, the triton
    backend first waits (up to ``triton_wait_s``) for Triton to serve a ready version, then does the
    same through it."""
    wait_for_models(servicer.backend, triton_wait_s)
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal((200, 60, 40), 12, size=(1, 16, 16, 3)), 0, 255).astype(np.uint8)  # a red
    masks = np.ones((1, 16, 16), dtype=np.float32)
    config = FitConfig(steps=2, clusters=2, rank=1, resolution=64)
    subject = servicer.backend.fit_subject(images, masks, config, lambda *_: None)
    alpha = np.ones((1, 16, 16), dtype=np.float32)
    alpha[0, 6:9, 6:9] = 0.0
    # The subject's colours inverted (a cyan), in the left half: a region that drifted from the subject,
    # which the colour backend moves (its kernels run; a view that fits the subject would move nothing).
    unobserved = np.zeros((1, 16, 16), dtype=bool)
    unobserved[:, :, :8] = True
    servicer.backend.inpaint(
        255 - images, unobserved, alpha, subject, servicer.backend.default_strength, 0, num_inference_steps=2
    )


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_INPAINTER_",
        InpainterSettings,
        build_servicer,
        inpainter_pb2_grpc.add_InpainterServiceServicer_to_server,
        warm_up,
        asynchronous=True,  # grpc.aio: a FitSubject stream holds no thread of the pool while it waits
    )


if __name__ == "__main__":
    main()
