"""Niantic's `.spz` (versions 2 to 4): a header and quantized columns, compressed.

Versions 2 and 3 are one gzip stream of a 16-byte header and the columns. Version 4 (the spz
library's and PlayCanvas's splat-transform's default since 2026) is a plain 32-byte header (the same
fields, then the stream count and the offset of a table of (compressed, inflated) sizes as uint64),
the table, and each non-empty column as its own zstd frame.

Layout (little-endian) of versions 2 and 3, after gunzip: magic ``NGSP`` (0x5053474e), version
(uint32), count N (uint32), SH degree, fractional bits, flags, a reserved byte (uint8 each); then,
each for all N Gaussians in turn: positions (3 x 24-bit signed fixed point with that many fractional
bits), opacities (uint8, 255 sigmoid), DC colours (3 x uint8, DC 0.15 * 255 + 127.5), log scales (3 x uint8,
16 (log s + 10)), rotations (version 2: x, y, z of the quaternion with w >= 0, each 127.5 (q + 1);
version 3: the largest component's index in 2 bits and the other three in 10 bits each, a sign and 9
bits of |q| / sqrt(1/2)), then the higher SH coefficients (coefficient-major, RGB inner, 128 x + 128,
band 1 kept to 5 bits and higher bands to 4). The frame is ``SPZ_AXES`` (RUB); this module converts
from and to ``PLY_AXES`` as the spz library does for a `.ply`.

What the quantization loses, per value, at most (the bound ``tests`` check): positions half of
2^-fractional bits (1.2e-4 world units at 12 bits, what is written when the asset fits in +-2048
units); log scales 1/32 within [-10, 5.94] (clamped outside); opacity 0.5/255; DC 0.5/38.25 (colour
0.0037) within +-3.33; band-1 SH 4/128 + 0.5/128, higher bands 8/128 + 0.5/128, within [-1, 1];
quaternion components (version 3) 0.7/511 before renormalisation, an angle of 0.004 rad; version 2
derives w from x, y, z, which is ill-conditioned where w is near 0: up to 0.25 rad there (hence
version 3 by default).

Not read: version 1 (float16 positions, never released), SH degree 4, and files with extensions
(flag 0x2: Adobe's SH range and camera records); each is refused with ``AssetError`` naming it.
Written: version 3.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from services.common.errors import AssetError
from services.common.formats.conventions import (
    PLY_AXES,
    SPZ_AXES,
    change_axes,
    logit_to_opacity,
    opacity_to_logit,
    to_uint8,
)
from services.common.gaussians import MAX_GAUSSIANS, Gaussians

MAGIC = 0x5053474E  # "NGSP"
VERSIONS = (2, 3, 4)  # read; 4 wraps each column in zstd instead of the whole in gzip
WRITE_VERSION = 3  # gzip-wrapped, which every spz reader so far reads
WRITE_VERSIONS = (2, 3)
HEADER = struct.Struct("<IIIBBBB")  # versions 2 and 3, inside the gzip stream
HEADER_V4 = struct.Struct("<IIIBBBBI12x")  # version 4, plain: ... then stream count and table offset
FRACTIONAL_BITS = 12  # the spz library's choice: 1/4096 world units, +-2048 units of range
COLOUR_SCALE = 0.15
_FLAG_ANTIALIASED = 0x1
_FLAG_EXTENSIONS = 0x2
_SH1_BUCKET = 1 << (8 - 5)  # band 1 keeps 5 bits
_SH_REST_BUCKET = 1 << (8 - 4)  # higher bands keep 4
_SQRT1_2 = math.sqrt(0.5)


@dataclass(frozen=True)
class _Layout:
    """What the header says about the columns that follow it."""

    version: int
    n: int
    degree: int
    fractional_bits: int

    def widths(self) -> list[int]:
        """Bytes per Gaussian of each column, in file order: positions, opacities, colours, scales,
        rotations, higher SH (0 at degree 0)."""
        return [9, 1, 3, 3, 4 if self.version >= 3 else 3, 3 * ((self.degree + 1) ** 2 - 1)]


def _layout(version: int, n: int, degree: int, bits: int, flags: int, max_gaussians: int) -> _Layout:
    if version not in VERSIONS:
        raise AssetError(f"`.spz` version {version} is not supported (only {', '.join(map(str, VERSIONS))})")
    if degree > 3:
        raise AssetError(f"`.spz` SH degree {degree} is not supported (0 to 3)")
    if flags & _FLAG_EXTENSIONS:
        raise AssetError("`.spz` extensions (flag 0x2) are not supported")
    if not 0 < n <= max_gaussians:
        raise AssetError(f"`.spz` count {n} is outside 1..{max_gaussians}")
    if bits > 23:
        raise AssetError(f"`.spz` fractional bits {bits} exceed the 24-bit positions")
    return _Layout(version, n, degree, bits)


def _gunzip(data: bytes, limit: int) -> bytes:
    """At most ``limit`` bytes of the gzip stream ``data`` (one more when it holds more)."""
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        return inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise AssetError(f"`.spz` data is not valid gzip: {exc}") from exc


def _gzip_columns(data: bytes, max_gaussians: int) -> tuple[_Layout, bytes]:
    """Versions 2 and 3: one gzip stream of the 16-byte header and the columns."""
    header = _gunzip(data, HEADER.size)
    if len(header) < HEADER.size:
        raise AssetError(f"`.spz` header is {len(header)} bytes after gunzip, expected {HEADER.size}")
    magic, version, n, degree, bits, flags, _ = HEADER.unpack_from(header)
    if magic != MAGIC:
        raise AssetError(f"`.spz` magic is {magic:#010x}, expected {MAGIC:#010x} ('NGSP')")
    if version >= 4:
        raise AssetError(f"`.spz` version {version} is not gzip-wrapped (versions 2 and 3 are)")
    layout = _layout(version, n, degree, bits, flags, max_gaussians)
    size = HEADER.size + n * sum(layout.widths())
    body = _gunzip(data, size)
    if len(body) != size:
        more = "more" if len(body) > size else f"{len(body)}"
        raise AssetError(f"`.spz` of {n} Gaussians needs {size} bytes after gunzip, got {more}")
    return layout, body[HEADER.size :]


def _zstd_columns(data: bytes, max_gaussians: int) -> tuple[_Layout, bytes]:
    """Version 4: a 32-byte header, a table of (compressed, inflated) sizes, then each non-empty
    column as its own zstd frame."""
    if len(data) < HEADER_V4.size:
        raise AssetError(f"`.spz` version 4 header is {len(data)} bytes, expected {HEADER_V4.size}")
    _, version, n, degree, bits, flags, n_streams, toc = HEADER_V4.unpack_from(data)
    if version < 4:
        raise AssetError(f"`.spz` version {version} must be gzip-wrapped")
    layout = _layout(version, n, degree, bits, flags, max_gaussians)
    sizes = [n * width for width in layout.widths() if width]
    if n_streams != len(sizes) or toc != HEADER_V4.size:
        raise AssetError(
            f"`.spz` version 4 lists {n_streams} streams from byte {toc}, expected {len(sizes)} from "
            f"byte {HEADER_V4.size}"
        )
    if len(data) < toc + 16 * n_streams:
        raise AssetError(f"`.spz` version 4 is {len(data)} bytes, too short for its {n_streams} streams")
    table = np.frombuffer(data, dtype="<u8", count=2 * n_streams, offset=toc).reshape(n_streams, 2)
    if table[:, 1].tolist() != sizes or toc + 16 * n_streams + int(table[:, 0].sum()) != len(data):
        raise AssetError(
            f"`.spz` version 4 streams of {table[:, 1].tolist()} bytes ({table[:, 0].sum()} compressed) "
            f"do not match {n} Gaussians ({sizes} bytes) in a file of {len(data)} bytes"
        )
    columns, at = [], toc + 16 * n_streams
    for compressed, size in table.tolist():
        reader = zstandard.ZstdDecompressor().stream_reader(memoryview(data)[at : at + compressed])
        try:
            column = reader.read(size + 1)  # a frame that holds more is caught below, not inflated
        except zstandard.ZstdError as exc:
            raise AssetError(f"`.spz` version 4 stream at byte {at} is not valid zstd: {exc}") from exc
        if len(column) != size:
            raise AssetError(f"`.spz` version 4 stream at byte {at} inflates to other than {size} bytes")
        columns.append(column)
        at += compressed
    return layout, b"".join(columns)


def read_spz(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Decode a `.spz` file's bytes (versions 2 to 4) into ``Gaussians`` in ``PLY_AXES``.

    Memory is bounded by the count in the header: the streams are inflated only as far as the header
    says they reach, and a count over ``max_gaussians`` is refused before that.

    Raises:
        AssetError: not gzip or zstd, bad magic, an unsupported version, SH degree or flag, a count of
            0 or over ``max_gaussians``, or data shorter or longer than the count says.
    """
    if bytes(data[:4]) == MAGIC.to_bytes(4, "little"):
        layout, body = _zstd_columns(data, max_gaussians)
    else:
        layout, body = _gzip_columns(data, max_gaussians)
    n, k = layout.n, (layout.degree + 1) ** 2
    columns = np.frombuffer(body, dtype=np.uint8)
    at = 0

    def take(width: int) -> np.ndarray:
        nonlocal at
        block = columns[at : at + n * width].reshape(n, width)
        at += n * width
        return block

    fixed = take(9).reshape(n, 3, 3).astype(np.int32)
    fixed = fixed[..., 0] | (fixed[..., 1] << 8) | (fixed[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    means = (fixed * 2.0**-layout.fractional_bits).astype(np.float32)
    opacity_logits = opacity_to_logit(take(1)[:, 0] / 255.0)
    dc = (take(3) / 255.0 - 0.5) / COLOUR_SCALE
    log_scales = (take(3) / 16.0 - 10.0).astype(np.float32)  # at most 5.94, within the .ply bound
    xyzw = _unpack_smallest_three(take(4)) if layout.version >= 3 else _unpack_first_three(take(3))
    rest = (take(3 * (k - 1)).reshape(n, k - 1, 3).astype(np.float64) - 128.0) / 128.0

    quats = xyzw[:, [3, 0, 1, 2]]
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    gaussians = Gaussians(
        means=means,
        log_scales=log_scales,
        quats=quats.astype(np.float32),
        opacity_logits=opacity_logits,
        sh=np.concatenate([dc[:, None, :], rest], axis=1).astype(np.float32),
    )
    return change_axes(gaussians, SPZ_AXES, PLY_AXES)


def write_spz(gaussians: Gaussians, version: int = WRITE_VERSION) -> bytes:
    """Encode ``Gaussians`` (in ``PLY_AXES``) as a `.spz` file of ``version`` (2 or 3; version 4, which
    readers before 2026 cannot open, is read but not written).

    Positions use 12 fractional bits, as the spz library writes, or fewer when the asset reaches
    beyond +-2048 world units (down to 0 bits: +-8.4 million units).

    Raises:
        AssetError: ``gaussians.validate()`` fails, or a coordinate is beyond +-2^23 world units.
        ValueError: ``version`` is not 2 or 3.
    """
    if version not in WRITE_VERSIONS:
        raise ValueError(f"`.spz` version must be one of {WRITE_VERSIONS}, got {version!r}")
    gaussians.validate()
    g = change_axes(gaussians, PLY_AXES, SPZ_AXES)
    n, k = len(g), g.sh.shape[1]
    reach = float(np.abs(g.means).max())
    fractional_bits = FRACTIONAL_BITS
    while fractional_bits > 0 and reach * 2.0**fractional_bits >= 2**23 - 1:
        fractional_bits -= 1
    if reach * 2.0**fractional_bits >= 2**23 - 1:
        raise AssetError(f"`.spz` positions reach {reach:.4g} world units; 24-bit positions stop at 2^23")

    fixed = np.rint(g.means.astype(np.float64) * 2.0**fractional_bits).astype(np.int64) & 0xFFFFFF
    positions = np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], axis=-1)
    xyzw = g.quats[:, [1, 2, 3, 0]].astype(np.float64)
    xyzw /= np.linalg.norm(xyzw, axis=1, keepdims=True)
    rotations = _pack_smallest_three(xyzw) if version >= 3 else _pack_first_three(xyzw)
    rest = g.sh[:, 1:].astype(np.float64)
    buckets = np.full(k - 1, _SH_REST_BUCKET)
    buckets[:3] = _SH1_BUCKET
    q = np.rint(rest * 128.0) + 128.0
    q = np.floor((q + buckets[None, :, None] // 2) / buckets[None, :, None]) * buckets[None, :, None]

    header = HEADER.pack(MAGIC, version, n, g.sh_degree, fractional_bits, 0, 0)
    blocks = [
        positions.reshape(n, 9),
        to_uint8(logit_to_opacity(g.opacity_logits) * 255.0)[:, None],
        to_uint8(g.sh[:, 0].astype(np.float64) * (COLOUR_SCALE * 255.0) + 127.5),
        to_uint8((g.log_scales.astype(np.float64) + 10.0) * 16.0),
        rotations,
        to_uint8(q).reshape(n, 3 * (k - 1)),
    ]
    body = header + b"".join(np.ascontiguousarray(block, dtype=np.uint8).tobytes() for block in blocks)
    deflater = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return deflater.compress(body) + deflater.flush()


def _pack_first_three(xyzw: np.ndarray) -> np.ndarray:
    """``[N, 3]`` uint8: x, y, z of the unit quaternion whose w is >= 0, as 127.5 (q + 1)."""
    sign = np.where(xyzw[:, 3:] < 0.0, -1.0, 1.0)
    return to_uint8((xyzw[:, :3] * sign + 1.0) * 127.5)


def _unpack_first_three(packed: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float64 (x, y, z, w) from ``_pack_first_three``'s bytes."""
    xyz = packed / 127.5 - 1.0
    w = np.sqrt(np.maximum(0.0, 1.0 - np.sum(xyz * xyz, axis=1, keepdims=True)))
    return np.concatenate([xyz, w], axis=1)


def _pack_smallest_three(xyzw: np.ndarray) -> np.ndarray:
    """``[N, 4]`` uint8, a little-endian uint32 each: the index of the largest |component| in the top
    2 bits, then each other component in order (the first one highest) as a sign bit (relative to the
    largest's sign) and 9 bits of |q| / sqrt(1/2)."""
    n = xyzw.shape[0]
    largest = np.argmax(np.abs(xyzw), axis=1)
    negate = xyzw[np.arange(n), largest] < 0.0
    words = largest.astype(np.uint32)
    for i in range(4):
        other = largest != i
        value = xyzw[:, i]
        sign = ((value < 0.0) ^ negate).astype(np.uint32)
        magnitude = np.floor(511.0 * (np.abs(value) / _SQRT1_2) + 0.5).astype(np.uint32)
        words = np.where(other, (words << 10) | (sign << 9) | np.minimum(magnitude, 511), words)
    return words.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_smallest_three(packed: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float64 (x, y, z, w) from ``_pack_smallest_three``'s bytes."""
    words = np.ascontiguousarray(packed).view("<u4")[:, 0].astype(np.int64)
    largest = words >> 30
    xyzw = np.zeros((words.shape[0], 4))
    for i in range(3, -1, -1):
        other = largest != i
        magnitude = (words & 511) * (_SQRT1_2 / 511.0)
        value = np.where((words >> 9) & 1, -magnitude, magnitude)
        xyzw[:, i] = np.where(other, value, 0.0)
        words = np.where(other, words >> 10, words)
    rest = np.sum(xyzw * xyzw, axis=1)
    xyzw[np.arange(xyzw.shape[0]), largest] = np.sqrt(np.maximum(0.0, 1.0 - rest))
    return xyzw
