"""Renderer backends: one narrow interface, two implementations.

- ``cpu``: the project's tile-based numba rasterizer (``services.common.rasterizer``), any machine.
- ``gsplat``: gsplat's CUDA rasterizer, same math; chosen when CUDA is present.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np

from services.common.cameras import Cameras
from services.common.errors import ConfigError
from services.common.gaussians import Gaussians
from services.common.rasterizer import RenderResult, rasterize
from services.common.serial import one_call_at_a_time

BACKENDS = ("cpu", "gsplat")


class RenderBackend(Protocol):
    """Renders views of Gaussians."""

    name: str

    @property
    def device(self) -> str:
        """Where it computes, for Describe, for example "cpu (2 threads)"."""
        ...

    def render(self, gaussians: Gaussians, cameras: Cameras, background: np.ndarray) -> RenderResult:
        """Render every camera.

        Args:
            gaussians: N Gaussians.
            cameras: V cameras of one image size (H, W).
            background: ``[3]`` float32 RGB in [0, 1], composited behind the asset.

        Returns:
            rgb ``[V, H, W, 3]`` float32 in [0, 1], alpha ``[V, H, W]`` float32, expected depth
            ``[V, H, W]`` float32 (camera z, world units, 0 where alpha is 0).
        """
        ...


class CpuBackend:
    """The numba tile rasterizer. ``threads=0`` uses every core numba sees."""

    name = "cpu"

    def __init__(self, threads: int = 0):
        self.threads = threads or None

    @property
    def device(self) -> str:
        import numba

        return f"cpu ({self.threads or numba.config.NUMBA_NUM_THREADS} threads)"

    @one_call_at_a_time
    def render(self, gaussians: Gaussians, cameras: Cameras, background: np.ndarray) -> RenderResult:
        return rasterize(gaussians, cameras, background=background, num_threads=self.threads)


class GsplatBackend:
    """gsplat's CUDA rasterizer ("classic" mode, eps2d 0.3, expected depth), on one GPU."""

    name = "gsplat"

    def __init__(self, device: str = "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("the gsplat backend needs CUDA, and torch sees no GPU; use backend 'cpu'")
        import gsplat  # noqa: F401  (fail at start, not on the first call)

        self._torch = torch
        self._device = torch.device(device)

    @property
    def device(self) -> str:
        index = self._device.index or 0
        return f"{self._device.type}:{index} ({self._torch.cuda.get_device_name(index)})"

    def render(self, gaussians: Gaussians, cameras: Cameras, background: np.ndarray) -> RenderResult:
        import gsplat

        torch, dev = self._torch, self._device

        def tensor(array: np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(dev)

        with torch.no_grad():
            colors, alphas, _ = gsplat.rasterization(
                means=tensor(gaussians.means),
                quats=tensor(gaussians.quats),
                scales=tensor(gaussians.scales),
                opacities=tensor(gaussians.opacities),
                colors=tensor(gaussians.sh),
                viewmats=tensor(cameras.viewmats),
                Ks=tensor(cameras.Ks),
                width=cameras.width,
                height=cameras.height,
                near_plane=0.01,
                far_plane=1e10,
                eps2d=0.3,
                sh_degree=gaussians.sh_degree,
                packed=False,
                backgrounds=tensor(np.tile(background, (len(cameras), 1))),
                render_mode="RGB+ED",
                rasterize_mode="classic",
            )
            alpha = alphas[..., 0]
            depth = torch.where(alpha > 0, colors[..., 3], torch.zeros_like(alpha))
        return RenderResult(
            rgb=colors[..., :3].clamp(0.0, 1.0).cpu().numpy(),
            alpha=alpha.cpu().numpy(),
            depth=depth.cpu().numpy(),
        )


def cuda_available() -> bool:
    """True when torch is installed and sees a GPU (importing torch only when asked)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def make_backend(name: str, threads: int = 0) -> RenderBackend:
    """The backend called ``name``: "cpu", "gsplat", or "auto" (gsplat when CUDA is present, else cpu)."""
    if name == "auto":
        name = "gsplat" if cuda_available() else "cpu"
    if name == "cpu":
        return CpuBackend(threads=threads)
    if name == "gsplat":
        os.environ.setdefault(
            "TORCH_EXTENSIONS_DIR",
            os.path.join(os.path.expanduser("~"), ".cache", "tire", "torch_extensions"),
        )
        return GsplatBackend()
    raise ConfigError(f"unknown renderer backend {name!r}; choose one of {', '.join((*BACKENDS, 'auto'))}")
