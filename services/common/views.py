"""Views on the wire and in memory: a ``tire.v1.ViewSet`` of tensor references, read into ``Views``.

Every stage that takes rendered views (tracker, refiner, reconstructor) reads them with ``read_views``,
so a wrong shape, a NaN depth or a missing component is refused the same way everywhere, naming the
field (``views.depth``) and the value.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
from tire.v1 import common_pb2

from services.common import validation
from services.common.cameras import Cameras, cameras_from_proto, cameras_to_proto
from services.common.errors import InvalidArgument, ResourceExhausted
from services.common.store import BlobStore
from services.common.tensors import TensorCache, get_tensor, put_tensor

COMPONENTS = ("rgb", "alpha", "depth")


@dataclass(frozen=True, eq=False)
class Views:
    """V rendered views of H x W pixels and their cameras.

    Attributes:
        rgb: ``[V, H, W, 3]`` uint8, or None when the request did not carry it.
        alpha: ``[V, H, W]`` float32 coverage in [0, 1], or None.
        depth: ``[V, H, W]`` float32 expected camera-space depth (world units, >= 0, 0 where empty), or None.
        cameras: V OpenCV world-to-camera cameras of W x H pixels.
        background: ``[3]`` float32 in [0, 1], the colour the views were composited over; when not
            given, ``estimate_background`` of rgb and alpha (black without them).
    """

    rgb: np.ndarray | None
    alpha: np.ndarray | None
    depth: np.ndarray | None
    cameras: Cameras
    background: np.ndarray | None = None

    def __post_init__(self) -> None:
        background = self.background
        if background is None:
            known = self.rgb is not None and self.alpha is not None
            background = estimate_background(self.rgb, self.alpha) if known else np.zeros(3, np.float32)
        object.__setattr__(self, "background", np.asarray(background, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(V, H, W)``."""
        return len(self.cameras), self.cameras.height, self.cameras.width

    def select(self, indices) -> Views:
        """The views at ``indices`` (a list of ints), in that order."""
        index = np.asarray(indices, dtype=np.int64)

        def pick(a):
            return None if a is None else a[index]

        return Views(pick(self.rgb), pick(self.alpha), pick(self.depth), self.cameras[index], self.background)


def check_view_limits(
    field: str, views: int, height: int, width: int, *, max_views: int, max_pixels: int, what: str = "views"
) -> None:
    """Refuse a request of more than ``max_views`` views or ``max_pixels`` pixels (views x height x
    width) before anything is read or computed.

    Args:
        field: the request field that holds or asks for the views, for the message.
        views, height, width: the request's V, H and W.
        max_views, max_pixels: this service's limits.
        what: what the views are called in the message ("views", "reference images").

    Raises:
        ResourceExhausted: over a limit; the message names the field, the count and the limit.
    """
    if views > max_views:
        raise ResourceExhausted(f"`{field}` holds {views} {what}, over this service's limit of {max_views}.")
    pixels = views * height * width
    if pixels > max_pixels:
        raise ResourceExhausted(
            f"`{field}` holds {pixels} pixels ({views} {what} of {width}x{height}), over this service's "
            f"limit of {max_pixels}; split the request."
        )


def read_views(
    store: BlobStore,
    message: common_pb2.ViewSet,
    *,
    field: str = "views",
    require: Collection[str] = COMPONENTS,
    max_views: int = 256,
    max_pixels: int = 2**26,
    cache: TensorCache | None = None,
) -> Views:
    """Validate a ``ViewSet`` and read its tensors from the store (through ``cache`` when given).

    The cameras fix V, H and W; every present tensor must match them. Components in ``require`` must
    be present; others are read when present and left None when absent.

    Args:
        store: where the tensors live.
        message: the request's ``ViewSet``.
        field: its name in the request, for error messages.
        require: the components the caller needs, a subset of ("rgb", "alpha", "depth").
        max_views, max_pixels: limits on V and on V x H x W.

    Raises:
        InvalidArgument: a missing component, a tensor of the wrong dtype or shape, an alpha outside
            [0, 1], a negative or non-finite depth; the message names the field.
        ResourceExhausted: more views or pixels than the limits.
        ObjectNotFound, IntegrityError, ...: from the store.
    """
    if not message.HasField("cameras"):
        raise InvalidArgument(f"{field}.cameras", None, "must be set: the views' cameras fix V, H and W")
    cameras = cameras_from_proto(message.cameras, field=f"{field}.cameras")
    v, h, w = len(cameras), cameras.height, cameras.width
    check_view_limits(field, v, h, w, max_views=max_views, max_pixels=max_pixels)
    expected = {
        "rgb": (np.uint8, (v, h, w, 3)),
        "alpha": (np.float32, (v, h, w)),
        "depth": (np.float32, (v, h, w)),
    }
    arrays: dict[str, np.ndarray | None] = {}
    for name in COMPONENTS:
        ref = getattr(message, name)
        if not message.HasField(name) or not ref.uri:
            if name in require:
                raise InvalidArgument(f"{field}.{name}", None, "must be set")
            arrays[name] = None
            continue
        dtype, shape = expected[name]
        read = cache.get_tensor if cache is not None else get_tensor
        arrays[name] = read(store, ref, field=f"{field}.{name}", dtype=dtype, shape=shape, finite=True)
    alpha, depth = arrays["alpha"], arrays["depth"]
    if alpha is not None and (alpha.min(initial=0.0) < 0.0 or alpha.max(initial=0.0) > 1.0):
        raise InvalidArgument(
            f"{field}.alpha", f"values in [{alpha.min()}, {alpha.max()}]", "must lie in [0, 1]"
        )
    if depth is not None and depth.min(initial=0.0) < 0.0:
        raise InvalidArgument(f"{field}.depth", f"minimum {depth.min()}", "must be non-negative")
    background = None
    if message.background_rgb:
        background = validation.colour(message.background_rgb, f"{field}.background_rgb")
    return Views(arrays["rgb"], alpha, depth, cameras, background)


def write_views(store: BlobStore, views: Views, *, previews: bool = False) -> common_pb2.ViewSet:
    """Store the present components of ``views`` and return the ``ViewSet`` that references them."""
    message = common_pb2.ViewSet(
        cameras=cameras_to_proto(views.cameras), background_rgb=views.background.tolist()
    )
    for name in COMPONENTS:
        array = getattr(views, name)
        if array is not None:
            getattr(message, name).CopyFrom(put_tensor(store, array, previews=previews and name != "depth"))
    return message


def estimate_background(rgb: np.ndarray, alpha: np.ndarray, empty_below: float = 1.0 / 255.0) -> np.ndarray:
    """The colour the views were composited over, from their empty pixels.

    Renders carry ``rgb = sum_i w_i c_i + (1 - alpha) * background``; stages that un-composite need the
    background, which a ``ViewSet`` names unless its maker did not say (``Views`` falls back to this).

    Args:
        rgb: ``[V, H, W, 3]`` uint8.
        alpha: ``[V, H, W]`` float32.
        empty_below: alpha under which a pixel counts as empty.

    Returns:
        ``[3]`` float32 in [0, 1]: the per-channel median of the empty pixels, black when none is empty.
    """
    empty = alpha < empty_below
    if not empty.any():
        return np.zeros(3, dtype=np.float32)
    return (np.median(rgb[empty], axis=0) / 255.0).astype(np.float32)
