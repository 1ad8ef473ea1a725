"""Synthetic Gaussian scenes for tests and benchmarks (deterministic for a seed)."""

from __future__ import annotations

import numpy as np

from services.common.gaussians import SH_C0, Gaussians


def random_gaussians(
    n: int,
    sh_degree: int = 0,
    seed: int = 0,
    extent: float = 0.5,
    scale_range: tuple[float, float] = (0.005, 0.05),
    opacity_range: tuple[float, float] = (0.05, 0.99),
) -> Gaussians:
    """N random, anisotropic Gaussians inside a cube of half-size ``extent`` around the origin.

    Scales are log-uniform in ``scale_range`` (world units), rotations uniform, opacities uniform in
    ``opacity_range``, DC colours uniform in [0, 1] after activation, higher SH bands small.
    """
    rng = np.random.default_rng(seed)
    k = (sh_degree + 1) ** 2
    quats = rng.normal(size=(n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    opac = rng.uniform(*opacity_range, size=n)
    sh = np.zeros((n, k, 3))
    sh[:, 0] = (rng.uniform(0.0, 1.0, size=(n, 3)) - 0.5) / SH_C0
    if k > 1:
        sh[:, 1:] = rng.normal(scale=0.2, size=(n, k - 1, 3))
    return Gaussians(
        means=rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32),
        log_scales=rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]), size=(n, 3)).astype(
            np.float32
        ),
        quats=quats.astype(np.float32),
        opacity_logits=np.log(opac / (1.0 - opac)).astype(np.float32),
        sh=sh.astype(np.float32),
    )
