"""The 3DGS `.ply` reader/writer: layouts, encodings, real assets and every malformed-file error."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.common.errors import AssetError, NotFound
from services.common.gaussians import (
    Gaussians,
    frames_correspond,
    ply_layout,
    random_gaussians,
    read_ply,
    read_ply_sequence,
    write_ply,
)
from services.testing.synthetic import SHARED_ASSETS

REPO = Path(__file__).resolve().parents[3]

LGM = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"]
LGM += ["scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
NUMPY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "int16": "i2"}


def make_ply(
    columns: dict[str, np.ndarray],
    fmt: str = "binary_little_endian",
    types: dict[str, str] | None = None,
    count: int | None = None,
) -> bytes:
    """A `.ply` with one vertex element holding ``columns`` in dict order, built without write_ply."""
    types = types or {}
    n = len(next(iter(columns.values())))
    header = ["ply", f"format {fmt} 1.0", f"element vertex {n if count is None else count}"]
    header += [f"property {types.get(name, 'float')} {name}" for name in columns]
    head = ("\n".join([*header, "end_header"]) + "\n").encode()
    if fmt == "ascii":
        rows = zip(*(np.asarray(col).tolist() for col in columns.values()), strict=True)
        return head + "".join(" ".join(map(repr, row)) + "\n" for row in rows).encode()
    order = "<" if fmt == "binary_little_endian" else ">"
    table = np.empty(n, dtype=[(name, order + NUMPY_TYPES[types.get(name, "float")]) for name in columns])
    for name, col in columns.items():
        table[name] = col
    return head + table.tobytes()


def columns_of(g: Gaussians) -> dict[str, np.ndarray]:
    """The file columns of ``g`` by the format's definition (f_rest channel-major)."""
    k = g.sh.shape[1]
    cols = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    cols |= {f"f_dc_{c}": g.sh[:, 0, c] for c in range(3)}
    cols |= {f"f_rest_{c * (k - 1) + j}": g.sh[:, j + 1, c] for c in range(3) for j in range(k - 1)}
    cols |= {"opacity": g.opacity_logits}
    cols |= {f"scale_{i}": g.log_scales[:, i] for i in range(3)}
    cols |= {f"rot_{i}": g.quats[:, i] for i in range(4)}
    return cols


def assert_identical(a: Gaussians, b: Gaussians) -> None:
    for name in ("means", "log_scales", "quats", "opacity_logits", "sh"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == np.float32, name
        assert x.shape == y.shape and x.tobytes() == y.tobytes(), name
    assert a.extra.keys() == b.extra.keys()
    for name in a.extra:
        assert a.extra[name].tobytes() == b.extra[name].tobytes(), name


def assert_owned(g: Gaussians) -> None:
    for arr in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh, *g.extra.values()):
        assert (
            arr.dtype == np.float32 and arr.flags.c_contiguous and arr.flags.owndata and arr.flags.writeable
        )


def asset(name: str) -> Path:
    path = SHARED_ASSETS / name
    if not path.is_file():
        pytest.skip(f"shared asset {path} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    return path


# Round trips


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_inria_round_trip_is_bit_identical(degree: int) -> None:
    g = random_gaussians(64, sh_degree=degree, seed=degree)
    g = replace(g, extra={"transform": np.arange(64, dtype=np.float32) - 3.5})
    data = write_ply(g)
    back = read_ply(data)
    assert back.sh_degree == degree and len(back) == 64
    assert_identical(g, back)
    assert_owned(back)
    assert write_ply(back) == data


def test_inria_header_order() -> None:
    data = write_ply(random_gaussians(3, sh_degree=1))
    header = data[: data.index(b"end_header")].decode().splitlines()
    names = [line.split()[2] for line in header if line.startswith("property")]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[9:18] == [f"f_rest_{i}" for i in range(9)]
    assert names[18:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert header[1] == "format binary_little_endian 1.0" and header[2] == "element vertex 3"


def test_lgm_layout_is_lgms_and_drops_only_the_normals() -> None:
    plain = random_gaussians(40, seed=7)
    data = write_ply(plain, layout="lgm")
    header = data[: data.index(b"end_header")].decode().splitlines()
    assert [line.split()[2] for line in header if line.startswith("property")] == LGM
    assert ply_layout(data) == "lgm" and ply_layout(write_ply(plain)) == "inria"
    assert_identical(plain, read_ply(data))
    fuller = replace(random_gaussians(40, sh_degree=2, seed=7), extra={"t": np.ones(40, dtype=np.float32)})
    data = write_ply(fuller, layout="lgm")
    assert ply_layout(data) == "lgm"
    assert_identical(fuller, read_ply(data))
    assert write_ply(read_ply(data), layout="lgm") == data


def test_ply_layout_of_the_real_assets() -> None:
    for name, layout in (("monkey_lgm.ply", "lgm"), ("fruit_drops_full_sh.ply", "inria")):
        path = SHARED_ASSETS / name
        if not path.exists():
            pytest.skip(f"{path} is not beside the repository")
        assert ply_layout(path.read_bytes()) == layout


def test_read_from_path_matches_bytes(tmp_path: Path) -> None:
    data = write_ply(random_gaussians(10, sh_degree=1))
    (tmp_path / "a.ply").write_bytes(data)
    assert_identical(read_ply(tmp_path / "a.ply"), read_ply(data))
    assert_identical(read_ply(str(tmp_path / "a.ply")), read_ply(data))


# Layout details pinned with hand-built files


def test_f_rest_is_channel_major() -> None:
    n = 2
    cols = {name: np.zeros(n, dtype=np.float32) for name in LGM}
    cols["rot_0"][:] = 1.0
    # f_rest_i of vertex v holds 100 * v + i; SH degree 1 so K - 1 = 3 coefficients per channel.
    cols |= {f"f_rest_{i}": np.array([i, 100 + i], dtype=np.float32) for i in range(9)}
    g = read_ply(make_ply(cols))
    assert g.sh.shape == (2, 4, 3) and g.sh_degree == 1
    for v in range(n):
        for c in range(3):
            for k in range(1, 4):
                assert g.sh[v, k, c] == 100 * v + c * 3 + (k - 1)
    np.testing.assert_array_equal(g.sh[1, 1:], [[100, 103, 106], [101, 104, 107], [102, 105, 108]])


def test_property_order_does_not_matter() -> None:
    g = random_gaussians(20, sh_degree=2, seed=3)
    cols = columns_of(g)
    names = list(cols)
    shuffled = [names[i] for i in np.random.default_rng(0).permutation(len(names))]
    assert shuffled != names
    assert_identical(read_ply(make_ply({name: cols[name] for name in shuffled})), g)


@pytest.mark.parametrize("fmt", ["binary_big_endian", "ascii"])
def test_big_endian_and_ascii_read_the_same_values(fmt: str) -> None:
    g = random_gaussians(15, sh_degree=1, seed=11)
    cols = columns_of(g)
    little = read_ply(make_ply(cols))
    other = read_ply(make_ply(cols, fmt=fmt))
    assert_identical(little, other)
    assert_identical(g, other)
    assert_owned(other)


def test_property_types_and_aliases_are_converted_to_float32() -> None:
    g = random_gaussians(5, seed=2)
    cols = columns_of(g) | {"weight": np.array([0, 1, 2, 255, 7], dtype=np.uint8)}
    cols["x"] = np.array([0.1, 0.2, -0.3, 1e-3, 4.0])  # declared double
    types = {"x": "double", "y": "float64", "z": "float32", "weight": "uchar"}
    for fmt in ("binary_little_endian", "binary_big_endian", "ascii"):
        back = read_ply(make_ply(cols, fmt=fmt, types=types))
        np.testing.assert_array_equal(back.means[:, 0], cols["x"].astype(np.float32))
        np.testing.assert_array_equal(back.means[:, 1:], g.means[:, 1:])
        np.testing.assert_array_equal(back.extra["weight"], [0, 1, 2, 255, 7])
        assert back.extra["weight"].dtype == np.float32


def test_normals_are_dropped_and_other_properties_kept() -> None:
    g = random_gaussians(4, seed=5)
    normals = {name: np.full(4, 0.5, dtype=np.float32) for name in ("nx", "ny", "nz")}
    cols = normals | columns_of(g) | {"transform": np.array([1, 2, 3, 4], dtype=np.float32)}
    back = read_ply(make_ply(cols))
    assert list(back.extra) == ["transform"]
    np.testing.assert_array_equal(back.extra["transform"], [1, 2, 3, 4])


def test_other_elements_are_skipped() -> None:
    g = random_gaussians(6, seed=4)
    body = make_ply(columns_of(g))
    head, data = body.split(b"end_header\n")
    before = np.arange(2 * 3, dtype="<i2").tobytes()  # element `meta` 2 x (short a, short b, short c)
    faces = b"\x03" + np.array([0, 1, 2], dtype="<i4").tobytes()
    head = head.replace(
        b"element vertex",
        b"comment made by hand\nelement meta 2\nproperty short a\nproperty short b\n"
        b"property short c\nobj_info x\nelement vertex",
    )
    head += b"element face 1\nproperty list uchar int vertex_indices\n"
    assert_identical(read_ply(head + b"end_header\n" + before + data + faces), g)


def test_quaternions_are_normalised_only_when_off_unit() -> None:
    g = random_gaussians(3, seed=9)
    cols = columns_of(g)
    cols |= {f"rot_{i}": g.quats[:, i].copy() for i in range(4)}
    cols["rot_0"][1], cols["rot_1"][1], cols["rot_2"][1], cols["rot_3"][1] = 2.0, 0.0, 0.0, 0.0
    back = read_ply(make_ply(cols))
    np.testing.assert_array_equal(back.quats[1], [1, 0, 0, 0])
    # Rows already unit length (within 1e-6) are untouched, bit for bit.
    assert back.quats[[0, 2]].tobytes() == g.quats[[0, 2]].tobytes()


# The shared real assets


@pytest.mark.parametrize(("name", "count"), [("monkey_lgm.ply", 36_295), ("hamburger_lgm.ply", 52_709)])
def test_real_lgm_assets(name: str, count: int) -> None:
    g = read_ply(asset(name))
    assert len(g) == count and g.sh_degree == 0 and g.extra == {}
    for arr in (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh):
        assert np.isfinite(arr).all()
    assert np.abs(np.linalg.norm(g.quats.astype(np.float64), axis=1) - 1).max() <= 1e-6
    assert_owned(g)


def test_real_monkey_is_centred_with_unit_extent() -> None:
    g = read_ply(asset("monkey_lgm.ply"))
    assert np.abs(g.means.mean(axis=0)).max() < 0.2
    extent = g.means.max(axis=0) - g.means.min(axis=0)
    assert ((extent > 0.7) & (extent < 1.5)).all(), extent


def test_real_donut_quaternions_are_normalised() -> None:
    path = asset("donut_unnormalized_quats.ply")
    data = path.read_bytes()
    raw = np.frombuffer(data, dtype="<f4", offset=data.index(b"end_header\n") + 11).reshape(-1, 14)
    raw_norms = np.linalg.norm(raw[:, 10:14].astype(np.float64), axis=1)
    assert raw_norms.min() < 0.7 and raw_norms.max() > 2.5  # the file really is unnormalised
    g = read_ply(data)
    assert len(g) == 45_624
    assert np.abs(np.linalg.norm(g.quats.astype(np.float64), axis=1) - 1).max() <= 1e-6
    # Same rotation, only rescaled.
    np.testing.assert_allclose(g.quats, raw[:, 10:14] / raw_norms[:, None], atol=1e-6)


def test_real_fruit_drops_full_sh() -> None:
    g = read_ply(asset("fruit_drops_full_sh.ply"))
    assert len(g) == 4_721 and g.sh_degree == 3 and g.sh.shape == (4_721, 16, 3)
    assert list(g.extra) == ["transform"]
    assert np.isfinite(g.sh).all() and np.isfinite(g.means).all()
    assert_identical(read_ply(write_ply(g)), g)


def test_real_truncated_file() -> None:
    data = asset("monkey_lgm.ply").read_bytes()
    with pytest.raises(
        AssetError, match=r"declares 36295 vertices but the data holds only 36294 \(truncated"
    ):
        read_ply(data[:-1])


# Malformed files

VALID = make_ply(columns_of(random_gaussians(100, seed=1)))
HEADER, DATA = VALID.split(b"end_header\n")


def edit_header(old: bytes, new: bytes) -> bytes:
    assert old in HEADER
    return HEADER.replace(old, new) + b"end_header\n" + DATA


def with_value(name: str, row: int, value: float) -> bytes:
    cols = columns_of(random_gaussians(10, seed=1))
    cols[name] = cols[name].copy()
    cols[name][row] = value
    return make_ply(cols)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"PK\x03\x04 not a ply", r"not a `\.ply` file"),
        (b"", r"not a `\.ply` file"),
        (
            edit_header(b"binary_little_endian 1.0", b"binary_middle_endian 1.0"),
            r"unsupported `\.ply` format",
        ),
        (
            edit_header(b"binary_little_endian 1.0", b"binary_little_endian 2.0"),
            r"unsupported `\.ply` format",
        ),
        (edit_header(b"format binary_little_endian 1.0\n", b""), r"no `format` line"),
        (HEADER + b"\n" + DATA, r"not terminated: there is no `end_header`"),
        (
            b"ply\n" + b"comment padding\n" * 5000 + b"end_header\n",
            r"no `end_header` line in its first 65536",
        ),
        (edit_header(b"element vertex 100", b"element vertex many"), r"not `element <name> <count>`"),
        (edit_header(b"property float x", b"property half x"), r"property `x` has unknown type `half`"),
        (edit_header(b"property float y", b"property float x"), r"declares property `x` twice"),
        (edit_header(b"ply\n", b"ply\nproperty float w\n"), r"property before any element"),
        (edit_header(b"format", b"frobnicate\nformat"), r"header line 2 is not understood"),
        (edit_header(b"element vertex", b"element points"), r"no `vertex` element \(elements: points\)"),
        (
            edit_header(b"property float rot_0\nproperty float rot_1\n", b""),
            r"missing required properties: rot_0, rot_1$",
        ),
        (edit_header(b"property float x\n", b"property list uchar float x\n"), r"list properties.*: x$"),
        (
            edit_header(b"element vertex 100", b"element vertex 1000000000000"),
            r"declares 1000000000000 vertices",
        ),
        (edit_header(b"element vertex 100", b"element vertex 0"), r"declares 0 vertices; expected between 1"),
        (
            edit_header(b"element vertex 100", b"element vertex " + b"9" * 4400),
            r"element `vertex` with a count of 4400 digits; counts must be below 10\^18$",
        ),
        (
            edit_header(b"element vertex 100", b"element face " + b"7" * 19 + b"\nelement vertex 100"),
            r"element `face` with a count of 19 digits",
        ),
        (VALID[:-30], r"declares 100 vertices but the data holds only 99 \(truncated\?\)"),
        (HEADER + b"end_header\n", r"declares 100 vertices but the data holds only 0 \(truncated\?\)"),
        (
            with_value("opacity", 3, np.nan),
            r"property `opacity` has 1 non-finite values \(first at vertex 3\)",
        ),
        (with_value("x", 7, -np.inf), r"property `x` has 1 non-finite values \(first at vertex 7\)"),
    ],
)
def test_malformed_files_raise_asset_error(data: bytes, match: str) -> None:
    with pytest.raises(AssetError, match=match):
        read_ply(data)


def test_counts_may_have_leading_zeros() -> None:
    assert len(read_ply(edit_header(b"element vertex 100", b"element vertex " + b"0" * 5000 + b"100"))) == 100


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        (
            "scale_0",
            100.0,
            r"property `scale_0` is 100 at vertex 3 \(1 out-of-range values in all\); a log scale must be "
            r"at most 10, a Gaussian e\^10 world units across$",
        ),
        ("scale_2", 10.001, r"property `scale_2` is 10.001 at vertex 3 .* at most 10"),
        (
            "z",
            -3e38,
            r"property `z` is -3e\+38 at vertex 3 .* a position must lie within \+-1e\+15 world units$",
        ),
        ("x", 1.0001e15, r"property `x` is 1.0001e\+15 at vertex 3"),
    ],
)
def test_values_that_later_stages_refuse_are_refused(name: str, value: float, match: str) -> None:
    """Finite values the renderers or framing would fail on are refused, naming property, vertex, value."""
    with pytest.raises(AssetError, match=match):
        read_ply(with_value(name, 3, value))


def test_values_at_the_bounds_are_read() -> None:
    from services.common.cameras import orbit_cameras
    from services.common.rasterizer._common import check_arguments

    cols = columns_of(random_gaussians(4, seed=3))
    cols |= {"scale_0": np.array([10.0, -1e30, 0.0, 0.0]), "opacity": np.array([-80.0, 80.0, 0.0, 1.0])}
    cols |= {"x": np.array([1e15, -1e15, 0.0, 0.0])}
    g = read_ply(make_ply(cols, types={"scale_0": "double", "opacity": "double", "x": "double"}))
    g.validate()
    check_arguments(g, orbit_cameras([0.0], 8, 8), (0.0, 0.0, 0.0), 0)
    assert np.isfinite(g.scales).all() and np.isfinite(g.opacities).all()


def test_saturated_opacity_logits_are_read_as_80() -> None:
    """Beyond +-80 the opacity is 0 or 1 in float32 whatever the logit: such logits, infinities included
    (what spz tools write for a quantized 0 or 255), are read as +-80; NaN is still refused."""
    cols = columns_of(random_gaussians(5, seed=3))
    cols |= {"opacity": np.array([-np.inf, -710.0, 80.5, np.inf, 3e38])}
    g = read_ply(make_ply(cols, types={"opacity": "double"}))
    assert g.opacity_logits.tolist() == [-80.0, -80.0, 80.0, 80.0, 80.0]
    np.testing.assert_allclose(g.opacities, [0.0, 0.0, 1.0, 1.0, 1.0], rtol=0, atol=1e-30)
    with pytest.raises(AssetError, match=r"property `opacity` has 1 non-finite values \(first at vertex 3\)"):
        read_ply(with_value("opacity", 3, np.nan))


def test_f_rest_names_must_be_exact() -> None:
    cols = columns_of(random_gaussians(3, sh_degree=1))
    with pytest.raises(AssetError, match=r"property `f_rest_08` is not an SH coefficient name: .* f_rest_44"):
        read_ply(make_ply(cols | {"f_rest_08": np.zeros(3, np.float32)}))
    cols = columns_of(random_gaussians(3, sh_degree=2))
    cols = {("f_rest_020" if name == "f_rest_20" else name): value for name, value in cols.items()}
    with pytest.raises(AssetError, match=r"property `f_rest_020` is not an SH coefficient name"):
        read_ply(make_ply(cols))
    cols = columns_of(random_gaussians(3)) | {"f_rest_" + "9" * 5000: np.zeros(3, np.float32)}
    with pytest.raises(AssetError, match=r"property `f_rest_9{73}\.\.\. \(5007 characters\)` is not an SH"):
        read_ply(make_ply(cols))


def test_vertex_property_names_must_be_plain() -> None:
    cols = columns_of(random_gaussians(3)) | {"x.y": np.zeros(3, np.float32)}
    with pytest.raises(AssetError, match=r"vertex property 'x\.y' is not a plain name"):
        read_ply(make_ply(cols))
    # Other elements may use any name: they are skipped.
    assert (
        len(read_ply(edit_header(b"element vertex", b"element m 0\nproperty int a.b\nelement vertex"))) == 100
    )


def test_long_header_words_are_cut_in_messages() -> None:
    with pytest.raises(AssetError) as info:
        read_ply(edit_header(b"property float x", b"property " + b"h" * 50_000 + b" x"))
    assert len(str(info.value)) < 300 and "(50000 characters)" in str(info.value)


def test_bytes_like_sources() -> None:
    assert_identical(read_ply(bytearray(VALID)), read_ply(VALID))
    assert_identical(read_ply(memoryview(VALID)), read_ply(VALID))


def test_path_that_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(AssetError, match=r"is not a regular file"):
        read_ply(tmp_path)
    if Path("/dev/zero").exists():  # would never end
        with pytest.raises(AssetError, match=r"is not a regular file"):
            read_ply("/dev/zero")


def test_ascii_is_parsed_in_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.common.gaussians as gaussians

    g = random_gaussians(40, sh_degree=2, seed=8)
    text = make_ply(columns_of(g), fmt="ascii").replace(b"\n", b"\r\n").replace(b"\r\n1", b"\r\n\r\n \t1")
    expected = read_ply(text)
    assert_identical(expected, g)
    for size in (1, 7, 100):
        monkeypatch.setattr(gaussians, "ASCII_CHUNK_BYTES", size)
        assert_identical(read_ply(text), expected)
    width = len(columns_of(g))
    with pytest.raises(AssetError, match=rf"has {40 * width - 1} values; expected 40 vertices x {width} "):
        read_ply(text.rstrip().rsplit(b" ", 1)[0])


def test_ascii_value_count_is_checked_before_allocating() -> None:
    """500 properties x 50 vertices declared over 50 one-value lines: counted, not allocated."""
    cols = columns_of(random_gaussians(50)) | {f"p{i}": np.zeros(50, np.float32) for i in range(486)}
    head = make_ply(cols, fmt="ascii").split(b"end_header\n")[0]
    with pytest.raises(AssetError, match=r"has 50 values; expected 50 vertices x 500 properties"):
        read_ply(head + b"end_header\n" + b"0\n" * 50)


def test_ascii_memory_is_about_the_result() -> None:
    """Parsing ASCII takes the table, the result and one chunk, not ten times the file (was +27 MiB here)."""
    import tracemalloc

    g = random_gaussians(20_000, seed=6)
    text = make_ply(columns_of(g), fmt="ascii")
    tracemalloc.start()
    try:
        back = read_ply(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    result = sum(a.nbytes for a in (back.means, back.log_scales, back.quats, back.opacity_logits, back.sh))
    assert peak < 4 * result + 8 * 2**20, (peak, result, len(text))
    assert_identical(back, g)


def test_f_rest_count_must_match_an_sh_degree() -> None:
    cols = columns_of(random_gaussians(3)) | {f"f_rest_{i}": np.zeros(3, np.float32) for i in range(10)}
    with pytest.raises(AssetError, match=r"has 10 f_rest_\* properties; expected 0, 9, 24 or 45"):
        read_ply(make_ply(cols))
    cols = columns_of(random_gaussians(3)) | {f"f_rest_{i}": np.zeros(3, np.float32) for i in range(1, 10)}
    with pytest.raises(AssetError, match=r"missing required properties: f_rest_0$"):
        read_ply(make_ply(cols))


def test_zero_length_quaternion_names_the_vertex() -> None:
    cols = columns_of(random_gaussians(5))
    cols |= {f"rot_{i}": cols[f"rot_{i}"].copy() for i in range(4)}
    for i in range(4):
        cols[f"rot_{i}"][2] = 0.0
    with pytest.raises(
        AssetError, match=r"1 zero-length quaternion\(s\) \(rot_0..rot_3\), first at vertex 2$"
    ):
        read_ply(make_ply(cols))


def test_double_too_large_for_float32_is_non_finite() -> None:
    cols = columns_of(random_gaussians(4))
    cols["scale_1"] = np.array([0.0, 0.0, 1e300, 0.0])
    with pytest.raises(AssetError, match=r"property `scale_1` has 1 non-finite values \(first at vertex 2\)"):
        read_ply(make_ply(cols, types={"scale_1": "double"}))


def test_ascii_errors() -> None:
    text = make_ply(columns_of(random_gaussians(4)), fmt="ascii")
    with pytest.raises(AssetError, match=r"declares 4 vertices but the data holds only 3 \(truncated\?\)"):
        read_ply(text[: text.rstrip(b"\n").rindex(b"\n")])
    with pytest.raises(AssetError, match=r"ascii vertex data has 55 values; expected 4 vertices x 14"):
        read_ply(text.rstrip(b"\n").rsplit(b" ", 1)[0])
    head, body = text.split(b"end_header\n")
    with pytest.raises(AssetError, match=r"ascii vertex data has a value that is not a number"):
        read_ply(head + b"end_header\noops" + body[body.index(b" ") :])


def test_max_gaussians_limit() -> None:
    with pytest.raises(AssetError, match=r"declares 100 vertices; expected between 1 and 50"):
        read_ply(VALID, max_gaussians=50)
    assert len(read_ply(VALID, max_gaussians=100)) == 100


def test_missing_path_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"no `\.ply` file at"):
        read_ply(tmp_path / "nope.ply")


# 4D sequences


def test_read_ply_sequence() -> None:
    frames = [write_ply(random_gaussians(8, seed=t)) for t in range(3)]
    out = read_ply_sequence(frames)
    assert [len(g) for g in out] == [8, 8, 8]
    assert_identical(out[2], read_ply(frames[2]))


def test_read_ply_sequence_names_the_failing_time_step(tmp_path: Path) -> None:
    frames = [write_ply(random_gaussians(8, seed=t)) for t in range(4)]
    frames[3] = frames[3][:-5]
    with pytest.raises(AssetError, match=r"^time step 3: `\.ply` header declares 8 vertices .*truncated"):
        read_ply_sequence(frames)
    with pytest.raises(NotFound, match=r"^time step 1: no `\.ply` file"):
        read_ply_sequence([frames[0], tmp_path / "missing.ply"])
    with pytest.raises(AssetError, match=r"at least one `\.ply` time step; the list is empty"):
        read_ply_sequence([])


# Writing and validation


def test_write_rejects_unknown_layout() -> None:
    with pytest.raises(ValueError, match=r"unknown \.ply layout 'splat'"):
        write_ply(random_gaussians(2), layout="splat")


def _broken(**changes: object) -> Gaussians:
    return replace(random_gaussians(6, sh_degree=1), **changes)


@pytest.mark.parametrize(
    ("g", "match"),
    [
        (_broken(means=np.zeros((0, 3), np.float32)), r"means must be \[N, 3\] float32 with N > 0"),
        (_broken(means=np.zeros((6, 3))), r"means must be \[6, 3\] float32, got float64 \[6, 3\]"),
        (_broken(log_scales=np.zeros((6, 2), np.float32)), r"log_scales must be \[6, 3\] float32"),
        (
            _broken(opacity_logits=np.full(6, np.nan, np.float32)),
            r"opacity_logits has non-finite values in 6 rows",
        ),
        (_broken(sh=np.zeros((6, 5, 3), np.float32)), r"sh must be \[N, K, 3\] with K in \{1, 4, 9, 16\}"),
        (_broken(quats=np.full((6, 4), 2.0, np.float32)), r"6 quaternions that are not unit length"),
        (_broken(extra={"rot_0": np.zeros(6, np.float32)}), r"key 'rot_0' that cannot be written"),
        (_broken(extra={"a b": np.zeros(6, np.float32)}), r"key 'a b' that cannot be written"),
        (
            _broken(extra={"t": np.zeros(5, np.float32)}),
            r"extra\['t'\] must be \[6\] float32, got float32 \[5\]",
        ),
    ],
)
def test_validate_rejects_bad_gaussians(g: Gaussians, match: str) -> None:
    with pytest.raises(AssetError, match=match):
        g.validate()
    with pytest.raises(AssetError, match=match):
        write_ply(g)


def test_validate_accepts_synthetic_gaussians() -> None:
    for degree in range(4):
        random_gaussians(5, sh_degree=degree).validate()


def test_recolour_sets_the_base_colour_and_keeps_the_geometry() -> None:
    from services.common.gaussians import SH_C0, recolour

    g = random_gaussians(50, sh_degree=2, seed=4)
    colours = np.random.default_rng(0).uniform(0, 1, (50, 3))
    which = np.arange(50) % 2 == 0
    out = recolour(g, colours, which=which)
    np.testing.assert_allclose(0.5 + SH_C0 * out.sh[which, 0], colours[which], atol=1e-6)
    assert (out.sh[which, 1:] == 0).all()
    np.testing.assert_array_equal(out.sh[~which], g.sh[~which])
    for name in ("means", "log_scales", "quats", "opacity_logits"):
        assert getattr(out, name) is getattr(g, name)
    kept = recolour(g, colours, keep_higher_sh=True)
    np.testing.assert_array_equal(kept.sh[:, 1:], g.sh[:, 1:])
    with pytest.raises(ValueError, match="colours"):
        recolour(g, colours[:3])


def test_frames_correspond_when_each_gaussian_moves_a_little():
    frame = random_gaussians(2000, seed=1)
    step = replace(frame, means=frame.means + np.float32([0.05, 0.0, -0.02]))
    wobble = replace(
        step, means=step.means + np.random.default_rng(2).normal(0, 0.01, step.means.shape).astype(np.float32)
    )
    assert frames_correspond([frame, step, wobble]) and frames_correspond([frame])
    # Generated one by one: the same count, but Gaussian i is anywhere in the next frame.
    shuffled = replace(step, means=step.means[np.random.default_rng(3).permutation(len(step))])
    assert not frames_correspond([frame, step, shuffled])
    assert not frames_correspond([frame, random_gaussians(1999, seed=1)])
