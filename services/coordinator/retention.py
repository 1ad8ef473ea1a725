"""Retention: finished jobs, the objects only they used, and stale uploads are deleted after a while.

    retention = Retention(jobs, store, retention_s=30 * 86400, url_expiry_s=3600)
    retention.sweep()          # one pass; ``run_every(3600)`` in a daemon thread does it forever

An object is never removed the moment nothing names it: it is *released* (``JobStore.release``), and a
later pass removes it once ``RELEASE_GRACE_S`` has gone by and still nothing names it. Keys are
content-addressed, so a running job may store the very bytes of a deleted job's object again (the
store keeps the old copy) and name it only when its step finishes; the grace outlasts any step.

One pass, in order:

1. jobs that ended more than ``retention_s`` ago are deleted (``JobStore.delete``), releasing every
   object of theirs no other job and no upload names;
2. uploads past their expiry are forgotten: a staged copy never submitted is removed at once (its key
   is the uploader's alone), a verified upload not used for ``retention_s`` is released;
3. content-addressed and staging objects older than ``retention_s`` that nothing names (a stage's
   intermediate tensors, fitted subjects of deleted jobs, uploads never announced) are released;
4. objects released more than ``RELEASE_GRACE_S`` ago that nothing names still are removed.

With ``retention_s`` 0 nothing expires (steps 1 and 3 are skipped, verified uploads are kept for
good), but objects released by DeleteJob and staged uploads past their URL's expiry still go. Only keys
under ``sha256/`` and ``staging/`` of the store's bucket are ever removed: model weights and Triton's
repository live elsewhere in it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from services.common.errors import NotFound, TireError
from services.common.store import BlobStore, addressed_sha256, parse_uri
from services.coordinator.jobstore import JobStore

log = logging.getLogger(__name__)

CONTENT_PREFIX = "sha256"
STAGING_PREFIX = "staging"
"""Where CreateUpload's presigned PUTs write: ``staging/<principal>/<random><suffix>``."""
RELEASE_GRACE_S = 3 * 3600
"""How long a released object stays in the store: longer than any stage call with its retries."""


def removable(store: BlobStore, uris: Iterable[str]) -> list[str]:
    """Those of ``uris`` that are content-addressed or staging objects of ``store``'s bucket: the only
    objects retention ever removes."""
    own = store.uri_for("")
    return [
        uri
        for uri in uris
        if uri.startswith(own)
        and (addressed_sha256(uri) is not None or parse_uri(uri)[1].startswith(STAGING_PREFIX + "/"))
    ]


class Retention:
    """Deletes what is old and unused (see the module).

    Args:
        jobs: the coordinator's job state.
        store: the object store (``modified_before`` and ``remove``).
        retention_s: how long finished jobs, unused uploads and unnamed objects are kept; 0: for good.
        url_expiry_s: lifetime of presigned URLs: a staging object is never released younger than this.
        grace_s: how long a released object stays (``RELEASE_GRACE_S``).
    """

    def __init__(
        self,
        jobs: JobStore,
        store: BlobStore,
        retention_s: int,
        url_expiry_s: int,
        grace_s: float = RELEASE_GRACE_S,
    ):
        self.jobs = jobs
        self.store = store
        self.retention_s = retention_s
        self.url_expiry_s = url_expiry_s
        self.grace_s = grace_s

    def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """One pass (the module's four steps) as of ``now`` (default: the current time).

        Returns:
            Counts: ``jobs`` deleted, ``staged`` uploads removed, ``released`` objects (steps 1 to 3,
            this pass), ``removed`` objects (step 4).
        """
        now = now or datetime.now(UTC)
        now_ns = _ns(now)
        cutoff = now - timedelta(seconds=self.retention_s)
        counts = dict.fromkeys(("jobs", "staged", "released", "removed"), 0)

        # 1. Finished jobs past retention, releasing the objects only they used.
        if self.retention_s:
            for job_id in self.jobs.finished_before(_ns(cutoff), limit=10_000):
                try:
                    counts["released"] += self.jobs.delete(job_id, now_ns=now_ns)
                    counts["jobs"] += 1
                except NotFound:
                    pass  # deleted by its owner meanwhile

        # 2. Uploads past their expiry.
        staging, released = self.jobs.drop_expired_uploads(now_ns)
        counts["released"] += released
        staged = removable(self.store, staging)
        if staged:
            self.store.remove(staged)
        counts["staged"] = len(staged)

        # 3. Old objects nothing names.
        if self.retention_s:
            old = self.store.modified_before(self.store.uri_for(CONTENT_PREFIX), cutoff)
            staging_cutoff = min(cutoff, now - timedelta(seconds=self.url_expiry_s))
            old += self.store.modified_before(self.store.uri_for(STAGING_PREFIX), staging_cutoff)
            counts["released"] += self.jobs.release(removable(self.store, old), now_ns)

        # 4. Released objects past the grace, still unnamed.
        doomed = self.jobs.released_before(now_ns - int(self.grace_s * 1e9))
        gone = removable(self.store, doomed)
        if gone:
            self.store.remove(gone)
        self.jobs.forget(doomed)
        counts["removed"] = len(gone)
        if any(counts.values()):
            log.info("retention sweep: %s", counts, extra=counts)
        return counts

    def run_every(self, period_s: float, stop: threading.Event | None = None) -> None:
        """``sweep`` every ``period_s`` seconds until ``stop`` is set (forever without one); a failed pass
        (the store down) is logged and tried again at the next period."""
        stop = stop or threading.Event()
        while not stop.wait(period_s):
            try:
                self.sweep()
            except TireError as exc:
                log.warning("retention sweep failed, trying again in %.0f s: %s", period_s, exc)
            except Exception:
                log.exception("retention sweep failed")


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)
