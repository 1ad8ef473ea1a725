"""Tensor references: safetensors round trips, the checks of get_tensor, previews and the PNG helpers."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image
from tire.v1 import common_pb2

from services.common.errors import IntegrityError, InvalidArgument, ObjectNotFound, ObjectTooLarge
from services.common.store import MemoryStore
from services.common.tensors import (
    TensorCache,
    get_tensor,
    png_bytes,
    put_tensor,
    read_png,
    to_numpy_dtype,
    to_proto_dtype,
)
from services.testing.stores import CountingStore

DTYPES = {
    np.uint8: common_pb2.DTYPE_UINT8,
    np.float32: common_pb2.DTYPE_FLOAT32,
    np.int32: common_pb2.DTYPE_INT32,
    np.float16: common_pb2.DTYPE_FLOAT16,
    np.int64: common_pb2.DTYPE_INT64,
    np.bool_: common_pb2.DTYPE_BOOL,
}
SHAPES = [(), (0,), (2, 0, 3), (5,), (3, 4), (2, 3, 4, 3)]


@pytest.fixture(params=["s3", "memory"])
def any_store(request: pytest.FixtureRequest):
    """Each test twice: on the rclone server and on the in-memory twin."""
    return request.getfixturevalue("store") if request.param == "s3" else MemoryStore()


def sample(dtype, shape, seed: int = 0) -> np.ndarray:
    values = np.random.default_rng(seed).uniform(-100, 100, shape)
    return (values > 0) if dtype is np.bool_ else values.astype(dtype)


def stored(store, array: np.ndarray, **changes) -> common_pb2.TensorRef:
    """A ref to ``array``'s file with some fields changed, as a buggy or hostile caller would send."""
    ref = put_tensor(store, array)
    for name, value in changes.items():
        if name == "shape":
            del ref.shape[:]
            ref.shape.extend(value)
        else:
            setattr(ref, name, value)
    return ref


# --- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=lambda d: np.dtype(d).name)
def test_round_trip(any_store, dtype, shape):
    array = sample(dtype, shape)
    ref = put_tensor(any_store, array)
    assert ref.dtype == DTYPES[dtype] and list(ref.shape) == list(shape) and not ref.preview_uris
    assert ref.uri.endswith(".safetensors")
    out = get_tensor(any_store, ref, dtype=dtype, shape=shape)
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, array)
    assert out.flags.writeable


def test_returned_arrays_are_independent(store):
    ref = put_tensor(store, np.zeros((2, 3), np.float32))
    first = get_tensor(store, ref)
    first += 1
    np.testing.assert_array_equal(get_tensor(store, ref), np.zeros((2, 3), np.float32))


def test_layout_and_byte_order_do_not_matter(store):
    array = np.arange(24, dtype=np.int32).reshape(4, 6)
    reference = put_tensor(store, array)
    assert put_tensor(store, array.astype(">i4")) == reference
    np.testing.assert_array_equal(get_tensor(store, put_tensor(store, array.T)), array.T)
    np.testing.assert_array_equal(get_tensor(store, put_tensor(store, array[:, ::2])), array[:, ::2])


def test_same_array_same_ref(store):
    array = sample(np.float32, (3, 3))
    assert put_tensor(store, array) == put_tensor(store, array.copy())


@pytest.mark.parametrize("dtype", [np.float64, np.int8, np.complex64, np.uint16])
def test_unsupported_dtype(store, dtype):
    with pytest.raises(ValueError, match="cannot be stored"):
        put_tensor(store, np.zeros(3, dtype))


def test_dtype_mapping():
    for dtype, proto in DTYPES.items():
        assert to_proto_dtype(dtype) == proto and to_numpy_dtype(proto) == np.dtype(dtype)
    with pytest.raises(ValueError, match="DTYPE_UNSPECIFIED"):
        to_numpy_dtype(common_pb2.DTYPE_UNSPECIFIED)


# --- what the caller expects ----------------------------------------------------------------------------


def test_wrong_dtype_names_the_field(any_store):
    ref = put_tensor(any_store, np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(InvalidArgument) as info:
        get_tensor(any_store, ref, field="views.rgb", dtype=np.uint8)
    assert info.value.field == "views.rgb"
    assert str(info.value) == "`views.rgb` must have dtype uint8, got 'dtype float32'."


@pytest.mark.parametrize(
    ("expected", "wanted"),
    [((None, 8, 8, 4), "[*, 8, 8, 4]"), ((3, None, None, 3), "[3, *, *, 3]"), ((2, 8, 8), "[2, 8, 8]")],
)
def test_wrong_shape_names_the_field(any_store, expected, wanted):
    ref = put_tensor(any_store, np.zeros((2, 8, 8, 3), np.uint8))
    assert get_tensor(any_store, ref, shape=(None, 8, 8, 3)).shape == (2, 8, 8, 3)
    with pytest.raises(InvalidArgument) as info:
        get_tensor(any_store, ref, field="views.rgb", shape=expected)
    assert info.value.field == "views.rgb"
    assert str(info.value) == f"`views.rgb` must have shape {wanted}, got 'shape [2, 8, 8, 3]'."


def test_finite(any_store):
    array = np.array([[0.0, np.nan, 1.0], [np.inf, 2.0, -np.inf]], np.float32)
    ref = put_tensor(any_store, array)
    np.testing.assert_array_equal(get_tensor(any_store, ref), array)  # only checked when asked
    with pytest.raises(InvalidArgument) as info:
        get_tensor(any_store, ref, field="depth", finite=True)
    assert info.value.field == "depth" and "3 NaN/inf of 6" in str(info.value)
    assert get_tensor(any_store, put_tensor(any_store, np.arange(3)), finite=True).tolist() == [0, 1, 2]


# --- refs that are incomplete, wrong or tampered with -------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "bad_field"),
    [
        ({"uri": ""}, "t.uri"),
        ({"dtype": common_pb2.DTYPE_UNSPECIFIED}, "t.dtype"),
        ({"dtype": 99}, "t.dtype"),
        ({"shape": [-1, 4]}, "t.shape"),
        ({"sha256": ""}, "t.sha256"),
    ],
)
def test_incomplete_ref_is_invalid_argument(store, changes, bad_field):
    with pytest.raises(InvalidArgument) as info:
        get_tensor(store, stored(store, np.zeros((3, 4), np.float32), **changes), field="t")
    assert info.value.field == bad_field


def test_declared_size_is_checked_before_reading():
    class NoReads(MemoryStore):
        def get_bytes(self, *args, **kwargs):
            raise AssertionError("read a tensor over the limit")

    store = NoReads()
    ref = stored(store, np.zeros((3, 4), np.float32), shape=[1 << 20, 1 << 20])
    with pytest.raises(ObjectTooLarge, match=r"`t` declares a \[1048576, 1048576\] float32 tensor"):
        get_tensor(store, ref, field="t")
    small = put_tensor(store, np.zeros((16, 16), np.float32))
    with pytest.raises(ObjectTooLarge, match="over the limit of 1000 bytes"):
        get_tensor(store, small, max_bytes=1000)


@pytest.mark.parametrize(
    "changes",
    [
        {"shape": [4, 3]},  # same size, other shape
        {"shape": [12]},
        {"shape": [3, 2]},  # fewer bytes than the file holds
        {"dtype": common_pb2.DTYPE_INT32},  # same itemsize, other dtype
    ],
    ids=str,
)
def test_ref_that_disagrees_with_its_file_is_integrity_error(any_store, changes):
    ref = stored(any_store, np.zeros((3, 4), np.float32), **changes)
    with pytest.raises(IntegrityError, match="holds a"):
        get_tensor(any_store, ref, field="t")


def test_wrong_sha256_is_integrity_error(any_store):
    ref = stored(any_store, np.zeros((3, 4), np.float32), sha256="0" * 64)
    with pytest.raises(IntegrityError, match="expected " + "0" * 64):
        get_tensor(any_store, ref)


def test_missing_file(any_store):
    ref = stored(any_store, np.zeros(3, np.float32), uri=any_store.uri_for("sha256/00/missing.safetensors"))
    with pytest.raises(ObjectNotFound):
        get_tensor(any_store, ref)


@pytest.mark.parametrize(
    "payload",
    [
        b"not a safetensors file",
        safetensors.numpy.save({"other": np.zeros(3, np.float32)}),
        safetensors.numpy.save({"tensor": np.zeros(3, np.float32), "extra": np.zeros(1, np.float32)}),
    ],
    ids=["garbage", "wrong-name", "two-tensors"],
)
def test_file_that_is_not_one_tensor_is_integrity_error(any_store, payload):
    obj = any_store.put_bytes(payload, suffix=".safetensors")
    ref = common_pb2.TensorRef(uri=obj.uri, sha256=obj.sha256, dtype=common_pb2.DTYPE_FLOAT32, shape=[3])
    with pytest.raises(IntegrityError, match=obj.uri):
        get_tensor(any_store, ref)


# --- previews and PNG -----------------------------------------------------------------------------------


def test_image_previews(any_store):
    rgb = np.random.default_rng(1).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
    ref = put_tensor(any_store, rgb, previews=True)
    assert len(ref.preview_uris) == 2 and all(uri.endswith(".png") for uri in ref.preview_uris)
    for view, uri in zip(rgb, ref.preview_uris, strict=True):
        np.testing.assert_array_equal(read_png(any_store.get_bytes(uri)), view)
    assert put_tensor(any_store, rgb.copy(), previews=True) == ref  # deterministic PNG bytes


@pytest.mark.parametrize(
    ("mask", "expected"),
    [
        (np.array([[[0, 1], [1, 0]]], np.uint8), [[0, 255], [255, 0]]),
        (np.array([[[False, True], [True, False]]]), [[0, 255], [255, 0]]),
        (np.array([[[0.0, 0.5], [1.0, 1.0000001]]], np.float32), [[0, 128], [255, 255]]),
    ],
    ids=["uint8", "bool", "float32"],
)
def test_mask_previews(any_store, mask, expected):
    ref = put_tensor(any_store, mask, previews=True)
    (uri,) = ref.preview_uris
    image = read_png(any_store.get_bytes(uri))
    assert image.shape == (2, 2, 3)
    np.testing.assert_array_equal(image[..., 0], expected)


@pytest.mark.parametrize("array", [np.zeros((4, 4), np.float32), np.zeros((1, 4, 4, 3), np.float32)], ids=str)
def test_previews_of_other_tensors_are_refused(store, array):
    with pytest.raises(ValueError, match="previews need"):
        put_tensor(store, array, previews=True)


def test_png_round_trip():
    rng = np.random.default_rng(2)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 9, 4), dtype=np.uint8)
    np.testing.assert_array_equal(read_png(png_bytes(rgb)), rgb)
    np.testing.assert_array_equal(read_png(png_bytes(rgba)), rgba)
    np.testing.assert_array_equal(read_png(png_bytes(rgba), mode="RGB"), rgba[..., :3])
    as_rgba = read_png(png_bytes(rgb), mode="RGBA")
    np.testing.assert_array_equal(as_rgba[..., :3], rgb)
    assert (as_rgba[..., 3] == 255).all()


def test_png_has_no_metadata():
    data = png_bytes(np.zeros((4, 4, 3), np.uint8))
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        chunks.append(data[offset + 4 : offset + 8].decode())
        offset += length + 12
    assert chunks == ["IHDR", "IDAT", "IEND"]


def test_bad_png_input():
    with pytest.raises(InvalidArgument) as info:
        read_png(b"\x89PNG but not really", field="reference_image")
    assert info.value.field == "reference_image"
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4)).save(jpeg, format="JPEG")
    with pytest.raises(InvalidArgument, match="must be a PNG"):
        read_png(jpeg.getvalue())
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        png_bytes(np.zeros((4, 4, 2), np.uint8))


def test_a_tensor_cache_reads_each_content_once_and_hands_out_copies():
    store = CountingStore()
    ref = put_tensor(store, np.arange(12, dtype=np.float32).reshape(3, 4))
    cache = TensorCache(max_bytes=1024)
    first = cache.get_tensor(store, ref, field="x", shape=(3, 4), finite=True)
    first[0, 0] = -1.0  # the caller's copy; the cache keeps its own
    second = cache.get_tensor(store, ref, field="x", shape=(3, 4), finite=True)
    assert store.reads == 1 and second[0, 0] == 0.0
    np.testing.assert_array_equal(second[1:], np.arange(4, 12, dtype=np.float32).reshape(2, 4))
    # Other checks are another read: the cache never skips a check it has not made.
    cache.get_tensor(store, ref, field="x", dtype=np.float32)
    assert store.reads == 2


def test_a_tensor_cache_drops_the_least_recently_used_beyond_its_budget():
    store = CountingStore()
    refs = [put_tensor(store, np.full(64, i, dtype=np.uint8)) for i in range(3)]
    cache = TensorCache(max_bytes=128)  # two of them
    for ref in refs[:2]:
        cache.get_tensor(store, ref)
    cache.get_tensor(store, refs[0])  # refs[0] is now the most recent
    cache.get_tensor(store, refs[2])  # drops refs[1]
    store.reads = 0
    cache.get_tensor(store, refs[0])
    cache.get_tensor(store, refs[2])
    assert store.reads == 0
    cache.get_tensor(store, refs[1])
    assert store.reads == 1
    # A tensor larger than the whole budget is read, never kept.
    big = put_tensor(store, np.zeros(256, dtype=np.uint8))
    cache.get_tensor(store, big)
    cache.get_tensor(store, big)
    assert store.reads == 3
