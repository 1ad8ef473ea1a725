"""Our splat files against independent implementations: PlayCanvas's splat-transform (pinned in the
Makefile, installed by `make install`), both ways, and for `.ksplat`, which we only read,
GaussianSplats3D's own writer.

- Ours -> theirs: every file we write, converted by splat-transform to `.ply`, holds what our own
  reader decodes from it (the same quantized values; float32 rounding apart), axes and SH signs
  included.
- Theirs -> ours: every `.spz` (versions 3 and 4), `.glb` and `.ply` it writes from the real assets
  reads here within the format's quantization of the original. (It does not read `.glb`, so our
  `.glb` is checked against its `.glb` of the same asset instead.)
- `.ksplat`: the files GaussianSplats3D's writer makes at each compression level read here within
  what that level keeps, and to the values splat-transform reads from them.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from services.common.cameras import orbit_cameras
from services.common.formats import read_splats, write_splats
from services.common.formats.spz import write_spz
from services.common.framing import fit_framing
from services.common.gaussians import Gaussians, random_gaussians, read_ply, write_ply
from services.common.rasterizer import rasterize
from services.testing.format_bounds import (
    KSPLAT_POSITION_STEP,
    assert_within_ksplat,
    assert_within_spz,
    covariance_error,
    nearest_indices,
    rotation_error,
)
from services.testing.synthetic import SHARED_ASSETS

ROOT = Path(__file__).parents[1]
SPLAT_TRANSFORM = ROOT / ".tools" / "node_modules" / ".bin" / "splat-transform"
MONKEY = ROOT / "samples" / "monkey_lgm.ply"
ASSETS = ("hamburger_lgm.ply", "donut_unnormalized_quats.ply", "fruit_drops_full_sh.ply")
GAUSSIAN_SPLATS_3D = (
    ROOT / ".tools/node_modules/@mkkellogg/gaussian-splats-3d/build/gaussian-splats-3d.module.js"
)
WRITE_KSPLAT = ROOT / "services" / "testing" / "write_ksplat.mjs"


def convert(source: Path, target: Path, *options: str) -> Path:
    """``splat-transform`` from ``source`` to ``target`` (format from the name)."""
    if not SPLAT_TRANSFORM.exists():
        pytest.fail(f"{SPLAT_TRANSFORM} is missing: `make install` installs it")
    done = subprocess.run(
        [str(SPLAT_TRANSFORM), "--quiet", "--overwrite", *options, str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"splat-transform failed: {done.stderr[-2000:]}"
    return target


def assert_same_values(theirs: Gaussians, ours: Gaussians, max_angle: float = 1e-4) -> None:
    """Both decoded the same file: equal up to float32 rounding of each decoder's arithmetic, and
    rotations within ``max_angle`` radians."""
    assert len(theirs) == len(ours) and theirs.sh.shape == ours.sh.shape
    np.testing.assert_allclose(theirs.means, ours.means, rtol=0, atol=1e-6)
    np.testing.assert_allclose(theirs.log_scales, ours.log_scales, rtol=0, atol=1e-5)
    np.testing.assert_allclose(theirs.opacities, ours.opacities, rtol=0, atol=1e-5)
    np.testing.assert_allclose(theirs.sh, ours.sh, rtol=0, atol=1e-5)
    assert rotation_error(theirs.quats, ours.quats) < max_angle


def sample(which: str) -> Gaussians:
    if which == "random-sh3":
        return random_gaussians(3000, sh_degree=3, seed=17)
    return read_ply(MONKEY)


def render_psnr(ours: Gaussians, original: Gaussians) -> float:
    """PSNR, dB, of renders of ``ours`` against renders of ``original`` at four views it fills (128²,
    elevation -15, white background)."""
    framing = fit_framing(original)
    cameras = orbit_cameras([0, 90, 180, 270], 128, 128, -15.0, radius=framing.radius, center=framing.center)
    before = rasterize(original, cameras, background=(1.0, 1.0, 1.0)).rgb.astype(np.float64)
    after = rasterize(ours, cameras, background=(1.0, 1.0, 1.0)).rgb.astype(np.float64)
    return float(10 * np.log10(1.0 / np.mean((after - before) ** 2)))


@pytest.mark.parametrize("which", ["monkey", "random-sh3"])
@pytest.mark.parametrize("format_name", ["ply", "spz", "splat", "sog"])
def test_splat_transform_reads_what_we_write(tmp_path: Path, which: str, format_name: str) -> None:
    gaussians = sample(which)
    ours = tmp_path / f"ours.{format_name}"
    ours.write_bytes(write_splats(gaussians, format_name))
    theirs = read_ply(convert(ours, tmp_path / "theirs.ply"))
    # A `.splat` rotation byte b means (b - 128) / 128 to the viewer that made the format, and to this
    # project, but (b - 127.5) / 127.5 to splat-transform: up to half a step apart, 0.016 rad.
    assert_same_values(theirs, read_splats(ours), max_angle=0.02 if format_name == "splat" else 1e-4)


def test_splat_transform_reads_our_spz_version_2(tmp_path: Path) -> None:
    ours = tmp_path / "ours.spz"
    ours.write_bytes(write_spz(random_gaussians(3000, sh_degree=2, seed=5), version=2))
    assert_same_values(read_ply(convert(ours, tmp_path / "theirs.ply")), read_splats(ours))


@pytest.mark.parametrize("name", ["monkey_lgm.ply", *ASSETS])
def test_we_read_what_splat_transform_writes(tmp_path: Path, name: str) -> None:
    source = MONKEY if name == "monkey_lgm.ply" else SHARED_ASSETS / name
    if not source.exists():
        pytest.skip(f"shared asset {source} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    original = read_ply(source)
    version_4 = read_splats(convert(source, tmp_path / "theirs.spz"))
    assert_within_spz(version_4, original)
    version_3 = read_splats(convert(source, tmp_path / "theirs3.spz", "--spz-version", "3"))
    assert_within_spz(version_3, original)
    # Its .glb holds every value as float32, in glTF's frame; it applies the axis change to rotations
    # as M R where we apply M R M: the same covariance (see covariance_error), another quaternion.
    glb = read_splats(convert(source, tmp_path / "theirs.glb"))
    np.testing.assert_allclose(glb.means, original.means, rtol=0, atol=1e-6)  # its axis change is a
    np.testing.assert_allclose(glb.sh, original.sh, rtol=0, atol=1e-6)  # rotation matrix: 1e-17 off
    np.testing.assert_allclose(glb.log_scales, original.log_scales, rtol=0, atol=1e-6)
    np.testing.assert_allclose(glb.opacities, original.opacities, rtol=0, atol=1e-6)
    assert covariance_error(glb, original) < 1e-5
    again = read_ply(convert(source, tmp_path / "theirs.ply"))
    np.testing.assert_array_equal(again.means, original.means)
    np.testing.assert_array_equal(again.sh, original.sh)
    np.testing.assert_allclose(again.opacity_logits, original.opacity_logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["monkey_lgm.ply", *ASSETS])
def test_we_read_its_compressed_ply_as_it_does(tmp_path: Path, name: str) -> None:
    """Its compressed `.ply` (Gaussians reordered and quantized in chunks of 256) decodes here to exactly
    what it decodes it to, and renders like the original where the asset fills the view."""
    source = MONKEY if name == "monkey_lgm.ply" else SHARED_ASSETS / name
    if not source.exists():
        pytest.skip(f"shared asset {source} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    compressed = convert(source, tmp_path / "theirs.compressed.ply")
    ours = read_splats(compressed)
    assert_same_values(read_ply(convert(compressed, tmp_path / "decoded.ply")), ours, max_angle=1e-6)
    if name == "monkey_lgm.ply":
        assert render_psnr(ours, read_ply(source)) > 35.0


@pytest.mark.parametrize("name", ["monkey_lgm.ply", "fruit_drops_full_sh.ply"])
def test_we_read_its_sog_as_it_does(tmp_path: Path, name: str) -> None:
    """Its SOG (WebP images, codebooks, and for SH degree 3 a palette fitted by k-means on the CPU)
    decodes here to exactly what it decodes it to."""
    source = MONKEY if name == "monkey_lgm.ply" else SHARED_ASSETS / name
    if not source.exists():
        pytest.skip(f"shared asset {source} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    sog = convert(source, tmp_path / "theirs.sog", "--gpu", "cpu", "--iterations", "2")
    ours = read_splats(sog)
    assert ours.sh.shape[1] == read_ply(source).sh.shape[1]
    assert_same_values(read_ply(convert(sog, tmp_path / "decoded.ply")), ours, max_angle=1e-6)


def reference_ksplat(source: Path, target: Path, level: int, sh_degree: int) -> Path:
    """``source`` (a `.ply`) written as a `.ksplat` by GaussianSplats3D's own writer."""
    if not GAUSSIAN_SPLATS_3D.exists():
        pytest.fail(f"{GAUSSIAN_SPLATS_3D} is missing: `make install` installs it")
    arguments = [str(GAUSSIAN_SPLATS_3D), str(source), str(target), str(level), str(sh_degree)]
    done = subprocess.run(
        ["node", str(WRITE_KSPLAT), *arguments], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"GaussianSplats3D's writer failed: {done.stderr[-2000:]}"
    return target


@pytest.mark.parametrize(
    ("name", "level"),
    [("monkey_lgm.ply", level) for level in (0, 1, 2)]
    + [("hamburger_lgm.ply", 1), ("donut_unnormalized_quats.ply", 1), ("fruit_drops_full_sh.ply", 2)]
    + [("random-sh2", level) for level in (0, 1, 2)],
)
def test_we_read_the_ksplat_its_own_viewer_writes(tmp_path: Path, name: str, level: int) -> None:
    """GaussianSplats3D's `.ksplat` (Gaussians reordered into buckets) reads here within what its
    compression level keeps (paired by position), to the values splat-transform reads from the same
    file, and the monkey renders as before."""
    if name == "random-sh2":
        source = tmp_path / "random.ply"
        source.write_bytes(write_ply(random_gaussians(3000, sh_degree=2, seed=23)))
    else:
        source = MONKEY if name == "monkey_lgm.ply" else SHARED_ASSETS / name
    if not source.exists():
        pytest.skip(f"shared asset {source} is missing (set TIRE_SHARED_DATA to the shared data folder)")
    original = read_ply(source)
    ksplat = reference_ksplat(source, tmp_path / "theirs.ksplat", level, sh_degree=2)
    data = ksplat.read_bytes()
    ours = read_splats(data)  # known by its header, without the name
    assert ours.sh.shape[1] == min(original.sh.shape[1], 9)

    def features(g: Gaussians) -> np.ndarray:  # each over its quantization step
        return np.concatenate([g.means / KSPLAT_POSITION_STEP, g.log_scales / 2.0**-10], axis=1)

    paired = original.take(nearest_indices(features(original), features(ours)))
    assert_within_ksplat(ours, paired, level, sh_range=struct.unpack_from("<ff", data, 36))
    assert_same_values(read_ply(convert(ksplat, tmp_path / "decoded.ply")), ours, max_angle=1e-5)
    if name == "monkey_lgm.ply":
        assert render_psnr(ours, original) > 40.0
