"""Admission: what a caller may open or submit at once, checked before the work is taken on.

Past a limit a call gets RESOURCE_EXHAUSTED (a ``ResourceExhausted``) with a sentence naming the limit
and its setting, and RetryInfo. The limits (``CoordinatorSettings``, README "Limits"):

- open ``WatchJob`` streams per caller and in all (``WatchLimits``);
- queued and running jobs per caller (``JobStore.create``'s ``max_active``, in the same transaction as
  the new job, so concurrent submissions cannot pass it together);
- submissions per second per caller (``SubmissionRate``, a token bucket).
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily

from services.common.errors import ResourceExhausted, Unavailable


class WatchLimitReached(ResourceExhausted):
    """A watch past a limit; RetryInfo says when another may have closed."""

    reason = "WATCH_LIMIT"
    retry_after_s = 5.0


class ActiveJobLimitReached(ResourceExhausted):
    """A submission past the caller's queued and running jobs."""

    reason = "ACTIVE_JOB_LIMIT"
    retry_after_s = 30.0


class SubmissionRateExceeded(ResourceExhausted):
    """A submission faster than the caller's rate."""

    reason = "SUBMISSION_RATE"
    retry_after_s = 1.0


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
        return sum(list(self._open.values()))  # a copy: a scrape reads it from another thread


class SubmissionRate:
    """A token bucket per caller: ``per_second`` submissions on average, ``burst`` at once. Thread-safe.

    Buckets live in memory, one per caller seen (their count is the number of principals).
    """

    def __init__(self, per_second: float, burst: int, clock: Callable[[], float] = time.monotonic):
        self.per_second, self.burst, self._clock = per_second, burst, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, when)
        self._lock = threading.Lock()

    def take(self, caller: str) -> None:
        """Spend one of ``caller``'s tokens.

        Raises:
            SubmissionRateExceeded: none is left.
        """
        with self._lock:
            now = self._clock()
            tokens, then = self._buckets.get(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.per_second)
            if tokens < 1.0:
                self._buckets[caller] = (tokens, now)
                raise SubmissionRateExceeded(
                    f"{caller} submits faster than {self.per_second:g} jobs a second (bursts of "
                    f"{self.burst}), the limit per caller (TIRE_COORDINATOR_MAX_SUBMISSIONS_PER_S); retry "
                    f"in {(1.0 - tokens) / self.per_second:.1f} s."
                )
            self._buckets[caller] = (tokens - 1.0, now)


class AdmissionMetrics:
    """The coordinator's gauges, read when Prometheus scrapes: what the limits above count.

    - ``tire_coordinator_open_watches``: open WatchJob streams on this replica (limit: max_watches);
    - ``tire_coordinator_running_jobs``: jobs running on this replica (at most ``workers``);
    - ``tire_coordinator_queued_jobs``: jobs waiting for a worker of any replica;
    - ``tire_coordinator_active_jobs{owner}``: queued and running jobs per principal (limit:
      max_active_jobs_per_caller).

    The last two are read from the job database; while it is unavailable they are left out (the others,
    and the rest of the scrape, still answer).

    Refusals are counted with the calls: ``tire_grpc_requests_total{code="RESOURCE_EXHAUSTED"}``.
    """

    def __init__(
        self,
        open_watches: Callable[[], int],
        running_jobs: Callable[[], int],
        queued_jobs: Callable[[], int],
        active_by_owner: Callable[[], dict[str, int]],
    ):
        self._open_watches, self._running_jobs = open_watches, running_jobs
        self._queued_jobs, self._active_by_owner = queued_jobs, active_by_owner

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "tire_coordinator_open_watches", "Open WatchJob streams.", self._open_watches()
        )
        yield GaugeMetricFamily(
            "tire_coordinator_running_jobs", "Jobs running on this replica.", self._running_jobs()
        )
        try:
            queued, by_owner = self._queued_jobs(), self._active_by_owner()
        except Unavailable:
            return
        yield GaugeMetricFamily("tire_coordinator_queued_jobs", "Jobs waiting for a worker.", queued)
        active = GaugeMetricFamily(
            "tire_coordinator_active_jobs", "Queued and running jobs per principal.", labels=["owner"]
        )
        for owner, count in sorted(by_owner.items()):
            active.add_metric([owner], count)
        yield active
