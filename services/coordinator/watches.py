"""Open ``WatchJob`` streams: woken on the event loop when their job gets events, and admitted within
limits per caller and per server.

A watch is an async generator on the coordinator's ``grpc.aio`` loop: while it waits it holds no
thread, only a future in ``AppendBell``. ``JobStore.on_events`` rings the bell from the thread that
committed the events; a watch arms its future before it reads, so no append between the read and the
wait is missed. Appends by another process on the same job store (a second replica) ring nothing
here; a watch also reads again every ``WATCH_POLL_S``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator

from services.common.errors import ResourceExhausted

WATCH_POLL_S = 5.0
"""How often a watch reads its job's events without being woken (appends made by another process)."""


class WatchLimitReached(ResourceExhausted):
    """A watch past a limit; RetryInfo says when another may have closed."""

    reason = "WATCH_LIMIT"
    retry_after_s = 5.0


class AppendBell:
    """Wakes the watches of a job, on their event loop, when events are appended to it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listening: dict[str, set[asyncio.Future[None]]] = collections.defaultdict(set)

    def ring(self, job_id: str) -> None:
        """Wake ``job_id``'s watches (from any thread; a ``JobStore.on_events`` listener)."""
        loop = self._loop
        # Read from another thread, the dict is a hint: a watch that arms after this reads after the
        # commit that rang, so it sees the events anyway.
        if loop is not None and self._listening.get(job_id):
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is listening
                loop.call_soon_threadsafe(self._wake, job_id)

    def arm(self, job_id: str) -> asyncio.Future[None]:
        """A future that the next ring for ``job_id`` completes (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        future = self._loop.create_future()
        self._listening[job_id].add(future)
        return future

    def disarm(self, job_id: str, future: asyncio.Future[None]) -> None:
        waiting = self._listening.get(job_id)
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._listening[job_id]

    def _wake(self, job_id: str) -> None:
        for future in self._listening.pop(job_id, ()):
            if not future.done():
                future.set_result(None)


class WatchLimits:
    """Counts the open watches, per caller and in all; refuses one past either limit.

    Used from the event loop's thread only (the watches run there), so it needs no lock.
    """

    def __init__(self, per_caller: int, total: int):
        self.per_caller, self.total = per_caller, total
        self._open: collections.Counter[str] = collections.Counter()

    @contextlib.contextmanager
    def admit(self, caller: str) -> Iterator[None]:
        """Hold a place for ``caller``'s watch while the block runs.

        Raises:
            ResourceExhausted: ``caller`` has ``per_caller`` open watches, or the server ``total``.
        """
        if self._open[caller] >= self.per_caller:
            raise WatchLimitReached(
                f"{caller} has {self._open[caller]} open WatchJob streams, the limit per caller "
                f"(TIRE_COORDINATOR_MAX_WATCHES_PER_CALLER); close one or retry later."
            )
        if self.open_watches >= self.total:
            raise WatchLimitReached(
                f"this coordinator has {self.open_watches} open WatchJob streams, its limit "
                f"(TIRE_COORDINATOR_MAX_WATCHES); retry later."
            )
        self._open[caller] += 1
        try:
            yield
        finally:
            self._open[caller] -= 1
            if not self._open[caller]:
                del self._open[caller]

    @property
    def open_watches(self) -> int:
        return sum(self._open.values())
