"""The mv-diffusion refiner as a Triton Python-backend model: the same ``MvDiffusionBackend``, served.

    publish(store, "s3://models/triton", MODELS, version_settings("s3://models/mvdream"), triton_url)

Triton runs ``RefineModel`` in its Python backend's stub process: ``initialize`` builds the backend from
its version's settings (the weights' URI and ``MvDiffusionBackend``'s other arguments;
``services.common.model_repository``) on the device Triton gives the instance, ``execute`` refines each
request, ``finalize`` lets it go. No maths lives here.

What a request carries is what ``MvDiffusionBackend.refine`` reads, and nothing more: the views' pixels,
their world-to-camera matrices (it conditions on each camera's direction; the views' size comes from the
pixels), the update mask and the call's scalars. It reads neither the views' alpha, depth, intrinsics
nor background, nor the asset's Gaussians, so they stay with the refiner service. Its tensors, for V
views of H x W pixels (no batch dimension: one ``execute`` request is one call):

    RGB           UINT8  [V, H, W, 3]
    UPDATE_MASK   FP32   [V, H, W]     in [0, 1]; 0 keeps a pixel
    VIEWMATS      FP32   [V, 4, 4]     OpenCV world-to-camera (``services.common.cameras``)
    SOURCE_INDEX  INT32  [1]           the view held fixed
    STRENGTH      FP32   [1]           in [0, 1]: the last int(steps * strength) steps of the schedule
    SEED          UINT64 [1]
    -> REFINED    UINT8  [V, H, W, 3]

An input the backend refuses (a mask of the wrong shape, a source index out of range, a camera at the
origin, views it cannot run at their own size) answers INVALID_ARGUMENT with the backend's sentence.
"""

from __future__ import annotations

import numpy as np

from services.common.model_repository import Tensor, TritonModel

REFINE = TritonModel(
    "refine",
    "services.refiner.triton_model:RefineModel",
    inputs=(
        Tensor("RGB", "TYPE_UINT8", (-1, -1, -1, 3)),
        Tensor("UPDATE_MASK", "TYPE_FP32", (-1, -1, -1)),
        Tensor("VIEWMATS", "TYPE_FP32", (-1, 4, 4)),
        Tensor("SOURCE_INDEX", "TYPE_INT32", (1,)),
        Tensor("STRENGTH", "TYPE_FP32", (1,)),
        Tensor("SEED", "TYPE_UINT64", (1,)),
    ),
    outputs=(Tensor("REFINED", "TYPE_UINT8", (-1, -1, -1, 3)),),
)
MODELS = (REFINE,)
"""The refiner's models on Triton: one, ``refine``; a version of the stage is a version of it."""


def version_settings(
    weights: str,
    *,
    model_cache_dir: str = "",
    trust_remote_code: bool = False,
    dtype: str = "auto",
    resolution: int = 256,
    num_inference_steps: int = 50,
    guidance_scale: float = 1.0,
    prompt: str = "",
    max_joint_views: int = 32,
) -> dict:
    """What a version of ``MODELS`` serves: ``MvDiffusionBackend``'s arguments, but its device (Triton's
    instance decides) and its store (the server's ``TIRE_S3_*``, for ``s3://`` weights).

    Args:
        weights: the multi-view model's URI (a local folder, an ``s3://`` prefix, a hub id), as
            ``TIRE_REFINER_MODEL``.
        model_cache_dir, trust_remote_code, dtype, resolution, num_inference_steps, guidance_scale,
            prompt, max_joint_views: as ``MvDiffusionBackend``'s (the same defaults).
    """
    return {
        "model": weights,
        "model_cache_dir": model_cache_dir,
        "trust_remote_code": trust_remote_code,
        "dtype": dtype,
        "resolution": resolution,
        "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale,
        "prompt": prompt,
        "max_joint_views": max_joint_views,
    }


def request_views(rgb: np.ndarray, viewmats: np.ndarray):
    """The ``Views`` ``MvDiffusionBackend.refine`` reads: pixels and world-to-camera matrices.

    Args:
        rgb: ``[V, H, W, 3]`` uint8.
        viewmats: ``[V, 4, 4]`` float32 OpenCV world-to-camera.

    Returns:
        ``Views`` without alpha or depth; its cameras' intrinsics are NaN (mv-diffusion does not read
        them: one that did would turn NaN, which the tests comparing with the in-process backend catch).

    Raises:
        ValueError: the shapes do not fit together.
    """
    from services.common.cameras import Cameras
    from services.common.views import Views

    if rgb.ndim != 4 or rgb.shape[3] != 3 or viewmats.shape != (len(rgb), 4, 4):
        raise ValueError(
            f"RGB must be [V, H, W, 3] and VIEWMATS [V, 4, 4], got {list(rgb.shape)} and "
            f"{list(viewmats.shape)}"
        )
    v, height, width = rgb.shape[:3]
    unknown_intrinsics = np.full((v, 3, 3), np.nan, np.float32)
    return Views(rgb, None, None, Cameras(viewmats, unknown_intrinsics, width, height))


class RefineModel:
    """``refine``: Triton's Python-backend lifecycle around ``MvDiffusionBackend.refine``."""

    def initialize(self, args: dict[str, str]) -> None:
        from services.common.model_repository import instance_device, version_settings, weights_store
        from services.refiner.mv_diffusion import MvDiffusionBackend

        settings = version_settings(args)
        self.backend = MvDiffusionBackend(
            settings["model"],
            store=weights_store(settings["model"]),
            device=instance_device(args),
            **{name: value for name, value in settings.items() if name != "model"},
        )

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from services.common.errors import TireError

        responses = []
        for request in requests:

            def tensor(name: str, request=request) -> np.ndarray:
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            try:
                refined = self.backend.refine(
                    request_views(tensor("RGB"), tensor("VIEWMATS")),
                    tensor("UPDATE_MASK"),
                    None,  # mv-diffusion reads the views only
                    int(tensor("SOURCE_INDEX")[0]),
                    float(tensor("STRENGTH")[0]),
                    int(tensor("SEED")[0]),
                )
            except (TireError, ValueError) as exc:  # an input the backend refuses
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("REFINED", refined)]))
        return responses

    def finalize(self) -> None:
        self.backend = None
