"""Backends that run one call at a time.

A backend whose every call already fills the machine gains nothing from two at once, and some cannot
take them: numba's parallel loops use every core, and its workqueue threading layer (where OpenMP is
missing) is not safe for concurrent parallel calls; a GPU holds one model, a diffusion scheduler keeps
per-call state, and a second CoTracker video would double the model's memory on the device. The gRPC
server still takes calls concurrently (health, Describe, validation, store reads): only the backend's
compute waits its turn.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

_LOCK_ATTRIBUTE = "_one_call_at_a_time"
_CREATING = threading.Lock()


def one_call_at_a_time(method: F) -> F:
    """Decorate a backend method: the calls of every decorated method of one instance run one at a time
    (one re-entrant lock per instance, so a decorated method may call another)."""

    @functools.wraps(method)
    def serialized(self, *args, **kwargs):
        lock = self.__dict__.get(_LOCK_ATTRIBUTE)
        if lock is None:
            with _CREATING:
                lock = self.__dict__.setdefault(_LOCK_ATTRIBUTE, threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    return serialized  # type: ignore[return-value]
