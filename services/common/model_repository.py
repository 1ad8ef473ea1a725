"""A stage's models in a Triton model repository: declared once, written version by version, published,
rolled back; and, inside Triton, what a version's instance reads to build its backend.

A stage that serves models on Triton declares them (``services.<stage>.triton_model.MODELS``):

    MODELS = (TritonModel("inpaint", "services.inpainter.triton_model:InpaintModel", inputs, outputs),)

and a version of them is a folder per model, ``<model>/<version>/``, holding ``model.py`` (one line that
imports the stage's class: no maths lives in the repository) and ``backend.json`` (the weights' URI and
the backend's settings). ``<model>/config.pbtxt`` (the tensors, batching, version policy) is shared by
every version. The newest ``KEPT_VERSIONS`` versions stay loaded, so a job pinned to the one before the
newest finishes on it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SETTINGS_FILE = "backend.json"
"""A version's settings, in its folder: the backend's keyword arguments as JSON."""
KEPT_VERSIONS = 2
"""How many of the newest versions Triton keeps loaded (its ``version_policy``)."""


@dataclass(frozen=True)
class Tensor:
    """One input or output of a Triton model.

    Attributes:
        name: its name in requests, for example ``IMAGES``.
        datatype: its ``config.pbtxt`` type, for example ``TYPE_UINT8`` (``TYPE_STRING`` for bytes).
        dims: its shape, -1 for any length, without the batch dimension of a batching model.
        optional: whether a request may leave it out.
    """

    name: str
    datatype: str
    dims: tuple[int, ...]
    optional: bool = False

    def declaration(self, ragged: bool = False) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        optional = " optional: true" if self.optional else ""
        ragged_batch = " allow_ragged_batch: true" if ragged else ""
        shape = f"data_type: {self.datatype} dims: [ {dims} ]"
        return f'  {{ name: "{self.name}" {shape}{optional}{ragged_batch} }}'


@dataclass(frozen=True)
class TritonModel:
    """One Triton Python-backend model of a stage.

    Attributes:
        name: Triton's name for it.
        entry: ``module:Class``, the class Triton runs (``initialize``/``execute``/``finalize``).
        inputs, outputs: its tensors.
        decoupled: whether it may answer a request with several responses (streamed progress).
        max_batch_size: > 0: each tensor has a leading batch dimension, and one ``execute`` may get up
            to this many requests.
        dynamic_batching: requests arriving within ``batch_delay_us`` of each other reach one ``execute``
            together, whatever their shapes (ragged: the Python backend hands the model each request's
            tensors as they came). Needs ``max_batch_size`` > 0.
        batch_delay_us: how long the first request of a batch waits for others, in microseconds.
    """

    name: str
    entry: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]
    decoupled: bool = False
    max_batch_size: int = 0
    dynamic_batching: bool = False
    batch_delay_us: int = 0

    def config(self) -> str:
        """Its ``config.pbtxt``."""
        lines = [f'name: "{self.name}"', 'backend: "python"', f"max_batch_size: {self.max_batch_size}"]
        if self.decoupled:
            lines.append("model_transaction_policy { decoupled: true }")
        if self.dynamic_batching:
            lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {self.batch_delay_us} }}")
        ragged = self.dynamic_batching
        lines += ["input [", ",\n".join(t.declaration(ragged) for t in self.inputs), "]"]
        lines += ["output [", ",\n".join(t.declaration() for t in self.outputs), "]"]
        lines.append("instance_group [ { count: 1 } ]")
        lines.append(f"version_policy: {{ latest: {{ num_versions: {KEPT_VERSIONS} }} }}")
        return "\n".join(lines) + "\n"


def write_version(
    repository: str | os.PathLike, models: Sequence[TritonModel], version: int, settings: Mapping
) -> list[Path]:
    """Write version ``version`` of ``models`` into the repository folder ``repository``.

    Args:
        repository: the repository folder.
        models: the stage's models (its ``MODELS``).
        version: a positive integer.
        settings: what every model's instance builds its backend from (JSON-serialisable).

    Returns:
        The version folders, one per model.
    """
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}")
    written = []
    for model in models:
        folder = Path(repository) / model.name
        (folder / str(version)).mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(model.config())
        (folder / str(version) / SETTINGS_FILE).write_text(json.dumps(dict(settings), indent=2) + "\n")
        module, name = model.entry.split(":")
        (folder / str(version) / "model.py").write_text(
            f"from {module} import {name} as TritonPythonModel  # noqa: F401\n"
        )
        written.append(folder / str(version))
    return written


def ensure_repository(store, repository: str) -> bool:
    """Make ``repository`` (an ``s3://`` prefix of ``store``) a repository Triton can start on: Triton
    refuses a prefix with no object under it, so an empty one gets a ``README.md`` saying what lives there.

    Returns:
        Whether the README was written (False: the prefix already held objects).
    """
    if store.list_prefix(repository):
        return False
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "README.md").write_text(
            "A Triton model repository of TIRE's stages: `<model>/config.pbtxt` and one folder per "
            "version, written by `tire models publish`.\n"
        )
        store.upload_folder(folder, repository)
    return True


def _versions_of_each(store, repository: str, models: Sequence[TritonModel]) -> list[set[int]]:
    """For each of ``models``, the versions it has under ``repository`` (one listing of the prefix)."""
    found: dict[str, set[int]] = {model.name: set() for model in models}
    for key in store.list_prefix(repository):
        parts = key.split("/")
        if len(parts) == 3 and parts[0] in found and parts[1].isdigit() and parts[2] == SETTINGS_FILE:
            found[parts[0]].add(int(parts[1]))
    return list(found.values())


def published_versions(store, repository: str, models: Sequence[TritonModel]) -> list[int]:
    """The versions of ``models`` under ``repository`` (an ``s3://`` prefix of ``store``), sorted: those
    that every one of the models has."""
    return sorted(set.intersection(*_versions_of_each(store, repository, models))) if models else []


def settings_of(store, repository: str, models: Sequence[TritonModel], version: int) -> dict:
    """What version ``version`` of ``models`` serves (its ``backend.json``).

    Raises:
        ObjectNotFound: no such version under ``repository``.
    """
    settings = f"{repository.rstrip('/')}/{models[0].name}/{version}/{SETTINGS_FILE}"
    return json.loads(store.get_bytes(settings, any_bucket=True))


def newest_settings(store, repository: str, models: Sequence[TritonModel]) -> tuple[int, dict | None]:
    """The newest version of ``models`` under ``repository`` and the settings it serves ((0, None): none)."""
    versions = published_versions(store, repository, models)
    if not versions:
        return 0, None
    return versions[-1], settings_of(store, repository, models, versions[-1])


def publish(store, repository: str, models: Sequence[TritonModel], settings: Mapping, triton_url: str) -> int:
    """Publish the next version of ``models``: write it under ``repository`` (an ``s3://`` prefix of
    ``store``, the repository Triton reads) and ask the Triton at ``triton_url`` to load it.

    Returns:
        The version published.

    Raises:
        TritonLoadError: Triton did not load it (its reason is in the message); the version is removed
            from the repository, the one served before keeps serving, and the new one never takes traffic.
    """
    from services.common.triton import TritonLoadError, load_model

    # After every version any of the models has, a version folder left half-written included.
    version = max(set().union(*_versions_of_each(store, repository, models)), default=0) + 1
    with tempfile.TemporaryDirectory() as folder:
        write_version(folder, models, version, settings)
        written = store.upload_folder(folder, repository)
    try:
        for model in models:
            load_model(triton_url, model.name)
    except TritonLoadError:
        # Out of the repository, so that the newest versions Triton keeps loaded are all good ones.
        store.remove([uri for uri in written if not uri.endswith("/config.pbtxt")])
        for model in models:
            load_model(triton_url, model.name)
        raise
    return version


def rollback(store, repository: str, models: Sequence[TritonModel], version: int, triton_url: str) -> int:
    """Serve again what version ``version`` served: publish its settings as the next version (the
    repository only grows, so what served when stays on record).

    Returns:
        The version published.

    Raises:
        ObjectNotFound: no such version under ``repository``.
        TritonLoadError: as ``publish``.
    """
    return publish(store, repository, models, settings_of(store, repository, models, version), triton_url)


# -- inside Triton: a model instance's view of its version ------------------------------------------------


def version_settings(args: Mapping[str, str]) -> dict:
    """The settings of the version a model instance serves (``initialize``'s ``args``)."""
    return json.loads((Path(args["model_repository"]) / args["model_version"] / SETTINGS_FILE).read_text())


def instance_device(args: Mapping[str, str]) -> str:
    """The device Triton gave a model instance: ``cuda:N`` for a GPU instance, else ``cpu``."""
    if args.get("model_instance_kind", "CPU") == "GPU":
        return f"cuda:{args.get('model_instance_device_id', '0')}"
    return "cpu"


def weights_store(uri: str):
    """The object store holding weights at ``uri``: the server's ``TIRE_S3_*`` for ``s3://``, else None."""
    if not uri.startswith("s3://"):
        return None
    from services.common.store import ObjectStore, StoreSettings

    return ObjectStore(StoreSettings.from_env())
