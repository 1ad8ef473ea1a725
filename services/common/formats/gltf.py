"""glTF 2.0 binary (`.glb`) with the ``KHR_gaussian_splatting`` extension: one point primitive whose
attributes are the Gaussians.

Per Gaussian, as float32 accessors (what the extension defines; PlayCanvas's splat-transform writes the
same): ``POSITION`` (VEC3), ``KHR_gaussian_splatting:ROTATION`` (VEC4, x y z w, unit),
``KHR_gaussian_splatting:SCALE`` (VEC3, standard deviations: linear, not log),
``KHR_gaussian_splatting:OPACITY`` (SCALAR, after the sigmoid), ``KHR_gaussian_splatting:SH_DEGREE_0_COEF_0``
and ``..._SH_DEGREE_l_COEF_c`` (VEC3 RGB, one accessor per SH coefficient, in gsplat's band order); and
``COLOR_0`` (VEC4 normalized uint8: the DC colour and opacity) for viewers that draw plain points. The
frame is glTF's (``GLTF_AXES``: +Y up, +Z the asset's front, right-handed), converted from and to
``PLY_AXES`` with ``change_axes`` (x and y change sign), SH coefficients included.

What a round trip keeps: everything to float32 rounding (scales through exp and log: 1e-7 relative;
opacity through the sigmoid: its logit to about 1e-6 where the opacity is not saturated).

The reader takes what such writers write: one buffer (the GLB's BIN chunk), float32 accessors, tightly
packed or strided buffer views, every primitive that carries the extension (their Gaussians in order),
nodes without transforms. Quantized or compressed attributes (``KHR_mesh_quantization``,
``EXT_meshopt_compression``, ``KHR_gaussian_splatting_compression_spz_2``: any extension a file
requires other than this one), sparse accessors, external buffers and node transforms are refused
with ``AssetError`` naming them.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from services.common.errors import AssetError
from services.common.formats.conventions import (
    GLTF_AXES,
    PLY_AXES,
    SH_C0,
    change_axes,
    logit_to_opacity,
    opacity_to_logit,
    to_uint8,
)
from services.common.gaussians import MAX_GAUSSIANS, MAX_LOG_SCALE, MAX_POSITION, Gaussians

EXTENSION = "KHR_gaussian_splatting"
MAGIC = b"glTF"
_HEADER = struct.Struct("<4sII")  # magic, version, total length
_CHUNK = struct.Struct("<II")  # length, type
_JSON, _BIN = 0x4E4F534A, 0x004E4942
MAX_JSON_BYTES = 16 * 2**20
_FLOAT, _UNSIGNED_BYTE = 5126, 5121
_WIDTH = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}
_ARRAY_BUFFER = 34962
_BAND_SIZES = (1, 3, 5, 7)  # coefficients in SH bands 0 to 3


def _sh_names(k: int) -> list[str]:
    """The attribute of each of ``k`` SH coefficients, in gsplat's order."""
    names = []
    for degree, size in enumerate(_BAND_SIZES):
        names += [f"{EXTENSION}:SH_DEGREE_{degree}_COEF_{c}" for c in range(size)]
    return names[:k]


def glb_attributes(gaussians: Gaussians) -> list[tuple[str, np.ndarray, str]]:
    """(attribute name, ``[N, ...]`` values, accessor type) of each column ``write_glb`` writes, in
    glTF's frame (``GLTF_AXES``): positions, colour and opacity as normalized uint8, rotations (x, y,
    z, w), linear scales, post-sigmoid opacity, then the SH coefficients."""
    g = change_axes(gaussians, PLY_AXES, GLTF_AXES)
    opacity = logit_to_opacity(g.opacity_logits)
    colour = np.concatenate([0.5 + SH_C0 * g.sh[:, 0].astype(np.float64), opacity[:, None]], axis=1)
    attributes: list[tuple[str, np.ndarray, str]] = [
        ("POSITION", g.means, "VEC3"),
        ("COLOR_0", to_uint8(colour * 255.0), "VEC4"),
        (f"{EXTENSION}:ROTATION", g.quats[:, [1, 2, 3, 0]], "VEC4"),
        (f"{EXTENSION}:SCALE", np.exp(g.log_scales.astype(np.float64)), "VEC3"),
        (f"{EXTENSION}:OPACITY", opacity, "SCALAR"),
    ]
    return attributes + [(name, g.sh[:, i], "VEC3") for i, name in enumerate(_sh_names(g.sh.shape[1]))]


def write_glb(gaussians: Gaussians) -> bytes:
    """Encode ``Gaussians`` (in ``PLY_AXES``) as a `.glb` with ``KHR_gaussian_splatting``.

    Raises:
        AssetError: ``gaussians.validate()`` fails.
    """
    gaussians.validate()
    attributes = glb_attributes(gaussians)
    positions = attributes[0][1]
    n = len(gaussians)

    blobs, views, accessors, names = [], [], [], {}
    offset = 0
    for index, (name, values, kind) in enumerate(attributes):
        dtype = np.uint8 if values.dtype == np.uint8 else np.dtype("<f4")
        blob = np.ascontiguousarray(values, dtype=dtype).tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": _ARRAY_BUFFER})
        accessor = {"bufferView": index, "componentType": _UNSIGNED_BYTE if dtype == np.uint8 else _FLOAT,
                    "count": n, "type": kind}  # fmt: skip
        if name == "COLOR_0":
            accessor["normalized"] = True
        if name == "POSITION":  # glTF requires a POSITION accessor's bounds
            accessor["min"] = positions.min(axis=0).tolist()
            accessor["max"] = positions.max(axis=0).tolist()
        accessors.append(accessor)
        names[name] = index
        blobs.append(blob + bytes(-len(blob) % 4))
        offset += len(blobs[-1])
    document = {
        "asset": {"version": "2.0", "generator": "tire-services"},
        "extensionsUsed": [EXTENSION],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": names, "mode": 0, "extensions": {EXTENSION: {
            "kernel": "ellipse", "colorSpace": "srgb_rec709_display",
            "sortingMethod": "cameraDistance", "projection": "perspective"}}}]}],
        "buffers": [{"byteLength": offset}],
        "bufferViews": views,
        "accessors": accessors,
    }  # fmt: skip
    text = json.dumps(document, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)
    body = _CHUNK.pack(len(text), _JSON) + text + _CHUNK.pack(offset, _BIN) + b"".join(blobs)
    return _HEADER.pack(MAGIC, 2, _HEADER.size + len(body)) + body


def read_glb(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Decode a `.glb` with ``KHR_gaussian_splatting`` into ``Gaussians`` in ``PLY_AXES``.

    Raises:
        AssetError: not a glTF 2.0 binary, a malformed chunk, JSON or accessor, no primitive with the
            extension, a missing attribute, an unsupported feature (see the module docstring), a count
            over ``max_gaussians``, or values the `.ply` reader would refuse.
    """
    document, binary = _chunks(data)
    used = {str(name) for name in _list(document, "extensionsUsed")}
    required = {str(name) for name in _list(document, "extensionsRequired")} - {EXTENSION}
    if EXTENSION not in used:
        raise AssetError(f"`.glb` does not use {EXTENSION} (its extensions: {sorted(used) or 'none'})")
    if required:  # compression and quantization extensions are required where they hold the data
        raise AssetError(f"`.glb` requires extensions this does not read: {', '.join(sorted(required))}")
    for node in _list(document, "nodes"):
        if isinstance(node, dict) and ({"matrix", "rotation", "scale", "translation"} & set(node)):
            raise AssetError("`.glb` node transforms are not read; the splats must be in the scene's frame")
    primitives = [
        primitive
        for mesh in _list(document, "meshes")
        for primitive in (mesh.get("primitives") or [] if isinstance(mesh, dict) else [])
        if isinstance(primitive, dict) and EXTENSION in (primitive.get("extensions") or {})
    ]
    if not primitives:
        raise AssetError(f"`.glb` has no primitive with {EXTENSION}")
    parts = [_primitive(document, binary, primitive, max_gaussians) for primitive in primitives]
    total = sum(len(part) for part in parts)
    if total > max_gaussians:
        raise AssetError(f"`.glb` holds {total} Gaussians, over the limit of {max_gaussians}")
    degrees = {part.sh.shape[1] for part in parts}
    if len(degrees) > 1:
        raise AssetError(f"`.glb` primitives have different SH degrees ({sorted(degrees)} coefficients)")
    g = Gaussians(
        *(np.concatenate([getattr(p, f) for p in parts]) for f in ("means", "log_scales", "quats",
                                                                   "opacity_logits", "sh"))
    )  # fmt: skip
    return change_axes(g, GLTF_AXES, PLY_AXES)


def _chunks(data: bytes) -> tuple[dict, memoryview]:
    """The JSON document and the BIN chunk of a GLB."""
    if len(data) < _HEADER.size + _CHUNK.size:
        raise AssetError(f"`.glb` is {len(data)} bytes, too short for a header")
    magic, version, length = _HEADER.unpack_from(data)
    if magic != MAGIC or version != 2:
        raise AssetError(f"`.glb` header is {magic!r} version {version}, expected b'glTF' version 2")
    if length != len(data):
        raise AssetError(f"`.glb` header says {length} bytes, the file has {len(data)}")
    size, kind = _CHUNK.unpack_from(data, _HEADER.size)
    start = _HEADER.size + _CHUNK.size
    if kind != _JSON or size > min(MAX_JSON_BYTES, len(data) - start):
        raise AssetError(
            f"`.glb` first chunk is type {kind:#x} of {size} bytes, expected JSON within the file"
        )
    try:
        document = json.loads(bytes(data[start : start + size]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AssetError(f"`.glb` JSON chunk is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AssetError("`.glb` JSON chunk is not an object")
    at = start + size
    if at + _CHUNK.size > len(data):
        raise AssetError("`.glb` has no BIN chunk")
    size, kind = _CHUNK.unpack_from(data, at)
    if kind != _BIN or size > len(data) - at - _CHUNK.size:
        raise AssetError(
            f"`.glb` second chunk is type {kind:#x} of {size} bytes, expected BIN within the file"
        )
    buffers = _list(document, "buffers")
    if len(buffers) != 1 or not isinstance(buffers[0], dict) or "uri" in buffers[0]:
        raise AssetError("`.glb` must hold exactly one buffer, its BIN chunk (external buffers are not read)")
    return document, memoryview(data)[at + _CHUNK.size : at + _CHUNK.size + size]


def _list(document: dict, key: str) -> list:
    value = document.get(key) or []
    if not isinstance(value, list):
        raise AssetError(f"`.glb` `{key}` is not a list")
    return value


def _primitive(document: dict, binary: memoryview, primitive: dict, max_gaussians: int) -> Gaussians:
    attributes = primitive.get("attributes")
    if not isinstance(attributes, dict):
        raise AssetError("`.glb` primitive has no attributes")

    def column(name: str, kind: str) -> np.ndarray:
        if name not in attributes:
            raise AssetError(f"`.glb` primitive has no `{name}` attribute")
        return _accessor(document, binary, attributes[name], name, kind, max_gaussians)

    means = column("POSITION", "VEC3")
    xyzw = column(f"{EXTENSION}:ROTATION", "VEC4").astype(np.float64)
    scales = column(f"{EXTENSION}:SCALE", "VEC3").astype(np.float64)
    opacity = column(f"{EXTENSION}:OPACITY", "SCALAR").astype(np.float64)
    names = _sh_names(16)
    k = next((i for i, name in enumerate(names) if name not in attributes), 16)
    if k not in (1, 4, 9, 16) or any(name in attributes for name in names[k:]):
        raise AssetError(f"`.glb` SH attributes must fill whole bands 0 to 3; found the first {k} of them")
    sh = np.stack([column(name, "VEC3") for name in names[:k]], axis=1)
    n = len(means)
    if any(len(a) != n for a in (xyzw, scales, opacity, sh)):
        raise AssetError("`.glb` primitive's attributes have different counts")
    if not (np.isfinite(means).all() and (np.abs(means) <= MAX_POSITION).all()):
        raise AssetError("`.glb` POSITION values must be finite and within +-1e15")
    with np.errstate(divide="ignore", invalid="ignore"):
        log_scales = np.log(scales)
    if not (np.isfinite(log_scales).all() and (log_scales <= MAX_LOG_SCALE).all()):
        raise AssetError(f"`.glb` {EXTENSION}:SCALE values must be positive, finite and at most e^10")
    if not (np.isfinite(opacity).all() and np.isfinite(sh).all()):
        raise AssetError("`.glb` opacity and SH values must be finite")
    norms = np.linalg.norm(xyzw, axis=1, keepdims=True)
    if not (np.isfinite(norms).all() and (norms > 1e-12).all()):
        raise AssetError(f"`.glb` {EXTENSION}:ROTATION must hold finite, non-zero quaternions")
    quats = (xyzw / norms)[:, [3, 0, 1, 2]]
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=opacity_to_logit(np.clip(opacity, 0.0, 1.0)),
        sh=sh.astype(np.float32),
    )


def _accessor(
    document: dict, binary: memoryview, index, name: str, kind: str, max_gaussians: int
) -> np.ndarray:
    """Accessor ``index`` as ``[count, width]`` float32 (``[count]`` for a SCALAR)."""
    accessors, views = _list(document, "accessors"), _list(document, "bufferViews")
    if not (isinstance(index, int) and 0 <= index < len(accessors) and isinstance(accessors[index], dict)):
        raise AssetError(f"`.glb` `{name}` names accessor {index!r}, which does not exist")
    accessor = accessors[index]
    count, width = accessor.get("count"), _WIDTH[kind]
    if accessor.get("type") != kind or accessor.get("componentType") != _FLOAT:
        raise AssetError(
            f"`.glb` `{name}` is {accessor.get('type')} of component type {accessor.get('componentType')}, "
            f"expected {kind} of float32 (5126)"
        )
    if "sparse" in accessor:
        raise AssetError(f"`.glb` `{name}` is a sparse accessor, which is not read")
    if not (isinstance(count, int) and 0 < count <= max_gaussians):
        raise AssetError(f"`.glb` `{name}` count {count!r} is outside 1..{max_gaussians}")
    view_index = accessor.get("bufferView")
    if not (
        isinstance(view_index, int) and 0 <= view_index < len(views) and isinstance(views[view_index], dict)
    ):
        raise AssetError(f"`.glb` `{name}` names buffer view {view_index!r}, which does not exist")
    view = views[view_index]
    element = 4 * width
    stride = view.get("byteStride") or element
    start = view.get("byteOffset", 0)
    offset = accessor.get("byteOffset", 0)
    length = view.get("byteLength")
    numbers = (stride, start, offset, length)
    if not all(isinstance(v, int) and v >= 0 for v in numbers) or stride < element:
        raise AssetError(f"`.glb` `{name}` has a malformed buffer view or offset {numbers}")
    if stride % 4 or offset % 4 or start % 4:
        raise AssetError(f"`.glb` `{name}` is not aligned to 4 bytes (stride, view and accessor offsets)")
    end = offset + stride * (count - 1) + element
    if view.get("buffer", 0) != 0 or end > length or start + length > len(binary):
        raise AssetError(f"`.glb` `{name}` reaches beyond its buffer view or the BIN chunk")
    values = np.ndarray(
        (count, width), dtype="<f4", buffer=binary, offset=start + offset, strides=(stride, 4)
    ).astype(np.float32)
    return values[:, 0] if kind == "SCALAR" else values
