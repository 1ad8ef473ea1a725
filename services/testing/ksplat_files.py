"""`.ksplat` files made here, for the tests of its reader (``services.common.formats.ksplat``) that need
no Node.js: decoding arithmetic, malformed headers, mutations. What GaussianSplats3D's own writer makes
is checked in ``tests/test_splat_transform.py``."""

from __future__ import annotations

import struct

import numpy as np

from services.common.gaussians import SH_C0, Gaussians


def ksplat_bytes(
    g: Gaussians, level: int = 1, bucket_size: int = 8, sh_range=(-1.5, 1.5), **changes: int | float
) -> bytes:
    """A `.ksplat` of ``g`` in one section, as ``formats.ksplat`` describes the layout: each value
    rounded to nearest (the viewer's writer rounds colours down), buckets of ``bucket_size`` records
    centred on their mean, the last one partly filled. ``changes`` overwrite header fields by name."""
    n, degree = len(g), g.sh_degree
    value = "<f4" if level == 0 else "<f2"
    position_range = 1 if level == 0 else 32767
    fields = {"major": 0, "minor": 1, "slots": 1, "splats": n, "level": level, "degree": degree}
    fields |= {"section_splats": n, "bucket_bytes": 12 if level else 0}
    fields |= changes
    full, partial = divmod(n, bucket_size)
    lengths = [partial] if partial else []
    bucket = np.arange(n) // bucket_size
    counts = np.bincount(bucket)
    centres = np.stack(
        [np.bincount(bucket, g.means[:, i].astype(np.float64)) / counts for i in range(3)], axis=1
    )
    if level == 0:
        positions = g.means.astype("<f4")
    else:
        offsets = (g.means - centres[bucket]) * position_range / 2.5
        positions = np.clip(np.rint(offsets) + position_range, 0, 65535).astype("<u2")
    quats = g.quats / np.linalg.norm(g.quats, axis=1, keepdims=True)
    colour = np.concatenate([0.5 + SH_C0 * g.sh[:, 0], g.opacities[:, None]], axis=1)
    band_1 = g.sh[:, 1:4].transpose(0, 2, 1).reshape(n, -1)  # bands 1 and 2, each channel-major
    band_2 = g.sh[:, 4:9].transpose(0, 2, 1).reshape(n, -1)
    rest = np.concatenate([band_1, band_2], axis=1)
    if level == 2:
        low, high = sh_range
        rest = np.clip(np.rint((rest - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    else:
        rest = rest.astype(value)
    records = [
        positions.view(np.uint8).reshape(n, -1),
        g.scales.astype(value).view(np.uint8).reshape(n, -1),
        quats.astype(value).view(np.uint8).reshape(n, -1),
        np.clip(np.rint(colour * 255), 0, 255).astype(np.uint8),
        rest.view(np.uint8).reshape(n, -1),
    ]
    header = bytearray(4096)
    struct.pack_into("<BBxxIIIIH", header, 0, fields["major"], fields["minor"], fields["slots"], 1, n,
                     fields["splats"], fields["level"])  # fmt: skip
    struct.pack_into("<ff", header, 36, *sh_range)
    section = bytearray(1024)
    struct.pack_into("<IIIIfH2xI4xIIH", section, 0, fields["section_splats"], n, bucket_size,
                     (full + len(lengths)) if level else 0, 5.0 if level else 0.0, fields["bucket_bytes"],
                     position_range if level else 0, full if level else 0, len(lengths) if level else 0,
                     fields["degree"])  # fmt: skip
    buckets = np.array(lengths, "<u4").tobytes() + centres.astype("<f4").tobytes() if level else b""
    return bytes(header + section) + buckets + np.concatenate(records, axis=1).tobytes()
