"""Seeded mutation fuzzer for the `.ply` reader: any input must give a usable asset or an ``AssetError``.

    python -m benchmarks.fuzz_ply [--seconds 60] [--seed 1] [--out out/fuzz_ply] [--no-render]

Each case is one small `.ply` (1 to 48 vertices, so a case takes milliseconds), made in three
steps from case number ``i`` with the generator ``default_rng([seed, i])``, so any case can be rebuilt:

1. A seed: rows of a real file (``samples/monkey_lgm.ply`` and ``$TIRE_SHARED_DATA/assets/*.ply``, of
   which only the header and up to 256 rows are read) or synthetic Gaussians (SH degree 0 to 3, INRIA or
   LGM layout, shuffled properties, normals, extra properties of every type).
2. Structured mutations that keep header and data consistent: property renames (``f_rest_08`` beside
   ``f_rest_8``, duplicates, non-identifiers, 5,000-digit indices), types, dropped or added
   properties, special values (NaN, inf, 1e38, log scales of 100, zero quaternions), list properties,
   elements before and after ``vertex``, the three formats, comments, ``\\r\\n`` line ends.
3. Raw mutations that break it: header lines deleted, duplicated, swapped or garbled, counts of
   ``-1`` to 4,400 digits, formats and versions, non-ASCII and NUL bytes, no ``end_header``, then
   bit flips, truncation, inserted, deleted and duplicated byte ranges, odd ASCII tokens.

The oracle (``check``): ``read_ply`` raises ``AssetError``, or returns ``Gaussians`` that pass
``Gaussians.validate``, the renderers' argument check, activate (``scales``, ``opacities``) without
a numpy warning, get an orbit from ``fit_framing`` (as the coordinator does) whose cameras pass the
renderers' check too and, unless ``--no-render``, render one 16 x 16 view with the CPU rasterizer to
finite alpha and depth. Anything else (another exception, a warning, which the test suite turns into an
error, a case over one second) is a finding. Findings are grouped by signature (where and what),
shrunk by deleting byte ranges while the signature holds, and saved under ``--out`` with their
traceback.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from services.common.errors import AssetError
from services.common.gaussians import random_gaussians, read_ply

REPO = Path(__file__).resolve().parents[1]
SLOW_SECONDS = 1.0

PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
FORMATS = ("binary_little_endian", "binary_big_endian", "ascii")
SPECIAL_VALUES = (
    np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, 1e-30, 1.0, -1.0, 9.99, 10.0, 10.5, 20.0, 79.9, 80.0,
    80.5, 88.8, 100.0, 700.0, 710.0, -80.5, -100.0, -710.0, 1e30, -1e30, 3.4e38, -3.4e38, 1e300,
    -1e300, 255.0, 65535.0, 2.0**31, -(2.0**31), 2.0**32, 1e8, 1e15, -1.0001e15, 1e16, 1e37,
)  # fmt: skip
ODD_TOKENS = (
    b"nan", b"inf", b"-inf", b"infinity", b"1e999", b"-1e999", b"1_0", b"0x10", b"--1", b"+-1",
    b"1.2.3", b"1e", b".", b"\x00", b"\xd9\xa1", b"\xff", b"1" * 400, b"0." + b"1" * 5000, b"1,5",
    b"\t", b"\x0b", b"\r", b"", b"nan(1)", b"1e-400", b"1e38", b"3.5e38", b"100",
)  # fmt: skip
ODD_COUNTS = (
    b"-1", b"0", b"1", b"2", b"00", b"0005", b"4294967296", b"9223372036854775807",
    b"9223372036854775808", b"18446744073709551616", b"1" + b"0" * 30, b"9" * 4400,
    b"0" * 5000 + b"7", b"1e3", b"0x10", b"", b"five", b"\xd9\xa3", b"+3", b" 3", b"3.0",
)  # fmt: skip
ODD_NAMES = (
    "f_rest_08", "f_rest_020", "f_rest_00", "f_rest_-1", "f_rest_45", "f_rest_1000", "f_rest_" + "9" * 5000,
    "f_rest_", "F_REST_0", "f_rest_1 ", "a-b", "1x", "x.y", "nx", "vertex", "_", "x" * 1000, "f_dc_3",
    "scale_3", "rot_4", "opacity_", "rot_0", "x", "f_dc_0", "transform", "property", "list",
)  # fmt: skip


# 1. Seeds


@dataclass
class Prop:
    """A property: scalar (``kind`` a PLY type) or a list (``kind`` "list", with count and item types)."""

    name: str
    kind: str
    count_type: str = "uchar"
    item_type: str = "int"


@dataclass
class Element:
    """An element and its rows, ``[count, properties]`` float64 (list properties get 0 to 3 items)."""

    name: str
    props: list[Prop]
    rows: np.ndarray


@dataclass
class Spec:
    """A consistent `.ply`: what the structured mutations edit before it is encoded."""

    fmt: str
    vertex: Element
    before: list[Element] = field(default_factory=list)
    after: list[Element] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    newline: str = "\n"
    ascii_blank_lines: bool = False


def read_seed_rows(path: Path, rows: int = 256) -> Spec | None:
    """Up to ``rows`` vertices of a binary 3DGS `.ply` with float properties, read without the rest."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 * 1024)
            end = head.index(b"end_header\n") + len(b"end_header\n")
            lines = head[:end].decode("ascii").splitlines()
            names = [line.split()[2] for line in lines if line.startswith("property float ")]
            if (
                not names
                or "format binary_little_endian 1.0" not in lines
                or len(names) != sum(line.startswith("property") for line in lines)
            ):
                return None
            f.seek(end)
            table = np.frombuffer(f.read(rows * 4 * len(names)), dtype="<f4")
    except (OSError, ValueError, IndexError, UnicodeDecodeError):
        return None
    table = table[: len(table) // len(names) * len(names)].reshape(-1, len(names)).astype(np.float64)
    return Spec("binary_little_endian", Element("vertex", [Prop(n, "float") for n in names], table))


def seed_files() -> list[Path]:
    shared = Path(os.environ.get("TIRE_SHARED_DATA", REPO.parent / "shared" / "data")) / "assets"
    return [REPO / "samples" / "monkey_lgm.ply", *sorted(shared.glob("*.ply"))]


def load_seeds() -> list[Spec]:
    return [spec for spec in map(read_seed_rows, seed_files()) if spec is not None and len(spec.vertex.rows)]


def synthetic_seed(rng: np.random.Generator) -> Spec:
    n = int(rng.integers(1, 49))
    degree = int(rng.integers(0, 4))
    g = random_gaussians(n, sh_degree=degree, seed=int(rng.integers(1 << 30)))
    k = g.sh.shape[1]
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    if rng.random() < 0.5:
        cols |= {name: np.zeros(n) for name in ("nx", "ny", "nz")}
    cols |= {f"f_dc_{c}": g.sh[:, 0, c] for c in range(3)}
    if rng.random() < 0.8:
        cols |= {f"f_rest_{c * (k - 1) + j}": g.sh[:, j + 1, c] for c in range(3) for j in range(k - 1)}
    cols |= {"opacity": g.opacity_logits}
    cols |= {f"scale_{i}": g.log_scales[:, i] for i in range(3)}
    cols |= {f"rot_{i}": g.quats[:, i] for i in range(4)}
    names = list(cols)
    if rng.random() < 0.3:
        names = [names[i] for i in rng.permutation(len(names))]
    props = [Prop(name, "float") for name in names]
    rows = np.stack([np.asarray(cols[name], dtype=np.float64) for name in names], axis=1)
    spec = Spec(str(rng.choice(FORMATS)), Element("vertex", props, rows))
    for _ in range(int(rng.integers(0, 3))):
        _add_property(spec, rng)
    return spec


def _add_property(spec: Spec, rng: np.random.Generator, name: str | None = None) -> None:
    v = spec.vertex
    name = name or str(rng.choice(["transform", "weight", "red", "t", "f_dc_3", "segment", "_u"]))
    kind = str(rng.choice(list(PLY_TYPES)))
    values = rng.integers(0, 256, size=len(v.rows)).astype(np.float64)
    at = int(rng.integers(0, len(v.props) + 1))
    v.props.insert(at, Prop(name, kind))
    v.rows = np.insert(v.rows, at, values, axis=1)


# 2. Structured mutations (header and data stay consistent)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(0, len(items)))]


def m_rename(spec: Spec, rng: np.random.Generator) -> None:
    props = spec.vertex.props
    prop = _pick(rng, props)
    rest = [
        p.name for p in props if p.name.startswith("f_rest_") and p.name[7:].isdigit() and len(p.name) < 12
    ]
    choice = rng.random()
    if rest and choice < 0.4:
        index = int(_pick(rng, rest)[len("f_rest_") :])
        prop.name = _pick(rng, [f"f_rest_0{index}", f"f_rest_{index:03d}", f"f_rest_{index + 45}"])
    elif choice < 0.6:
        prop.name = _pick(rng, props).name
    else:
        prop.name = _pick(rng, ODD_NAMES)


def m_drop(spec: Spec, rng: np.random.Generator) -> None:
    v = spec.vertex
    if len(v.props) > 1:
        at = int(rng.integers(0, len(v.props)))
        del v.props[at]
        v.rows = np.delete(v.rows, at, axis=1)


def m_duplicate(spec: Spec, rng: np.random.Generator) -> None:
    v = spec.vertex
    at = int(rng.integers(0, len(v.props)))
    v.props.insert(at, replace(v.props[at]))
    v.rows = np.insert(v.rows, at, v.rows[:, at], axis=1)


def m_add(spec: Spec, rng: np.random.Generator) -> None:
    name = None if rng.random() < 0.5 else str(_pick(rng, ODD_NAMES))
    _add_property(spec, rng, name)


def m_retype(spec: Spec, rng: np.random.Generator) -> None:
    _pick(rng, spec.vertex.props).kind = str(rng.choice(list(PLY_TYPES)))


def m_values(spec: Spec, rng: np.random.Generator) -> None:
    v = spec.vertex
    names = [p.name for p in v.props]
    standard = [
        i for i, n in enumerate(names) if n.startswith(("scale_", "opacity", "rot_", "x", "y", "z", "f_"))
    ]
    col = _pick(rng, standard) if standard and rng.random() < 0.8 else int(rng.integers(0, len(names)))
    rows = rng.random(len(v.rows)) < rng.random()
    rows[int(rng.integers(0, len(rows)))] = True
    v.rows[rows, col] = _pick(rng, SPECIAL_VALUES)


def m_quats(spec: Spec, rng: np.random.Generator) -> None:
    v = spec.vertex
    cols = [i for i, p in enumerate(v.props) if p.name.startswith("rot_")]
    row = int(rng.integers(0, len(v.rows)))
    v.rows[row, cols] = _pick(rng, [0.0, 1e-45, 1e-20, 1e-7, 3.4e38])


def m_list(spec: Spec, rng: np.random.Generator) -> None:
    prop = _pick(rng, spec.vertex.props)
    prop.kind = "list"
    prop.count_type = str(rng.choice(["uchar", "int", "ushort"]))
    prop.item_type = str(rng.choice(["int", "float", "uchar"]))


def m_elements(spec: Spec, rng: np.random.Generator) -> None:
    count = int(rng.integers(0, 4))
    props = [Prop("a", str(rng.choice(list(PLY_TYPES))))]
    if rng.random() < 0.5:
        props.append(Prop("vertex_indices", "list", "uchar", "int"))
    element = Element(
        str(rng.choice(["face", "meta", "edge", "camera"])), props, np.ones((count, len(props)))
    )
    (spec.before if rng.random() < 0.5 else spec.after).append(element)


def m_format(spec: Spec, rng: np.random.Generator) -> None:
    spec.fmt = str(rng.choice(FORMATS))


def m_cosmetic(spec: Spec, rng: np.random.Generator) -> None:
    choice = rng.random()
    if choice < 0.3:
        spec.newline = "\r\n"
    elif choice < 0.6:
        spec.comments.append(str(rng.choice(["comment made by hand", "obj_info generated", "comment", ""])))
    elif choice < 0.8:
        spec.ascii_blank_lines = True
    else:
        v = spec.vertex
        order = rng.permutation(len(v.props))
        v.props = [v.props[i] for i in order]
        v.rows = v.rows[:, order]


def m_rows(spec: Spec, rng: np.random.Generator) -> None:
    v = spec.vertex
    keep = np.sort(rng.choice(len(v.rows), size=int(rng.integers(1, len(v.rows) + 1)), replace=False))
    v.rows = v.rows[keep]


STRUCTURED: tuple[Callable[[Spec, np.random.Generator], None], ...] = (
    m_rename, m_drop, m_duplicate, m_add, m_retype, m_values, m_values, m_quats, m_list, m_elements,
    m_format, m_cosmetic, m_rows,
)  # fmt: skip


def encode(spec: Spec, rng: np.random.Generator) -> tuple[list[bytes], bytes]:
    """The header lines (without newlines, ``end_header`` last) and the data of ``spec``."""
    lines = [b"ply", f"format {spec.fmt} 1.0".encode()]
    lines += [c.encode() for c in spec.comments]
    body = b""
    for element in [*spec.before, spec.vertex, *spec.after]:
        lines.append(f"element {element.name} {len(element.rows)}".encode())
        for p in element.props:
            text = (
                f"property {p.kind} {p.name}"
                if p.kind != "list"
                else (f"property list {p.count_type} {p.item_type} {p.name}")
            )
            lines.append(text.encode())
        body += _encode_rows(element, spec.fmt, rng, spec.ascii_blank_lines)
    lines.append(b"end_header")
    return lines, body


def _cast(value: float, kind: str) -> float | int:
    code = PLY_TYPES[kind]
    if code[0] == "f":
        with np.errstate(over="ignore"):
            return float(np.array(value).astype(code))
    if not np.isfinite(value):
        return 0
    info = np.iinfo(code)
    return int(min(max(round(value), info.min), info.max))


def _encode_rows(element: Element, fmt: str, rng: np.random.Generator, blank: bool) -> bytes:
    order = "<" if fmt == "binary_little_endian" else ">"
    out = []
    for row in element.rows:
        fields: list[tuple[str, float | int]] = []
        for p, value in zip(element.props, row, strict=True):
            if p.kind == "list":
                items = int(rng.integers(0, 4))
                fields.append((p.count_type, items))
                fields += [(p.item_type, _cast(value, p.item_type))] * items
            else:
                fields.append((p.kind, _cast(value, p.kind)))
        if fmt == "ascii":
            line = " ".join(repr(v) if isinstance(v, float) else str(v) for _, v in fields) + "\n"
            out.append(line.encode() + (b"\n  \n" if blank and rng.random() < 0.3 else b""))
        else:
            out += [np.array(v, dtype=order + PLY_TYPES[kind]).tobytes() for kind, v in fields]
    return b"".join(out)


# 3. Raw mutations


def h_count(lines: list[bytes], rng: np.random.Generator) -> None:
    at = [i for i, line in enumerate(lines) if line.startswith(b"element")]
    if at:
        i = _pick(rng, at)
        words = lines[i].split(b" ")
        if len(words) == 3:
            lines[i] = b" ".join([words[0], words[1], _pick(rng, ODD_COUNTS)])


def h_lines(lines: list[bytes], rng: np.random.Generator) -> None:
    i, j = (int(x) for x in rng.integers(0, len(lines), size=2))
    choice = rng.random()
    if choice < 0.3:
        del lines[i]
    elif choice < 0.6:
        lines.insert(i, lines[j])
    else:
        lines[i], lines[j] = lines[j], lines[i]


def h_garble(lines: list[bytes], rng: np.random.Generator) -> None:
    i = int(rng.integers(0, len(lines)))
    lines[i] = _pick(
        rng,
        [
            b"format binary_little_endian 2.0", b"format ascii 1", b"format", b"format ascii 1.0 extra",
            b"format binary_middle_endian 1.0", b"property float", b"property list uchar x",
            b"property half x", b"element", b"element vertex", b"element vertex 1 2", b"properti float x",
            b"end_header", b"end_headerx", b"ply", b"comment \xff\xfe", b"\x00", b"property float \xc3\xa9",
            b"obj_info", b"property float x\x0bproperty float y", b"element\tvertex\t1", b"   ",
            lines[i] + b"\r", lines[i] + b" \t", lines[i].upper(),
        ],
    )  # fmt: skip


def h_padding(lines: list[bytes], rng: np.random.Generator) -> None:
    lines.insert(1, b"comment " + b"x" * int(rng.integers(60_000, 70_000)))


HEADER_MUTATIONS = (h_count, h_count, h_lines, h_garble, h_garble, h_padding)


def b_flip(data: bytearray, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 9))):
        data[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))


def b_truncate(data: bytearray, rng: np.random.Generator) -> None:
    del data[int(rng.integers(0, len(data) + 1)) :]


def b_ranges(data: bytearray, rng: np.random.Generator) -> None:
    i = int(rng.integers(0, len(data) + 1))
    j = min(len(data), i + int(rng.integers(1, 64)))
    choice = rng.random()
    if choice < 0.4:
        del data[i:j]
    elif choice < 0.7:
        data[i:i] = data[i:j]
    else:
        data[i:i] = rng.integers(0, 256, size=j - i, dtype=np.uint8).tobytes()


def b_token(data: bytearray, rng: np.random.Generator) -> None:
    end = data.find(b"end_header")
    starts = [i for i in range(max(end, 0), len(data) - 1) if data[i] in b" \n" and data[i + 1] not in b" \n"]
    if starts:
        i = _pick(rng, starts) + 1
        j = i
        while j < len(data) and data[j] not in b" \n":
            j += 1
        data[i:j] = _pick(rng, ODD_TOKENS)


BYTE_MUTATIONS = (b_flip, b_truncate, b_ranges, b_token, b_token)


@dataclass(frozen=True)
class Case:
    data: bytes
    max_gaussians: int


def make_case(seed: int, index: int, seeds: list[Spec]) -> Case:
    """Case ``index`` of the campaign ``seed``: the same bytes for the same seed files."""
    rng = np.random.default_rng([seed, index])
    if seeds and rng.random() < 0.4:
        base = _pick(rng, seeds)
        n = int(rng.integers(1, 49))
        start = int(rng.integers(0, max(1, len(base.vertex.rows) - n)))
        rows = base.vertex.rows[start : start + n].copy()
        spec = Spec(base.fmt, Element("vertex", [replace(p) for p in base.vertex.props], rows))
        if rng.random() < 0.3:
            spec.fmt = str(rng.choice(FORMATS))
    else:
        spec = synthetic_seed(rng)
    for _ in range(int(rng.integers(0, 4))):
        _pick(rng, STRUCTURED)(spec, rng)
    lines, body = encode(spec, rng)
    if rng.random() < 0.5:
        for _ in range(int(rng.integers(1, 3))):
            _pick(rng, HEADER_MUTATIONS)(lines, rng)
    data = bytearray(spec.newline.encode().join(lines) + spec.newline.encode() + body)
    if rng.random() < 0.35:
        for _ in range(int(rng.integers(1, 3))):
            _pick(rng, BYTE_MUTATIONS)(data, rng)
    max_gaussians = 10_000_000 if rng.random() < 0.9 else int(rng.integers(1, 64))
    return Case(bytes(data), max_gaussians)


# The oracle


@dataclass(frozen=True)
class Finding:
    """What went wrong: ``signature`` groups findings (stage, exception type, where it was raised)."""

    signature: str
    detail: str


_CAMERAS = None


def _cameras():
    global _CAMERAS
    if _CAMERAS is None:
        from services.common.cameras import orbit_cameras

        _CAMERAS = orbit_cameras([30.0], 16, 16)
    return _CAMERAS


def _signature(stage: str, exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/services/" in f.filename]
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    return f"{stage}: {type(exc).__name__} at {where}"


def check(data: bytes, max_gaussians: int = 10_000_000, render: bool = True) -> Finding | None:
    """None when ``read_ply(data)`` raises ``AssetError`` or returns a usable asset; else a Finding."""
    from services.common.errors import TireError
    from services.common.framing import fit_framing
    from services.common.rasterizer import rasterize
    from services.common.rasterizer._common import check_arguments

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        start = time.perf_counter()
        stage = "read_ply"
        try:
            g = read_ply(data, max_gaussians=max_gaussians)
        except AssetError:
            g = None
        except Exception as exc:
            return Finding(_signature(stage, exc), "".join(traceback.format_exception(exc)))
        if g is not None:
            try:
                stage = "validate"
                g.validate()
                stage = "renderer check"
                check_arguments(g, _cameras(), (0.0, 0.0, 0.0), 0)
                stage = "activation"
                assert np.isfinite(g.scales).all() and np.isfinite(g.opacities).all()
                stage = "framing"
                cameras = _framed_cameras(g, fit_framing, TireError)
                if cameras is not None:
                    stage = "renderer check of the framed view"
                    check_arguments(g, cameras, (0.0, 0.0, 0.0), 0)
                if render:
                    stage = "render"
                    result = rasterize(g, _cameras() if cameras is None else cameras[0])
                    assert np.isfinite(result.alpha).all() and np.isfinite(result.depth).all()
            except Exception as exc:
                return Finding(_signature(stage, exc), "".join(traceback.format_exception(exc)))
        seconds = time.perf_counter() - start
    if seconds > SLOW_SECONDS:
        return Finding("slow", f"{seconds:.2f} s for {len(data)} bytes")
    return None


def _framed_cameras(g, fit_framing, domain_errors):
    """The orbit the coordinator would fit to ``g`` (16 x 16 views); None when framing refuses the asset.

    Framing's own numpy warnings (an asset far from the origin collapses in float32) are its
    business, not the reader's: they are ignored here, and what counts is the cameras it returns.
    """
    from services.common.cameras import orbit_cameras

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            f = fit_framing(g)
        except domain_errors:  # an empty asset and the like: a clear error for the caller
            return None
        return orbit_cameras(f.azimuths_deg, 16, 16, f.elevation_deg, f.radius, f.fovy_deg, f.center)


def shrink(data: bytes, keeps: Callable[[bytes], bool], budget_s: float = 5.0) -> bytes:
    """Delete byte ranges (halves down to single bytes) while ``keeps`` holds, for ``budget_s`` at most."""
    deadline = time.monotonic() + budget_s
    size = max(1, len(data) // 2)
    while size >= 1 and time.monotonic() < deadline:
        i, changed = 0, False
        while i < len(data) and time.monotonic() < deadline:
            candidate = data[:i] + data[i + size :]
            if keeps(candidate):
                data, changed = candidate, True
            else:
                i += size
        if not changed:
            size //= 2
    return data


@dataclass
class Report:
    cases: int = 0
    crashes: int = 0
    seconds: float = 0.0
    findings: dict[str, tuple[bytes, str, int]] = field(default_factory=dict)  # signature -> example


def fuzz(
    seconds: float,
    seed: int,
    cases: int | None = None,
    render: bool = True,
    out: Path | None = None,
    minimize: bool = True,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Run cases ``0, 1, ...`` of campaign ``seed`` for ``seconds`` (or ``cases`` cases, if given)."""
    seeds = load_seeds()
    report = Report()
    start = time.perf_counter()
    index = 0
    while (cases is None and time.perf_counter() - start < seconds) or (cases is not None and index < cases):
        case = make_case(seed, index, seeds)
        finding = check(case.data, case.max_gaussians, render=render)
        report.cases += 1
        if finding is not None:
            report.crashes += 1
            if finding.signature not in report.findings:
                data = case.data
                if minimize and finding.signature != "slow":
                    data = shrink(
                        data, lambda d, s=finding.signature, m=case.max_gaussians: _same(d, m, s, render)
                    )
                report.findings[finding.signature] = (data, finding.detail, index)
                if log:
                    log(f"case {index}: new finding {finding.signature} ({len(data)} bytes)")
                if out is not None:
                    _save(out, finding.signature, data, finding.detail, seed, index, case.max_gaussians)
        index += 1
    report.seconds = time.perf_counter() - start
    return report


def _same(data: bytes, max_gaussians: int, signature: str, render: bool) -> bool:
    again = check(data, max_gaussians, render=render)
    return again is not None and again.signature == signature


def _save(out: Path, signature: str, data: bytes, detail: str, seed: int, index: int, max_g: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stem = hashlib.sha256(signature.encode()).hexdigest()[:10]
    (out / f"{stem}.ply").write_bytes(data)
    (out / f"{stem}.txt").write_text(
        f"{signature}\nseed {seed}, case {index}, max_gaussians {max_g}\n\n{detail}", encoding="utf-8"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "out" / "fuzz_ply")
    parser.add_argument("--no-render", action="store_true", help="skip the 16 x 16 CPU render of results")
    args = parser.parse_args(argv)

    render = not args.no_render
    if render:  # compile (or load) the rasterizer's kernels before the clock starts
        from services.common.rasterizer import rasterize

        rasterize(random_gaussians(4), _cameras())
    print(f"seed files: {', '.join(str(p) for p in seed_files() if p.is_file())}", flush=True)
    report = fuzz(args.seconds, args.seed, render=render, out=args.out, log=lambda s: print(s, flush=True))
    print(
        f"seed {args.seed}: {report.cases} cases in {report.seconds:.0f} s "
        f"({report.cases / report.seconds:.0f} cases/s), {report.crashes} crashing cases, "
        f"{len(report.findings)} distinct findings"
    )
    for signature, (data, _, index) in sorted(report.findings.items()):
        print(f"  {signature}  (first: case {index}, {len(data)} bytes after shrinking)")
    if report.findings:
        print(f"saved under {args.out}")


if __name__ == "__main__":
    main()
