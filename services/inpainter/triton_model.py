"""The sd-lora inpainter as two Triton Python-backend models: the same ``SdLoraBackend``, served.

    write_sd_lora_models(repository, version=1, model="s3://models/sd2-inpaint")
    # repository/{inpaint,fit_subject}/config.pbtxt and .../1/{model.py,backend.json}; then load_model

Triton runs ``TritonPythonModel`` in its Python backend's stub process: ``initialize`` builds the
backend from its version's ``backend.json`` (the weights' URI, resolution, batch size) on the device
Triton gives the instance, ``execute`` inpaints each request with the subject adapter it carries
(adapters stay loaded by sha256, as in the service), ``finalize`` lets it go. No maths lives here.

``inpaint``'s tensors (``config.pbtxt``), for V views of H x W pixels:

    IMAGES               UINT8 [V, H, W, 3]
    MASKS                BOOL  [V, H, W]     True where pixels may change
    ALPHA                FP32  [V, H, W]     optional: coverage; holes (alpha 0) are filled first
    SUBJECT              BYTES [1]           the subject adapter's safetensors bytes
    STRENGTH             FP32  [1]           in (0, 1]
    SEED                 UINT64 [1]
    NUM_INFERENCE_STEPS  INT32 [1]
    GUIDANCE_SCALE       FP32  [1]
    -> INPAINTED         UINT8 [V, H, W, 3]

``fit_subject``'s, for R references (decoupled: one response per training step, then the adapter):

    IMAGES               UINT8 [R, H, W, 3]
    MASKS                FP32  [R, H, W]     foreground in [0, 1]
    CONFIG               BYTES [1]           ``FitConfig`` as JSON
    -> STEP, TOTAL_STEPS INT32 [1], LOSS FP32 [1], ARTIFACT BYTES [1] (empty until the last response)

A subject or a setting the backend cannot use answers INVALID_ARGUMENT with the backend's sentence.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

INPAINT, FIT = "inpaint", "fit_subject"
"""The two Triton models of the sd-lora inpainter (``write_sd_lora_models``)."""
_TENSORS = {
    INPAINT: (
        [
            ("IMAGES", "TYPE_UINT8", "[ -1, -1, -1, 3 ]", False),
            ("MASKS", "TYPE_BOOL", "[ -1, -1, -1 ]", False),
            ("ALPHA", "TYPE_FP32", "[ -1, -1, -1 ]", True),
            ("SUBJECT", "TYPE_STRING", "[ 1 ]", False),
            ("STRENGTH", "TYPE_FP32", "[ 1 ]", False),
            ("SEED", "TYPE_UINT64", "[ 1 ]", False),
            ("NUM_INFERENCE_STEPS", "TYPE_INT32", "[ 1 ]", False),
            ("GUIDANCE_SCALE", "TYPE_FP32", "[ 1 ]", False),
        ],
        [("INPAINTED", "TYPE_UINT8", "[ -1, -1, -1, 3 ]")],
    ),
    FIT: (
        [
            ("IMAGES", "TYPE_UINT8", "[ -1, -1, -1, 3 ]", False),
            ("MASKS", "TYPE_FP32", "[ -1, -1, -1 ]", False),
            ("CONFIG", "TYPE_STRING", "[ 1 ]", False),
        ],
        [
            ("STEP", "TYPE_INT32", "[ 1 ]"),
            ("TOTAL_STEPS", "TYPE_INT32", "[ 1 ]"),
            ("LOSS", "TYPE_FP32", "[ 1 ]"),
            ("ARTIFACT", "TYPE_STRING", "[ 1 ]"),
        ],
    ),
}
_CLASSES = {INPAINT: "TritonPythonModel", FIT: "TritonFitModel"}
_SETTINGS = "backend.json"


def write_sd_lora_models(
    repository: str | os.PathLike,
    version: int,
    model: str,
    *,
    resolution: int = 0,
    batch_size: int = 4,
    model_cache_dir: str = "",
) -> list[Path]:
    """Write version ``version`` of the two sd-lora models, ``inpaint`` and ``fit_subject`` (decoupled:
    it streams progress), into a Triton model repository.

    A model's tensors are in ``<name>/config.pbtxt`` (shared by its versions); what a version serves is
    in ``<name>/<version>/``: ``model.py`` and ``backend.json`` (the weights' URI and the backend's
    settings), so a new version brings new weights while the old one keeps serving: Triton keeps the
    newest two loaded, and a job pinned to the older one finishes on it.

    Args:
        repository: the repository folder.
        version: a positive integer.
        model: the inpainting pipeline's URI (a local folder, an ``s3://`` prefix, a hub id), as
            ``TIRE_INPAINTER_MODEL``.
        resolution, batch_size, model_cache_dir: as ``SdLoraBackend``'s.

    Returns:
        The two version folders.
    """
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    settings = {
        "model": model,
        "resolution": resolution,
        "batch_size": batch_size,
        "model_cache_dir": model_cache_dir,
    }
    written = []
    for name, (inputs, outputs) in _TENSORS.items():
        folder = Path(repository) / name
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        declared = ",\n".join(
            f'  {{ name: "{n}" data_type: {t} dims: {d}{" optional: true" if optional else ""} }}'
            for n, t, d, optional in inputs
        )
        produced = ",\n".join(f'  {{ name: "{n}" data_type: {t} dims: {d} }}' for n, t, d in outputs)
        policy = "model_transaction_policy { decoupled: true }\n" if name == FIT else ""
        (folder / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n{policy}'
            f"input [\n{declared}\n]\noutput [\n{produced}\n]\ninstance_group [ {{ count: 1 }} ]\n"
            # The newest two versions stay loaded: jobs that started on the older one finish on it.
            "version_policy: { latest: { num_versions: 2 } }\n"
        )
        (folder / str(version) / _SETTINGS).write_text(json.dumps(settings, indent=2) + "\n")
        entry = f"from services.inpainter.triton_model import {_CLASSES[name]} as TritonPythonModel"
        (folder / str(version) / "model.py").write_text(f"{entry}  # noqa: F401\n")
        written.append(folder / str(version))
    return written


def published_versions(store, repository: str) -> list[int]:
    """The versions of the sd-lora models under ``repository`` (an ``s3://`` prefix of ``store``), sorted."""
    versions = set()
    for key in store.list_prefix(repository):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] in _TENSORS and parts[1].isdigit() and parts[2] == _SETTINGS:
            versions.add(int(parts[1]))
    return sorted(versions)


def publish_sd_lora(store, repository: str, model: str, triton_url: str, **settings) -> int:
    """Publish the next version of the sd-lora models: write it under ``repository`` (an ``s3://``
    prefix of ``store``, the repository Triton reads) and ask the Triton at ``triton_url`` to load it.

    Args:
        store: the object store holding the repository.
        repository: ``s3://bucket/prefix``.
        model: the weights' URI, as ``write_sd_lora_models``'s.
        triton_url: Triton's gRPC address.
        settings: ``write_sd_lora_models``'s other keywords.

    Returns:
        The version published.

    Raises:
        TritonLoadError: Triton did not load it (the reason is in the message); the version is removed
            from the repository, the one served before keeps serving, and the new one never takes traffic.
    """
    from services.common.triton import TritonLoadError, load_model

    version = max(published_versions(store, repository), default=0) + 1
    with tempfile.TemporaryDirectory() as folder:
        write_sd_lora_models(folder, version, model, **settings)
        written = store.upload_folder(folder, repository)
    try:
        for name in _TENSORS:
            load_model(triton_url, name)
    except TritonLoadError:
        # Out of the repository, so that the newest versions Triton keeps loaded are all good ones.
        store.remove([uri for uri in written if not uri.endswith("/config.pbtxt")])
        for name in _TENSORS:
            load_model(triton_url, name)
        raise
    return version


def rollback_sd_lora(store, repository: str, version: int, triton_url: str) -> int:
    """Serve again what version ``version`` served: publish its weights and settings as the next
    version (the repository only grows, so what served when stays on record).

    Returns:
        The version published.

    Raises:
        ObjectNotFound: no such version under ``repository``.
        TritonLoadError: as ``publish_sd_lora``.
    """
    settings = json.loads(store.get_bytes(f"{repository.rstrip('/')}/{INPAINT}/{version}/{_SETTINGS}"))
    return publish_sd_lora(store, repository, triton_url=triton_url, **settings)


def _backend(args: dict[str, str]):
    """The ``SdLoraBackend`` of a Triton model instance: its version's settings, Triton's device."""
    from services.inpainter.sd_lora import SdLoraBackend

    settings = json.loads((Path(args["model_repository"]) / args["model_version"] / _SETTINGS).read_text())
    kind = args.get("model_instance_kind", "CPU")
    device = f"cuda:{args.get('model_instance_device_id', '0')}" if kind == "GPU" else "cpu"
    store = None
    if settings["model"].startswith("s3://"):  # weights in the object store: the server's TIRE_S3_* say where
        from services.common.store import ObjectStore, StoreSettings

        store = ObjectStore(StoreSettings.from_env())
    return SdLoraBackend(
        settings["model"],
        store=store,
        model_cache_dir=settings["model_cache_dir"],
        device=device,
        resolution=settings["resolution"],
        batch_size=settings["batch_size"],
    )


class TritonPythonModel:
    """``inpaint``: Triton's Python-backend lifecycle around ``SdLoraBackend.inpaint``."""

    def initialize(self, args: dict[str, str]) -> None:
        self.backend = _backend(args)

    def execute(self, requests: list) -> list:
        import triton_python_backend_utils as pb_utils

        from services.common.errors import TireError

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
            except (TireError, ValueError) as exc:  # a subject it cannot use, a bad input
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("INPAINTED", inpainted)]))
        return responses

    def finalize(self) -> None:
        self.backend = None


class TritonFitModel:
    """``fit_subject`` (decoupled): ``SdLoraBackend.fit_subject``, one response per training step
    (STEP, TOTAL_STEPS, LOSS) and a last one with the adapter (ARTIFACT)."""

    def initialize(self, args: dict[str, str]) -> None:
        self.backend = _backend(args)

    def execute(self, requests: list) -> None:
        import triton_python_backend_utils as pb_utils

        from services.common.errors import TireError
        from services.inpainter.contract import FitConfig

        for request in requests:
            sender = request.get_response_sender()

            def tensor(name: str, request=request) -> np.ndarray:
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            def progress(step: int, total: int, loss: float, sender=sender) -> None:
                sender.send(
                    pb_utils.InferenceResponse(
                        [
                            pb_utils.Tensor("STEP", np.array([step], np.int32)),
                            pb_utils.Tensor("TOTAL_STEPS", np.array([total], np.int32)),
                            pb_utils.Tensor("LOSS", np.array([loss], np.float32)),
                            pb_utils.Tensor("ARTIFACT", np.array([b""], dtype=object)),
                        ]
                    )
                )

            try:
                config = FitConfig(**json.loads(bytes(tensor("CONFIG")[0])))
                artifact = self.backend.fit_subject(tensor("IMAGES"), tensor("MASKS"), config, progress)
            except (TireError, TypeError, ValueError) as exc:  # a setting or an input it cannot use
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                sender.send(
                    pb_utils.InferenceResponse(error=error),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            final = pb_utils.InferenceResponse(
                [
                    pb_utils.Tensor("STEP", np.array([config.steps], np.int32)),
                    pb_utils.Tensor("TOTAL_STEPS", np.array([config.steps], np.int32)),
                    pb_utils.Tensor("LOSS", np.array([np.nan], np.float32)),
                    pb_utils.Tensor("ARTIFACT", np.array([artifact], dtype=object)),
                ]
            )
            sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def finalize(self) -> None:
        self.backend = None
