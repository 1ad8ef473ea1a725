"""Backend selection, and the gsplat backend against the CPU rasterizer (GPU only)."""

from pathlib import Path

import numpy as np
import pytest

from services.common.cameras import orbit_cameras
from services.common.errors import ConfigError
from services.common.gaussians import read_ply
from services.renderer.backends import CpuBackend, cuda_available, make_backend

MONKEY = Path(__file__).parents[3] / "samples" / "monkey_lgm.ply"


def test_auto_picks_cpu_without_cuda():
    if cuda_available():
        pytest.skip("this machine has CUDA")
    assert make_backend("auto").name == "cpu"


def test_unknown_backend_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"'vulkan'.*cpu, gsplat, auto"):
        make_backend("vulkan")


def test_cpu_thread_count_does_not_change_the_image():
    gaussians, cams = read_ply(MONKEY), orbit_cameras([45.0], 64, 64)
    one = CpuBackend(threads=1).render(gaussians, cams, np.zeros(3, np.float32))
    every = CpuBackend().render(gaussians, cams, np.zeros(3, np.float32))
    np.testing.assert_array_equal(one.rgb, every.rgb)
    assert CpuBackend(threads=1).device == "cpu (1 threads)"


@pytest.mark.gpu
@pytest.mark.skipif(not cuda_available(), reason="needs CUDA")
def test_gsplat_matches_the_cpu_rasterizer(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    gaussians = read_ply(MONKEY)
    cams = orbit_cameras([0.0, 90.0, 180.0, 270.0], 256, 256, elevation_deg=-15.0)
    bg = np.array([1.0, 1.0, 1.0], np.float32)
    gpu = make_backend("gsplat").render(gaussians, cams, bg)
    cpu = CpuBackend().render(gaussians, cams, bg)
    assert np.abs(gpu.rgb - cpu.rgb).max() < 2e-3
    assert np.abs(gpu.alpha - cpu.alpha).max() < 2e-3
    covered = cpu.alpha > 0.5
    np.testing.assert_allclose(gpu.depth[covered], cpu.depth[covered], rtol=1e-3)


def test_concurrent_cpu_renders_agree():
    from concurrent.futures import ThreadPoolExecutor

    backend, gaussians = CpuBackend(), read_ply(MONKEY)
    cams = [orbit_cameras([az], 48, 48) for az in (0.0, 90.0, 180.0, 270.0)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda c: backend.render(gaussians, c, np.zeros(3, np.float32)), cams))
    for c, result in zip(cams, results, strict=True):
        np.testing.assert_array_equal(result.rgb, backend.render(gaussians, c, np.zeros(3, np.float32)).rgb)
