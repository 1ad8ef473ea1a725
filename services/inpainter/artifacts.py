"""Subject-model artifacts: safetensors files whose bytes are a function of their content.

A subject model is stored content-addressed (its key is its sha256), so the same model must always
serialise to the same bytes; both backends write their artifacts with ``canonical_safetensors`` and read
their header with ``read_safetensors_metadata`` before trusting anything else in them.
"""

from __future__ import annotations

import json

import numpy as np
import safetensors.numpy

# Headers of artifacts are small; refuse absurd ones before parsing them.
_MAX_HEADER_BYTES = 64 * 1024


def canonical_safetensors(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    """``safetensors.numpy.save`` with a byte-stable header.

    safetensors writes its metadata in hash-map order, which changes from process to process; content-
    addressed artifacts need the same bytes for the same model, so the header is rewritten with sorted
    keys (the tensor data is left as it is).
    """
    data = safetensors.numpy.save(tensors, metadata=metadata)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header with spaces to 8-byte alignment
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def read_safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header ({} when it has none).

    Raises:
        ValueError: the header is truncated, too large or not a JSON object.
    """
    if len(data) < 8:
        raise ValueError(f"{len(data)} bytes is too short for a safetensors header")
    length = int.from_bytes(data[:8], "little")
    if length > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise ValueError(f"header length {length} is over the file or the limit")
    header = json.loads(data[8 : 8 + length])
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(key): str(value) for key, value in metadata.items()}
