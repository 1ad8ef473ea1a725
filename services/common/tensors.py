"""The one tensor-reference codec: numpy arrays <-> ``TensorRef`` to a safetensors file in the store.

A stored tensor is a safetensors file holding one tensor named "tensor", at its content key with suffix
".safetensors". Its ``TensorRef`` repeats the dtype and shape, so a reader can check a request (and the
size it would download) before reading, and checks after reading that the file agrees with its ref.

PNG helpers live here too: previews of image tensors, and reference images that stages ship as PNG.
"""

from __future__ import annotations

import io
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy
from numpy.typing import DTypeLike
from PIL import Image
from tire.v1 import common_pb2

from services.common.errors import IntegrityError, InvalidArgument, ObjectTooLarge
from services.common.store import BlobStore

GiB = 1024**3
_NAME = "tensor"
# Room for the safetensors header (8-byte length plus ~100 bytes of JSON for one tensor).
_HEADER_SLACK = 64 * 1024

_DTYPES: dict[int, np.dtype] = {
    common_pb2.DTYPE_UINT8: np.dtype(np.uint8),
    common_pb2.DTYPE_FLOAT32: np.dtype(np.float32),
    common_pb2.DTYPE_INT32: np.dtype(np.int32),
    common_pb2.DTYPE_FLOAT16: np.dtype(np.float16),
    common_pb2.DTYPE_INT64: np.dtype(np.int64),
    common_pb2.DTYPE_BOOL: np.dtype(np.bool_),
}
_PROTO_DTYPES = {dtype: proto for proto, dtype in _DTYPES.items()}


def to_proto_dtype(dtype: DTypeLike) -> int:
    """The ``common_pb2.Dtype`` value of a numpy dtype (any byte order). ValueError if unsupported."""
    dt = np.dtype(dtype)
    proto = _PROTO_DTYPES.get(dt.newbyteorder("="))
    if proto is None:
        supported = ", ".join(d.name for d in _PROTO_DTYPES)
        raise ValueError(f"dtype {dt} cannot be stored as a tensor; supported: {supported}")
    return proto


def to_numpy_dtype(proto: int) -> np.dtype:
    """The numpy dtype of a ``common_pb2.Dtype`` value. ValueError for DTYPE_UNSPECIFIED or unknown."""
    if proto not in _DTYPES:
        raise ValueError(f"no numpy dtype for Dtype {_dtype_name(proto)}")
    return _DTYPES[proto]


def put_tensor(store: BlobStore, array: np.ndarray, *, previews: bool = False) -> common_pb2.TensorRef:
    """Store ``array`` as a safetensors file and return its reference.

    Args:
        store: where to write.
        array: any shape (0-d and empty axes included) of uint8, float32, int32, float16, int64 or bool.
        previews: also write one PNG per view and list them in ``preview_uris``. Only for images
            ``[V, H, W, 3]`` uint8 and masks ``[V, H, W]`` (uint8 0/1, bool, or float in [0, 1]).

    Raises:
        ValueError: unsupported dtype, or ``previews`` for an array that is not an image or a mask.
    """
    array = np.asarray(array)
    proto = to_proto_dtype(array.dtype)
    # safetensors copies raw memory: it needs C order (and writes little-endian itself).
    # (Not np.ascontiguousarray: it turns 0-d arrays into 1-d ones.)
    contiguous = np.asarray(array, dtype=array.dtype.newbyteorder("="), order="C")
    pngs = _preview_pngs(contiguous) if previews else []
    ref = store.put_bytes(safetensors.numpy.save({_NAME: contiguous}), suffix=".safetensors")
    return common_pb2.TensorRef(
        uri=ref.uri,
        dtype=proto,
        shape=list(array.shape),
        sha256=ref.sha256,
        preview_uris=[store.put_bytes(png, suffix=".png", media_type="image/png").uri for png in pngs],
    )


def get_tensor(
    store: BlobStore,
    ref: common_pb2.TensorRef,
    *,
    field: str = "tensor",
    dtype: DTypeLike | None = None,
    shape: Sequence[int | None] | None = None,
    max_bytes: int = GiB,
    finite: bool = False,
) -> np.ndarray:
    """Read the tensor ``ref`` points to, checking it against the caller's expectations.

    Args:
        store: where to read.
        ref: the reference, usually a request field.
        field: the request field's name, used in error messages (e.g. "views.rgb").
        dtype: the dtype the caller needs, or None for any.
        shape: the shape the caller needs, None in an axis for any size, e.g. ``(None, 256, 256, 3)``.
        max_bytes: refuse tensors whose declared data is larger, before downloading.
        finite: refuse NaN and infinities (float dtypes only).

    Returns:
        The array, of ``ref.dtype`` and ``ref.shape``, writable and backed by its own buffer.

    Raises:
        InvalidArgument: the ref is incomplete or not what the caller expects (names ``field``).
        ObjectTooLarge: the declared size is over ``max_bytes``.
        IntegrityError: the bytes do not match ``ref.sha256``, or the file disagrees with the ref.
        ObjectNotFound, StoreAuthError, StoreUnavailable: from the store.
    """
    declared_dtype, declared_shape = _check_ref(ref, field)
    _check_expected(field, declared_dtype, declared_shape, dtype, shape)
    nbytes = math.prod(declared_shape) * declared_dtype.itemsize
    if nbytes > max_bytes:
        raise ObjectTooLarge(
            f"`{field}` declares a {list(declared_shape)} {declared_dtype} tensor of {nbytes} bytes, "
            f"over the limit of {max_bytes} bytes."
        )
    data = store.get_bytes(ref.uri, sha256=ref.sha256, max_bytes=nbytes + _HEADER_SLACK)
    array = _decode(data, ref.uri)
    if array.dtype != declared_dtype or array.shape != declared_shape:
        raise IntegrityError(
            f"{ref.uri} holds a {list(array.shape)} {array.dtype} tensor but its reference `{field}` "
            f"declares {list(declared_shape)} {declared_dtype}."
        )
    if finite and array.dtype.kind == "f":
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise InvalidArgument(
                field, f"{bad} NaN/inf of {array.size} values", "must hold only finite values"
            )
    return array


TENSOR_CACHE_MIB = 256
"""The default budget of a stage's ``TensorCache`` (a 36-view orbit at 512² holds about 100 MiB)."""


class TensorCache:
    """Tensors read before, kept by content: a reference to the same bytes (uri and sha256) read with the
    same checks gives a copy of the array without reading the store again. For a stage that gets the
    same tensors in call after call (the tracker: an orbit's views for each sweep of a ring).

    A reference's bytes are verified against its sha256 when first read, so the copy is what the store
    holds. Least recently used out first, within ``max_bytes``; thread-safe.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._arrays: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get_tensor(self, store: BlobStore, ref: common_pb2.TensorRef, **checks: Any) -> np.ndarray:
        """``get_tensor(store, ref, **checks)``, from memory when it was read so before."""
        key = (ref.uri, ref.sha256, ref.dtype, tuple(ref.shape), tuple(sorted(checks.items())))
        with self._lock:
            kept = self._arrays.get(key)
            if kept is not None:
                self._arrays.move_to_end(key)
                return kept.copy()
        array = get_tensor(store, ref, **checks)
        if array.nbytes <= self.max_bytes:
            with self._lock:
                if key not in self._arrays:
                    self._arrays[key] = array.copy()
                    self._bytes += array.nbytes
                while self._bytes > self.max_bytes:
                    _, dropped = self._arrays.popitem(last=False)
                    self._bytes -= dropped.nbytes
        return array


PREVIEW_COMPRESS_LEVEL = 1
"""zlib level of preview PNGs. A job writes about 180 of them; at 256 x 256, level 1 encodes a view in
4.2 ms against 9.3 ms at level 6 for 9% more bytes (38 against 35 KiB), half of a CPU second per job."""


def png_bytes(image: np.ndarray, compress_level: int = 6) -> bytes:
    """Encode ``image`` as PNG: ``[H, W]`` grey, ``[H, W, 3]`` RGB or ``[H, W, 4]`` RGBA, uint8.

    The bytes depend only on the pixels and ``compress_level`` (zlib's 0-9; no timestamps or metadata),
    so equal images share a key. Pictures a person downloads keep the default; previews use
    ``PREVIEW_COMPRESS_LEVEL``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(
            f"a PNG needs [H, W], [H, W, 3] or [H, W, 4] uint8, got {list(image.shape)} {image.dtype}"
        )
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def read_png(data: bytes, *, field: str = "image", mode: str | None = None) -> np.ndarray:
    """Decode a PNG to ``[H, W, 4]`` uint8 if it has transparency, else ``[H, W, 3]`` uint8.

    Args:
        data: the file's bytes.
        field: the request field it came from, for error messages.
        mode: "RGB" or "RGBA" to convert to that layout whatever the file holds.

    Raises:
        InvalidArgument: not a PNG, or not decodable (names ``field``).
    """
    if mode not in (None, "RGB", "RGBA"):
        raise ValueError(f"mode must be None, 'RGB' or 'RGBA', got {mode!r}")
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            has_alpha = "A" in image.getbands() or "transparency" in image.info
            return np.array(image.convert(mode or ("RGBA" if has_alpha else "RGB")))
    except Image.UnidentifiedImageError as exc:  # its text is a repr of the buffer: say it plainly
        raise InvalidArgument(
            field, f"{len(data)} bytes", "must be a PNG image (these bytes are not one)"
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidArgument(field, f"{len(data)} bytes", f"must be a PNG image ({exc})") from exc


def _check_ref(ref: common_pb2.TensorRef, field: str) -> tuple[np.dtype, tuple[int, ...]]:
    """The ref's declared dtype and shape, after checking it is complete."""
    if not ref.uri:
        raise InvalidArgument(f"{field}.uri", ref.uri, "must be an s3:// URI")
    if ref.dtype not in _DTYPES:
        raise InvalidArgument(f"{field}.dtype", _dtype_name(ref.dtype), "must be set to a supported dtype")
    if any(size < 0 for size in ref.shape):
        raise InvalidArgument(f"{field}.shape", list(ref.shape), "must hold sizes >= 0")
    if not ref.sha256:
        raise InvalidArgument(f"{field}.sha256", ref.sha256, "must be the sha256 of the tensor file")
    return _DTYPES[ref.dtype], tuple(ref.shape)


def _check_expected(
    field: str,
    actual_dtype: np.dtype,
    actual_shape: tuple[int, ...],
    dtype: DTypeLike | None,
    shape: Sequence[int | None] | None,
) -> None:
    if dtype is not None and actual_dtype != np.dtype(dtype):
        raise InvalidArgument(field, f"dtype {actual_dtype}", f"must have dtype {np.dtype(dtype)}")
    if shape is not None and (
        len(shape) != len(actual_shape)
        or any(e is not None and e != a for e, a in zip(shape, actual_shape, strict=True))
    ):
        wanted = "[" + ", ".join("*" if e is None else str(e) for e in shape) + "]"
        raise InvalidArgument(field, f"shape {list(actual_shape)}", f"must have shape {wanted}")


def _decode(data: bytes, uri: str) -> np.ndarray:
    """The one tensor in a safetensors file."""
    try:
        tensors = safetensors.numpy.load(data)
    except (safetensors.SafetensorError, KeyError) as exc:  # KeyError: a dtype numpy cannot hold
        raise IntegrityError(f"{uri} is not a readable safetensors file ({exc}).") from exc
    if list(tensors) != [_NAME]:
        raise IntegrityError(f"{uri} holds tensors {sorted(tensors)}, expected one named {_NAME!r}.")
    return tensors[_NAME]


def _preview_pngs(array: np.ndarray) -> list[bytes]:
    """One PNG per view of an image ``[V, H, W, 3]`` uint8 or a mask ``[V, H, W]``."""
    if array.ndim == 4 and array.shape[3] == 3 and array.dtype == np.uint8:
        views = array
    elif array.ndim == 3 and array.dtype.kind == "f":
        # Previews are for people: clip the float noise of accumulated opacity, show NaN as 0.
        views = np.rint(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    elif array.ndim == 3 and array.dtype == np.bool_:
        views = array.astype(np.uint8) * 255
    elif array.ndim == 3 and array.dtype == np.uint8:
        # 0/1 masks are scaled to be visible; anything larger is taken to be 0..255 already.
        views = array * 255 if array.max(initial=0) <= 1 else array
    else:
        raise ValueError(
            "previews need an image [V, H, W, 3] uint8 or a mask [V, H, W], "
            f"got {list(array.shape)} {array.dtype}"
        )
    return [png_bytes(view, PREVIEW_COMPRESS_LEVEL) for view in views]


def _dtype_name(proto: int) -> str:
    try:
        return common_pb2.Dtype.Name(proto)
    except ValueError:
        return str(proto)
