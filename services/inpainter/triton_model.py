"""The sd-lora inpainting as a Triton Python-backend model: the same ``SdLoraBackend.inpaint``, served.

    write_inpaint_model(repository, "inpaint", version=1, model="s3://models/sd2-inpaint")
    # repository/inpaint/config.pbtxt, repository/inpaint/1/{model.py,backend.json}; then Triton's load_model

Triton runs ``TritonPythonModel`` in its Python backend's stub process: ``initialize`` builds the
backend from its version's ``backend.json`` (the weights' URI, resolution, batch size) on the device
Triton gives the instance, ``execute`` inpaints each request with the subject adapter it carries
(adapters stay loaded by sha256, as in the service), ``finalize`` lets it go. No maths lives here.

Tensors (``config.pbtxt``), for V views of H x W pixels:

    IMAGES               UINT8 [V, H, W, 3]
    MASKS                BOOL  [V, H, W]     True where pixels may change
    ALPHA                FP32  [V, H, W]     optional: coverage; holes (alpha 0) are filled first
    SUBJECT              BYTES [1]           the subject adapter's safetensors bytes
    STRENGTH             FP32  [1]           in (0, 1]
    SEED                 UINT64 [1]
    NUM_INFERENCE_STEPS  INT32 [1]
    GUIDANCE_SCALE       FP32  [1]
    -> INPAINTED         UINT8 [V, H, W, 3]

A subject the backend cannot use answers INVALID_ARGUMENT with the backend's sentence.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

_INPUTS = (
    ("IMAGES", "TYPE_UINT8", "[ -1, -1, -1, 3 ]", False),
    ("MASKS", "TYPE_BOOL", "[ -1, -1, -1 ]", False),
    ("ALPHA", "TYPE_FP32", "[ -1, -1, -1 ]", True),
    ("SUBJECT", "TYPE_STRING", "[ 1 ]", False),
    ("STRENGTH", "TYPE_FP32", "[ 1 ]", False),
    ("SEED", "TYPE_UINT64", "[ 1 ]", False),
    ("NUM_INFERENCE_STEPS", "TYPE_INT32", "[ 1 ]", False),
    ("GUIDANCE_SCALE", "TYPE_FP32", "[ 1 ]", False),
)
_MODEL_PY = "from services.inpainter.triton_model import TritonPythonModel  # noqa: F401\n"
_SETTINGS = "backend.json"


def write_inpaint_model(
    repository: str | os.PathLike,
    name: str,
    version: int,
    model: str,
    *,
    resolution: int = 0,
    batch_size: int = 4,
    model_cache_dir: str = "",
) -> Path:
    """Write version ``version`` of the inpainting model ``name`` into a Triton model repository.

    The model's tensors are in ``<name>/config.pbtxt`` (shared by its versions); what a version serves
    is in ``<name>/<version>/``: ``model.py`` and ``backend.json`` (the weights' URI and the backend's
    settings), so a new version can bring new weights while the old one keeps serving.

    Args:
        repository: the repository folder.
        name: the Triton model's name.
        version: a positive integer.
        model: the inpainting pipeline's URI (a local folder, an ``s3://`` prefix, a hub id), as
            ``TIRE_INPAINTER_MODEL``.
        resolution, batch_size, model_cache_dir: as ``SdLoraBackend``'s.

    Returns:
        The version folder.
    """
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    folder = Path(repository) / name
    (folder / str(version)).mkdir(parents=True, exist_ok=True)
    inputs = ",\n".join(
        f'  {{ name: "{n}" data_type: {t} dims: {d}{" optional: true" if optional else ""} }}'
        for n, t, d, optional in _INPUTS
    )
    (folder / "config.pbtxt").write_text(
        f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
        f"input [\n{inputs}\n]\n"
        'output [\n  { name: "INPAINTED" data_type: TYPE_UINT8 dims: [ -1, -1, -1, 3 ] }\n]\n'
        "instance_group [ { count: 1 } ]\n"
    )
    settings = {
        "model": model,
        "resolution": resolution,
        "batch_size": batch_size,
        "model_cache_dir": model_cache_dir,
    }
    (folder / str(version) / _SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
    (folder / str(version) / "model.py").write_text(_MODEL_PY)
    return folder / str(version)


class TritonPythonModel:
    """Triton's Python-backend lifecycle around ``SdLoraBackend``."""

    def initialize(self, args: dict[str, str]) -> None:
        from services.inpainter.sd_lora import SdLoraBackend

        version = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((version / _SETTINGS).read_text())
        kind = args.get("model_instance_kind", "CPU")
        device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
        self.backend = SdLoraBackend(
            settings["model"],
            model_cache_dir=settings["model_cache_dir"],
            device=device,
            resolution=settings["resolution"],
            batch_size=settings["batch_size"],
        )

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from services.inpainter.contract import InvalidSubject

        responses = []
        for request in requests:

            def tensor(name: str, request=request) -> np.ndarray | None:
                found = pb_utils.get_input_tensor_by_name(request, name)
                return None if found is None else found.as_numpy()

            try:
                inpainted = self.backend.inpaint(
                    tensor("IMAGES"),
                    tensor("MASKS"),
                    tensor("ALPHA"),
                    bytes(tensor("SUBJECT")[0]),
                    float(tensor("STRENGTH")[0]),
                    int(tensor("SEED")[0]),
                    num_inference_steps=int(tensor("NUM_INFERENCE_STEPS")[0]),
                    guidance_scale=float(tensor("GUIDANCE_SCALE")[0]),
                )
            except (InvalidSubject, ValueError) as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INPAINTED", inpainted)]))
        return responses

    def finalize(self) -> None:
        self.backend = None
