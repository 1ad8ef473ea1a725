"""PlayCanvas's SOG (version 2): a zip of ``meta.json`` and lossless WebP images, one pixel per
Gaussian (row-major), as SuperSplat and splat-transform write it.

- ``means_l.webp`` and ``means_u.webp``: the low and high bytes of 16 bits per axis (RGB) in
  ``[mins, maxs]`` of ``sign(x) ln(|x| + 1)``.
- ``quats.webp``: the three smaller components of (w, x, y, z) as ``(q sqrt(2) + 1) 255 / 2`` (RGB),
  the largest one's index plus 252 in alpha; the largest is rebuilt positive.
- ``scales.webp``: per axis, an index into ``scales.codebook`` (256 log scales).
- ``sh0.webp``: per channel, an index into ``sh0.codebook`` (256 DC coefficients); alpha is the
  opacity in 8 bits.
- ``shN`` (when SH degree > 0): ``shN_labels.webp`` holds a 16-bit palette index per Gaussian (R low,
  G high); ``shN_centroids.webp`` holds the palette, 64 entries per row, each ``(degree + 1)^2 - 1``
  pixels of RGB indices into ``shN.codebook``.

The axes are the `.ply`'s. Every size is checked before anything is decoded: the zip's members
(``MAX_MEMBER_BYTES`` each, inflated), the images' pixels and ``meta.json``.

``write_sog`` writes the same layout: codebooks fitted by 1D k-means (256 entries, quantile starts,
``_LLOYD_STEPS`` steps), and for SH degree > 0 a palette of up to ``MAX_PALETTE`` entries fitted by
k-means on the coefficient vectors, so that a round trip loses what those codebooks and the palette
lose (``tests`` state the bounds); images are lossless WebP (``exact``: colour kept under alpha 0).
"""

from __future__ import annotations

import io
import json
import math
import warnings
import zipfile

import numpy as np
from PIL import Image

from services.common.errors import AssetError
from services.common.formats.conventions import logit_to_opacity, opacity_to_logit, to_uint8
from services.common.gaussians import MAX_GAUSSIANS, MAX_LOG_SCALE, MAX_POSITION, Gaussians

MAX_MEMBER_BYTES = 256 * 2**20
MAX_META_BYTES = 4 * 2**20
MAX_PALETTE = 4096  # SH palette entries written (labels hold up to 65,536)
_COEFFICIENTS = (0, 3, 8, 15)  # per SH degree, beyond DC
_LLOYD_STEPS = 10


def read_sog(data: bytes, max_gaussians: int = MAX_GAUSSIANS) -> Gaussians:
    """Decode a `.sog` (zip) file's bytes into ``Gaussians``.

    Raises:
        AssetError: not a zip, no or malformed ``meta.json``, a version other than 2, a missing or
            oversized member, an image that is not WebP or smaller than the count, a count over
            ``max_gaussians``, or decoded values the `.ply` reader would refuse.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = {info.filename: info for info in archive.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise AssetError(f"`.sog` is not a readable zip: {exc}") from exc
    meta = _meta(archive, members)
    n = meta.get("count")
    if not (isinstance(n, int) and 0 < n <= max_gaussians):
        raise AssetError(f"`.sog` count {n!r} is outside 1..{max_gaussians}")

    def image(section: str, index: int = 0) -> np.ndarray:
        files = _field(meta, section, "files", list)
        if index >= len(files) or not isinstance(files[index], str):
            raise AssetError(f"`.sog` meta.json `{section}.files` names too few files")
        if section == "shN" and index == 0:  # the palette: at most 65,536 entries of 15 pixels
            return _webp(archive, members, files[index], 0, 65536 * 15)
        return _webp(archive, members, files[index], n, 2 * n + 65536)

    means = _means(meta, image("means", 0), image("means", 1), n)
    quats = _quats(image("quats")[:n])
    scale_book = _codebook(meta, "scales")
    log_scales = scale_book[image("scales")[:n, :3]]
    sh0 = image("sh0")[:n]
    dc = _codebook(meta, "sh0")[sh0[:, :3]]
    rest = np.zeros((n, 0, 3))
    if "shN" in meta:
        rest = _rest(meta, image("shN", 0), image("shN", 1)[:n], n)
    if not (np.isfinite(means).all() and (np.abs(means) <= MAX_POSITION).all()):
        raise AssetError("`.sog` positions must be finite and within +-1e15 (check means.mins and maxs)")
    if not (log_scales <= MAX_LOG_SCALE).all():
        raise AssetError(f"`.sog` log scales must be at most {MAX_LOG_SCALE:g}")
    return Gaussians(
        means=means.astype(np.float32),
        log_scales=log_scales.astype(np.float32),
        quats=quats.astype(np.float32),
        opacity_logits=opacity_to_logit(sh0[:, 3] / 255.0),
        sh=np.concatenate([dc[:, None, :], rest], axis=1).astype(np.float32),
    )


def _meta(archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo]) -> dict:
    info = members.get("meta.json")
    if info is None:
        raise AssetError("`.sog` has no meta.json")
    if info.file_size > MAX_META_BYTES:
        raise AssetError(f"`.sog` meta.json is {info.file_size} bytes, over {MAX_META_BYTES}")
    try:
        meta = json.loads(_member(archive, info))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise AssetError(f"`.sog` meta.json is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("version") != 2:
        version = meta.get("version") if isinstance(meta, dict) else None
        raise AssetError(f"`.sog` meta.json version {version!r} is not supported (2; version 1 is not read)")
    return meta


def _member(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes, inflated no further than its declared size allows."""
    if info.file_size > MAX_MEMBER_BYTES:
        raise AssetError(f"`.sog` member {info.filename} is {info.file_size} bytes, over {MAX_MEMBER_BYTES}")
    try:
        with archive.open(info) as stream:
            data = stream.read(info.file_size + 1)
    # zipfile raises NotImplementedError for a compression method it lacks (99, AES): a file this
    # cannot read, refused like any other (tested in test_malformed_sog_gets_the_one_error).
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError) as exc:
        raise AssetError(f"`.sog` member {info.filename} cannot be read: {exc}") from exc
    if len(data) != info.file_size:
        raise AssetError(f"`.sog` member {info.filename} does not hold the bytes its entry says")
    return data


def _field(meta: dict, section: str, key: str, kind: type):
    value = meta.get(section, {}).get(key) if isinstance(meta.get(section), dict) else None
    if not isinstance(value, kind):
        raise AssetError(f"`.sog` meta.json has no `{section}.{key}` {kind.__name__}")
    return value


def _webp(
    archive: zipfile.ZipFile, members: dict[str, zipfile.ZipInfo], name: str, least: int, most: int
) -> np.ndarray:
    """``[pixels, 4]`` uint8 RGBA of image ``name``, which must hold ``least`` to ``most`` pixels (checked
    from its header, before it is decoded)."""
    info = members.get(name)
    if info is None:
        raise AssetError(f"`.sog` has no member {name!r}, which meta.json names")
    data = _member(archive, info)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["WEBP"]) as picture:
                if picture.width * picture.height > most:
                    raise AssetError(f"`.sog` image {name} is {picture.width}x{picture.height}, too large")
                pixels = np.asarray(picture.convert("RGBA"), dtype=np.uint8).reshape(-1, 4)
    except AssetError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise AssetError(f"`.sog` image {name} is not a readable WebP: {exc}") from exc
    if len(pixels) < least:
        raise AssetError(f"`.sog` image {name} has {len(pixels)} pixels for {least} Gaussians")
    return pixels


def _codebook(meta: dict, section: str) -> np.ndarray:
    book = _field(meta, section, "codebook", list)
    values = np.asarray(book, dtype=np.float64) if all(isinstance(v, int | float) for v in book) else None
    if values is None or values.shape != (256,) or not np.isfinite(values).all():
        raise AssetError(f"`.sog` meta.json `{section}.codebook` must hold 256 finite numbers")
    return values


def _means(meta: dict, low: np.ndarray, high: np.ndarray, n: int) -> np.ndarray:
    mins, maxs = _field(meta, "means", "mins", list), _field(meta, "means", "maxs", list)
    bounds = np.asarray(mins + maxs, dtype=np.float64) if len(mins) == len(maxs) == 3 else None
    if bounds is None or not np.isfinite(bounds).all():
        raise AssetError("`.sog` meta.json `means.mins` and `means.maxs` must hold 3 finite numbers each")
    quantized = low[:n, :3].astype(np.float64) + 256.0 * high[:n, :3]
    span = bounds[3:] - bounds[:3]
    logs = bounds[:3] + np.where(span == 0.0, 1.0, span) * (quantized / 65535.0)
    with np.errstate(over="ignore"):
        return np.sign(logs) * np.expm1(np.abs(logs))


def _quats(pixels: np.ndarray) -> np.ndarray:
    """``[N, 4]`` (w, x, y, z) from RGBA: three components and the largest one's index + 252."""
    tag = pixels[:, 3].astype(np.int64)
    if ((tag < 252) | (tag > 255)).any():
        raise AssetError(
            f"`.sog` quats.webp alpha must be 252..255, found {int(tag[(tag < 252) | (tag > 255)][0])}"
        )
    largest = tag - 252
    others = (pixels[:, :3].astype(np.float64) / 255.0 * 2.0 - 1.0) / np.sqrt(2.0)
    quats = np.zeros((len(pixels), 4))
    for index in range(4):
        rows = largest == index
        quats[np.ix_(rows, [c for c in range(4) if c != index])] = others[rows]
    quats[np.arange(len(pixels)), largest] = np.sqrt(np.maximum(0.0, 1.0 - np.sum(quats * quats, axis=1)))
    return quats / np.linalg.norm(quats, axis=1, keepdims=True)


def _rest(meta: dict, centroids: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``[N, K-1, 3]`` higher SH coefficients from the palette."""
    bands, palette = _field(meta, "shN", "bands", int), _field(meta, "shN", "count", int)
    if bands not in (1, 2, 3) or not 0 < palette <= 65536:
        raise AssetError(
            f"`.sog` meta.json shN has bands {bands} and count {palette}: expected 1..3 and 1..65536"
        )
    book = _codebook(meta, "shN")
    k = _COEFFICIENTS[bands]
    rows = -(-palette // 64)
    if len(centroids) < rows * 64 * k:
        raise AssetError(f"`.sog` shN centroids hold {len(centroids)} pixels for {palette} entries of {k}")
    index = labels[:, 0].astype(np.int64) | (labels[:, 1].astype(np.int64) << 8)
    if (index >= palette).any():
        raise AssetError(f"`.sog` shN label {int(index.max())} is beyond the palette of {palette}")
    table = centroids[: rows * 64 * k, :3].reshape(rows * 64, k, 3)  # entry e's coefficient j
    return book[table[index]]


def write_sog(gaussians: Gaussians) -> bytes:
    """Encode ``Gaussians`` as a SOG version 2 zip (see the module docstring).

    Raises:
        AssetError: ``gaussians.validate()`` fails.
    """
    gaussians.validate()
    g, n = gaussians, len(gaussians)
    width = math.ceil(math.sqrt(n))
    images: dict[str, bytes] = {}

    # 1. Positions: 16 bits per axis of sign(x) ln(|x| + 1), split into low and high bytes.
    logs = np.sign(g.means.astype(np.float64)) * np.log1p(np.abs(g.means.astype(np.float64)))
    mins, maxs = logs.min(axis=0), logs.max(axis=0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    quantized = np.rint((logs - mins) / span * 65535.0).astype(np.int64)
    images["means_l.webp"] = _encode(np.concatenate([quantized & 255, _opaque(n)], axis=1), width)
    images["means_u.webp"] = _encode(np.concatenate([quantized >> 8, _opaque(n)], axis=1), width)

    # 2. Rotations: the largest component made positive, the other three in 8 bits, its index in alpha.
    quats = g.quats.astype(np.float64) / np.linalg.norm(g.quats, axis=1, keepdims=True)
    largest = np.argmax(np.abs(quats), axis=1)
    quats *= np.where(quats[np.arange(n), largest] < 0.0, -1.0, 1.0)[:, None]
    others = np.stack([np.delete(q, i) for q, i in zip(quats, largest, strict=True)]) if n else quats[:, :3]
    packed = to_uint8((others * math.sqrt(2.0) + 1.0) * 0.5 * 255.0).astype(np.int64)
    images["quats.webp"] = _encode(np.concatenate([packed, (252 + largest)[:, None]], axis=1), width)

    # 3. Scales and DC colours through 256-entry codebooks; opacity in sh0's alpha.
    scale_book = _fit_codebook(g.log_scales.astype(np.float64).ravel())
    images["scales.webp"] = _encode(
        np.concatenate([_nearest(scale_book, g.log_scales), _opaque(n)], axis=1), width
    )
    dc_book = _fit_codebook(g.sh[:, 0].astype(np.float64).ravel())
    opacity = to_uint8(logit_to_opacity(g.opacity_logits) * 255.0).astype(np.int64)[:, None]
    images["sh0.webp"] = _encode(np.concatenate([_nearest(dc_book, g.sh[:, 0]), opacity], axis=1), width)
    meta = {
        "version": 2,
        "asset": {"generator": "tire-services"},
        "count": n,
        "means": {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_book.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_book.tolist(), "files": ["sh0.webp"]},
    }

    # 4. Higher SH bands: a palette of coefficient vectors (k-means), their values through a codebook.
    k = g.sh.shape[1] - 1
    if k:
        vectors = g.sh[:, 1:].astype(np.float64).reshape(n, -1)  # [N, k * 3], coefficient-major
        centroids, labels = _fit_palette(vectors, min(MAX_PALETTE, n))
        book = _fit_codebook(centroids.ravel())
        entries = len(centroids)
        rows = -(-entries // 64)
        table = np.zeros((rows * 64, k, 3), dtype=np.int64)
        table[:entries] = _nearest(book, centroids).reshape(entries, k, 3)
        pixels = np.concatenate([table.reshape(-1, 3), _opaque(rows * 64 * k)], axis=1)
        images["shN_centroids.webp"] = _encode(pixels, 64 * k)
        label_pixels = np.stack([labels & 255, labels >> 8, np.zeros(n, np.int64), np.full(n, 255)], axis=1)
        images["shN_labels.webp"] = _encode(label_pixels, width)
        meta["shN"] = {
            "count": entries,
            "bands": g.sh_degree,
            "codebook": book.tolist(),
            "files": ["shN_centroids.webp", "shN_labels.webp"],
        }

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:  # WebP is compressed already
        for name, data in images.items():
            archive.writestr(name, data)
        archive.writestr("meta.json", json.dumps(meta))
    return out.getvalue()


def _opaque(n: int) -> np.ndarray:
    return np.full((n, 1), 255, dtype=np.int64)


def _encode(pixels: np.ndarray, width: int) -> bytes:
    """Lossless WebP of ``[N, 4]`` RGBA values 0..255, ``width`` pixels per row (the last row padded)."""
    rows = -(-len(pixels) // width)
    padded = np.zeros((rows * width, 4), dtype=np.uint8)
    padded[: len(pixels)] = pixels
    out = io.BytesIO()
    Image.fromarray(padded.reshape(rows, width, 4), "RGBA").save(out, "WEBP", lossless=True, exact=True)
    return out.getvalue()


def _fit_codebook(values: np.ndarray) -> np.ndarray:
    """256 sorted values minimising the squared error of ``values`` to their nearest (1D k-means)."""
    ordered = np.sort(values)
    book = np.quantile(ordered, (np.arange(256) + 0.5) / 256.0)
    for _ in range(_LLOYD_STEPS):
        cells = np.searchsorted((book[1:] + book[:-1]) / 2.0, ordered)
        sums = np.bincount(cells, weights=ordered, minlength=256)
        counts = np.bincount(cells, minlength=256)
        book = np.where(counts > 0, sums / np.maximum(counts, 1), book)
        book.sort()
    return book


def _nearest(book: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the nearest entry of the sorted ``book`` for each value, same shape, int64."""
    return np.searchsorted((book[1:] + book[:-1]) / 2.0, np.asarray(values, dtype=np.float64))


def _fit_palette(vectors: np.ndarray, entries: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroids ``[P, D]``, labels ``[N]``): k-means of ``vectors`` from an even sample, a few steps."""
    n = len(vectors)
    centroids = vectors[np.linspace(0, n - 1, entries).astype(np.int64)].copy()
    for _ in range(_LLOYD_STEPS):
        labels = _closest(vectors, centroids)
        counts = np.bincount(labels, minlength=entries)
        sums = np.zeros_like(centroids)
        np.add.at(sums, labels, vectors)
        centroids = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centroids)
    return centroids, _closest(vectors, centroids)


def _closest(vectors: np.ndarray, centroids: np.ndarray, block: int = 8192) -> np.ndarray:
    """Index of each vector's nearest centroid, by |a|^2 - 2 a.b + |b|^2 in blocks of rows."""
    squared = np.sum(centroids * centroids, axis=1)
    labels = np.empty(len(vectors), dtype=np.int64)
    for start in range(0, len(vectors), block):
        chunk = vectors[start : start + block]
        labels[start : start + block] = np.argmin(squared[None, :] - 2.0 * chunk @ centroids.T, axis=1)
    return labels
