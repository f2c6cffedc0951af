"""`move`: a file or folder moved or renamed keeps its documents; nothing is parsed or embedded again.

The job's uri is the old path, its payload {"to": new uri, "tag": the new folder's tag}. Every source that
moves (the file, the files under the folder, the parts of a container) is renamed in one catalog
transaction when the file at the new place still has the size and modification time recorded for it;
the Chroma metadata (path, tag) follows. Whatever does not match (changed on the way, gone again) falls
back to the ordinary path: a scan of the new place queues ingests, and the old sources are forgotten after
them, so content that only moved is linked again rather than embedded again.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ingest.handlers import JobContext
from ingest.scan import Scanner
from ingest.store import Store
from kb.catalog import Catalog
from kb.jobs import Done, Job, JobResult
from kb.paths import display, from_uri

log = logging.getLogger(__name__)


class MoveHandler:
    """Rename the sources of a moved file or folder (see the module docstring)."""

    def __init__(self, catalog: Catalog, store: Store, scanner: Scanner) -> None:
        self.catalog = catalog
        self.store = store
        self.scanner = scanner

    def __call__(self, job: Job, ctx: JobContext) -> JobResult:
        assert job.uri is not None
        old = job.uri.rstrip("/") or "/"
        new = str(job.payload["to"]).rstrip("/") or "/"
        tag = job.payload.get("tag")
        batch = job.payload.get("batch")
        moving = self.catalog.sources_moving(old)
        renames: dict[str, str] = {}
        stale: list[str] = []
        for s in moving:
            if s.source_type != "file":
                continue  # parts of a container (attachments) follow it, below
            target = new + s.uri[len(old):]
            if _same_stat(from_uri(target), s.size, s.mtime_ns):
                renames[s.uri] = target
            else:
                stale.append(s.uri)
        for s in moving:
            if s.source_type != "file":
                if s.parent_uri is not None and s.parent_uri in renames:
                    renames[s.uri] = new + s.uri[len(old):]
                else:
                    stale.append(s.uri)
        touched, orphans = self.catalog.rename_sources(renames, tag=tag)
        self.store.purge(orphans)
        self.store.refresh_metadata(touched)
        new_path = from_uri(new)
        # Files at the new place that were not renamed (new, or changed on the way) are queued as usual.
        if new_path.is_dir() or (new_path.exists() and new not in renames):
            self.scanner.scan([new_path], batch=batch)
        if stale:
            self.scanner.queue_forget(stale, batch)
        log.info("moved %s to %s: %d sources renamed, %d to re-read", display(old), display(new), len(renames),
                 len(stale))
        return Done("moved" if renames else "unchanged" if not stale else "updated")


def _same_stat(path: Path, size: int | None, mtime_ns: int | None) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_size == size and st.st_mtime_ns == mtime_ns
