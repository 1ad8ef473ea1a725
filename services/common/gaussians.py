"""3D Gaussians in memory, and their `.ply` files (INRIA 3DGS and LGM layouts).

Values are kept as the files store them (log scales, logit opacities, raw SH coefficients), so a
read followed by a write is bit-identical; the activated values are properties.

Conventions:
- ``quats`` are (w, x, y, z), unit length (the reader normalises them).
- ``sh`` is ``[N, K, 3]`` with ``K = (degree + 1) ** 2``; ``sh[:, 0]`` is the DC term (``f_dc_*``).
  Colour is ``max(0, 0.5 + sum_k sh[:, k] * Y_k(direction))``, as in the reference 3DGS code.
- In the INRIA file, ``f_rest_*`` is channel-major: all R coefficients 1..K-1, then G, then B.

Files:
- ``read_ply`` parses ``binary_little_endian``, ``binary_big_endian`` and ``ascii`` 1.0 files with
  its own header parser and ``np.frombuffer``; property order does not matter. Normals
  (``nx, ny, nz``) are dropped: 3DGS writers fill them with zeros and nothing here uses them.
  Any other non-standard vertex property is kept in ``extra``.
- ``write_ply`` writes ``binary_little_endian`` in the INRIA (with ``extra``) or LGM layout.
- Every malformed-file problem raises ``AssetError`` with a sentence saying what and where (header
  words cut to 80 characters); no input makes ``read_ply`` raise anything else
  (``benchmarks/fuzz_ply.py`` checks it; ``services/common/tests/ply_corpus/`` keeps what it found).
  What it returns passes ``Gaussians.validate`` and the renderers' checks, and frames to finite
  cameras, so no later stage fails on a value that came from the file. Hence these bounds, beyond
  finiteness:
  - log scales are at most ``MAX_LOG_SCALE`` (10: a standard deviation of e^10, 22,026 world units).
    The CPU rasterizer refuses 80 and over, but gsplat's float32 projection silently drops a
    Gaussian long before: measured with gsplat 1.5.3 on an H200, from log scale 10.5 (4096 x 4096
    view, centre 0.02 world units from the camera) to 20 (64 x 64, 1.5 away), where the CPU renderer
    draws it over the whole view. At 10 and below both backends agree for any view up to
    ``cameras.MAX_SIDE`` whose Gaussians lie at least 0.02 from the camera. Real assets stay far
    below: 3DGS training prunes Gaussians wider than a tenth of the scene, so e^10 needs a scene
    2e5 world units across, and the assets here stay below e^-1.4. There is no lower bound: e^-1e30
    is 0, which every stage handles.
  - opacity logits beyond +-``MAX_OPACITY_LOGIT`` (80), infinities included, are read as +-80: the
    sigmoid is 0 or 1 to float32 precision either way, and beyond 80 ``exp(-logit)`` would overflow in
    float32 (88.7), then in float64 (709.8), which ``Gaussians.opacities`` computes. This one is
    clamped, not refused, because it changes nothing a renderer sees, and because spz tools write an
    infinite logit for an opacity of exactly 0 or 1 (a quantized 0 or 255) into the `.ply` they
    convert to. NaN is refused.
  - coordinates lie within +-``MAX_POSITION`` (1e15 world units): framing puts cameras a few times
    the asset's extent away, in float32, and near 3e38 they became inf (the rasterizer refuses them).
  - vertex property names are plain identifiers (``extra`` keys must be), and ``f_rest_*`` names are
    exactly ``f_rest_0`` to ``f_rest_44`` (``f_rest_08`` beside ``f_rest_8`` is refused, not guessed
    at); element counts are below 10^18.
  Such values are refused rather than clamped, naming the property, the vertex and the value: a
  file that holds them is broken, and clamping would change it silently.
- Memory: binary data is read in place; ASCII data is parsed ``ASCII_CHUNK_BYTES`` at a time into
  one float32 table, so reading takes the file's bytes, the table and the result (a 60 MiB ASCII
  file of 465,000 Gaussians: +96 MiB peak RSS for a 25 MiB result; it was +509 MiB). Counts are
  checked against the data's length before anything is allocated, and a path must name a regular
  file (a FIFO or a device could block or never end).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np

from services.common.errors import AssetError, NotFound

SH_C0 = 0.28209479177387814  # Y_0^0; colour = 0.5 + SH_C0 * f_dc


@dataclass(frozen=True, eq=False)
class Gaussians:
    """N Gaussians, float32 arrays, as stored in a 3DGS `.ply`.

    Attributes:
        means: ``[N, 3]`` float32, world units.
        log_scales: ``[N, 3]`` float32, natural log of the per-axis standard deviation.
        quats: ``[N, 4]`` float32, unit quaternions (w, x, y, z), local-to-world rotation.
        opacity_logits: ``[N]`` float32, logit of the opacity.
        sh: ``[N, K, 3]`` float32 spherical-harmonic coefficients, K in {1, 4, 9, 16}.
        extra: non-standard per-Gaussian properties kept from the file, name -> ``[N]`` float32.
    """

    means: np.ndarray
    log_scales: np.ndarray
    quats: np.ndarray
    opacity_logits: np.ndarray
    sh: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise ``AssetError`` unless the arrays have the documented shapes, dtype and values.

        Checks: N > 0; float32 arrays of shapes ``[N, 3]``, ``[N, 3]``, ``[N, 4]``, ``[N]``,
        ``[N, K, 3]`` with K in {1, 4, 9, 16}; all finite; quaternions of unit length within 1e-3;
        ``extra`` values are ``[N]`` float32 (any value) under plain names that do not clash with
        the standard properties.
        """
        n = len(self) if isinstance(self.means, np.ndarray) and self.means.ndim == 2 else 0
        if n == 0:
            raise AssetError(
                f"Gaussians.means must be [N, 3] float32 with N > 0, got {_describe(self.means)}"
            )
        for name, arr, shape in (
            ("means", self.means, (n, 3)),
            ("log_scales", self.log_scales, (n, 3)),
            ("quats", self.quats, (n, 4)),
            ("opacity_logits", self.opacity_logits, (n,)),
        ):
            _check_array(f"Gaussians.{name}", arr, shape)
        if not isinstance(self.sh, np.ndarray) or self.sh.ndim != 3 or self.sh.shape[1] not in _SH_COEFFS:
            raise AssetError(
                f"Gaussians.sh must be [N, K, 3] with K in {{1, 4, 9, 16}}, got {_describe(self.sh)}"
            )
        _check_array("Gaussians.sh", self.sh, (n, self.sh.shape[1], 3))
        norms = np.linalg.norm(self.quats.astype(np.float64), axis=1)
        off = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if off.size:
            raise AssetError(
                f"Gaussians.quats has {off.size} quaternions that are not unit length "
                f"(first at index {off[0]}, norm {norms[off[0]]:.6g})"
            )
        for name, arr in self.extra.items():
            if not _PLAIN_NAME.fullmatch(name) or _is_standard_property(name):
                raise AssetError(
                    f"Gaussians.extra has a key {_clip(name)!r} that cannot be written as a property"
                )
            if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (n,):
                raise AssetError(f"Gaussians.extra[{name!r}] must be [{n}] float32, got {_describe(arr)}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    def take(self, index: np.ndarray) -> Gaussians:
        """The Gaussians at ``index`` (``[M]`` int, in that order, or an ``[N]`` bool mask), extras too."""
        return Gaussians(
            means=self.means[index],
            log_scales=self.log_scales[index],
            quats=self.quats[index],
            opacity_logits=self.opacity_logits[index],
            sh=self.sh[index],
            extra={name: value[index] for name, value in self.extra.items()},
        )

    @property
    def sh_degree(self) -> int:
        """0 to 3."""
        return math.isqrt(self.sh.shape[1]) - 1

    @property
    def scales(self) -> np.ndarray:
        """``[N, 3]`` float32 standard deviations, world units."""
        return np.exp(self.log_scales)

    @property
    def opacities(self) -> np.ndarray:
        """``[N]`` float32 in (0, 1)."""
        return (1.0 / (1.0 + np.exp(-self.opacity_logits.astype(np.float64)))).astype(np.float32)


def recolour(
    gaussians: Gaussians, colours: np.ndarray, which: np.ndarray | None = None, keep_higher_sh: bool = False
) -> Gaussians:
    """A copy of ``gaussians`` whose base colour is ``colours``; geometry arrays are shared, unchanged.

    The DC coefficient is set so that the degree-0 colour ``0.5 + SH_C0 * f_dc`` equals the given
    colour; higher bands are zeroed (the colour becomes view-independent) unless ``keep_higher_sh``.

    Args:
        gaussians: N Gaussians.
        colours: ``[N, 3]`` float RGB in [0, 1] (values outside are clipped).
        which: ``[N]`` bool, the Gaussians to recolour; None for all. Others keep every coefficient.
        keep_higher_sh: keep the SH bands above degree 0 of the recoloured Gaussians.
    """
    n = len(gaussians)
    colours = np.asarray(colours, dtype=np.float64)
    if colours.shape != (n, 3):
        raise ValueError(f"colours must be [{n}, 3], got {list(colours.shape)}")
    which = np.ones(n, dtype=bool) if which is None else np.asarray(which, dtype=bool)
    if which.shape != (n,):
        raise ValueError(f"which must be [{n}] bool, got {list(which.shape)}")
    sh = gaussians.sh.copy()
    sh[which, 0, :] = ((np.clip(colours[which], 0.0, 1.0) - 0.5) / SH_C0).astype(np.float32)
    if not keep_higher_sh:
        sh[which, 1:, :] = 0.0
    return dataclasses.replace(gaussians, sh=sh)


CORRESPONDENCE_RATIO = 0.25
"""Frames correspond when index-matched Gaussians lie, at the median, closer than this fraction of
the median distance between Gaussians paired at random (about 1 for unrelated frames)."""


def frames_correspond(frames: Sequence[Gaussians], samples: int = 65_536) -> bool:
    """Whether Gaussian i is one surface point in every frame of a 4D asset (a deformed canonical set).

    True when every frame holds the same N Gaussians and, between each pair of consecutive frames,
    the median distance from Gaussian i to Gaussian i is below ``CORRESPONDENCE_RATIO`` times the
    median distance from Gaussian i to a Gaussian paired at random: frames generated one by one (with
    N each, say) are not. One frame corresponds with itself.

    Args:
        frames: the T frames.
        samples: Gaussians compared per pair of frames, at most (a fixed random choice).
    """
    if len({len(f) for f in frames}) > 1:
        return False
    n = len(frames[0]) if frames else 0
    if len(frames) < 2 or n < 2:
        return True
    rng = np.random.default_rng(0)
    chosen = rng.choice(n, size=min(n, samples), replace=False)
    partner = rng.permutation(chosen)
    for a, b in itertools.pairwise(frames):
        first, second = a.means.astype(np.float64), b.means.astype(np.float64)
        matched = np.median(np.linalg.norm(second[chosen] - first[chosen], axis=1))
        paired = np.median(np.linalg.norm(second[partner] - first[chosen], axis=1))
        if not matched < CORRESPONDENCE_RATIO * paired:
            return False
    return True


MAX_GAUSSIANS = 10_000_000
"""The default limit on a file's Gaussian count, in every reader: larger counts are refused before
anything is allocated (services may set their own, e.g. ``TIRE_RENDERER_MAX_GAUSSIANS``)."""

MAX_HEADER_BYTES = 64 * 1024
"""A longer header is rejected: real 3DGS headers are about 2 KiB."""

MAX_LOG_SCALE = 10.0
"""``read_ply`` refuses a larger log scale (a Gaussian e^10 = 22,026 world units across), which the GPU
renderer would drop silently; see the module docstring."""

MAX_OPACITY_LOGIT = 80.0
"""``read_ply`` reads an opacity logit beyond +-80 as +-80 (sigmoid 0 or 1 in float32 either way); see
the module docstring."""

MAX_POSITION = 1e15
"""``read_ply`` refuses a coordinate beyond +-1e15 world units; see the module docstring."""

ASCII_CHUNK_BYTES = 1 << 20
"""ASCII vertex data is tokenised this many bytes at a time (extended to the next whitespace)."""

_SH_COEFFS = (1, 4, 9, 16)
_F_REST_COUNTS = {3 * (k - 1): k for k in _SH_COEFFS}  # number of f_rest_* -> K
_NORMALS = ("nx", "ny", "nz")
_REQUIRED = (
    "x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
    "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3",
)  # fmt: skip  # LGM's layout; INRIA's adds only optional normals and f_rest_*
_F_REST = tuple(f"f_rest_{i}" for i in range(45))  # every f_rest_* name a file may hold
_F_REST_LIKE = re.compile(r"f_rest_[0-9]+")  # the names that can only mean an SH coefficient
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_COUNT = re.compile(r"0*([0-9]{1,18})")  # an element count below 10^18, leading zeros allowed
_ASCII_LINE = re.compile(rb"\S[^\n]*")  # a non-blank line, from its first non-blank byte
_SPACE = re.compile(rb"\s")

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
PLY_BYTE_ORDERS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_END_HEADER = re.compile(rb"\nend_header[ \t]*\r?(?:\n|\Z)")


def _is_standard_property(name: str) -> bool:
    return name in _REQUIRED or name in _NORMALS or _F_REST_LIKE.fullmatch(name) is not None


def _clip(text: str, limit: int = 80) -> str:
    """``text``, cut to ``limit`` characters for an error message (a header line can be 64 KiB)."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _describe(arr: object) -> str:
    return f"{arr.dtype} {list(arr.shape)}" if isinstance(arr, np.ndarray) else type(arr).__name__


def _check_array(what: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != shape:
        raise AssetError(f"{what} must be {list(shape)} float32, got {_describe(arr)}")
    bad = np.flatnonzero(~np.isfinite(arr).reshape(shape[0], -1).all(axis=1))
    if bad.size:
        raise AssetError(f"{what} has non-finite values in {bad.size} rows (first at index {bad[0]})")


@dataclass(frozen=True)
class PlyProperty:
    """A property of a `.ply` element, as its header declares it."""

    name: str
    code: str | None  # numpy type code without byte order; None for a list property


@dataclass(frozen=True)
class PlyElement:
    """An element of a `.ply` (``vertex``, ``face``...): its count and properties, in file order."""

    name: str
    count: int
    properties: tuple[PlyProperty, ...]


def parse_ply_header(data: bytes) -> tuple[str, list[PlyElement], int]:
    """(format, elements in file order, byte offset of the data) of a `.ply`: the header checked as
    ``read_ply`` checks it (``AssetError`` naming the problem), without reading the data."""
    if not (data.startswith(b"ply\n") or data.startswith(b"ply\r\n")):
        raise AssetError(f"not a `.ply` file: it starts with {data[:16]!r} instead of 'ply'")
    head = data[: MAX_HEADER_BYTES + 1]
    match = _END_HEADER.search(head)
    if match is not None and not match.group().endswith(b"\n") and match.end() < len(data):
        match = None  # `end_header` cut at MAX_HEADER_BYTES + 1, not at the end of the file
    if match is None:
        if len(head) > MAX_HEADER_BYTES:
            raise AssetError(f"`.ply` header has no `end_header` line in its first {MAX_HEADER_BYTES} bytes")
        raise AssetError("`.ply` header is not terminated: there is no `end_header` line")
    try:
        text = data[: match.start()].decode("ascii")
    except UnicodeDecodeError as exc:
        raise AssetError(f"`.ply` header has a non-ASCII byte at offset {exc.start}") from exc

    fmt: str | None = None
    elements: list[tuple[str, int, list[PlyProperty]]] = []
    for number, line in enumerate(text.split("\n")[1:], start=2):
        words = line.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "format":
            if len(words) != 3 or words[1] not in PLY_BYTE_ORDERS or words[2] not in ("1.0", "1"):
                raise AssetError(
                    f"unsupported `.ply` format {_clip(' '.join(words[1:]))!r} (header line {number})"
                )
            fmt = words[1]
        elif words[0] == "element":
            if len(words) != 3 or not words[2].isdigit():
                raise AssetError(
                    f"`.ply` header line {number} is not `element <name> <count>`: {_clip(line)!r}"
                )
            count = _COUNT.fullmatch(words[2])
            if count is None:
                raise AssetError(
                    f"`.ply` header line {number} declares element `{_clip(words[1])}` with a count of "
                    f"{len(words[2].lstrip('0'))} digits; counts must be below 10^18"
                )
            if any(name == words[1] for name, _, _ in elements):
                raise AssetError(f"`.ply` header declares element `{_clip(words[1])}` twice")
            elements.append((words[1], int(count.group(1)), []))
        elif words[0] == "property":
            if not elements:
                raise AssetError(f"`.ply` header line {number} declares a property before any element")
            props = elements[-1][2]
            if len(words) == 5 and words[1] == "list":
                types, prop = words[2:4], PlyProperty(words[4], None)
            elif len(words) == 3:
                types, prop = words[1:2], PlyProperty(words[2], PLY_TYPES.get(words[1]))
            else:
                raise AssetError(f"`.ply` header line {number} is not a valid property: {_clip(line)!r}")
            unknown = [t for t in types if t not in PLY_TYPES]
            if unknown:
                raise AssetError(
                    f"`.ply` property `{_clip(prop.name)}` has unknown type `{_clip(unknown[0])}`"
                )
            if any(p.name == prop.name for p in props):
                raise AssetError(
                    f"`.ply` element `{_clip(elements[-1][0])}` declares property `{_clip(prop.name)}` twice"
                )
            props.append(prop)
        else:
            raise AssetError(f"`.ply` header line {number} is not understood: {_clip(line)!r}")
    if fmt is None:
        raise AssetError("`.ply` header has no `format` line")
    return fmt, [PlyElement(n, c, tuple(p)) for n, c, p in elements], match.end()


def _vertex_columns(
    data: bytes, fmt: str, elements: list[PlyElement], offset: int, max_gaussians: int
) -> tuple[int, dict[str, np.ndarray]]:
    """The vertex element as (count, name -> ``[N]`` column), all names kept.

    Binary columns are views into ``data`` of the file's dtype; ASCII columns are float32 views into
    one ``[N, P]`` table.
    """
    names = [e.name for e in elements]
    if "vertex" not in names:
        listed = ", ".join(_clip(name, 40) for name in names[:8]) + (", ..." if len(names) > 8 else "")
        raise AssetError(f"`.ply` has no `vertex` element (elements: {listed or 'none'})")
    index = names.index("vertex")
    vertex = elements[index]
    if vertex.count == 0 or vertex.count > max_gaussians:
        raise AssetError(
            f"`.ply` header declares {vertex.count} vertices; expected between 1 and {max_gaussians}"
        )
    lists = [_clip(p.name, 40) for p in vertex.properties if p.code is None]
    if lists:
        raise AssetError(
            f"`.ply` vertex element has list properties, which are not supported: {', '.join(lists)}"
        )
    _check_properties(vertex)

    n = vertex.count
    if fmt == "ascii":
        # One element per line, so elements declared before `vertex` are skipped line by line.
        skip = sum(e.count for e in elements[:index])
        table = _ascii_table(data, offset, skip, n, len(vertex.properties))
        return n, {p.name: table[:, i] for i, p in enumerate(vertex.properties)}

    order = PLY_BYTE_ORDERS[fmt]
    for element in elements[:index]:
        if any(p.code is None for p in element.properties):
            raise AssetError(
                f"`.ply` element `{_clip(element.name)}` comes before `vertex` and has list properties; "
                "binary files with that layout are not supported"
            )
        offset += element.count * sum(np.dtype(p.code).itemsize for p in element.properties)
    dtype = np.dtype([(p.name, order + p.code) for p in vertex.properties])
    have = max(0, len(data) - offset) // dtype.itemsize
    if have < n:
        raise AssetError(f"`.ply` header declares {n} vertices but the data holds only {have} (truncated?)")
    table = np.frombuffer(data, dtype=dtype, count=n, offset=offset)
    return n, {name: table[name] for name in dtype.names}


def _ascii_table(data: bytes, offset: int, skip: int, n: int, width: int) -> np.ndarray:
    """``[n, width]`` float32: the values on the ``n`` non-blank lines after the first ``skip``.

    The lines are located without copying, then parsed ``ASCII_CHUNK_BYTES`` at a time straight into
    the table, so memory is the table plus one chunk's tokens. Values are parsed as float64 (Python's
    ``float`` syntax) and then rounded to float32; one too large for float32 becomes inf.
    """
    # 1. The byte range of the vertex lines. A line holds at least one byte, so the search is bounded.
    start = end = offset
    seen = 0
    lines = _ASCII_LINE.finditer(data, offset)
    for seen, line in enumerate(itertools.islice(lines, min(skip + n, len(data))), start=1):
        if seen == skip + 1:
            start = line.start()
        end = line.end()
    if seen < skip + n:
        raise AssetError(
            f"`.ply` header declares {n} vertices but the data holds only {max(0, seen - skip)} (truncated?)"
        )

    # 2. Values need a byte and a separator each: too short a range is refused before allocating.
    expected = n * width
    if end - start < 2 * expected - 1:
        _wrong_value_count(sum(len(chunk.split()) for chunk in _chunks(data, start, end)), n, width)
    table = np.empty(expected, dtype=np.float32)
    filled = 0
    chunks = _chunks(data, start, end)
    for chunk in chunks:
        tokens = chunk.split()
        if filled + len(tokens) > expected:
            _wrong_value_count(filled + len(tokens) + sum(len(c.split()) for c in chunks), n, width)
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError as exc:
            raise AssetError(
                f"`.ply` ascii vertex data has a value that is not a number: {_clip(str(exc))}"
            ) from exc
        with np.errstate(over="ignore"):  # a double too large for float32 becomes inf, reported later
            table[filled : filled + len(tokens)] = values
        filled += len(tokens)
    if filled != expected:
        _wrong_value_count(filled, n, width)
    return table.reshape(n, width)


def _chunks(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """``data[start:end]`` in pieces of about ``ASCII_CHUNK_BYTES`` that end at whitespace."""
    while start < end:
        stop = min(end, start + ASCII_CHUNK_BYTES)
        if stop < end:
            space = _SPACE.search(data, stop, end)
            stop = end if space is None else space.start()
        yield data[start:stop]
        start = stop


def _wrong_value_count(count: int, n: int, width: int) -> NoReturn:
    raise AssetError(
        f"`.ply` ascii vertex data has {count} values; expected {n} vertices x {width} properties"
    )


def _check_properties(vertex: PlyElement) -> None:
    names = [p.name for p in vertex.properties]
    odd = [name for name in names if not _PLAIN_NAME.fullmatch(name)]
    if odd:
        raise AssetError(
            f"`.ply` vertex property {_clip(odd[0])!r} is not a plain name (letters, digits and `_`, "
            "not starting with a digit), so it could not be written back"
        )
    odd = [name for name in names if _F_REST_LIKE.fullmatch(name) and name not in _F_REST]
    if odd:
        raise AssetError(
            f"`.ply` property `{_clip(odd[0])}` is not an SH coefficient name: they are f_rest_0 to "
            "f_rest_44, without leading zeros"
        )
    missing = [name for name in _REQUIRED if name not in names]
    if missing:
        raise AssetError(f"`.ply` is missing required properties: {', '.join(missing)}")
    rest = {_F_REST.index(name) for name in names if name in _F_REST}
    if len(rest) not in _F_REST_COUNTS:
        raise AssetError(
            f"`.ply` has {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0 to 3)"
        )
    gaps = sorted(set(range(len(rest))) - rest)
    if gaps:
        raise AssetError(f"`.ply` is missing required properties: {', '.join(f'f_rest_{i}' for i in gaps)}")


def _finite_float32(name: str, column: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # a double too large for float32 becomes inf, reported below
        out = column.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(out))
    if bad.size:
        raise AssetError(
            f"`.ply` property `{name}` has {bad.size} non-finite values (first at vertex {bad[0]})"
        )
    return out


def _check_range(
    names: Sequence[str], values: np.ndarray, high: float, rule: str, low: float | None = None
) -> None:
    """Raise ``AssetError`` naming the first of ``values`` (``[N, len(names)]``) outside [low, high].

    ``low`` defaults to ``-high``.
    """
    rows, cols = np.nonzero((values < (-high if low is None else low)) | (values > high))
    if rows.size:
        raise AssetError(
            f"`.ply` property `{names[cols[0]]}` is {values[rows[0], cols[0]]:g} at vertex {rows[0]} "
            f"({rows.size} out-of-range values in all); {rule}"
        )


def source_bytes(source: bytes | str | os.PathLike, what: str) -> bytes:
    """A file's bytes: ``source`` itself (any bytes-like object) or the regular file it names.

    Raises:
        NotFound: ``source`` is a path that does not exist.
        AssetError: a path that is not a regular file (a FIFO blocks, a device may never end) or
            cannot be read; ``what`` names the file's kind in the message.
        TypeError: ``source`` is neither bytes-like nor a path.
    """
    if not isinstance(source, (str, os.PathLike)):
        return source if isinstance(source, bytes) else bytes(memoryview(source))
    path = os.fspath(source)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise AssetError(f"{what} path {path!r} is not a regular file")
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise NotFound(f"no {what} file at {path!r}") from exc
    except OSError as exc:
        raise AssetError(f"cannot read {what} file {path!r}: {exc.strerror}") from exc


def read_ply(source: bytes | str | os.PathLike, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Read a 3DGS `.ply` (INRIA or LGM layout, any property order) into ``Gaussians``.

    Args:
        source: the file's bytes (or any bytes-like object), or a path to it.
        max_gaussians: a larger vertex count is rejected before anything is allocated.

    Returns:
        ``Gaussians`` of owned, C-contiguous float32 arrays that pass ``Gaussians.validate`` and the
        renderers' checks. Quaternions whose norm differs from 1 by more than 1e-6 are normalised (in
        float64), so reading what ``write_ply`` wrote is bit-identical. ``sh`` has
        K = 1 + (number of f_rest_*) / 3. Normals are dropped; every other non-standard vertex
        property is kept in ``extra`` as ``[N]`` float32 (any value; one too large for float32 becomes
        inf). Elements other than ``vertex`` are ignored.

    Raises:
        AssetError: for any input that is not such a file, and for nothing else: bad magic, format or
            header (no ``end_header`` in the first ``MAX_HEADER_BYTES``, non-ASCII bytes, a count of
            10^18 or more); no vertex element; missing properties, or names that are not plain
            identifiers or not f_rest_0..44; f_rest count not 0/9/24/45; vertex count 0 or over
            ``max_gaussians``; truncated data or a wrong number of ASCII values; NaN/inf in a standard
            property (but an infinite opacity logit, read as +-``MAX_OPACITY_LOGIT``); a coordinate
            beyond +-``MAX_POSITION``, a log scale over ``MAX_LOG_SCALE``; a zero-length quaternion; a
            path that is not a regular file or cannot be read.
        NotFound: ``source`` is a path that does not exist.
        TypeError: ``source`` is neither bytes-like nor a path.
    """
    data = source_bytes(source, "`.ply`")
    fmt, elements, offset = parse_ply_header(data)
    n, columns = _vertex_columns(data, fmt, elements, offset, max_gaussians)

    def stack(names: Sequence[str]) -> np.ndarray:
        out = np.empty((n, len(names)), dtype=np.float32)
        for i, name in enumerate(names):
            out[:, i] = _finite_float32(name, columns[name])
        return out

    means = stack(["x", "y", "z"])
    _check_range(
        ["x", "y", "z"], means, MAX_POSITION, f"a position must lie within +-{MAX_POSITION:g} world units"
    )
    log_scales = stack(["scale_0", "scale_1", "scale_2"])
    _check_range(
        ["scale_0", "scale_1", "scale_2"],
        log_scales,
        MAX_LOG_SCALE,
        f"a log scale must be at most {MAX_LOG_SCALE:g}, a Gaussian e^{MAX_LOG_SCALE:g} world units across",
        low=-np.inf,
    )
    with np.errstate(over="ignore"):  # a double beyond float32 becomes +-inf, then +-80
        logits = columns["opacity"].astype(np.float32)
    if np.isnan(logits).any():
        _finite_float32("opacity", logits)  # raises, naming the first NaN
    opacity = np.clip(logits, -MAX_OPACITY_LOGIT, MAX_OPACITY_LOGIT)[:, None]

    k = _F_REST_COUNTS[sum(1 for name in columns if name in _F_REST)]
    sh = np.empty((n, k, 3), dtype=np.float32)
    sh[:, 0] = stack(["f_dc_0", "f_dc_1", "f_dc_2"])
    if k > 1:
        # Channel-major: f_rest_{c * (K-1) + j} is coefficient j+1 of channel c.
        rest = stack(_F_REST[: 3 * (k - 1)])
        sh[:, 1:] = rest.reshape(n, 3, k - 1).transpose(0, 2, 1)

    quats = stack(["rot_0", "rot_1", "rot_2", "rot_3"])
    norms = np.linalg.norm(quats.astype(np.float64), axis=1)
    zero = np.flatnonzero(norms < 1e-12)
    if zero.size:
        raise AssetError(
            f"`.ply` has {zero.size} zero-length quaternion(s) (rot_0..rot_3), first at vertex {zero[0]}"
        )
    # Rows already unit length within 1e-6 are left untouched, so read -> write -> read is exact.
    off = np.abs(norms - 1.0) > 1e-6
    quats[off] = (quats[off].astype(np.float64) / norms[off, None]).astype(np.float32)

    extra: dict[str, np.ndarray] = {}
    with np.errstate(over="ignore"):
        for name, column in columns.items():
            if not _is_standard_property(name):
                extra[name] = column.astype(np.float32)
    return Gaussians(
        means=means,
        log_scales=log_scales,
        quats=quats,
        opacity_logits=opacity[:, 0].copy(),
        sh=sh,
        extra=extra,
    )


def read_ply_sequence(
    sources: Sequence[bytes | str | os.PathLike], max_gaussians: int = MAX_GAUSSIANS
) -> list[Gaussians]:
    """Read a 4D asset: one `.ply` per time step, in order, with ``read_ply``.

    Time steps are not required to have the same count or SH degree.

    Raises:
        AssetError: ``sources`` is empty, or a file is malformed; the message starts with
            "time step <index>: ".
        NotFound: a path does not exist (same prefix).
    """
    if not sources:
        raise AssetError("a 4D asset needs at least one `.ply` time step; the list is empty")
    frames = []
    for step, source in enumerate(sources):
        try:
            frames.append(read_ply(source, max_gaussians=max_gaussians))
        except (AssetError, NotFound) as exc:
            raise type(exc)(f"time step {step}: {exc}") from exc
    return frames


PLY_LAYOUTS = ("inria", "lgm")
"""The `.ply` layouts ``write_ply`` writes: with normals (INRIA's) or without (LGM's)."""


def ply_layout(data: bytes) -> str:
    """The layout of a `.ply` (one of ``PLY_LAYOUTS``), so that a file written back keeps its
    input's: "lgm" when its vertex element has no normals, "inria" otherwise.

    Raises:
        AssetError: the header is malformed (``parse_ply_header``).
    """
    _, elements, _ = parse_ply_header(data)
    vertex = next((e for e in elements if e.name == "vertex"), None)
    names = {p.name for p in vertex.properties} if vertex is not None else set()
    return "inria" if names.issuperset(_NORMALS) else "lgm"


def write_ply(gaussians: Gaussians, layout: str = "inria") -> bytes:
    """Encode Gaussians as a ``binary_little_endian`` 3DGS `.ply`.

    Layouts (``PLY_LAYOUTS``):
        "inria": x, y, z, nx, ny, nz (zeros), f_dc_0..2, f_rest_* (channel-major, 3 * (K-1) of them),
            opacity, scale_0..2, rot_0..3, then the ``extra`` properties in dict order.
        "lgm": the same without the normals; for SH degree 0 and no ``extra``, exactly LGM's
            x, y, z, f_dc_0..2, opacity, scale_0..2, rot_0..3.

    ``read_ply`` of the result gives back bit-identical arrays.

    Raises:
        ValueError: ``layout`` is not in ``PLY_LAYOUTS``.
        AssetError: ``gaussians.validate()`` fails.
    """
    if layout not in PLY_LAYOUTS:
        raise ValueError(f"unknown .ply layout {layout!r}; expected one of {', '.join(PLY_LAYOUTS)}")
    gaussians.validate()
    g, n, k = gaussians, len(gaussians), gaussians.sh.shape[1]
    normals = list(_NORMALS) if layout == "inria" else []
    names = ["x", "y", "z", *normals, "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * (k - 1))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", *g.extra]
    blocks = [
        g.means,
        np.zeros((n, len(normals)), dtype=np.float32),
        g.sh[:, 0],
        g.sh[:, 1:].transpose(0, 2, 1).reshape(n, 3 * (k - 1)),
        g.opacity_logits[:, None],
        g.log_scales,
        g.quats,
        *(value[:, None] for value in g.extra.values()),
    ]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {name}" for name in names]
    header.append("end_header\n")
    table = np.concatenate(blocks, axis=1).astype("<f4", copy=False)
    return "\n".join(header).encode("ascii") + table.tobytes()


def random_gaussians(
    n: int,
    sh_degree: int = 0,
    seed: int = 0,
    extent: float = 0.5,
    scale_range: tuple[float, float] = (0.005, 0.05),
    opacity_range: tuple[float, float] = (0.05, 0.99),
) -> Gaussians:
    """N random, anisotropic Gaussians inside a cube of half-size ``extent`` around the origin.

    Scales are log-uniform in ``scale_range`` (world units), rotations uniform, opacities uniform in
    ``opacity_range``, DC colours uniform in [0, 1] after activation, higher SH bands small.
    """
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    opac = rng.uniform(*opacity_range, size=n)
    sh = np.zeros((n, k, 3))
    sh[:, 0] = (rng.uniform(0.0, 1.0, size=(n, 3)) - 0.5) / SH_C0
    if k > 1:
        sh[:, 1:] = rng.normal(scale=0.2, size=(n, k - 1, 3))
    return Gaussians(
        means=rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32),
        log_scales=rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), size=(n, 3)).astype(
            np.float32
        ),
        quats=quats.astype(np.float32),
        opacity_logits=np.log(opac / (1.0 - opac)).astype(np.float32),
        sh=sh.astype(np.float32),
    )
