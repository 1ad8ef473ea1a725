"""PlayCanvas's compressed `.ply` (SuperSplat, splat-transform): Gaussians quantized in chunks of 256.

A `binary_little_endian` `.ply` with an element ``chunk`` (one per 256 Gaussians: float ``min_``/``max_``
of ``x y z`` and of the log scales ``scale_x y z``, and optionally of the colours ``r g b``), an
element ``vertex`` of four uint32 (``packed_position`` and ``packed_scale``: 11, 10 and 11 bits
within the chunk's range; ``packed_rotation``: the index of the largest component of (w, x, y, z) in
2 bits and the other three in 10 bits each, within +-sqrt(1/2); ``packed_color``: 8 bits each of the
colour 0.5 + SH_C0 DC, within the chunk's colour range or [0, 1], and of the opacity), and optionally
an element ``sh`` of uint8 ``f_rest_*`` (channel-major, as in a 3DGS `.ply`): (v + 0.5) / 256 mapped
to [-4, 4], with 0 and 255 meaning -4 and 4 exactly. The axes are the `.ply`'s.

Read, not written: ``write_splats(..., "ply")`` writes the uncompressed INRIA layout.
"""

from __future__ import annotations

import numpy as np

from services.common.errors import AssetError
from services.common.formats.conventions import SH_C0, opacity_to_logit
from services.common.gaussians import MAX_LOG_SCALE, MAX_POSITION, Gaussians, PlyElement

CHUNK_SIZE = 256
_BOUNDS = [f"{e}_{a}" for e in ("min", "max") for a in ("x", "y", "z")]
_SCALE_BOUNDS = [f"{e}_scale_{a}" for e in ("min", "max") for a in ("x", "y", "z")]
_COLOUR_BOUNDS = [f"{e}_{c}" for e in ("min", "max") for c in ("r", "g", "b")]
_PACKED = ("packed_position", "packed_rotation", "packed_scale", "packed_color")


def is_compressed(elements: list[PlyElement]) -> bool:
    """Whether a `.ply`'s elements are the compressed schema (a ``chunk`` element and packed vertices)."""
    names = {e.name: e for e in elements}
    vertex = names.get("vertex")
    return (
        "chunk" in names and vertex is not None and "packed_position" in {p.name for p in vertex.properties}
    )


def read_compressed_ply(
    data: bytes, fmt: str, elements: list[PlyElement], offset: int, max_gaussians: int
) -> Gaussians:
    """Decode a compressed `.ply` whose header ``parse_ply_header`` read.

    Raises:
        AssetError: not binary little-endian, an element or property missing or of the wrong type or
            count, data shorter than the header says, or decoded values the `.ply` reader would refuse.
    """
    if fmt != "binary_little_endian":
        raise AssetError(f"compressed `.ply` must be binary_little_endian, got {fmt}")
    tables = _tables(data, elements, offset, max_gaussians)
    chunk, vertex, sh = tables["chunk"], tables["vertex"], tables.get("sh")
    n = len(vertex)
    if len(chunk) != -(-n // CHUNK_SIZE):
        raise AssetError(
            f"compressed `.ply` has {len(chunk)} chunks for {n} Gaussians, expected {-(-n // CHUNK_SIZE)}"
        )
    per = np.arange(n) // CHUNK_SIZE  # each Gaussian's chunk

    def lerp(low: str, high: str, t: np.ndarray) -> np.ndarray:
        lo, hi = chunk[low].astype(np.float64)[per], chunk[high].astype(np.float64)[per]
        return lo * (1.0 - t) + hi * t

    position, scale = _unpack_11_10_11(vertex["packed_position"]), _unpack_11_10_11(vertex["packed_scale"])
    means = np.stack([lerp(f"min_{a}", f"max_{a}", position[:, i]) for i, a in enumerate("xyz")], axis=1)
    log_scales = np.stack(
        [lerp(f"min_scale_{a}", f"max_scale_{a}", scale[:, i]) for i, a in enumerate("xyz")], axis=1
    )
    packed = vertex["packed_color"].astype(np.int64)
    colour = np.stack([((packed >> shift) & 255) / 255.0 for shift in (24, 16, 8, 0)], axis=1)
    if "min_r" in chunk.dtype.names:
        colour[:, :3] = np.stack(
            [lerp(f"min_{c}", f"max_{c}", colour[:, i]) for i, c in enumerate("rgb")], axis=1
        )
    dc = (colour[:, :3] - 0.5) / SH_C0
    rest = np.zeros((n, 0, 3))
    if sh is not None:
        k = len(sh.dtype.names) // 3 + 1
        values = np.stack([sh[f"f_rest_{i}"] for i in range(3 * (k - 1))], axis=1).astype(np.float64)
        unit = np.where(values == 0, 0.0, np.where(values == 255, 1.0, (values + 0.5) / 256.0))
        rest = ((unit - 0.5) * 8.0).reshape(n, 3, k - 1).transpose(0, 2, 1)

    if not (np.isfinite(means).all() and (np.abs(means) <= MAX_POSITION).all()):
        raise AssetError(
            "compressed `.ply` positions must be finite and within +-1e15 (check the chunk bounds)"
        )
    if not (np.isfinite(log_scales).all() and (log_scales <= MAX_LOG_SCALE).all()):
        raise AssetError(f"compressed `.ply` log scales must be finite and at most {MAX_LOG_SCALE:g}")
    if not np.isfinite(dc).all():
        raise AssetError("compressed `.ply` colour bounds must be finite")
    quats = _unpack_rotation(vertex["packed_rotation"])
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=opacity_to_logit(colour[:, 3]),
        sh=np.concatenate([dc[:, None, :], rest], axis=1).astype(np.float32),
    )


def _tables(
    data: bytes, elements: list[PlyElement], offset: int, max_gaussians: int
) -> dict[str, np.ndarray]:
    """Each element's records, checked against the compressed schema."""
    names = [e.name for e in elements]
    if names not in (["chunk", "vertex"], ["chunk", "vertex", "sh"]):
        raise AssetError(f"compressed `.ply` elements must be chunk, vertex[, sh], got {', '.join(names)}")
    expected = {"vertex": ({p: "u4" for p in _PACKED},)}
    chunk_props = {p: "f4" for p in _BOUNDS + _SCALE_BOUNDS}
    expected["chunk"] = (chunk_props, {**chunk_props, **{p: "f4" for p in _COLOUR_BOUNDS}})
    expected["sh"] = tuple({f"f_rest_{i}": "u1" for i in range(count)} for count in (9, 24, 45))
    tables = {}
    for element in elements:
        declared = {p.name: p.code for p in element.properties}
        if not any(declared == choice for choice in expected[element.name]):
            raise AssetError(
                f"compressed `.ply` element `{element.name}` does not have the schema's properties"
            )
        if element.name == "vertex" and not 0 < element.count <= max_gaussians:
            raise AssetError(f"compressed `.ply` vertex count {element.count} is outside 1..{max_gaussians}")
        dtype = np.dtype([(p.name, "<" + p.code) for p in element.properties])
        if element.count > (len(data) - offset) // dtype.itemsize:
            raise AssetError(f"compressed `.ply` element `{element.name}` is cut short: the file ends first")
        tables[element.name] = np.frombuffer(data, dtype=dtype, count=element.count, offset=offset)
        offset += element.count * dtype.itemsize
    if tables.get("sh") is not None and len(tables["sh"]) != len(tables["vertex"]):
        raise AssetError("compressed `.ply` element `sh` must have one record per vertex")
    return tables


def _unpack_11_10_11(packed: np.ndarray) -> np.ndarray:
    """``[N, 3]`` float64 in [0, 1] from 11, 10 and 11 bits (high to low)."""
    p = packed.astype(np.int64)
    return np.stack([((p >> 21) & 2047) / 2047.0, ((p >> 11) & 1023) / 1023.0, (p & 2047) / 2047.0], axis=1)


def _unpack_rotation(packed: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float64 (w, x, y, z), unit: the largest component's index in the top 2 bits, the
    other three in 10 bits each (in order), each within +-sqrt(1/2)."""
    p = packed.astype(np.int64)
    norm = 1.0 / (np.sqrt(2.0) * 0.5)
    others = np.stack([(((p >> shift) & 1023) / 1023.0 - 0.5) * norm for shift in (20, 10, 0)], axis=1)
    largest = np.sqrt(np.maximum(0.0, 1.0 - np.sum(others * others, axis=1)))
    which = p >> 30
    quats = np.empty((len(p), 4))
    for index in range(4):
        rows = which == index
        columns = [c for c in range(4) if c != index]
        quats[rows, index] = largest[rows]
        quats[np.ix_(rows, columns)] = others[rows]
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)
