"""Stores for tests that count what a piece of code reads."""

from __future__ import annotations

from services.common.store import MemoryStore


class CountingStore(MemoryStore):
    """A ``MemoryStore`` that counts the objects read (``get_bytes`` calls) in ``reads``."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def get_bytes(self, uri, **kwargs):
        self.reads += 1
        return super().get_bytes(uri, **kwargs)
