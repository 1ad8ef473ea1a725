"""The `.ksplat` of mkkellogg's GaussianSplats3D viewer (its ``SplatBuffer``, version 0.1): read only.

Layout, little-endian. A 4096-byte header: version major and minor (uint8: 0 and at least 1), two
unused bytes, then as uint32 the section slots (at 4), sections (8), splat slots (12) and splats (16),
the compression level (uint16 at 20: 0, 1 or 2), the scene centre (3 x float32 at 24, not applied),
and the range of level 2's SH bytes (float32 at 36 and 40; 0 means -1.5 and 1.5). Then a 1024-byte
header per section slot: as uint32 its splats (at 0), splat slots (4), bucket size (8) and bucket
count (12), the bucket block size (float32 at 16), the bytes per bucket (uint16 at 20: 12, or 0
without buckets), the position range (uint32 at 24; 0 means the level's, 1 or 32767), the full and
the partly filled buckets (uint32 at 32 and 36), and the SH degree (uint16 at 40). Then each section
in turn: the partly filled buckets' lengths (uint32 each), the bucket centres (3 x float32 each), and
one record per splat slot, in bucket order (the full buckets of ``bucket size`` records first):

- position: level 0, 3 x float32; levels 1 and 2, 3 x uint16 u, each (u - range) * block size / 2 /
  range from the centre of the record's bucket;
- scale: 3 x float32 (level 0) or float16, linear standard deviations;
- rotation: 4 x float32 (level 0) or float16, w, x, y, z;
- colour and opacity: 4 x uint8, 255 (0.5 + SH_C0 DC) and 255 opacity;
- SH bands 1 and 2 (9 and then 15 values, each band channel-major: red's coefficients, green's,
  blue's): float32 (level 0), float16 (level 1) or uint8 over the header's range (level 2).

The frame is the `.ply`'s (``PLY_AXES``). What the format loses (its writer's doing, which a reader
cannot undo): colour and opacity to 1/255 (the viewer's writer rounds down); at levels 1 and 2,
positions to block size / 2 / 32767 (7.6e-5 world units at the default 5.0), scales, rotations and
(level 1) SH bands to float16 (truncated by the viewer's writer: 2^-10 relative), and at level 2 the SH
bands to 1/255 of the header's range, rounded down; every band above 2.
A zero scale (a float16 that underflowed) is read as 2^-24.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from services.common.errors import AssetError
from services.common.formats.conventions import opacity_to_logit
from services.common.gaussians import MAX_GAUSSIANS, MAX_LOG_SCALE, MAX_POSITION, SH_C0, Gaussians

HEADER_BYTES = 4096
SECTION_HEADER_BYTES = 1024
HEADER = struct.Struct("<BBxxIIIIH2x3fff")  # version, counts, level, scene centre, SH range
SECTION = struct.Struct("<IIIIfH2xI4xIIH")  # counts, buckets, block size, ..., SH degree
LEVELS = (0, 1, 2)
BUCKET_BYTES = 12  # a bucket centre, 3 x float32
MAX_SH_DEGREE = 2  # the viewer stores bands 1 and 2 at most
DEFAULT_SH_RANGE = (-1.5, 1.5)
SMALLEST_SCALE = 2.0**-24  # a float16's smallest step: what a scale read as 0 stands for
_DEFAULT_POSITION_RANGE = {0: 1, 1: 32767, 2: 32767}
_FLOAT = {0: "<f4", 1: "<f2", 2: "<f2"}  # positions (level 0), scales and rotations
_VALUE_BYTES = {0: 4, 1: 2, 2: 2}


@dataclass(frozen=True)
class _Section:
    """One section's header, with where its data starts in the file."""

    splats: int
    slots: int
    bucket_size: int
    bucket_count: int
    block_size: float
    bucket_bytes: int
    position_range: int
    full_buckets: int
    partial_buckets: int
    sh_degree: int
    offset: int  # of its partial bucket lengths

    def record_bytes(self, level: int) -> int:
        """Position, scale and rotation (10 values of 4 or 2 bytes), colour (4), SH bands."""
        sh = {0: 4, 1: 2, 2: 1}[level] * 3 * ((self.sh_degree + 1) ** 2 - 1)
        return 10 * _VALUE_BYTES[level] + 4 + sh

    def size(self, level: int) -> int:
        return (
            4 * self.partial_buckets
            + self.bucket_bytes * self.bucket_count
            + self.slots * self.record_bytes(level)
        )


def is_ksplat(data: bytes) -> bool:
    """Whether ``data`` starts as a `.ksplat` does (it has no signature): version 0.1 or later, two zero
    bytes, and room for the header."""
    head = bytes(data[:22])
    return (
        len(data) >= HEADER_BYTES
        and head[0] == 0
        and head[1] >= 1
        and head[2:4] == b"\0\0"
        and int.from_bytes(head[20:22], "little") in LEVELS
    )


def read_ksplat(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Decode a `.ksplat` file's bytes into ``Gaussians`` (SH degree: the largest of its sections').

    Memory is bounded by the file: every count is checked against the bytes present before any array
    is made, and a splat count over ``max_gaussians`` is refused first.

    Raises:
        AssetError: a header that is short or of another version or level; counts that disagree or
            reach past the end (or stop short of it); buckets that do not hold their section's
            records; an SH degree over 2; a position, scale, rotation or SH coefficient that is not finite, a
            position beyond +-``MAX_POSITION``, a negative scale or one whose log is over
            ``MAX_LOG_SCALE``.
    """
    if len(data) < HEADER_BYTES:
        raise AssetError(f"`.ksplat` of {len(data)} bytes is shorter than its {HEADER_BYTES}-byte header")
    major, minor, slots, _, _, n, level, *_, sh_low, sh_high = HEADER.unpack_from(data)
    if major != 0 or minor < 1:
        raise AssetError(f"`.ksplat` version {major}.{minor} is not read (0.1 and later 0.x are)")
    if level not in LEVELS:
        raise AssetError(f"`.ksplat` compression level {level} is not one of {LEVELS}")
    if not 1 <= n <= max_gaussians:
        raise AssetError(f"`.ksplat` splat count {n} is outside 1..{max_gaussians}")
    if HEADER_BYTES + slots * SECTION_HEADER_BYTES > len(data):
        raise AssetError(f"`.ksplat` names {slots} sections, whose headers reach past its {len(data)} bytes")
    sh_range = (sh_low or DEFAULT_SH_RANGE[0], sh_high or DEFAULT_SH_RANGE[1])
    sections = _sections(data, slots, level, n)

    degree = max(s.sh_degree for s in sections)
    parts = [_decode_section(data, s, level, degree, sh_range) for s in sections if s.splats]
    means, scales, quats, rgba, sh_rest = (np.concatenate(column) for column in zip(*parts, strict=True))
    _check_values(means, scales, quats, sh_rest)
    with np.errstate(divide="ignore"):
        log_scales = np.log(np.maximum(scales, SMALLEST_SCALE))
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    quats = np.where(norms > 0.0, quats / np.where(norms > 0.0, norms, 1.0), [1.0, 0.0, 0.0, 0.0])
    dc = (rgba[:, None, :3] / 255.0 - 0.5) / SH_C0
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=opacity_to_logit(rgba[:, 3] / 255.0),
        sh=np.concatenate([dc, sh_rest], axis=1).astype(np.float32),
    )


def _sections(data: bytes, slots: int, level: int, n: int) -> list[_Section]:
    """The section headers, checked against each other, the header's splat count and the file's length."""
    sections, offset = [], HEADER_BYTES + slots * SECTION_HEADER_BYTES
    for i in range(slots):
        fields = SECTION.unpack_from(data, HEADER_BYTES + i * SECTION_HEADER_BYTES)
        splats, section_slots, bucket_size, bucket_count, block_size, bucket_bytes, position_range = fields[
            :7
        ]
        full, partial, sh_degree = fields[7:]
        section = _Section(
            splats, section_slots, bucket_size, bucket_count, block_size, bucket_bytes,
            position_range or _DEFAULT_POSITION_RANGE[level], full, partial, sh_degree, offset,
        )  # fmt: skip
        where = f"`.ksplat` section {i}"
        if sh_degree > MAX_SH_DEGREE:
            raise AssetError(f"{where} has SH degree {sh_degree}; the format stores 0 to {MAX_SH_DEGREE}")
        if splats > section_slots:
            raise AssetError(f"{where} holds {splats} splats in {section_slots} slots")
        if level > 0 and splats:
            if bucket_bytes != BUCKET_BYTES or full + partial != bucket_count:
                raise AssetError(
                    f"{where} has {bucket_count} buckets of {bucket_bytes} bytes, {full} full and {partial} "
                    f"partly filled; expected {BUCKET_BYTES}-byte buckets, full and partly filled adding up"
                )
            if not (np.isfinite(block_size) and block_size > 0.0):
                raise AssetError(f"{where} has bucket block size {block_size}; it must be positive")
        offset += section.size(level)
        if offset > len(data):
            raise AssetError(f"{where} reaches byte {offset}, past the file's {len(data)}")
        sections.append(section)
    if offset != len(data):
        raise AssetError(f"`.ksplat` sections end at byte {offset}, but the file has {len(data)}")
    if sum(s.splats for s in sections) != n:
        raise AssetError(
            f"`.ksplat` sections hold {sum(s.splats for s in sections)} splats; the header says {n}"
        )
    return sections


def _decode_section(
    data: bytes, section: _Section, level: int, degree: int, sh_range: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """(means [M, 3], scales [M, 3], quats [M, 4] w first, rgba [M, 4] float64 0..255, higher SH
    [M, (degree + 1)^2 - 1, 3]) of one section's M splats, float64."""
    m = section.splats
    centres_at = section.offset + 4 * section.partial_buckets
    records_at = centres_at + section.bucket_bytes * section.bucket_count
    record = section.record_bytes(level)
    rows = np.frombuffer(data, np.uint8, m * record, records_at).reshape(m, record)

    def field(start: int, count: int, dtype: str) -> np.ndarray:
        width = np.dtype(dtype).itemsize * count
        return rows[:, start : start + width].copy().view(dtype).astype(np.float64)

    value = _VALUE_BYTES[level]
    if level == 0:
        means = field(0, 3, "<f4")
    else:  # offsets from the centre of each record's bucket
        lengths = np.frombuffer(data, "<u4", section.partial_buckets, section.offset).astype(np.int64)
        centres = np.frombuffer(data, "<f4", 3 * section.bucket_count, centres_at).reshape(-1, 3)
        bucket = _bucket_of_each_record(section, lengths)
        step = section.block_size / 2.0 / section.position_range
        means = (field(0, 3, "<u2") - section.position_range) * step + centres[bucket].astype(np.float64)
    start = 3 * value
    scales = field(start, 3, _FLOAT[level])
    quats = field(start + 3 * value, 4, _FLOAT[level])
    start += 7 * value
    rgba = rows[:, start : start + 4].astype(np.float64)
    start += 4

    stored = (section.sh_degree + 1) ** 2 - 1
    sh_rest = np.zeros((m, (degree + 1) ** 2 - 1, 3))
    if stored:
        if level == 2:
            low, high = sh_range
            values = rows[:, start : start + 3 * stored].astype(np.float64) / 255.0 * (high - low) + low
        else:
            values = field(start, 3 * stored, "<f4" if level == 0 else "<f2")
        band_starts = ((1, 3), (4, 5))[: section.sh_degree]  # (first coefficient, count) of bands 1, 2
        column = 0
        for first, count in band_starts:  # each band channel-major: R's coefficients, then G's, then B's
            band = values[:, column : column + 3 * count].reshape(m, 3, count)
            sh_rest[:, first - 1 : first - 1 + count, :] = band.transpose(0, 2, 1)
            column += 3 * count
    return means, scales, quats, rgba, sh_rest


def _bucket_of_each_record(section: _Section, partial_lengths: np.ndarray) -> np.ndarray:
    """``[splats]`` int64: the bucket each record's position is relative to."""
    full_records = section.full_buckets * section.bucket_size
    if full_records + int(partial_lengths.sum()) != section.splats:
        raise AssetError(
            f"`.ksplat` buckets hold {full_records} + {int(partial_lengths.sum())} records; the section "
            f"has {section.splats}"
        )
    full = np.repeat(np.arange(section.full_buckets), section.bucket_size)
    partial = np.repeat(np.arange(section.full_buckets, section.bucket_count), partial_lengths)
    return np.concatenate([full, partial])


def _check_values(means: np.ndarray, scales: np.ndarray, quats: np.ndarray, sh_rest: np.ndarray) -> None:
    bad = ~np.all(np.isfinite(means) & (np.abs(means) <= MAX_POSITION), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AssetError(
            f"`.ksplat` splat {first} has position {means[first].tolist()}: not finite, or too far"
        )
    bad = ~np.all(np.isfinite(scales) & (scales >= 0.0) & (scales <= np.exp(MAX_LOG_SCALE)), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AssetError(
            f"`.ksplat` splat {first} has scales {scales[first].tolist()}: each must lie in [0, e^10]"
        )
    bad = ~np.all(np.isfinite(quats), axis=1)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AssetError(f"`.ksplat` splat {first} has rotation {quats[first].tolist()}: not finite")
    bad = ~np.all(np.isfinite(sh_rest), axis=(1, 2))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise AssetError(f"`.ksplat` splat {first} has an SH coefficient that is not finite")
