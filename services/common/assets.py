"""Assets on the wire: a ``tire.v1.AssetRef`` (one splat file per time step, any format of
``services.common.formats``) read into ``Gaussians``, and Gaussians written back as files."""

from __future__ import annotations

from tire.v1 import common_pb2

from services.common.errors import AssetError, InvalidArgument
from services.common.formats import FORMATS, detect_format
from services.common.gaussians import MAX_GAUSSIANS, Gaussians
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
    return read_frame(store, asset, time_step, field=field, max_gaussians=max_gaussians)[0]


def read_frame(
    store: BlobStore,
    asset: common_pb2.AssetRef,
    time_step: int,
    *,
    field: str = "asset",
    max_gaussians: int = MAX_GAUSSIANS,
) -> tuple[Gaussians, str]:
    """``load_frame``, and the name of the file's format (a key of ``FORMATS``)."""
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
        return FORMATS[format_name].read(data, max_gaussians=max_gaussians), format_name
    except AssetError as exc:
        raise InvalidArgument(name, ref.uri, f"is not a splat file this reads ({exc})") from exc


def store_frame(store: BlobStore, gaussians: Gaussians, format_name: str = "ply") -> common_pb2.ObjectRef:
    """Write ``gaussians`` in ``format_name`` (``.ply``: INRIA layout); return its content-addressed
    reference."""
    spec = FORMATS[format_name]
    return store.put_bytes(spec.write(gaussians), suffix=spec.extension, media_type=spec.media_type)
