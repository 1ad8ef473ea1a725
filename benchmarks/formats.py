"""Splat formats on the bundled LGM monkey: size, write and read time, and what a round trip loses.

    python -m benchmarks.formats [--repeats 5]

For each format ``services.common.formats`` writes (``WRITABLE``): the file's bytes, ``write_splats`` and
``read_splats`` in ms (median after a warm-up call), and the PSNR of renders of the round trip against
renders of the asset (four views at elevation -15 that the asset fills, 256², white background; inf
where the pictures are identical).

Then ``library_comparison``: the maintained libraries issue 18 names (gsply for `.ply` and `.spz`,
pygltflib for `.glb`) against our codecs, on the monkey and on 30,000 random Gaussians of SH degree 3.
Neither library is a dependency of the project; where one is not installed its rows say so.
"""

from __future__ import annotations

import argparse
import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

from benchmarks.timing import cpu_name, median_ms
from services.common.cameras import orbit_cameras
from services.common.formats import FORMATS, WRITABLE, read_splats, write_splats
from services.common.formats.conventions import (
    PLY_AXES,
    SPZ_AXES,
    change_axes,
    logit_to_opacity,
)
from services.common.formats.gltf import EXTENSION, glb_attributes, write_glb
from services.common.framing import fit_framing
from services.common.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from services.common.rasterizer import rasterize
from services.testing.format_bounds import rotation_error

try:  # optional: not a dependency of the project; the comparison prints "not installed" without it
    import gsply
except ImportError:
    gsply = None
try:
    import pygltflib
except ImportError:
    pygltflib = None

MONKEY = Path(__file__).parents[1] / "samples" / "monkey_lgm.ply"
MISSING = "not installed"
FIELDS = ("means", "log_scales", "quats", "opacity_logits", "sh")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """dB for values in [0, 1]; inf when equal."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0.0 else 10.0 * float(np.log10(1.0 / mse))


def _to_gsdata(g: Gaussians) -> gsply.GSData:
    """Our arrays as gsply's container; ``format="ply"`` says they are log scales and logits (without
    it gsply guesses that from the values)."""
    return gsply.GSData.from_arrays(
        means=g.means, scales=g.log_scales, quats=g.quats, opacities=g.opacity_logits,
        sh0=g.sh[:, 0], shN=g.sh[:, 1:], format="ply",
    )  # fmt: skip


def _from_gsdata(data: gsply.GSData) -> Gaussians:
    """gsply's container as our ``Gaussians`` (its arrays are views into one row-major table; its SH
    is ``sh0 [N, 3]`` and ``shN [N, K-1, 3]``, coefficient-major like ours, and ``shN`` is None at
    degree 0 from its C++ backend)."""
    rest = data.shN if data.shN is not None else np.zeros((len(data.means), 0, 3), dtype=np.float32)
    return Gaussians(
        means=np.ascontiguousarray(data.means),
        log_scales=np.ascontiguousarray(data.scales),
        quats=np.ascontiguousarray(data.quats),
        opacity_logits=np.ascontiguousarray(data.opacities),
        sh=np.concatenate([data.sh0[:, None], rest], axis=1),
    )


def _glb_with_pygltflib(gaussians: Gaussians) -> bytes:
    """The `.glb` ``write_glb`` writes (the same accessors, values and extension object), with the
    document, buffer views and GLB container built by pygltflib instead of our own code."""
    columns = glb_attributes(gaussians)
    positions = columns[0][1]
    bounds = {"min": positions.min(axis=0).tolist(), "max": positions.max(axis=0).tolist()}
    blob, views, accessors, attributes = bytearray(), [], [], {}
    for index, (name, values, kind) in enumerate(columns):
        colour_bytes = values.dtype == np.uint8
        data = np.ascontiguousarray(values, dtype=np.uint8 if colour_bytes else "<f4").tobytes()
        views.append(
            pygltflib.BufferView(
                buffer=0, byteOffset=len(blob), byteLength=len(data), target=pygltflib.ARRAY_BUFFER
            )
        )
        accessors.append(
            pygltflib.Accessor(
                bufferView=index,
                componentType=pygltflib.UNSIGNED_BYTE if colour_bytes else pygltflib.FLOAT,
                normalized=colour_bytes,
                count=len(gaussians),
                type=kind,
                **(bounds if name == "POSITION" else {}),
            )
        )
        attributes[name] = index
        blob += data + bytes(-len(data) % 4)
    splats = {"kernel": "ellipse", "colorSpace": "srgb_rec709_display",
              "sortingMethod": "cameraDistance", "projection": "perspective"}  # fmt: skip
    primitive = pygltflib.Primitive(
        attributes=pygltflib.Attributes(**attributes), mode=pygltflib.POINTS, extensions={EXTENSION: splats}
    )
    document = pygltflib.GLTF2(
        asset=pygltflib.Asset(generator="pygltflib"),
        extensionsUsed=[EXTENSION],
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(mesh=0)],
        meshes=[pygltflib.Mesh(primitives=[primitive])],
        buffers=[pygltflib.Buffer(byteLength=len(blob))],
        bufferViews=views,
        accessors=accessors,
    )
    document.set_binary_blob(bytes(blob))
    return b"".join(document.save_to_bytes())


def _identical(a: Gaussians, b: Gaussians) -> bool:
    """Every array of ``a`` equals ``b``'s, bit for bit."""
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def _differences(again: Gaussians, original: Gaussians) -> list[str]:
    """Table cells: the largest absolute difference of positions, log scales, opacities (after the
    sigmoid) and SH coefficients, the largest rotation angle in radians, and whether every array is
    bit-identical."""
    opacity = logit_to_opacity(again.opacity_logits) - logit_to_opacity(original.opacity_logits)
    values = [
        np.abs(again.means - original.means).max(),
        np.abs(again.log_scales - original.log_scales).max(),
        np.abs(opacity).max(),
        np.abs(again.sh - original.sh).max(),
        rotation_error(again.quats, original.quats),
    ]
    return [f"{v:.3g}" for v in values] + ["yes" if _identical(again, original) else "no"]


def _timing_rows(g: Gaussians, folder: Path, repeats: int) -> list[list[str]]:
    """The first table's rows for one scene (see ``library_comparison``). Leaves in ``folder`` the
    files each writer wrote, named after it: ours, gsply, cpp (gsply's C++ backend), pygltflib."""
    ours_ply, ours_spz = folder / "ours.ply", folder / "ours.spz"
    ours_ply.write_bytes(write_ply(g, layout="lgm"))
    ours_spz.write_bytes(write_splats(g, "spz"))
    # operation -> (our call, gsply's call), each given the file it reads or writes
    operations = {
        ".ply read": (read_splats, lambda path: _from_gsdata(gsply.plyread(path))),
        ".ply write": (
            lambda path: path.write_bytes(write_ply(g, layout="lgm")),
            lambda path: gsply.plywrite(path, _to_gsdata(g)),
        ),
        ".spz read": (read_splats, lambda path: _from_gsdata(gsply.read_spz(path))),
        ".spz write": (
            lambda path: path.write_bytes(write_splats(g, "spz")),
            lambda path: gsply.write_spz(path, _to_gsdata(g)),
        ),
    }
    rows = []
    for operation, (ours, theirs) in operations.items():
        times, sizes = [], []
        codecs = (("ours", ours, None), ("gsply", theirs, "python"), ("cpp", theirs, "cpp"))
        for writer, call, backend in codecs:
            if backend is not None and gsply is None:
                times.append(MISSING)
                sizes.append(MISSING)
                continue
            if backend is not None:
                gsply.use_backend(backend)
            path = folder / f"{'ours' if operation.endswith('read') else writer}{operation[:4]}"
            times.append(f"{median_ms(lambda call=call, path=path: call(path), repeats):.1f}")
            sizes.append(f"{path.stat().st_size:,}")
        rows.append([operation, *times, *sizes])

    ours_glb = write_glb(g)
    (folder / "ours.glb").write_bytes(ours_glb)
    ours_ms = f"{median_ms(lambda: write_glb(g), repeats):.1f}"
    theirs_ms = theirs_bytes = MISSING
    if pygltflib is not None:
        theirs_glb = _glb_with_pygltflib(g)
        (folder / "pygltflib.glb").write_bytes(theirs_glb)
        theirs_ms = f"{median_ms(lambda: _glb_with_pygltflib(g), repeats):.1f}"
        theirs_bytes = f"{len(theirs_glb):,}"
    rows.append([".glb write (pygltflib)", ours_ms, theirs_ms, "-", f"{len(ours_glb):,}", theirs_bytes, "-"])
    return rows


def _agreement_rows(g: Gaussians, folder: Path) -> tuple[list[list[str]], list[str]]:
    """The second table's rows for one scene, from the files ``_timing_rows`` left in ``folder``,
    and sentences on what is identical beyond that."""
    rows, notes = [], []
    if gsply is None:
        rows.append([".ply, .spz", "gsply", "ours, gsply", *[MISSING] * 6])
    else:
        gsply.use_backend("python")
        from_ours = _from_gsdata(gsply.plyread(folder / "ours.ply"))
        rows.append([".ply", "ours", "gsply", *_differences(from_ours, g)])
        rows.append([".ply", "gsply", "ours", *_differences(read_splats(folder / "gsply.ply"), g)])
        same = (folder / "ours.ply").read_bytes() == (folder / "gsply.ply").read_bytes()
        notes.append(f"our `.ply` (LGM layout) and gsply's are byte-identical: {'yes' if same else 'no'}")
    rows.append([".spz", "ours", "ours", *_differences(read_splats(folder / "ours.spz"), g)])
    if gsply is not None:
        from_gsply = read_splats(folder / "gsply.spz")
        rows += [
            [".spz", "ours", "gsply", *_differences(_from_gsdata(gsply.read_spz(folder / "ours.spz")), g)],
            [".spz", "gsply", "ours", *_differences(from_gsply, g)],
            [".spz", "gsply", "ours, frame change undone",
             *_differences(change_axes(from_gsply, PLY_AXES, SPZ_AXES), g)],
            [".spz", "gsply", "gsply", *_differences(_from_gsdata(gsply.read_spz(folder / "gsply.spz")), g)],
        ]  # fmt: skip
        gsply.use_backend("cpp")
        from_cpp = _from_gsdata(gsply.read_spz(folder / "cpp.spz"))
        gsply.use_backend("python")
        rows.append([".spz", "gsply C++", "gsply C++", *_differences(from_cpp, g)])
    ours_glb = read_splats(folder / "ours.glb")
    rows.append([".glb", "ours", "ours", *_differences(ours_glb, g)])
    if pygltflib is None:
        rows.append([".glb", "pygltflib", "ours", *[MISSING] * 6])
    else:
        from_pygltflib = read_splats(folder / "pygltflib.glb")
        rows.append([".glb", "pygltflib", "ours", *_differences(from_pygltflib, g)])
        same = _identical(from_pygltflib, ours_glb)
        notes.append(f"the pygltflib `.glb` reads back as ours does, bit for bit: {'yes' if same else 'no'}")
    return rows, notes


def library_comparison(scenes: dict[str, Gaussians], repeats: int) -> None:
    """Print two tables: times and sizes, then what each pairing of writer and reader gives back.

    Times, ms (``median_ms``): `.ply` and `.spz` read and written through a file in a temporary
    directory by our codecs (``read_splats``; ``write_ply`` in the LGM layout, the one gsply writes,
    and ``write_splats``) and by gsply, with its default numba backend and its opt-in C++ one, each
    including the conversion from and to our ``Gaussians``; both readers read the same file (ours).
    `.glb` written to bytes by ``write_glb`` and by ``_glb_with_pygltflib``. Bytes: the file read or
    written.

    Agreement with the original Gaussians (``_differences``): each `.ply` and `.spz` read by the
    other side's reader and by its own; gsply's `.spz` read by ours once more with our reader's
    frame change (RUB -> RDF) undone; the pygltflib-built `.glb` read by ``read_splats``.
    """
    versions = ", ".join(
        f"{name} {version(name) if module is not None else MISSING}"
        for name, module in (("gsply", gsply), ("pygltflib", pygltflib))
    )
    print(f"\nLibraries against our codecs ({versions}); times in ms, median of {repeats}\n")
    print(
        "| scene | operation | ours, ms | library, ms | gsply C++ backend, ms "
        "| bytes, ours | bytes, library | bytes, gsply C++ |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    agreement, notes = [], []
    with tempfile.TemporaryDirectory() as temporary:
        for scene, g in scenes.items():
            folder = Path(temporary) / scene
            folder.mkdir()
            for row in _timing_rows(g, folder, repeats):
                print(f"| {scene} | " + " | ".join(row) + " |")
            rows, sentences = _agreement_rows(g, folder)
            agreement += [[scene, *row] for row in rows]
            notes += [f"{scene}: {sentence}" for sentence in sentences]
    print(
        "\n| scene | file | written by | read by | positions | log scales | opacity | SH | rotation, rad "
        "| bit-identical |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|")
    for row in agreement:
        print("| " + " | ".join(row) + " |")
    if notes:
        print("\n" + "\n".join(notes))


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

    random = random_gaussians(30000, sh_degree=3, seed=1)
    library_comparison({"LGM monkey": gaussians, "random 30,000, SH 3": random}, args.repeats)


if __name__ == "__main__":
    main()
