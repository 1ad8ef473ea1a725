"""Regenerate the derived samples: the monkey's reference image and the 4D blob.

    .venv/bin/python -m samples.make_samples            # from the repository root; writes into samples/

Writes, deterministically (the same bytes on every run on one machine):
- ``monkey_front.png``: the reference image of ``monkey_lgm.ply``, its front render.
- ``blob4d/frame_00.ply`` ... ``frame_03.ply``: a 4D "generator output", LGM layout: the textured blob
  of ``services.testing.synthetic`` moving (``deform`` at t = 0, 1/3, 2/3, 1), its back and sides
  drifted (``corrupt_unseen``, a different seed per time step, as independent generator runs differ).
- ``blob4d/reference_00.png`` ... ``reference_03.png``: the ground truth (the blob without the drift)
  at each time step, rendered from the front.

Reference images are RGBA PNG renders from azimuth 0, elevation 0, radius 1.5 with the CPU
rasterizer on black, with straight alpha (``services.common.pictures.straight_rgba``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from services.common.cameras import orbit_cameras
from services.common.gaussians import Gaussians, read_ply, write_ply
from services.common.pictures import straight_rgba
from services.common.rasterizer import rasterize
from services.common.tensors import png_bytes
from services.testing.synthetic import corrupt_unseen, deform, textured_blob

SAMPLES = Path(__file__).resolve().parent
MONKEY = "monkey_lgm.ply"
MONKEY_REFERENCE = "monkey_front.png"
MONKEY_RESOLUTION = 512
BLOB_DIR = "blob4d"
BLOB_GAUSSIANS = 12_000
BLOB_SEED = 0
BLOB_TIMES = (0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0)
BLOB_RESOLUTION = 512


def front_reference(gaussians: Gaussians, resolution: int) -> np.ndarray:
    """``[R, R, 4]`` uint8 straight-alpha RGBA: the front view (azimuth 0, elevation 0, radius 1.5)."""
    render = rasterize(gaussians, orbit_cameras([0.0], resolution, resolution), background=(0.0, 0.0, 0.0))
    return straight_rgba(render.rgb[0], render.alpha[0])


def blob_frames() -> tuple[list[Gaussians], list[Gaussians]]:
    """The 4D blob: (ground truth, drifted generator output), one ``Gaussians`` per time in BLOB_TIMES."""
    blob = textured_blob(BLOB_GAUSSIANS, seed=BLOB_SEED)
    truth = [deform(blob, t) for t in BLOB_TIMES]
    drifted = [corrupt_unseen(frame, seed=step) for step, frame in enumerate(truth)]
    return truth, drifted


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--out", type=Path, default=SAMPLES, help="folder to write (default samples/)")
    args = parser.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    monkey = read_ply(SAMPLES / MONKEY)
    (args.out / MONKEY_REFERENCE).write_bytes(png_bytes(front_reference(monkey, MONKEY_RESOLUTION)))

    blob_dir = args.out / BLOB_DIR
    blob_dir.mkdir(parents=True, exist_ok=True)
    truth, drifted = blob_frames()
    for step, (true_frame, drifted_frame) in enumerate(zip(truth, drifted, strict=True)):
        (blob_dir / f"frame_{step:02d}.ply").write_bytes(write_ply(drifted_frame, layout="lgm"))
        reference = front_reference(true_frame, BLOB_RESOLUTION)
        (blob_dir / f"reference_{step:02d}.png").write_bytes(png_bytes(reference))

    written = sorted(p for p in [args.out / MONKEY_REFERENCE, *blob_dir.iterdir()] if p.is_file())
    total = sum(p.stat().st_size for p in written)
    print(f"Wrote {len(written)} files ({total / 1e6:.2f} MB) under {args.out}:")
    for path in written:
        print(f"  {path.relative_to(args.out)}  {path.stat().st_size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
