"""CPU rasterizer for 3D Gaussian splats, matching gsplat 1.5.3's forward pass.

    from services.common.rasterizer import rasterize
    result = rasterize(gaussians, cameras, background=(1.0, 1.0, 1.0), contributors=4)
    result.rgb  # [V, H, W, 3] float32

``services.common.rasterizer.reference`` holds the dense (slow, torch) specification it is tested
against.
"""

from services.common.rasterizer._common import RenderResult
from services.common.rasterizer._cpu import rasterize
from services.common.rasterizer._numba import EPS2D, FAR_PLANE, NEAR_PLANE

__all__ = ["EPS2D", "FAR_PLANE", "NEAR_PLANE", "RenderResult", "rasterize"]
