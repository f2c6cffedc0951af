"""The folder watcher's sink: what the watcher reports becomes jobs (one transaction per report)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ingest.scan import FORGET_PRIORITY, job_key, lane_for
from kb.jobs import LANE_FAST, JobQueue
from kb.paths import absolute, to_uri
from kb.settings import WatchedFolder


def tagger(folders: Sequence[WatchedFolder]) -> Callable[[Path], str | None]:
    """The tag of the innermost watched folder holding a path (folders may be written relative)."""
    roots = sorted(((absolute(f.path), f.tag) for f in folders), key=lambda rt: len(rt[0].parts), reverse=True)

    def tag_for(path: Path) -> str | None:
        path = absolute(path)
        for root, tag in roots:
            if path == root or root in path.parents:
                return tag
        return None

    return tag_for


class FolderJobs:
    """Implements watchers.folders.FolderSink over the job queue."""

    CHUNK = 500  # paths per transaction: a burst of files is a few transactions, none of them long

    def __init__(
        self, jobs: JobQueue, *, tag_for: Callable[[Path], str | None], slow_lane_bytes: int,
        submit_scan: Callable[[Sequence[str]], None],
    ) -> None:
        self.jobs = jobs
        self.tag_for = tag_for
        self.slow_lane_bytes = slow_lane_bytes
        self.submit_scan = submit_scan

    def changed(self, paths: Sequence[Path]) -> None:
        items = []
        for p in paths:
            try:
                size = p.stat().st_size
            except OSError:
                size = 0  # gone already: the ingest job notices and forgets it
            items.append(("ingest", p, lane_for(p, size, self.slow_lane_bytes), {"tag": self.tag_for(p)}, 0))
        self._enqueue(items)

    def removed(self, paths: Sequence[Path]) -> None:
        # after ingests queued beside them: content that moved is linked at its new path before it goes
        self._enqueue([("forget", p, LANE_FAST, {}, FORGET_PRIORITY) for p in paths])

    def moved(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        self._enqueue([
            ("move", old, LANE_FAST, {"to": to_uri(new), "tag": self.tag_for(new)}, 0) for old, new in pairs
        ])


    def rescan(self, roots: Sequence[Path]) -> None:
        self.submit_scan([str(r) for r in roots])

    def _enqueue(self, items: list[tuple[str, Path, str, dict[str, Any], int]]) -> None:
        for i in range(0, len(items), self.CHUNK):
            with self.jobs.transaction() as db:
                for action, path, lane, payload, priority in items[i : i + self.CHUNK]:
                    uri = to_uri(path)
                    self.jobs.enqueue(
                        db, action, uri, key=job_key(action, uri, payload), lane=lane, payload=payload,
                        priority=priority,
                    )
