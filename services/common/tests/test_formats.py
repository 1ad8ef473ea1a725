"""Splat formats: round trips within each format's stated bound, the same pictures after a round trip,
axes kept, content detection, and one error for any malformed file."""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zstandard
from PIL import Image

from services.common.cameras import Cameras, orbit_cameras
from services.common.errors import AssetError, InvalidArgument
from services.common.formats import WRITABLE, detect_format, read_splats, write_splats
from services.common.formats.conventions import GLTF_AXES, PLY_AXES, SPZ_AXES, axis_signs, change_axes
from services.common.formats.gltf import EXTENSION
from services.common.formats.splat import RECORD as SPLAT_RECORD
from services.common.formats.spz import HEADER, HEADER_V4, MAGIC, read_spz, write_spz
from services.common.framing import fit_framing
from services.common.gaussians import SH_C0, Gaussians, random_gaussians, read_ply
from services.common.rasterizer import rasterize
from services.testing.format_bounds import assert_within_splat, assert_within_spz, rotation_error
from services.testing.ksplat_files import ksplat_bytes
from services.testing.synthetic import SHARED_ASSETS

ASSETS = ("monkey_lgm.ply", "hamburger_lgm.ply", "donut_unnormalized_quats.ply", "fruit_drops_full_sh.ply")


def _asset(name: str) -> Gaussians:
    bundled = Path(__file__).parents[3] / "samples" / name  # the monkey ships with the repository
    path = bundled if bundled.exists() else SHARED_ASSETS / name
    if not path.exists():
        pytest.skip(f"shared asset {path} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    return read_ply(path)


def _cameras(gaussians: Gaussians, side: int = 96) -> Cameras:
    """Four views around the asset, framed so that it fills them."""
    framing = fit_framing(gaussians)
    return orbit_cameras(
        [0.0, 90.0, 180.0, 270.0], side, side, -15.0, radius=framing.radius, center=framing.center
    )


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * np.log10(1.0 / mse)


SAMPLES = [pytest.param(name, id=name.split("_")[0]) for name in ASSETS] + [
    pytest.param(degree, id=f"random-sh{degree}") for degree in range(4)
]


def _sample(which) -> Gaussians:
    if isinstance(which, int):
        return random_gaussians(3000, sh_degree=which, seed=40 + which)
    return _asset(which)


# ----- conventions --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [SPZ_AXES, GLTF_AXES, "LDB"])
def test_changing_axes_changes_no_picture(target: str) -> None:
    """Gaussians in another frame, seen by the same cameras expressed in that frame, render the same
    pictures, view-dependent colour (SH degree 3) included."""
    gaussians = random_gaussians(2000, sh_degree=3, seed=7)
    cameras = orbit_cameras([20.0, 130.0, 250.0], 64, 64, elevation_deg=-25.0)
    signs = np.diag([*axis_signs(PLY_AXES, target), 1.0]).astype(np.float32)
    moved = dataclasses.replace(cameras, viewmats=cameras.viewmats @ signs)  # S is its own inverse
    before = rasterize(gaussians, cameras)
    after = rasterize(change_axes(gaussians, PLY_AXES, target), moved)
    for name in ("rgb", "alpha", "depth"):
        np.testing.assert_allclose(
            getattr(after, name), getattr(before, name), rtol=0, atol=2e-5, err_msg=name
        )
    back = change_axes(change_axes(gaussians, PLY_AXES, target), target, PLY_AXES)
    for name in ("means", "quats", "sh"):
        np.testing.assert_array_equal(getattr(back, name), getattr(gaussians, name), err_msg=name)


def test_axis_frames_are_checked() -> None:
    with pytest.raises(ValueError, match="three letters"):
        axis_signs("RDF", "XYZ")
    with pytest.raises(ValueError, match="three letters"):
        axis_signs("DRF", "RDF")


# ----- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("which", SAMPLES)
def test_ply_round_trip_is_exact(which) -> None:
    gaussians = _sample(which)
    again = read_splats(write_splats(gaussians, "ply"))
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(again, name), getattr(gaussians, name), err_msg=name)


@pytest.mark.parametrize("version", [2, 3])
@pytest.mark.parametrize("which", SAMPLES)
def test_spz_round_trip_within_its_quantization(which, version: int) -> None:
    gaussians = _sample(which)
    data = write_splats(gaussians, "spz") if version == 3 else write_spz(gaussians, version=2)
    assert detect_format(data) == "spz"
    # Version 2 derives w from x, y, z, which is ill-conditioned where w is near 0: up to 0.25 rad there.
    assert_within_spz(read_splats(data), gaussians, max_angle=0.004 if version == 3 else 0.25)


def _as_version_4(data: bytes, *, streams: int | None = None, frame=None) -> bytes:
    """A version 3 `.spz` re-wrapped as version 4: plain header, size table, a zstd frame per column.
    ``streams`` overrides the stream count in the header; ``frame`` replaces how a column is framed."""
    body = gzip.decompress(data)
    _, _, n, degree, bits, flags, _ = HEADER.unpack_from(body)
    widths = [9, 1, 3, 3, 4, 3 * ((degree + 1) ** 2 - 1)]
    columns, at = [], HEADER.size
    for width in widths:
        if width:
            columns.append(body[at : at + n * width])
        at += n * width
    frames = [(frame or zstandard.ZstdCompressor().compress)(column) for column in columns]
    header = HEADER_V4.pack(MAGIC, 4, n, degree, bits, flags, len(frames) if streams is None else streams, 32)
    table = b"".join(struct.pack("<QQ", len(f), len(c)) for f, c in zip(frames, columns, strict=True))
    return header + table + b"".join(frames)


@pytest.mark.parametrize("degree", [0, 3])
def test_spz_version_4_reads_as_its_columns_say(degree: int) -> None:
    gaussians = random_gaussians(500, sh_degree=degree, seed=degree)
    version_3 = write_splats(gaussians, "spz")
    version_4 = _as_version_4(version_3)
    assert detect_format(version_4) == "spz"
    again, expected = read_splats(version_4), read_splats(version_3)
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        np.testing.assert_array_equal(getattr(again, name), getattr(expected, name), err_msg=name)


def test_malformed_spz_version_4_gets_the_one_error() -> None:
    version_3 = write_splats(random_gaussians(50, sh_degree=1, seed=2), "spz")
    good = _as_version_4(version_3)
    cases = [
        (good[:20], "header is 20 bytes"),
        (good[:40], "too short for its 6 streams"),
        (_as_version_4(version_3, streams=5), "lists 5 streams"),
        (good[:-1], "do not match"),
        (good + b"\x00", "do not match"),
        (_as_version_4(version_3, frame=lambda c: b"\x28\xb5\x2f\xfd" + bytes(len(c))), "stream at byte 128"),
        (
            _as_version_4(version_3, frame=lambda c: zstandard.ZstdCompressor().compress(c + bytes(1 << 20))),
            "inflates to other than",
        ),
    ]
    for data, message in cases:
        with pytest.raises(AssetError, match=message):
            read_splats(data)


@pytest.mark.parametrize("which", SAMPLES)
def test_glb_round_trip_keeps_float32(which) -> None:
    gaussians = _sample(which)
    again = read_splats(write_splats(gaussians, "glb"))
    np.testing.assert_array_equal(again.means, gaussians.means)
    np.testing.assert_array_equal(again.sh, gaussians.sh)
    np.testing.assert_allclose(again.log_scales, gaussians.log_scales, rtol=0, atol=1e-6)
    np.testing.assert_allclose(again.opacities, gaussians.opacities, rtol=0, atol=1e-6)
    assert rotation_error(again.quats, gaussians.quats) < 1e-5


def _edit_glb(data: bytes, change) -> bytes:
    """``data`` (a .glb) with ``change(document)`` applied to its JSON chunk."""
    size = struct.unpack_from("<I", data, 12)[0]
    document = json.loads(data[20 : 20 + size])
    change(document)
    text = json.dumps(document).encode()
    text += b" " * (-len(text) % 4)
    rest = data[20 + size :]
    return (
        struct.pack("<4sII", b"glTF", 2, 20 + len(text) + len(rest))
        + struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + rest
    )


def _attribute(name: str):
    def change(document):
        del document["meshes"][0]["primitives"][0]["attributes"][name]

    return change


def _accessor_field(index: int, **fields):
    def change(document):
        document["accessors"][index].update(fields)

    return change


def test_malformed_glb_gets_the_one_error() -> None:
    good = write_splats(random_gaussians(20, sh_degree=1, seed=4), "glb")
    rotation = f"{EXTENSION}:ROTATION"

    def set_key(key, value):
        return lambda document: document.__setitem__(key, value)

    cases = [
        (good[:16], "too short"),
        (good[:4] + struct.pack("<I", 1) + good[8:], "version 1"),
        (good + b"\x00\x00\x00\x00", "header says"),
        (_edit_glb(good, set_key("extensionsUsed", [])), f"does not use {EXTENSION}"),
        (_edit_glb(good, set_key("extensionsRequired", ["EXT_meshopt_compression"])), "requires extensions"),
        (_edit_glb(good, lambda d: d["nodes"][0].__setitem__("scale", [2, 2, 2])), "node transforms"),
        (_edit_glb(good, _attribute(rotation)), f"no `{rotation}` attribute"),
        (_edit_glb(good, _attribute(f"{EXTENSION}:SH_DEGREE_1_COEF_1")), "whole bands"),
        (_edit_glb(good, _accessor_field(0, componentType=5121)), "expected VEC3 of float32"),
        (_edit_glb(good, _accessor_field(0, count=10**9)), "outside 1..10000000"),
        (_edit_glb(good, _accessor_field(0, count=21)), "reaches beyond"),
        (_edit_glb(good, _accessor_field(0, byteOffset=2)), "aligned"),
        (_edit_glb(good, _accessor_field(0, sparse={})), "sparse"),
        (_edit_glb(good, _accessor_field(0, bufferView=99)), "buffer view 99"),
        (_edit_glb(good, set_key("buffers", [{"byteLength": 4, "uri": "x.bin"}])), "external buffers"),
        (_edit_glb(good, lambda d: d["meshes"][0]["primitives"][0].pop("extensions")), "no primitive"),
    ]
    for data, message in cases:
        with pytest.raises(AssetError, match=re.escape(message)):
            read_splats(data)
    positions = bytearray(good)
    at = positions.index(b"BIN\x00") + 4  # the first float of POSITION
    positions[at : at + 4] = struct.pack("<f", float("nan"))
    with pytest.raises(AssetError, match="POSITION values must be finite"):
        read_splats(bytes(positions))


def _compressed_ply(
    n: int = 300, *, chunks: int | None = None, fmt: str = "binary_little_endian", sh: int = 9
) -> bytes:
    """A compressed `.ply` by hand: chunk bounds [-1, 1] (positions) and [-5, -3] (log scales), every
    packed field at mid-range, rotation index 0 (w largest)."""
    chunks = -(-n // 256) if chunks is None else chunks
    bounds = [f"{e}_{a}" for e in ("min", "max") for a in ("x", "y", "z")]
    bounds += [f"{e}_scale_{a}" for e in ("min", "max") for a in ("x", "y", "z")]
    header = ["ply", f"format {fmt} 1.0", f"element chunk {chunks}"]
    header += [f"property float {name}" for name in bounds]
    header += [f"element vertex {n}"]
    header += [f"property uint packed_{name}" for name in ("position", "rotation", "scale", "color")]
    if sh:
        header += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(sh)]
    chunk = np.array([-1, -1, -1, 1, 1, 1, -5, -5, -5, -3, -3, -3], dtype="<f4").tobytes() * chunks
    mid = (1023 << 21) | (511 << 11) | 1023
    rotation = (511 << 20) | (511 << 10) | 511  # index 0: w largest, the others near 0
    vertex = np.array([mid, rotation, mid, 0x80808080], dtype="<u4").tobytes() * n
    return "\n".join([*header, "end_header", ""]).encode() + chunk + vertex + bytes([128] * sh) * n


def test_compressed_ply_decodes_its_chunks() -> None:
    gaussians = read_splats(_compressed_ply())
    assert len(gaussians) == 300 and gaussians.sh.shape == (300, 4, 3)
    np.testing.assert_allclose(gaussians.means, -1 / 2047, atol=1e-3)  # 1023/2047 of [-1, 1]
    np.testing.assert_allclose(gaussians.log_scales, -4.0, atol=2e-3)
    np.testing.assert_allclose(gaussians.opacities, 128 / 255, atol=1e-6)
    np.testing.assert_allclose(np.abs(gaussians.quats[:, 0]), 1.0, atol=1e-5)
    np.testing.assert_allclose(gaussians.sh[:, 1:], (128.5 / 256 - 0.5) * 8, atol=1e-6)


def test_malformed_compressed_ply_gets_the_one_error() -> None:
    good = _compressed_ply()
    cases = [
        (_compressed_ply(chunks=1), "1 chunks for 300 Gaussians"),
        (_compressed_ply(fmt="binary_big_endian"), "binary_little_endian"),
        (_compressed_ply(sh=10), "element `sh` does not have"),
        (good[:-1], "element `sh` is cut short"),
        (good.replace(b"property float max_z\n", b""), "element `chunk` does not have"),
        (good.replace(b"property uint packed_scale", b"property float packed_scale"), "element `vertex`"),
    ]
    for data, message in cases:
        with pytest.raises(AssetError, match=re.escape(message)):
            read_splats(data)
    nan_bounds = bytearray(good)
    at = nan_bounds.index(b"end_header\n") + len(b"end_header\n")
    nan_bounds[at : at + 4] = np.array([np.nan], dtype="<f4").tobytes()
    with pytest.raises(AssetError, match="positions must be finite"):
        read_splats(bytes(nan_bounds))


def _webp(pixels: np.ndarray, width: int) -> bytes:
    """Lossless WebP of ``[N, 4]`` uint8 RGBA pixels, ``width`` per row (the last row padded)."""
    rows = -(-len(pixels) // width)
    padded = np.zeros((rows * width, 4), dtype=np.uint8)
    padded[: len(pixels)] = pixels
    out = io.BytesIO()
    Image.fromarray(padded.reshape(rows, width, 4), "RGBA").save(out, "WEBP", lossless=True)
    return out.getvalue()


def _sog(n: int = 10, *, meta_changes=None, quat_tag: int = 252, labels: int = 0) -> bytes:
    """A SOG by hand: every Gaussian at mid-range positions, codebook index 7, w largest, SH degree 1
    from a palette of 2 entries."""
    full = np.full((n, 4), 128, dtype=np.uint8)
    quats = np.concatenate([np.full((n, 3), 128, np.uint8), np.full((n, 1), quat_tag, np.uint8)], axis=1)
    label = np.zeros((n, 4), np.uint8)
    label[:, 0], label[:, 3] = labels, 255  # opaque: lossless WebP drops the colour of clear pixels
    book = list(np.linspace(-6, 0, 256))
    meta = {
        "version": 2,
        "count": n,
        "means": {"mins": [-1, -1, -1], "maxs": [1, 1, 1], "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": book, "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": list(np.linspace(-2, 2, 256)), "files": ["sh0.webp"]},
        "shN": {"count": 2, "bands": 1, "codebook": list(np.linspace(-1, 1, 256)),
                "files": ["shN_centroids.webp", "shN_labels.webp"]},
    }  # fmt: skip
    if meta_changes:
        meta_changes(meta)
    images = {
        "means_l.webp": _webp(full, 4), "means_u.webp": _webp(full, 4), "quats.webp": _webp(quats, 4),
        "scales.webp": _webp(np.full((n, 4), 7, np.uint8), 4), "sh0.webp": _webp(full, 4),
        "shN_centroids.webp": _webp(np.full((64 * 3, 4), 200, np.uint8), 64 * 3),
        "shN_labels.webp": _webp(label, 4),
    }  # fmt: skip
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in images.items():
            archive.writestr(name, data)
        archive.writestr("meta.json", json.dumps(meta))
    return out.getvalue()


@pytest.mark.parametrize("which", SAMPLES)
def test_sog_round_trip_within_its_codebooks(which) -> None:
    """Positions to 16 bits of their log, rotations to 8 bits, opacity to 1/510; log scales, colours
    and higher SH bands through fitted codebooks and a palette, whose errors depend on the data: 95% of
    values within the bounds measured on the real assets (0.023, 0.013, 0.013) with a margin."""
    gaussians = _sample(which)
    again = read_splats(write_splats(gaussians, "sog"))
    assert again.sh.shape == gaussians.sh.shape
    np.testing.assert_allclose(again.means, gaussians.means, rtol=0, atol=2e-5)
    np.testing.assert_allclose(again.opacities, gaussians.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    assert rotation_error(again.quats, gaussians.quats) < 0.02
    assert np.percentile(np.abs(again.log_scales - gaussians.log_scales), 95) < 0.04
    assert np.percentile(np.abs(again.sh - gaussians.sh), 95) < 0.025


def test_sog_decodes_its_images_and_codebooks() -> None:
    data = _sog()
    assert detect_format(data) == "sog"
    gaussians = read_splats(data)
    assert len(gaussians) == 10 and gaussians.sh.shape == (10, 4, 3)
    logs = -1 + 2 * (128 + 256 * 128) / 65535  # 16 bits of sign(x) ln(|x| + 1) in [-1, 1]
    np.testing.assert_allclose(gaussians.means, np.sign(logs) * np.expm1(abs(logs)), rtol=1e-6)
    np.testing.assert_allclose(gaussians.log_scales, -6 + 7 * 6 / 255, rtol=1e-6)
    np.testing.assert_allclose(gaussians.opacities, 128 / 255, atol=1e-6)
    np.testing.assert_allclose(gaussians.sh[:, 1:], -1 + 200 * 2 / 255, rtol=1e-6)
    np.testing.assert_allclose(np.abs(gaussians.quats[:, 0]), 1.0, atol=1e-4)


def test_malformed_sog_gets_the_one_error() -> None:
    def drop(section):
        return lambda meta: meta.pop(section)

    def set_to(section, key, value):
        return lambda meta: meta[section].__setitem__(key, value)

    cases = [
        (b"PK\x03\x04" + bytes(40), "not a readable zip"),
        (_sog(meta_changes=lambda m: m.__setitem__("version", 1)), "version 1 is not supported"),
        (_sog(meta_changes=lambda m: m.__setitem__("count", 10**8)), "outside 1..10000000"),
        (_sog(meta_changes=lambda m: m.__setitem__("count", 2000)), "pixels for 2000 Gaussians"),
        (_sog(meta_changes=drop("quats")), "`quats.files`"),
        (_sog(meta_changes=set_to("scales", "codebook", [0.0] * 10)), "256 finite numbers"),
        (_sog(meta_changes=set_to("scales", "files", ["missing.webp"])), "no member 'missing.webp'"),
        (_sog(meta_changes=set_to("sh0", "files", ["meta.json"])), "not a readable WebP"),
        (_sog(meta_changes=set_to("means", "maxs", [1, 1])), "3 finite numbers"),
        (_sog(meta_changes=set_to("shN", "bands", 4)), "bands 4"),
        (_sog(quat_tag=10), "alpha must be 252..255"),
        (_sog(labels=5), "beyond the palette of 2"),
    ]
    unsupported = bytearray(_sog())  # every entry's compression method set to 99 (AES), in both headers
    for signature, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        for found in [m.start() for m in re.finditer(re.escape(signature), bytes(unsupported))]:
            unsupported[found + at : found + at + 2] = (99).to_bytes(2, "little")
    cases.append((bytes(unsupported), "cannot be read"))
    for data, message in cases:
        with pytest.raises(AssetError, match=re.escape(message)):
            read_splats(data)


@pytest.mark.parametrize("which", SAMPLES)
def test_splat_round_trip_within_its_quantization(which) -> None:
    gaussians = _sample(which)
    assert_within_splat(read_splats(write_splats(gaussians, "splat"), name="asset.splat"), gaussians)


@pytest.mark.parametrize("format_name", ["spz", "splat", "glb", "sog"])
@pytest.mark.parametrize("name", [ASSETS[0], ASSETS[1]])
def test_a_round_trip_keeps_the_pictures(name: str, format_name: str) -> None:
    """Renders of the file written and read back match renders of the asset, at views that it fills:
    what the quantization loses is below what an eye sees, and nothing is turned or mirrored."""
    gaussians = _asset(name)
    cameras = _cameras(gaussians)
    before = rasterize(gaussians, cameras, background=(1.0, 1.0, 1.0))
    after = rasterize(
        read_splats(write_splats(gaussians, format_name), name=f"x.{format_name}"), cameras, (1, 1, 1)
    )
    assert before.alpha.mean() > 0.2, "the asset fills the views"
    assert _psnr(after.rgb, before.rgb) > 35.0
    assert _psnr(after.alpha, before.alpha) > 35.0


# ----- .ksplat (read only; tests/test_splat_transform.py reads what GaussianSplats3D writes) -----------


@pytest.mark.parametrize("degree", [0, 1, 2])
@pytest.mark.parametrize("level", [0, 1, 2])
def test_ksplat_decodes_as_its_layout_says(level: int, degree: int) -> None:
    g = random_gaussians(200, sh_degree=degree, seed=11 + degree)
    g = dataclasses.replace(g, sh=np.clip(g.sh, -1.4, 1.4))  # within level 2's SH range
    again = read_splats(ksplat_bytes(g, level=level), name="x.ksplat")
    assert again.sh.shape == g.sh.shape
    step = 0.0 if level == 0 else 2.5 / 32767 / 2
    np.testing.assert_allclose(again.means, g.means, rtol=0, atol=step + 1e-6)
    np.testing.assert_allclose(again.log_scales, g.log_scales, rtol=0, atol=1e-6 if level == 0 else 2.0**-11)
    np.testing.assert_allclose(again.opacities, g.opacities, rtol=0, atol=0.5 / 255 + 1e-6)
    colour = np.clip(0.5 + SH_C0 * g.sh[:, 0], 0, 1)
    np.testing.assert_allclose(0.5 + SH_C0 * again.sh[:, 0], colour, rtol=0, atol=0.5 / 255 + 1e-6)
    sh_step = {0: 1e-6, 1: 2.0**-11 * 1.4, 2: 1.5 / 255 + 1e-6}[level]
    np.testing.assert_allclose(again.sh[:, 1:], g.sh[:, 1:], rtol=0, atol=sh_step)
    assert rotation_error(again.quats, g.quats) < (1e-5 if level == 0 else 2e-3)


def test_ksplat_is_known_by_its_header_and_every_band_above_2_is_gone() -> None:
    g = random_gaussians(20, sh_degree=3, seed=2)
    data = ksplat_bytes(dataclasses.replace(g, sh=g.sh[:, :9]))
    assert detect_format(data) == "ksplat" and detect_format(data, "any.bin") == "ksplat"
    assert read_splats(data).sh.shape == (20, 9, 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"major": 1}, "version 1.1"),
        ({"minor": 0}, "version 0.0"),
        ({"level": 3}, "compression level 3"),
        ({"splats": 0}, "splat count 0"),
        ({"slots": 1000}, "headers reach past"),
        ({"degree": 3}, "SH degree 3"),
        ({"section_splats": 21}, "21 splats in 20 slots"),
        ({"section_splats": 19}, "hold 19 splats; the header says 20"),
        ({"bucket_bytes": 16}, "16 bytes"),
    ],
)
def test_malformed_ksplat_gets_the_one_error(changes: dict, message: str) -> None:
    data = ksplat_bytes(random_gaussians(20, sh_degree=1, seed=4), **changes)
    with pytest.raises(AssetError, match=message):
        read_splats(data, name="x.ksplat")  # some are no longer known by their header


def test_malformed_ksplat_values_and_lengths_are_refused() -> None:
    g = random_gaussians(20, seed=4)
    data = ksplat_bytes(g)
    with pytest.raises(AssetError, match="shorter than its 4096-byte header"):
        read_splats(data[:4000], name="x.ksplat")
    with pytest.raises(AssetError, match="past the file"):
        read_splats(data[:-1])
    with pytest.raises(AssetError, match="but the file has"):
        read_splats(data + b"\0")
    with pytest.raises(AssetError, match="position"):
        read_splats(ksplat_bytes(dataclasses.replace(g, means=g.means.copy() * np.float32(np.nan)), level=0))
    scales = g.log_scales.copy()
    scales[3] = 12.0  # e^12 overflows a float16: inf
    with np.errstate(over="ignore"), pytest.raises(AssetError, match="splat 3 has scales"):
        read_splats(ksplat_bytes(dataclasses.replace(g, log_scales=scales)))
    with pytest.raises(AssetError, match=r"outside 1\.\.10"):
        read_splats(data, max_gaussians=10)


# ----- detection and malformed files --------------------------------------------------------------


def test_formats_are_detected_from_their_content() -> None:
    gaussians = random_gaussians(64, sh_degree=1, seed=3)
    for name in WRITABLE:
        data = write_splats(gaussians, name)
        assert detect_format(data, f"asset.{name}") == name
        assert detect_format(data, "misnamed.ply") == name
    with pytest.raises(AssetError, match="too short for a header"):
        read_splats(b"glTF\x02\x00\x00\x00" + bytes(8))
    with pytest.raises(AssetError, match="not a splat file"):
        detect_format(b"hello, world\n")
    with pytest.raises(InvalidArgument, match="format"):
        write_splats(gaussians, "obj")


def _spz_body(n: int = 2, degree: int = 0, version: int = 3, flags: int = 0, bits: int = 12) -> bytes:
    record = 9 + 1 + 3 + 3 + (4 if version >= 3 else 3) + 3 * ((degree + 1) ** 2 - 1)
    return HEADER.pack(MAGIC, version, n, degree, bits, flags, 0) + bytes(n * record)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a splat file"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (gzip.compress(b"NGSP"), "header is 4 bytes"),
        (gzip.compress(struct.pack("<I", 0x12345678) + bytes(12)), "no splat format"),
        (gzip.compress(_spz_body(version=1)), "version 1"),
        (gzip.compress(_spz_body(version=4)), "version 4"),
        (gzip.compress(_spz_body(degree=4)), "SH degree 4"),
        (gzip.compress(_spz_body(flags=2)), "extensions"),
        (gzip.compress(_spz_body(n=0)), "count 0"),
        (gzip.compress(_spz_body(bits=30)), "fractional bits"),
        (gzip.compress(_spz_body()[:-1]), "needs"),
        (gzip.compress(_spz_body() + b"\x00"), "got more"),
        (gzip.compress(_spz_body(n=1000))[:-12], "needs"),
        (bytes(31), "not a splat file"),
    ],
)
def test_malformed_files_get_one_error_naming_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(AssetError, match=message):
        read_splats(data)


def test_malformed_splat_records_are_refused() -> None:
    record = np.zeros(1, dtype=SPLAT_RECORD)
    record["scale"] = 0.01
    record["position"] = [0.0, np.nan, 0.0]
    with pytest.raises(AssetError, match="position"):
        read_splats(record.tobytes(), name="bad.splat")
    record["position"] = 0.0
    record["scale"] = [0.01, 0.0, 0.01]
    with pytest.raises(AssetError, match="scales"):
        read_splats(record.tobytes(), name="bad.splat")
    with pytest.raises(AssetError, match="multiple of 32"):
        read_splats(bytes(33), name="bad.splat")


def test_counts_are_refused_before_allocating() -> None:
    huge = gzip.compress(HEADER.pack(MAGIC, 3, 4_000_000_000, 0, 12, 0, 0))
    with pytest.raises(AssetError, match=r"outside 1\.\.10000000"):
        read_splats(huge)
    with pytest.raises(AssetError, match="over the limit"):
        read_splats(bytes(32 * 5), name="x.splat", max_gaussians=4)


def test_a_gzip_bomb_is_inflated_only_as_far_as_the_header_says() -> None:
    """A valid header for 1 Gaussian followed by 64 MiB of zeros: refused without inflating them all."""
    bomb = gzip.compress(_spz_body(n=1) + bytes(64 << 20))
    with pytest.raises(AssetError, match="got more"):
        read_spz(bomb)


@pytest.mark.parametrize("format_name", ["spz", "splat", "glb", "ksplat"])
def test_mutated_files_give_gaussians_or_the_one_error(format_name: str) -> None:
    """Random byte changes, cuts and extensions: each read returns valid Gaussians or raises AssetError."""
    rng = np.random.default_rng(5)
    gaussians = random_gaussians(40, sh_degree=2, seed=1)
    if format_name == "ksplat":
        original = bytearray(ksplat_bytes(gaussians, bucket_size=16))
    else:
        original = bytearray(write_splats(gaussians, format_name))
    if format_name == "spz":  # mutate the inflated stream, or every change is a gzip CRC error
        original = bytearray(gzip.decompress(bytes(original)))
    for _ in range(300):
        data = bytearray(original)
        kind = rng.integers(3)
        if kind == 0:
            for at in rng.integers(len(data), size=rng.integers(1, 8)):
                data[at] = rng.integers(256)
        elif kind == 1:
            del data[rng.integers(len(data)) :]
        else:
            data += bytes(rng.integers(256, size=rng.integers(1, 64), dtype=np.uint8))
        blob = gzip.compress(bytes(data)) if format_name == "spz" else bytes(data)
        try:
            gaussians = read_splats(blob, name=f"x.{format_name}")
        except AssetError:
            continue
        gaussians.validate()
