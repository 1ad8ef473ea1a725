"""The ``triton`` refiner backend: the mv-diffusion model served by a Triton Inference Server.

The refiner service keeps its API, its request checks and its store I/O; Triton owns the model and its
device. ``refine`` sends the ``refine`` model (``services.refiner.triton_model``) what mv-diffusion
reads: the views' pixels and world-to-camera matrices, the update mask, the source index, the strength
and the seed. The asset's Gaussians, the views' alpha, depth and intrinsics stay here (mv-diffusion does
not read them). Its name is ``mv-diffusion``: it answers as the in-process backend of the same weights
and settings does, byte for byte.

Which version answers: ``version`` pinned, or "" for the newest Triton has ready. ``pinned(version)`` is
the same backend held to one version: a job runs every call on the version it started with
(``model_version`` in the requests), while a newly published one serves the next jobs.
"""

from __future__ import annotations

import numpy as np

from services.common.errors import InvalidArgument
from services.common.gaussians import Gaussians
from services.common.triton import ServedByTriton, TritonModels
from services.common.views import Views
from services.refiner.triton_model import MODELS, REFINE


class TritonRefineBackend(ServedByTriton):
    """``RefineBackend`` over Triton's gRPC API.

    Args:
        url: Triton's gRPC address, ``host:port``.
        version: the model version to call ("" for the newest Triton has ready).

    Raises:
        ImportError: ``tritonclient`` is not installed.
    """

    name = "mv-diffusion"
    default_strength = 0.3
    """As the in-process mv-diffusion's: the same model."""

    def __init__(self, url: str, version: str = ""):
        self.models = TritonModels(url, [model.name for model in MODELS], version)

    @property
    def model(self) -> str:
        """What the refiner's ``Describe`` reports as the model (as ``MvDiffusionBackend.model``)."""
        return self.base_model

    def refine(
        self,
        views: Views,
        update_mask: np.ndarray,
        gaussians: Gaussians | None,
        source_index: int,
        strength: float,
        seed: int,
    ) -> np.ndarray:
        """See ``RefineBackend.refine``: one request to the ``refine`` model.

        Args:
            views: V views; only rgb ``[V, H, W, 3]`` uint8 and the cameras' ``viewmats [V, 4, 4]`` are sent.
            update_mask: ``[V, H, W]`` float32 in [0, 1].
            gaussians: not used (mv-diffusion reads the views only).
            source_index: the view held fixed.
            strength: in [0, 1]; sent as float32, as the wire's ``RefineRequest.strength`` is.
            seed: a uint64.

        Returns:
            ``[V, H, W, 3]`` uint8 refined views.

        Raises:
            InvalidArgument: no rgb, or an input the model refused (its sentence quoted).
            Unavailable: Triton is unreachable. FailedPrecondition: it has no ready version.
        """
        if views.rgb is None:
            raise InvalidArgument("views.rgb", None, "must be set: mv-diffusion refines the views' pixels")
        inputs = {
            "RGB": views.rgb,
            "UPDATE_MASK": np.asarray(update_mask, np.float32),
            "VIEWMATS": np.asarray(views.cameras.viewmats, np.float32),
            "SOURCE_INDEX": np.array([source_index], np.int32),
            "STRENGTH": np.array([strength], np.float32),
            "SEED": np.array([seed], np.uint64),
        }
        return self.models.infer(REFINE.name, inputs, _refused_views)["REFINED"]


def _refused_views(message: str) -> InvalidArgument:
    return InvalidArgument("views", "the refine request", f"was refused by the model: {message}")
