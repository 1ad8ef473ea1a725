"""The tracker service: ``tire.v1.TrackerService``.

Validates ``Track`` and ``LocateUnobserved`` requests, reads the views from the store, runs the
configured backend and writes its results back as tensor references. A request's ``model_version``
holds a triton backend to that version of its model (a job tracks with the version it started with);
Describe reports the version a request without one gets.

Configuration (environment, read once at start):
    TIRE_TRACKER_BACKEND      geometric (default: any CPU, no weights), cotracker (CoTracker3, the paper's)
                              or triton (the same CoTracker3, served by Triton)
    TIRE_TRACKER_MAX_VIEWS    views per request (default 256)
    TIRE_TRACKER_MAX_PIXELS   views x height x width per request (default 2**26)
    TIRE_TRACKER_MAX_QUERIES  query points per Track call (default 262,144)
    TIRE_TRACKER_TRACK_FOREGROUND_THRESHOLD  alpha above which Track counts a pixel as foreground (0.5)
    TIRE_TRACKER_TRACK_DEPTH_TOLERANCE       relative depth tolerance of Track's visibility test (0.03)
    TIRE_TRACKER_COTRACKER_CHECKPOINT  cotracker: path of CoTracker3's scaled_offline.pth (required)
    TIRE_TRACKER_DEVICE                cotracker: auto (default: the first GPU torch sees, else the CPU),
                                       cpu, cuda or cuda:N
    TIRE_TRACKER_QUERY_STRIDE          cotracker, triton: LocateUnobserved queries one pixel per
                                       stride x stride cell of a target's foreground (default 1: every pixel)
    TIRE_TRACKER_POINTS_PER_CALL       cotracker: queries per model call, bounding its memory (8192)
    TIRE_TRACKER_TRITON_URL            triton: Triton's gRPC address host:port, serving the model ``track``
                                       (services.tracker.triton_model; its version sets the checkpoint and
                                       points per call)
    TIRE_TRACKER_TRITON_VERSION        triton: the model version to call ("" = the latest Triton serves)
    TIRE_TRACKER_PORT, TIRE_TRACKER_METRICS_PORT, ...  see services.common.config.ServerSettings
    TIRE_S3_ENDPOINT, TIRE_S3_ACCESS_KEY, TIRE_S3_SECRET_KEY, TIRE_S3_BUCKET  the object store
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tire.v1 import tracker_pb2, tracker_pb2_grpc

from services.common.errors import ConfigError, InvalidArgument, ResourceExhausted
from services.common.server import describe, models_at, run_service, wait_for_models
from services.common.store import BlobStore
from services.common.tensors import TENSOR_CACHE_MIB, TensorCache, get_tensor, put_tensor
from services.common.views import Views, read_views
from services.tracker.backends import make_backend
from services.tracker.contract import BACKENDS, LocateOptions, TrackerBackend

SERVICE_NAME = "tire.v1.TrackerService"
MAX_MIN_REGION_PIXELS = 4096
MAX_DILATION_PIXELS = 64


@dataclass(frozen=True)
class TrackerSettings:
    backend: str = "geometric"
    max_views: int = 256
    max_pixels: int = 2**26
    max_queries: int = 262_144
    track_foreground_threshold: float = 0.5
    track_depth_tolerance: float = 0.03
    cotracker_checkpoint: str = ""
    device: str = "auto"
    query_stride: int = 1
    points_per_call: int = 8192
    triton_url: str = ""
    triton_version: str = ""
    view_cache_mib: int = TENSOR_CACHE_MIB  # recent views kept by sha256 (a job's sweeps share an orbit)

    def __post_init__(self) -> None:
        checks = [
            (self.max_views >= 1, "max_views", "must be at least 1"),
            (self.max_pixels >= 1, "max_pixels", "must be at least 1"),
            (self.max_queries >= 1, "max_queries", "must be at least 1"),
            (0 < self.track_foreground_threshold < 1, "track_foreground_threshold", "must be in (0, 1)"),
            (0 < self.track_depth_tolerance <= 1, "track_depth_tolerance", "must be in (0, 1]"),
            (self.query_stride >= 1, "query_stride", "must be at least 1"),
            (self.points_per_call >= 1, "points_per_call", "must be at least 1"),
            (self.view_cache_mib >= 0, "view_cache_mib", "must not be negative"),
        ]
        for ok, name, problem in checks:
            if not ok:
                raise ConfigError(f"TrackerSettings.{name} {problem}, got {getattr(self, name)!r}.")


class TrackerServicer(tracker_pb2_grpc.TrackerServiceServicer):
    def __init__(
        self, backend: TrackerBackend, store: BlobStore, settings: TrackerSettings = TrackerSettings()
    ):
        self.backend = backend
        self.store = store
        self.settings = settings
        self._view_cache = TensorCache(settings.view_cache_mib * 2**20)

    def Describe(self, request, context):
        backend = self.backend
        model = getattr(backend, "base_model", "")
        answer = describe(SERVICE_NAME, backend.name, backend.device, BACKENDS, self.settings, model)
        answer.model_version = getattr(backend, "model_version", "")
        return answer

    def Track(self, request, context):
        backend = models_at(self.backend, request.model_version)
        frames = self._views(request, "frames")
        queries = self._queries(request.queries, frames)
        tracks, visibility = backend.track(frames, queries, request.backward_tracking)
        return tracker_pb2.TrackResponse(
            tracks=put_tensor(self.store, tracks.astype(np.float32)),
            visibility=put_tensor(self.store, visibility.astype(np.uint8)),
        )

    def LocateUnobserved(self, request, context):
        views = self._views(request, "views")
        if request.video:
            views = views.select(self._indices(request.video, "video", len(views)))
        targets = self._indices(request.target_indices, "target_indices", len(views))
        anchors = self._indices(request.anchor_indices, "anchor_indices", len(views))
        for j, a in enumerate(anchors):
            if a in targets:
                raise InvalidArgument(f"anchor_indices[{j}]", a, "must not also be a target")
        options = self._options(request)
        backend = models_at(self.backend, request.model_version)
        located = backend.locate_unobserved(views, targets, anchors, options)
        store = self.store
        return tracker_pb2.LocateUnobservedResponse(
            unobserved=put_tensor(store, located.unobserved.astype(np.uint8), previews=True),
            anchor_index=put_tensor(store, located.anchor_index.astype(np.int32)),
            anchor_xy=put_tensor(store, located.anchor_xy.astype(np.float32)),
            transferred_rgb=put_tensor(store, located.transferred_rgb.astype(np.uint8), previews=True),
            unobserved_fraction=located.unobserved_fraction.astype(np.float32).tolist(),
        )

    def _views(self, request, field: str) -> Views:
        if not request.HasField(field):
            raise InvalidArgument(field, None, "must be set")
        return read_views(
            self.store,
            getattr(request, field),
            field=field,
            require=("rgb", "alpha", "depth"),
            max_views=self.settings.max_views,
            max_pixels=self.settings.max_pixels,
            cache=self._view_cache,
        )

    def _queries(self, ref, frames: Views) -> np.ndarray:
        """``[N, 3]`` float32 (t, x, y): t an integer frame index, (x, y) inside that frame."""
        if not ref.uri:
            raise InvalidArgument("queries", None, "must be set: an [N, 3] float32 tensor of (t, x, y)")
        if len(ref.shape) == 2 and ref.shape[0] > self.settings.max_queries:
            raise ResourceExhausted(
                f"`queries` holds {ref.shape[0]} points, over this tracker's limit of "
                f"{self.settings.max_queries}; split the request."
            )
        queries = get_tensor(self.store, ref, field="queries", dtype=np.float32, shape=(None, 3), finite=True)
        if len(queries) == 0:
            raise InvalidArgument("queries", "shape [0, 3]", "must hold at least one point")
        num_frames, height, width = frames.shape
        t, x, y = queries[:, 0], queries[:, 1], queries[:, 2]
        for bad, problem in (
            (
                (t != np.floor(t)) | (t < 0) | (t >= num_frames),
                f"must have an integer t in [0, {num_frames})",
            ),
            ((x < 0) | (x >= width), f"must have x in [0, {width})"),
            ((y < 0) | (y >= height), f"must have y in [0, {height})"),
        ):
            if bad.any():
                i = int(np.argmax(bad))
                raise InvalidArgument(f"queries[{i}]", queries[i].tolist(), problem)
        return queries

    @staticmethod
    def _indices(values, field: str, num_views: int) -> list[int]:
        """Non-empty, in range, without duplicates."""
        if len(values) == 0:
            raise InvalidArgument(field, [], "must name at least one view")
        seen: set[int] = set()
        for i, value in enumerate(values):
            if value >= num_views:
                raise InvalidArgument(
                    f"{field}[{i}]", value, f"must be below the number of views, {num_views}"
                )
            if value in seen:
                raise InvalidArgument(f"{field}[{i}]", value, "must not repeat an earlier index")
            seen.add(value)
        return [int(v) for v in values]

    @staticmethod
    def _options(request) -> LocateOptions:
        """The request's options over the proto's defaults, each range-checked."""
        message = request.options
        defaults = LocateOptions()

        def get(name: str):
            return getattr(message, name) if message.HasField(name) else getattr(defaults, name)

        options = LocateOptions(
            foreground_threshold=float(get("foreground_threshold")),
            depth_tolerance=float(get("depth_tolerance")),
            min_region_pixels=int(get("min_region_pixels")),
            dilation_pixels=int(get("dilation_pixels")),
            transfer_appearance=bool(get("transfer_appearance")),
        )
        checks = (
            ("foreground_threshold", 0 < options.foreground_threshold < 1, "must be in (0, 1)"),
            ("depth_tolerance", 0 < options.depth_tolerance <= 1, "must be in (0, 1]"),
            (
                "min_region_pixels",
                options.min_region_pixels <= MAX_MIN_REGION_PIXELS,
                f"must be at most {MAX_MIN_REGION_PIXELS}",
            ),
            (
                "dilation_pixels",
                options.dilation_pixels <= MAX_DILATION_PIXELS,
                f"must be at most {MAX_DILATION_PIXELS}",
            ),
        )
        for name, ok, problem in checks:
            if not ok:
                raise InvalidArgument(f"options.{name}", getattr(options, name), problem)
        return options


def build_servicer(settings: TrackerSettings, store: BlobStore) -> TrackerServicer:
    """The servicer with its backend, as the server and in-process callers build it.

    Raises:
        ConfigError: an unknown backend or device, triton without its address.
        FailedPrecondition: cotracker without its package or checkpoint (the message says how to get
            them); the server does not start.
    """
    backend = make_backend(
        settings.backend,
        foreground_threshold=settings.track_foreground_threshold,
        depth_tolerance=settings.track_depth_tolerance,
        cotracker_checkpoint=settings.cotracker_checkpoint,
        device=settings.device,
        query_stride=settings.query_stride,
        points_per_call=settings.points_per_call,
        triton_url=settings.triton_url,
        triton_version=settings.triton_version,
    )
    return TrackerServicer(backend, store, settings)


def warm_up(servicer: TrackerServicer, triton_wait_s: float = 600.0) -> None:
    """Run both methods on two tiny views (a plane facing each camera) before health says SERVING: for
    cotracker, a first model call on the device (a two-frame video of 16 x 16 pixels); the triton backend
    first waits (up to ``triton_wait_s``) for Triton to serve a ready version, then does the same
    through it."""
    from services.common.cameras import orbit_cameras

    wait_for_models(servicer.backend, triton_wait_s)

    size = 16
    alpha = np.ones((2, size, size), np.float32)
    views = Views(
        rgb=np.zeros((2, size, size, 3), np.uint8),
        alpha=alpha,
        depth=np.full((2, size, size), 1.5, np.float32),
        cameras=orbit_cameras([0.0, 20.0], size, size),
    )
    servicer.backend.locate_unobserved(views, [1], [0], LocateOptions())
    servicer.backend.track(views, np.array([[0, 8.5, 8.5]], np.float32), True)


def main() -> None:
    run_service(
        SERVICE_NAME,
        "TIRE_TRACKER_",
        TrackerSettings,
        build_servicer,
        tracker_pb2_grpc.add_TrackerServiceServicer_to_server,
        warm_up,
    )


if __name__ == "__main__":
    main()
