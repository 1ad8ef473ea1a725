"""numba's compiled kernels, carried from one process to the next so that no service compiles at start.

Every numba kernel of the project is ``@njit(cache=True)``: compiled on its first call, then loaded from
numba's cache (``NUMBA_CACHE_DIR``, or ``__pycache__`` beside the code), which takes a few milliseconds
where compiling all of a job's kernels takes about 30 s on 2 cores. Two places fill that cache before the
first real call:

- ``make install`` runs one tiny job, which compiles every kernel a job calls into the checkout's cache.
- Each stage image runs the stage's warm-up while it is built (``tire-<stage> --warm-up-only``, with its
  CPU backend) into ``/opt/numba-cache``. The root filesystem is read-only in the cluster and numba
  uses only a cache folder it can write to, so a starting service copies that seed into its writable
  ``NUMBA_CACHE_DIR`` first (``seed_kernel_cache``).

numba keys cached code by the CPU it was compiled for (name and features). The images fix both
(``NUMBA_CPU_NAME=x86-64-v3``: AVX2 and FMA, any x86 server since about 2015; ``NUMBA_CPU_FEATURES``
empty: nothing beyond it), so code compiled on the build machine is loaded on every node. A node without
AVX2 cannot run that code: ``NUMBA_CPU_NAME=generic`` there (like any override of either variable)
makes its services compile at start, as before.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

SEED_ENV = "TIRE_NUMBA_CACHE_SEED"
"""The variable naming a folder of compiled kernels to start from (the images: /opt/numba-cache)."""


def seed_kernel_cache(environ: Mapping[str, str] = os.environ) -> int:
    """Copy the files under ``$TIRE_NUMBA_CACHE_SEED`` that ``$NUMBA_CACHE_DIR`` lacks into it, keeping
    their folders. Does nothing unless both are set and the seed is a folder; files already there (this
    pod's own compilations) are kept. Call before the first kernel runs.

    Returns:
        The number of files copied.
    """
    seed, cache = environ.get(SEED_ENV, ""), environ.get("NUMBA_CACHE_DIR", "")
    if not seed or not cache or not Path(seed).is_dir() or Path(seed).resolve() == Path(cache).resolve():
        return 0
    copied = 0
    for source in sorted(Path(seed).rglob("*")):
        target = Path(cache) / source.relative_to(seed)
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            copied += 1
    log.info("copied %d compiled kernel files from %s to %s", copied, seed, cache, extra={"files": copied})
    return copied
