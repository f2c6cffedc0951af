"""Start-up recovery: run once when the owner of writes starts, before any worker.

At that moment no other worker can be alive (the write lock says so), so every 'running' job is
orphaned and runs again, half-written documents whose job is gone are purged, and the catalog and
Chroma are reconciled in both directions: vectors the catalog does not know are removed, and chunks
without a vector are re-embedded by a repair job (after an interrupted rebuild, say).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from ingest.store import Store
from kb.catalog import DOC_DELETING, Catalog
from kb.errors import IndexMismatchError
from kb.jobs import LANE_MAINT, JobQueue

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    requeued: int = 0
    purged: int = 0
    orphan_vectors: int = 0
    missing_vectors: int = 0
    repair_docs: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def recover(catalog: Catalog, jobs: JobQueue, store: Store, *, full: bool = True) -> RecoveryReport:
    """Finish or undo whatever the last owner left in flight; queue a repair for missing vectors."""
    report = RecoveryReport()
    report.requeued = jobs.requeue_running()
    with catalog.transaction() as db:  # claims of jobs that are over are stale
        db.execute(
            "DELETE FROM content_claims WHERE job_id NOT IN"
            " (SELECT id FROM jobs WHERE state IN ('queued', 'running'))"
        )
    doomed = set(catalog.document_ids_with_status(DOC_DELETING))
    doomed |= set(catalog.abandoned_documents())
    doomed |= set(catalog.unreferenced_documents())
    store.purge(sorted(doomed))
    report.purged = len(doomed)

    if not full:
        jobs.prune()
        return report
    index = store.index
    try:
        index.check_model()
    except IndexMismatchError as exc:  # vectors of another model: the reindex that must follow rebuilds them
        log.warning("skipping the vector check: %s", exc)
        jobs.prune()
        return report
    in_chroma = index.all_ids()
    in_catalog = catalog.all_chunk_ids()
    orphans = in_chroma - in_catalog
    if orphans:
        log.warning("removing %d vectors the catalog does not know", len(orphans))
        with store.write_lock:
            index.delete_ids(orphans)
    report.orphan_vectors = len(orphans)
    # Chunks of finished documents without a vector; documents still being written are their job's business.
    missing = catalog.finished_chunk_ids() - in_chroma
    report.missing_vectors = len(missing)
    if missing:
        docs = sorted(catalog.doc_ids_of_chunks(missing))
        report.repair_docs = docs
        log.warning("%d chunks of %d documents have no vector: queued a repair", len(missing), len(docs))
        jobs.submit("repair", key="repair", lane=LANE_MAINT, payload={"docs": docs}, priority=-1)
    jobs.prune()
    return report


class RepairHandler:
    """`repair`: embed the missing vectors of the given documents (nothing else is touched)."""

    def __init__(self, catalog: Catalog, store: Store) -> None:
        self.catalog = catalog
        self.store = store

    def __call__(self, job: Any, ctx: Any) -> Any:
        from kb.jobs import Defer, Done

        docs = [int(d) for d in job.payload.get("docs", [])]
        for i, doc_id in enumerate(docs):
            if ctx.stopping():
                return Defer(0.0, "interrupted by a stop")
            doc = self.catalog.document(doc_id)
            if doc is None or not doc.paths:
                continue
            self.store.resume_vectors(doc)
            ctx.progress("repairing", i + 1, len(docs))
        return Done("repaired")
