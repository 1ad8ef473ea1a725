"""Splat file formats, read and written through one set of conventions (``conventions``).

    from services.common.formats import read_splats, write_splats
    gaussians = read_splats("asset.spz")       # the format from the content
    data = write_splats(gaussians, "splat")    # bytes of a `.splat`

``FORMATS`` is the one table of formats: name, file extension, media type, and what each keeps and
loses (the README's formats table says the same). Every reader raises ``AssetError`` for any
malformed input and nothing else, and refuses a count over ``max_gaussians`` before allocating.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from services.common.errors import AssetError, InvalidArgument
from services.common.formats.compressed_ply import is_compressed, read_compressed_ply
from services.common.formats.gltf import MAGIC as GLB_MAGIC
from services.common.formats.gltf import read_glb, write_glb
from services.common.formats.ksplat import is_ksplat, read_ksplat
from services.common.formats.sog import read_sog, write_sog
from services.common.formats.splat import read_splat, write_splat
from services.common.formats.spz import MAGIC as SPZ_MAGIC
from services.common.formats.spz import read_spz, write_spz
from services.common.gaussians import (
    MAX_GAUSSIANS,
    Gaussians,
    parse_ply_header,
    read_ply,
    source_bytes,
    write_ply,
)

__all__ = [
    "FORMATS",
    "WRITABLE",
    "SplatFormat",
    "detect_format",
    "format_of_name",
    "read_splats",
    "write_splats",
]


@dataclass(frozen=True)
class SplatFormat:
    """One file format.

    Attributes:
        name: the format's name in the API and on the command line ("ply", "spz", "splat").
        extension: the file name's ending, with its dot.
        media_type: the object store's Content-Type for it.
        keeps: what a write then read gives back, in a sentence (the bound ``tests`` check).
        read: bytes -> ``Gaussians``, with a ``max_gaussians`` keyword.
        write: ``Gaussians`` -> bytes; None for a format that is only read.
    """

    name: str
    extension: str
    media_type: str
    keeps: str
    read: Callable[..., Gaussians]
    write: Callable[[Gaussians], bytes] | None  # None: read only


def read_any_ply(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """A `.ply`: the 3DGS layouts (``read_ply``) or PlayCanvas's compressed one (``compressed_ply``)."""
    fmt, elements, offset = parse_ply_header(data)
    if is_compressed(elements):
        return read_compressed_ply(data, fmt, elements, offset, max_gaussians)
    return read_ply(data, max_gaussians=max_gaussians)


FORMATS: dict[str, SplatFormat] = {
    f.name: f
    for f in (
        SplatFormat(
            "ply",
            ".ply",
            "application/x-ply",
            "everything, bit for bit (INRIA layout, SH degree 0 to 3, extra properties); PlayCanvas's "
            "compressed .ply is read too",
            read_any_ply,
            write_ply,
        ),
        SplatFormat(
            "spz",
            ".spz",
            "application/x-spz",
            "versions 2 to 4 read, 3 written; SH degree 0 to 3, quantized: positions to 1/8192, "
            "log scales to 1/32, opacity to 1/510, colour to 1/270, SH bands to 1/28 and 1/15",
            read_spz,
            write_spz,
        ),
        SplatFormat(
            "glb",
            ".glb",
            "model/gltf-binary",
            "glTF 2.0 with KHR_gaussian_splatting: everything to float32 rounding, SH degree 0 to 3; "
            "+Y up, as glTF says",
            read_glb,
            write_glb,
        ),
        SplatFormat(
            "sog",
            ".sog",
            "application/x-sog",
            "PlayCanvas's SOG version 2: 16-bit positions, 8-bit rotations, 256-entry codebooks of log "
            "scales and colours, higher SH bands through a palette of up to 4,096 vectors",
            read_sog,
            write_sog,
        ),
        SplatFormat(
            "splat",
            ".splat",
            "application/x-splat",  # no registered type; ours, so that uploads keep the name's ending
            "positions and scales in float32; colour (DC only, clamped to [0, 1]) and opacity to 1/510, "
            "rotations to 1/256; higher SH bands are dropped",
            read_splat,
            write_splat,
        ),
        SplatFormat(
            "ksplat",
            ".ksplat",
            "application/x-ksplat",  # no registered type either
            "read only (GaussianSplats3D's format): compression levels 0 to 2, SH degree 0 to 2; colour "
            "and opacity to 1/255, and at levels 1 and 2 positions to about 1e-4, scales and rotations "
            "to float16",
            read_ksplat,
            None,
        ),
    )
}


WRITABLE: tuple[str, ...] = tuple(name for name, spec in FORMATS.items() if spec.write is not None)
"""The formats ``write_splats`` writes, which jobs deliver and ``tire convert`` converts to."""


def detect_format(data: bytes, name: str | None = None) -> str:
    """The format of a file from its first bytes; ``name`` decides only for `.splat` and `.ksplat`,
    which have no signature of their own (a `.ksplat` without its name is known by its header).

    Raises:
        AssetError: the bytes match no readable format (the message says what they start with).
    """
    head = bytes(data[:16])
    if head.startswith(b"ply\n") or head.startswith(b"ply\r\n"):
        return "ply"
    if head.startswith(SPZ_MAGIC.to_bytes(4, "little")):
        return "spz"  # version 4: a plain header, zstd columns
    if head.startswith(b"\x1f\x8b"):
        try:  # inflate the first 4 bytes only
            inner = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS).decompress(bytes(data[:65536]), 4)
        except zlib.error as exc:
            raise AssetError(f"a gzip file that cannot be inflated: {exc}") from exc
        if inner == SPZ_MAGIC.to_bytes(4, "little"):
            return "spz"
        raise AssetError(f"a gzip file that holds no splat format (it starts with {inner!r})")
    if head.startswith(GLB_MAGIC):
        return "glb"
    if head.startswith(b"PK\x03\x04"):
        return "sog"  # a zip: SOG is the only zipped format here (its reader checks for meta.json)
    if name is not None and name.lower().endswith(".ksplat"):
        return "ksplat"
    if name is not None and name.lower().endswith(".splat"):
        return "splat"
    if is_ksplat(data):
        return "ksplat"
    if len(data) and len(data) % 32 == 0 and not head.isascii():
        return "splat"  # no signature: 32-byte records of float32 positions are the last guess
    raise AssetError(f"not a splat file this reads ({', '.join(FORMATS)}); it starts with {head[:8]!r}")


def format_of_name(name: str) -> str:
    """The writable format whose extension ends ``name`` (case-insensitive).

    Raises:
        InvalidArgument: no format has that extension.
    """
    for spec in FORMATS.values():
        if spec.write is not None and name.lower().endswith(spec.extension):
            return spec.name
    extensions = ", ".join(FORMATS[name].extension for name in WRITABLE)
    raise InvalidArgument("format", name, f"must end in one of {extensions}, or name its format")


def read_splats(
    source: bytes | str | os.PathLike, *, name: str | None = None, max_gaussians: int = MAX_GAUSSIANS
) -> Gaussians:
    """Read any format of ``FORMATS``, detected from the content (``detect_format``).

    Args:
        source: the file's bytes, or a path to it (whose name then serves as ``name``).
        name: the file's name, when ``source`` is bytes (only a `.splat` needs it).
        max_gaussians: larger counts are refused before anything is allocated.

    Raises:
        AssetError: malformed input of any kind; NotFound: a path that does not exist.
    """
    if isinstance(source, (str, os.PathLike)) and name is None:
        name = os.fspath(source)
    data = source_bytes(source, "splat")
    return FORMATS[detect_format(data, name)].read(data, max_gaussians=max_gaussians)


def write_splats(gaussians: Gaussians, format_name: str) -> bytes:
    """Encode ``gaussians`` in the format named ``format_name`` (a key of ``FORMATS``).

    Raises:
        InvalidArgument: a format name that is not in ``WRITABLE``.
        AssetError: ``gaussians.validate()`` fails, or the format cannot hold the values.
    """
    if format_name not in WRITABLE:
        raise InvalidArgument("format", format_name, f"must be one of {', '.join(WRITABLE)}")
    return FORMATS[format_name].write(gaussians)
