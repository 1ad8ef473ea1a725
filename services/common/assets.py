"""Assets on the wire: a ``tire.v1.AssetRef`` (one ``.ply`` per time step) read into ``Gaussians``."""

from __future__ import annotations

from tire.v1 import common_pb2

from services.common.errors import AssetError, InvalidArgument
from services.common.gaussians import Gaussians, read_ply, write_ply
from services.common.store import BlobStore

PLY_MEDIA_TYPE = "application/x-ply"


def load_frame(
    store: BlobStore,
    asset: common_pb2.AssetRef,
    time_step: int,
    *,
    field: str = "asset",
    max_gaussians: int = 10_000_000,
) -> Gaussians:
    """Read time step ``time_step`` of ``asset`` (a 3D asset has only step 0).

    Raises:
        InvalidArgument: no frames, a time step out of range, an empty URI or a file that is not a
            valid 3DGS ``.ply`` (naming ``{field}.frames[t]`` and the URI).
        ObjectNotFound, IntegrityError, ...: from the store.
    """
    frames = asset.frames
    if not frames:
        raise InvalidArgument(f"{field}.frames", [], "must name at least one .ply")
    if time_step >= len(frames):
        raise InvalidArgument("time_step", time_step, f"must be below the asset's {len(frames)} time steps")
    name = f"{field}.frames[{time_step}]"
    ref = frames[time_step]
    if not ref.uri:
        raise InvalidArgument(f"{name}.uri", ref.uri, "must be an s3:// URI")
    data = store.get_bytes(ref.uri, sha256=ref.sha256 or None)
    try:
        return read_ply(data, max_gaussians=max_gaussians)
    except AssetError as exc:
        raise InvalidArgument(name, ref.uri, f"is not a valid 3DGS .ply ({exc})") from exc


def store_frame(store: BlobStore, gaussians: Gaussians) -> common_pb2.ObjectRef:
    """Write ``gaussians`` as an INRIA-layout ``.ply``; return its content-addressed reference."""
    return store.put_bytes(write_ply(gaussians), suffix=".ply", media_type=PLY_MEDIA_TYPE)
