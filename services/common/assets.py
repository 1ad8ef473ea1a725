"""Assets on the wire: a ``tire.v1.AssetRef`` (one splat file per time step, any format of
``services.common.formats``) read into ``Gaussians``, and Gaussians written back as files."""

from __future__ import annotations

from typing import NamedTuple

from tire.v1 import common_pb2

from services.common.errors import AssetError, InvalidArgument
from services.common.formats import FORMATS, detect_format
from services.common.gaussians import MAX_GAUSSIANS, Gaussians, ply_layout, write_ply
from services.common.store import BlobStore


def load_frame(
    store: BlobStore,
    asset: common_pb2.AssetRef,
    time_step: int,
    *,
    field: str = "asset",
    max_gaussians: int = MAX_GAUSSIANS,
) -> Gaussians:
    """Read time step ``time_step`` of ``asset`` (a 3D asset has only step 0), in any format.

    Raises:
        InvalidArgument: no frames, a time step out of range, an empty URI or a file that is not a
            splat file ``read_splats`` reads (naming ``{field}.frames[t]`` and the URI).
        ObjectNotFound, IntegrityError, ...: from the store.
    """
    return read_frame(store, asset, time_step, field=field, max_gaussians=max_gaussians).gaussians


class SplatFile(NamedTuple):
    """A frame as read from its file."""

    gaussians: Gaussians
    format: str  # a key of ``FORMATS``
    ply_layout: str  # a `.ply`'s own layout (``PLY_LAYOUTS``), which its repair keeps; "inria" otherwise


def read_frame(
    store: BlobStore,
    asset: common_pb2.AssetRef,
    time_step: int,
    *,
    field: str = "asset",
    max_gaussians: int = MAX_GAUSSIANS,
) -> SplatFile:
    """``load_frame``, with the file's format and layout."""
    frames = asset.frames
    if not frames:
        raise InvalidArgument(f"{field}.frames", [], "must name at least one splat file")
    if time_step >= len(frames):
        raise InvalidArgument("time_step", time_step, f"must be below the asset's {len(frames)} time steps")
    name = f"{field}.frames[{time_step}]"
    ref = frames[time_step]
    if not ref.uri:
        raise InvalidArgument(f"{name}.uri", ref.uri, "must be an s3:// URI")
    data = store.get_bytes(ref.uri, sha256=ref.sha256 or None)
    try:
        format_name = detect_format(data, ref.uri)
        gaussians = FORMATS[format_name].read(data, max_gaussians=max_gaussians)
        return SplatFile(gaussians, format_name, ply_layout(data) if format_name == "ply" else "inria")
    except AssetError as exc:
        raise InvalidArgument(name, ref.uri, f"is not a splat file this reads ({exc})") from exc


def store_frame(
    store: BlobStore, gaussians: Gaussians, format_name: str = "ply", *, ply_layout: str = "inria"
) -> common_pb2.ObjectRef:
    """Write ``gaussians`` in ``format_name`` (a `.ply` in ``ply_layout``, one of ``PLY_LAYOUTS``);
    return its content-addressed reference."""
    spec = FORMATS[format_name]
    data = write_ply(gaussians, ply_layout) if format_name == "ply" else spec.write(gaussians)
    return store.put_bytes(data, suffix=spec.extension, media_type=spec.media_type)
