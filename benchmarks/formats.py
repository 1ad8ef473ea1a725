"""Splat formats on the bundled LGM monkey: size, write and read time, and what a round trip loses.

    python -m benchmarks.formats [--repeats 5]

For each format ``services.common.formats`` writes (``WRITABLE``): the file's bytes, ``write_splats`` and
``read_splats`` in ms (median after a warm-up call), and the PSNR of renders of the round trip against
renders of the asset (four views at elevation -15 that the asset fills, 256², white background; inf
where the pictures are identical).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.timing import cpu_name, median_ms
from services.common.cameras import orbit_cameras
from services.common.formats import FORMATS, WRITABLE, read_splats, write_splats
from services.common.framing import fit_framing
from services.common.gaussians import read_ply
from services.common.rasterizer import rasterize

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB for values in [0, 1]; inf when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    gaussians = read_ply(MONKEY)
    framing = fit_framing(gaussians)
    cameras = orbit_cameras([0, 90, 180, 270], 256, 256, -15.0, radius=framing.radius, center=framing.center)
    reference = rasterize(gaussians, cameras, background=(1.0, 1.0, 1.0))

    print(f"Splat formats, the LGM monkey ({len(gaussians):,} Gaussians, SH degree {gaussians.sh_degree})")
    print(f"machine: {cpu_name()}; times in ms, median of {args.repeats}\n")
    print("| format | bytes | x .ply | write, ms | read, ms | PSNR of renders, dB | keeps |")
    print("|---|---:|---:|---:|---:|---:|---|")
    ply_bytes = len(write_splats(gaussians, "ply"))
    for name in WRITABLE:
        spec = FORMATS[name]
        data = write_splats(gaussians, name)
        file_name = f"monkey{spec.extension}"
        write = median_ms(lambda n=name: write_splats(gaussians, n), args.repeats)
        read = median_ms(lambda d=data, f=file_name: read_splats(d, name=f), args.repeats)
        again = rasterize(read_splats(data, name=file_name), cameras, background=(1.0, 1.0, 1.0))
        print(
            f"| {name} | {len(data):,} | {len(data) / ply_bytes:.2f} | {write:.1f} | {read:.1f} "
            f"| {psnr(again.rgb, reference.rgb):.1f} | {spec.keeps} |"
        )


if __name__ == "__main__":
    main()
