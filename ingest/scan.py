"""Folder scans: one producer of per-file jobs, and the guard against an emptied mount point.

A scan compares what is on disk with the catalog by size and modification time (the content hash is left
to the job) and queues an ingest job for every new or changed file and, when mirroring, a forget job for
every file that disappeared. A folder that suddenly looks (mostly) empty, as an unmounted disk's mount
point does, must not wipe the library: past a threshold the forget jobs are held for confirmation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.discovery import Found, discover
from kb.catalog import SRC_FAILED, Catalog
from kb.jobs import HELD, LANE_FAST, LANE_SLOW, QUEUED, JobQueue
from kb.paths import absolute, display, from_uri, to_uri
from kb.settings import DEFAULT_IGNORE

log = logging.getLogger(__name__)

# Recordings can take an hour each: they get the slow lane whatever their size.
MEDIA_TYPES = frozenset(
    ["wav", "mp3", "m4a", "aac", "flac", "ogg", "oga", "opus", "webm", "mp4", "m4v", "mkv", "mov", "avi", "wma"]
)

# Jobs are claimed by priority (lower first): forgets after ingests and moves (see Scanner.queue_forget).
FORGET_PRIORITY = 1


@dataclass
class ScanReport:
    """What a scan found and queued, kept as the batch's info for the requester."""

    files: int = 0
    queued: int = 0
    unchanged: int = 0
    forgotten: int = 0  # files someone forgot, unchanged since: they stay out
    still_failing: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    removed: int = 0
    moved: int = 0
    retagged: int = 0
    held: int = 0
    held_roots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def job_key(action: str, uri: str, payload: dict[str, Any]) -> str | None:
    """A move has its own key (old and new path): a later change at the old path must not replace it, nor a
    second move from the same path. Other per-file jobs share the source's key (None: the default)."""
    return f"move:{uri}>{payload['to']}" if action == "move" else None


def lane_for(path: Path, size: int, slow_lane_bytes: int) -> str:
    """Long work (recordings, big files) goes to its own lane so it never blocks short work."""
    if path.suffix.lower().lstrip(".") in MEDIA_TYPES or size > slow_lane_bytes:
        return LANE_SLOW
    return LANE_FAST


class Scanner:
    """Turns 'these files and folders' into ingest, move and forget jobs."""

    def __init__(
        self, catalog: Catalog, jobs: JobQueue, *, slow_lane_bytes: int, mass_delete_ratio: float,
        mass_delete_min: int, ignore: Sequence[str] = DEFAULT_IGNORE,
        tag_for: Callable[[Path], str | None] = lambda path: None,
    ) -> None:
        self.catalog = catalog
        self.jobs = jobs
        self.slow_lane_bytes = slow_lane_bytes
        self.mass_delete_ratio = mass_delete_ratio
        self.mass_delete_min = mass_delete_min
        self.ignore = list(ignore)
        self.tag_for = tag_for  # the watched folder's tag for a path (stored on its source)

    def scan(
        self, paths: Sequence[Path], *, batch: str | None, force: bool = False, mirror: bool = True,
    ) -> ScanReport:
        report = ScanReport()
        roots = [absolute(p) for p in paths]
        pending: list[tuple[str, str, str, dict[str, Any]]] = []  # (action, uri, lane, payload)
        new_files: dict[int, Found] = {}  # index in pending -> a file the catalog has never seen
        known: dict[str, Any] = {}
        tombs: dict[str, tuple[int | None, int | None]] = {}
        for root in roots:
            if root.is_dir():
                known.update(self.catalog.sources_under(to_uri(root).rstrip("/") + "/"))
            tombs.update(self.catalog.forgotten(to_uri(root)))
        back: list[str] = []  # forgotten files that changed (or are forced): they come back
        seen: set[str] = set()
        unreadable: list[str] = []
        for f in discover(roots, self.ignore):
            uri = to_uri(f.path)
            if f.error:
                if self._is_dir_error(f):
                    unreadable.append(uri.rstrip("/") + "/")
                    report.errors.append({"path": display(uri), "error": f.error})
                    continue
                seen.add(uri)
                report.files += 1
                self.catalog.record_failure(uri, "file", f.error, size=None, mtime_ns=None, tag=self.tag_for(f.path))
                report.errors.append({"path": display(uri), "error": f.error})
                continue
            seen.add(uri)
            report.files += 1
            src = known.get(uri) if uri in known else self.catalog.source(uri)
            same_stat = src is not None and src.size == f.size and src.mtime_ns == f.mtime_ns
            if same_stat and not force and src is not None:
                if src.status == SRC_FAILED:
                    # these bytes were tried; the job retries on its own schedule or waits for `kb retry`
                    report.still_failing.append({"path": display(uri), "error": src.error})
                else:
                    report.unchanged += 1
                    tag = self.tag_for(f.path)
                    if src.tag != tag and src.doc_id is not None:
                        # the folder's tag changed in the settings: a move onto itself retags, embeds nothing
                        pending.append(("move", uri, LANE_FAST, {"to": uri, "tag": tag}))
                        report.retagged += 1
                continue
            if src is None and uri in tombs:
                if tombs[uri] == (f.size, f.mtime_ns) and not force:
                    report.forgotten += 1
                    continue
                back.append(uri)
            if src is None:
                new_files[len(pending)] = f
            payload = {"force": force, "tag": self.tag_for(f.path)}
            pending.append(("ingest", uri, lane_for(f.path, f.size, self.slow_lane_bytes), payload))
        if mirror:  # a forgotten file that was deleted since needs no tombstone
            back += [u for u in tombs if u not in seen and not u.startswith(tuple(unreadable))]
        self.catalog.unforget(back)
        gone = self._gone(roots, known, seen, unreadable) if mirror else {}
        if not force:
            self._pair_moves(pending, new_files, gone, known, report)
        self._enqueue(pending, batch, QUEUED)
        report.queued = len(pending)
        if mirror:
            self._mirror(roots, known, gone, batch, report)
        return report

    @staticmethod
    def _is_dir_error(f: Found) -> bool:
        try:
            return f.path.is_dir() or (not f.path.exists() and not f.path.is_symlink())
        except OSError:
            return True

    @staticmethod
    def _gone(
        roots: list[Path], known: dict[str, Any], seen: set[str], unreadable: list[str]
    ) -> dict[str, list[str]]:
        """Per root prefix: the sources no longer on disk. A folder that could not be read this time (or a
        root that is missing, an unmounted disk) keeps what we had from it: unreadable is not deleted."""
        out: dict[str, list[str]] = {}
        for root in roots:
            if not root.is_dir():
                continue
            prefix = to_uri(root).rstrip("/") + "/"
            out[prefix] = [
                u for u in known if u.startswith(prefix) and u not in seen and not u.startswith(tuple(unreadable))
            ]
        return out

    @staticmethod
    def _pair_moves(
        pending: list[tuple[str, str, str, dict[str, Any]]], new_files: dict[int, Found],
        gone: dict[str, list[str]], known: dict[str, Any], report: ScanReport,
    ) -> None:
        """A gone file and a new file with the same name, size and modification time are one file moved
        (while the service was stopped, or between two watched folders): its document is kept, not
        re-embedded (the move job still checks the stat, and falls back to forget + ingest)."""
        if not new_files:
            return
        by_stat: dict[tuple[str, int, int], list[tuple[str, str]]] = {}
        for prefix, uris in gone.items():
            for u in uris:
                s = known[u]
                if s.size is not None and s.mtime_ns is not None and s.doc_id is not None:
                    by_stat.setdefault((from_uri(u).name, s.size, s.mtime_ns), []).append((prefix, u))
        if not by_stat:
            return
        for i, f in new_files.items():
            candidates = by_stat.get((f.path.name, f.size, f.mtime_ns))
            if not candidates:
                continue
            prefix, old = candidates.pop()
            gone[prefix].remove(old)
            _, new, _, payload = pending[i]
            pending[i] = ("move", old, LANE_FAST, {"to": new, "tag": payload.get("tag")})
            report.moved += 1

    def _mirror(
        self, roots: list[Path], known: dict[str, Any], gone: dict[str, list[str]], batch: str | None,
        report: ScanReport,
    ) -> None:
        """Forget what disappeared from the folders, holding the deletions when a folder looks emptied."""
        for prefix, uris in gone.items():
            if not uris:
                continue
            under = sum(1 for u in known if u.startswith(prefix))
            state = QUEUED
            if len(uris) >= self.mass_delete_min and len(uris) > self.mass_delete_ratio * under:
                state = HELD
                report.held += len(uris)
                report.held_roots.append(display(prefix))
                log.info(
                    "%s: %d of %d files seem to have disappeared; holding their removal for confirmation "
                    "(kb held --confirm)", display(prefix), len(uris), under,
                )
            else:
                report.removed += len(uris)
            self.queue_forget(uris, batch, state=state)

    def queue_forget(self, uris: Sequence[str], batch: str | None, *, state: str = QUEUED) -> None:
        """Forget jobs run after the ingest and move jobs queued beside them (a higher priority number), so
        content that moved is linked at its new path before its old source goes, and never re-embedded."""
        self._enqueue([("forget", u, LANE_FAST, {}) for u in uris], batch, state, priority=FORGET_PRIORITY)

    def _enqueue(
        self, items: list[tuple[str, str, str, dict[str, Any]]], batch: str | None, state: str, priority: int = 0
    ) -> None:
        for i in range(0, len(items), 500):
            with self.jobs.transaction() as db:
                for action, uri, lane, payload in items[i : i + 500]:
                    self.jobs.enqueue(
                        db, action, uri, key=job_key(action, uri, payload), lane=lane, payload=payload,
                        batch=batch, state=state, priority=priority,
                    )
