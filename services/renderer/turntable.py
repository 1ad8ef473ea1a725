"""Render a turntable of a local `.ply`: one PNG per azimuth, a contact sheet and an animated GIF.

    python -m services.renderer.turntable samples/monkey_lgm.ply -o out/turntable

Runs the renderer's backend in-process, without a store; the service path is ``server.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from PIL import Image

from services.common.cameras import orbit_cameras
from services.common.gaussians import read_ply
from services.common.pictures import contact_sheet, turntable_gif
from services.renderer.backends import make_backend


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("asset", type=Path, help="a 3DGS .ply (INRIA or LGM layout)")
    parser.add_argument("-o", "--out", type=Path, default=Path("out/turntable"))
    parser.add_argument("--views", type=int, default=18, help="azimuths, evenly spaced from 0 (default 18)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--elevation", type=float, default=0.0, help="degrees, LGM sign (negative = above)")
    parser.add_argument("--backend", default="auto", help="cpu | gsplat | auto")
    args = parser.parse_args(argv)

    gaussians = read_ply(args.asset)
    azimuths = np.arange(args.views) * (360.0 / args.views)
    cameras = orbit_cameras(azimuths, args.resolution, args.resolution, args.elevation)
    backend = make_backend(args.backend)
    white = np.ones(3, dtype=np.float32)
    start = time.perf_counter()
    result = backend.render(gaussians, cameras, white)
    seconds = time.perf_counter() - start
    rgb = np.clip(np.rint(result.rgb * 255.0), 0, 255).astype(np.uint8)

    args.out.mkdir(parents=True, exist_ok=True)
    for az, image in zip(azimuths, rgb, strict=True):
        Image.fromarray(image).save(args.out / f"view_az{round(az):03d}.png")
    Image.fromarray(contact_sheet(rgb, columns=6)).save(args.out / "contact_sheet.png")
    (args.out / "turntable.gif").write_bytes(turntable_gif(rgb, frame_ms=120))
    print(
        f"Rendered {len(gaussians):,} Gaussians from {args.asset} at {len(azimuths)} azimuths "
        f"({args.resolution}x{args.resolution}, backend {backend.name} on {backend.device}) "
        f"in {seconds:.2f} s.\n"
        f"Pictures: {args.out}/contact_sheet.png, {args.out}/turntable.gif, {args.out}/view_az*.png"
    )


if __name__ == "__main__":
    main()
