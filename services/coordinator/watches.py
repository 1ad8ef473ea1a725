"""Open ``WatchJob`` streams, woken on the event loop when their job gets events.

A watch is an async generator on the coordinator's ``grpc.aio`` loop: while it waits it holds no
thread, only a future in ``AppendBell``. ``JobStore.on_events`` rings the bell from the thread that
committed the events, and, with PostgreSQL, from the thread that hears another replica's appends
(LISTEN/NOTIFY); a watch arms its future before it reads, so no append between the read and the wait is
missed. A notification can be lost (the database's connection dropped), and another process on a
SQLite file notifies nothing: a watch also reads again every ``WATCH_POLL_S``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

WATCH_POLL_S = 5.0
"""How often a watch reads its job's events without being woken (appends made by another process)."""


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
