"""Where neural backends find their weights, and where they compute.

A model URI names a folder of weights in the ``save_pretrained`` layout, in one of three places
(``resolve_model``):

- a local folder: used in place (a mounted volume, a layer of the image);
- ``s3://bucket/prefix``: a folder in the object store (MinIO in the cluster; ``tire models push`` puts one
  there), downloaded once per process into a cache folder. Publish a changed model under a new prefix:
  the cache is keyed by the URI, so a replica that already holds a prefix does not look again;
- a Hugging Face hub id, ``owner/name``: handed to ``from_pretrained`` as it is, which downloads it into the
  hub cache where the network allows (set ``HF_HUB_OFFLINE=1`` to read only that cache).

Weights load from safetensors (``from_pretrained`` prefers them) or ``torch.load(..., weights_only=True)``;
nothing unpickles untrusted bytes.

``torch_device`` and ``torch_dtype`` turn a service's DEVICE and DTYPE settings into torch objects: the
server tells a model where to run, the model does not choose.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from services.common.errors import ConfigError

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_model(uri: str, *, store=None, cache_dir: str | os.PathLike = "") -> str:
    """The folder (or hub id) that ``from_pretrained`` should load for the model URI ``uri``.

    Args:
        uri: a local folder, an ``s3://bucket/prefix``, or a hub id ``owner/name``.
        store: the object store to download ``s3://`` prefixes from (``ObjectStore`` or ``MemoryStore``:
            anything with ``download_prefix``).
        cache_dir: where ``s3://`` prefixes are downloaded to, one sub-folder per URI; default a folder
            under the system's temporary directory.

    Returns:
        An absolute local folder, or ``uri`` itself for a hub id.

    Raises:
        ConfigError: an empty URI, a path that is not a folder, an ``s3://`` URI without a store, or a
            URI of none of the three kinds.
        ObjectNotFound, StoreAuthError, StoreUnavailable: from the store, for an ``s3://`` prefix.
    """
    if not uri:
        raise ConfigError("no model URI is set: give a local folder, an s3://bucket/prefix or a hub id.")
    if uri.startswith("s3://"):
        if store is None or not hasattr(store, "download_prefix"):
            raise ConfigError(
                f"model {uri!r} is in the object store, but this process has no store to read it."
            )
        return str(_download_once(uri, store, Path(cache_dir or Path(tempfile.gettempdir(), "tire-models"))))
    path = Path(uri).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise ConfigError(f"model {uri!r} is a file; a model is a folder in the save_pretrained layout.")
    if _HUB_ID.fullmatch(uri) and not uri.startswith((".", "/")):
        return uri
    raise ConfigError(
        f"model {uri!r} is neither an existing folder, an s3://bucket/prefix, nor a hub id like owner/name."
    )


def _download_once(uri: str, store, cache_dir: Path) -> Path:
    """``uri``'s objects in ``cache_dir/<sha256 of uri>/``, downloaded unless a complete copy is there.

    The copy is written to a temporary sibling folder and renamed into place, so a crash mid-download
    leaves nothing that looks complete.
    """
    target = cache_dir / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=cache_dir))
    try:
        store.download_prefix(uri, partial)
        try:
            partial.rename(target)
        except OSError:  # another thread of this process finished first: keep its copy
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def torch_device(name: str) -> torch.device:
    """The device a setting names: "auto" (the first GPU when torch sees one, else the CPU), "cpu", "cuda"
    or "cuda:N".

    Raises:
        ConfigError: an unknown name, or a GPU that torch does not see.
    """
    import torch

    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {name!r} is not available: torch sees {torch.cuda.device_count()} GPUs."
            )
        return torch.device("cuda", index)
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}.")


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The compute dtype a setting names: "auto" (float16 on a GPU, float32 on the CPU), "float32",
    "float16" or "bfloat16".

    Raises:
        ConfigError: an unknown name, or half precision asked of the CPU (too slow to be meant).
    """
    import torch

    if name not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {name!r}.")
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and name != "float32":
        raise ConfigError(f"dtype {name!r} is for GPUs; on the CPU use float32 (or auto).")
    return getattr(torch, name)


def describe_device(device: torch.device, dtype: torch.dtype) -> str:
    """For Describe: "cuda:0 (NVIDIA H100 80GB HBM3, float16)" or "cpu (2 threads, float32)"."""
    import torch

    precision = str(dtype).removeprefix("torch.")
    if device.type == "cuda":
        index = device.index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}, {precision})"
    return f"cpu ({torch.get_num_threads()} threads, {precision})"
