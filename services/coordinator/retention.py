"""Retention: finished jobs, the objects only they used, and stale uploads are deleted after a while.

    retention = Retention(jobs, store, retention_s=30 * 86400, url_expiry_s=3600)
    retention.sweep()          # one pass; ``run_every(3600)`` in a daemon thread does it forever

One pass, in order:

1. jobs that ended more than ``retention_s`` ago are deleted (``JobStore.delete``), with every object of
   theirs no other job and no upload names;
2. uploads past their expiry are forgotten: a staged copy never submitted is deleted, and a verified
   upload kept ``retention_s`` past its last use is deleted unless a job names it;
3. the bucket's content-addressed and staging objects older than ``retention_s`` that nothing names
   (a stage's intermediate tensors, fitted subjects of deleted jobs, uploads never announced) are
   deleted when a pass finds them unnamed twice in a row. The second look protects an object a running
   step has just stored again under its content key (its last write is old) but not yet recorded: a step
   records what it produced when it finishes, long before the next pass.

Only keys under ``sha256/`` and ``staging/`` of the store's bucket are ever deleted: model weights and
Triton's repository live elsewhere in it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from services.common.errors import TireError
from services.common.store import BlobStore, addressed_sha256, parse_uri
from services.coordinator.jobstore import JobStore

log = logging.getLogger(__name__)

CONTENT_PREFIX = "sha256"
STAGING_PREFIX = "staging"
"""Where CreateUpload's presigned PUTs write: ``staging/<principal>/<random><suffix>``."""


def remove_objects(store: BlobStore, uris: Iterable[str]) -> int:
    """Delete those of ``uris`` that are content-addressed or staging objects of ``store``'s bucket
    (anything else is left alone); returns how many were asked to go."""
    own = store.uri_for("")
    doomed = [
        uri
        for uri in uris
        if uri.startswith(own)
        and (addressed_sha256(uri) is not None or parse_uri(uri)[1].startswith(STAGING_PREFIX + "/"))
    ]
    if doomed:
        store.remove(doomed)
    return len(doomed)


class Retention:
    """Deletes what is older than ``retention_s`` seconds and no longer used (see the module).

    Args:
        jobs: the coordinator's job state.
        store: the object store (``modified_before`` and ``remove``).
        retention_s: how long finished jobs, unused uploads and unnamed objects are kept; > 0.
        url_expiry_s: lifetime of presigned URLs: a staging object is never deleted younger than this.
    """

    def __init__(self, jobs: JobStore, store: BlobStore, retention_s: int, url_expiry_s: int):
        self.jobs = jobs
        self.store = store
        self.retention_s = retention_s
        self.url_expiry_s = url_expiry_s
        self._unnamed_before: set[str] = set()

    def sweep(self, now: datetime | None = None) -> dict[str, int]:
        """One pass (the module's three steps) as of ``now`` (default: the current time).

        Returns:
            What was deleted: ``jobs``, ``job_objects``, ``staged_uploads``, ``uploads``, ``unnamed``.
        """
        now = now or datetime.now(UTC)
        now_ns = int(now.timestamp() * 1e9)
        cutoff = now - timedelta(seconds=self.retention_s)
        counts = dict.fromkeys(("jobs", "job_objects", "staged_uploads", "uploads", "unnamed"), 0)

        # 1. Finished jobs past retention, with the objects only they used.
        for job_id in self.jobs.finished_before(int(cutoff.timestamp() * 1e9), limit=10_000):
            counts["job_objects"] += remove_objects(self.store, self.jobs.delete(job_id))
            counts["jobs"] += 1

        # 2. Uploads past their expiry.
        staged, unused = self.jobs.drop_expired_uploads(now_ns)
        counts["staged_uploads"] = remove_objects(self.store, staged)
        counts["uploads"] = remove_objects(self.store, unused)

        # 3. Old objects nothing names, deleted at their second sighting.
        old = self.store.modified_before(self.store.uri_for(CONTENT_PREFIX), cutoff)
        staging_cutoff = min(cutoff, now - timedelta(seconds=self.url_expiry_s))
        old += self.store.modified_before(self.store.uri_for(STAGING_PREFIX), staging_cutoff)
        unnamed = set(old) - self.jobs.in_use(old)
        counts["unnamed"] = remove_objects(self.store, sorted(unnamed & self._unnamed_before))
        self._unnamed_before = unnamed - self._unnamed_before
        if any(counts.values()):
            log.info("retention sweep deleted %s", counts, extra=counts)
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
