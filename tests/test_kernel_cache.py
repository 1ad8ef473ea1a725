"""numba's compiled kernels carried from an image's build to a new pod (services/common/kernel_cache.py):
the build runs a stage's warm-up into a seed folder, and the started service copies the seed into its
own cache and loads every kernel from it instead of compiling."""

import os
import subprocess
import sys

from services.common.kernel_cache import SEED_ENV, seed_kernel_cache

# What the images set (deploy/docker/*.Dockerfile): one CPU level, no features beyond it.
IMAGE_CPU = {"NUMBA_CPU_NAME": "x86-64-v3", "NUMBA_CPU_FEATURES": ""}


def test_the_seed_fills_in_what_the_cache_lacks_and_keeps_the_rest(tmp_path):
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    (seed / "rasterizer_abc").mkdir(parents=True)
    (seed / "rasterizer_abc" / "k.nbi").write_bytes(b"index")
    (seed / "rasterizer_abc" / "k.0.nbc").write_bytes(b"code")
    (cache / "rasterizer_abc").mkdir(parents=True)
    (cache / "rasterizer_abc" / "k.nbi").write_bytes(b"this pod's own index")
    copied = seed_kernel_cache({SEED_ENV: str(seed), "NUMBA_CACHE_DIR": str(cache)})
    assert copied == 1
    assert (cache / "rasterizer_abc" / "k.0.nbc").read_bytes() == b"code"
    assert (cache / "rasterizer_abc" / "k.nbi").read_bytes() == b"this pod's own index"
    assert seed_kernel_cache({SEED_ENV: str(seed), "NUMBA_CACHE_DIR": str(cache)}) == 0


def test_without_a_seed_or_a_cache_folder_nothing_is_copied(tmp_path):
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "k.nbi").write_bytes(b"index")
    assert seed_kernel_cache({"NUMBA_CACHE_DIR": str(tmp_path / "cache")}) == 0
    assert seed_kernel_cache({SEED_ENV: str(tmp_path / "seed")}) == 0
    assert seed_kernel_cache({SEED_ENV: str(tmp_path / "missing"), "NUMBA_CACHE_DIR": str(tmp_path)}) == 0
    assert not (tmp_path / "cache").exists()


def test_a_service_started_from_a_built_seed_loads_its_kernels_instead_of_compiling(tmp_path, launch_service):
    seed, cache = tmp_path / "seed", tmp_path / "cache"
    # The image's build step: the stage's own warm-up, compiling into the seed.
    env = {**os.environ, **IMAGE_CPU, "NUMBA_CACHE_DIR": str(seed), "TIRE_RENDERER_BACKEND": "cpu"}
    built = subprocess.run(
        [sys.executable, "-m", "services.renderer.server", "--warm-up-only"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    assert list(seed.rglob("*.nbi")) and list(seed.rglob("*.nbc"))

    # A new pod: an empty cache folder, the seed beside it. numba says what it loads and saves.
    service = launch_service(
        "services.renderer.server",
        "TIRE_RENDERER_",
        {**IMAGE_CPU, "NUMBA_CACHE_DIR": str(cache), SEED_ENV: str(seed), "NUMBA_DEBUG_CACHE": "1"},
    )
    log = service.log()
    assert "[cache] data loaded" in log, log[-3000:]
    assert "[cache] data saved" not in log, log[-3000:]  # nothing was compiled
    assert sorted(p.relative_to(cache) for p in cache.rglob("*.nb*")) == sorted(
        p.relative_to(seed) for p in seed.rglob("*.nb*")
    )


def test_a_service_refuses_arguments_it_does_not_know():
    done = subprocess.run(
        [sys.executable, "-m", "services.renderer.server", "--serve-faster"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TIRE_RENDERER_METRICS_PORT": "-1"},
    )
    assert done.returncode != 0
    assert "--warm-up-only" in done.stderr and "--serve-faster" in done.stderr
