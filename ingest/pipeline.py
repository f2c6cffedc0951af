"""The ingest worker: decide what changed, parse, chunk, embed, and write catalog then vectors.

Write order, chosen so a kill -9 anywhere leaves nothing half-done after the next start:
1. catalog: the document and all its chunks, status 'indexing' (one transaction);
2. Chroma: upsert the chunk vectors (ids derive from the content hash, so a retry overwrites);
3. catalog: status 'indexed' and the sources pointed at it (one transaction);
4. previous versions: status 'deleting', then vectors removed, then rows.
`recover()` finishes step 2-3 for 'indexing' documents that have sources, purges those that do not, and
completes step 4; after an unclean stop it also removes any vector whose id the catalog does not know.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.chunking import embed_text
from ingest.discovery import Found, absolute, discover
from ingest.parsing import Failed, Parsed, ParseService
from kb.catalog import (
    DOC_DELETING,
    DOC_EMPTY,
    DOC_INDEXED,
    DOC_INDEXING,
    SRC_EMPTY,
    SRC_INDEXED,
    Catalog,
    ChunkRecord,
    chunk_id,
)
from kb.embedding import Embedder
from kb.index import Metadata, VectorIndex

log = logging.getLogger(__name__)

RUNNING_FLAG = "ingest_running"
Progress = Callable[[str, str], None]  # (path, outcome) after each file


@dataclass
class IngestReport:
    """What one ingest run did, for the CLI summary and --json."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    empty: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0

    @property
    def files(self) -> int:
        return self.added + self.updated + self.unchanged + len(self.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files, "added": self.added, "updated": self.updated, "unchanged": self.unchanged,
            "removed": self.removed, "failed": len(self.failed), "empty": len(self.empty),
            "chunks": self.chunks, "seconds": round(self.seconds, 3),
            "failures": [{"path": p, "error": e} for p, e in self.failed],
            "empty_files": self.empty,
        }


@dataclass
class _Waiting:
    found: Found
    existed: bool


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _iso_from_ns(mtime_ns: int) -> str | None:
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds") if mtime_ns else None


def _timestamp(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError, OSError):
        return None


def chunk_metadata(
    doc_id: int, kind: str, file_type: str, path: str, created_at: str | None, modified_at: str | None,
    added_at: float, chunk: ChunkRecord,
) -> Metadata:
    """Chroma metadata for filtering: which document, what kind, where from, when, which page."""
    md: Metadata = {
        "doc_id": doc_id, "kind": kind, "file_type": file_type, "path": path, "source_type": "file",
        "added_ts": int(added_at), "seq": chunk.seq, "ocr": chunk.ocr,
    }
    for key, iso in (("created_ts", created_at), ("modified_ts", modified_at)):
        ts = _timestamp(iso)
        if ts is not None:
            md[key] = ts
    if chunk.page is not None:
        md["page"] = chunk.page
    if chunk.t_start is not None:
        md["t_start"] = chunk.t_start
    return md


class Ingestor:
    """Brings the catalog and the vector index in line with a set of files."""

    def __init__(
        self, catalog: Catalog, index: Callable[[], VectorIndex], embedder: Embedder, parser: ParseService,
        *, max_file_bytes: int, embed_batch: int = 256,
    ) -> None:
        self.catalog = catalog
        self._index_factory = index
        self._index: VectorIndex | None = None
        self.embedder = embedder
        self.parser = parser
        self.max_file_bytes = max_file_bytes
        self.embed_batch = embed_batch
        self._notify: Progress = lambda _p, _o: None

    @property
    def index(self) -> VectorIndex:
        if self._index is None:
            self._index = self._index_factory()
        return self._index

    # -- recovery ---------------------------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo whatever an interrupted run left in flight. Cheap when nothing did."""
        doomed = self.catalog.document_ids_with_status(DOC_DELETING) + self.catalog.unreferenced_documents()
        self._purge(doomed)
        for doc_id in self.catalog.document_ids_with_status(DOC_INDEXING):
            doc = self.catalog.document(doc_id)
            if doc is None:
                continue
            chunks = self.catalog.chunks_of(doc_id)
            vectors = self.embedder.embed([embed_text(c.text, c.section) for c in chunks])
            path = doc.paths[0] if doc.paths else ""
            self.index.upsert(
                [c.id for c in chunks], vectors,
                [chunk_metadata(doc_id, doc.kind, doc.file_type, path, doc.created_at, doc.modified_at,
                                doc.added_at, c)
                 for c in chunks],
            )
            self.catalog.set_document_status(doc_id, DOC_INDEXED)
        if self.catalog.get_meta(RUNNING_FLAG) == "1":
            orphans = self.index.all_ids() - self.catalog.all_chunk_ids()
            if orphans:
                log.warning("removing %d vectors the catalog does not know", len(orphans))
                self.index.delete_ids(orphans)
            self.catalog.set_meta(RUNNING_FLAG, "0")

    def _purge(self, doc_ids: Iterable[int]) -> None:
        for doc_id in doc_ids:
            self.index.delete_document(doc_id)
            self.catalog.delete_document(doc_id)

    # -- ingest -----------------------------------------------------------------------------------
    def ingest(
        self, paths: Sequence[Path], *, progress: Progress | None = None, force: bool = False,
        mirror: bool = True, on_total: Callable[[int], None] | None = None,
    ) -> IngestReport:
        """Ingest files and folders (recursively). With mirror, files gone from a folder are forgotten."""
        started = time.monotonic()
        self.recover()
        self.catalog.set_meta(RUNNING_FLAG, "1")
        report = IngestReport()
        roots = [absolute(p) for p in paths]
        known: dict[str, Any] = {}
        for root in roots:
            if root.is_dir():
                known.update(self.catalog.sources_under(str(root) + "/"))
        found = list(discover(roots))
        if on_total is not None:
            on_total(len(found))
        seen = {str(f.path) for f in found}
        waiting: dict[str, list[_Waiting]] = {}
        hash_of: dict[Path, str] = {}
        registry = self.parser.registry()
        notify = progress or (lambda _p, _o: None)
        self._notify = notify

        def fail(f: Found, error: str, content_hash: str | None = None) -> None:
            orphans = self.catalog.record_failure(
                str(f.path), "file", error, size=f.size, mtime_ns=f.mtime_ns, content_hash=content_hash
            )
            self._purge(orphans)
            report.failed.append((str(f.path), error))
            notify(str(f.path), "failed")

        def candidates() -> Iterator[Path]:
            for f in found:
                uri = str(f.path)
                if f.error:
                    fail(f, f.error)
                    continue
                src = known.get(uri) if uri in known else self.catalog.source(uri)
                if (not force and src is not None and src.size == f.size and src.mtime_ns == f.mtime_ns):
                    report.unchanged += 1
                    notify(uri, "unchanged")
                    continue
                if f.size > self.max_file_bytes:
                    fail(f, f"file is {f.size / 2**20:.0f} MiB, over the {self.max_file_bytes / 2**20:.0f} MiB "
                            "limit (setting max_file_mb)")
                    continue
                if f.size == 0:
                    fail(f, "the file is empty (0 bytes)")
                    continue
                if not registry.supports(f.path):
                    ext = f.path.suffix.lower() or "(none)"
                    fail(f, f"unsupported file type {ext}: not ingested")
                    continue
                try:
                    h = file_hash(f.path)
                except OSError as exc:
                    fail(f, f"cannot read the file: {exc.strerror or exc}")
                    continue
                if src is not None and src.content_hash == h and src.status in (SRC_INDEXED, SRC_EMPTY):
                    self.catalog.touch_source(uri, size=f.size, mtime_ns=f.mtime_ns)
                    report.unchanged += 1
                    notify(uri, "unchanged")
                    continue
                entry = _Waiting(f, existed=src is not None)
                if h in waiting:  # the same content is already being parsed in this run
                    waiting[h].append(entry)
                    continue
                doc = self.catalog.document_by_hash(h)
                if doc is not None and doc.status in (DOC_INDEXED, DOC_EMPTY):
                    self._link(doc.id, h, [entry], report, empty=doc.status == DOC_EMPTY)
                    continue
                if doc is not None:  # a leftover from an interrupted run: rebuild it from the file
                    self._purge([doc.id])
                waiting[h] = [entry]
                hash_of[f.path] = h
                yield f.path

        pending: list[tuple[str, Parsed]] = []
        pending_chunks = 0
        for path, outcome in self.parser.run(candidates()):
            h = hash_of.pop(path)
            if isinstance(outcome, Failed):
                for w in waiting.pop(h):
                    fail(w.found, outcome.error, h)
                continue
            pending.append((h, outcome))
            pending_chunks += len(outcome.chunks)
            if pending_chunks >= self.embed_batch:
                self._store(pending, waiting, report)
                pending, pending_chunks = [], 0
        self._store(pending, waiting, report)

        if mirror:
            # A folder we could not read this time keeps what we had from it: unreadable is not deleted.
            unreadable = tuple(str(f.path) + "/" for f in found if f.error and not f.path.is_file())
            gone = [uri for uri in known if uri not in seen and not uri.startswith(unreadable)]
            if gone:
                self._purge(self.catalog.forget_sources(gone))
                report.removed = len(gone)
        self.catalog.set_meta(RUNNING_FLAG, "0")
        report.seconds = time.monotonic() - started
        return report

    def _link(self, doc_id: int, h: str, entries: list[_Waiting], report: IngestReport, *, empty: bool) -> None:
        for w in entries:
            orphans = self.catalog.link_source(
                str(w.found.path), "file", doc_id, content_hash=h, size=w.found.size,
                mtime_ns=w.found.mtime_ns, status=SRC_EMPTY if empty else SRC_INDEXED,
            )
            self._purge(orphans)
            self._count(w, report, empty)

    def _count(self, w: _Waiting, report: IngestReport, empty: bool) -> None:
        if w.existed:
            report.updated += 1
        else:
            report.added += 1
        if empty:
            report.empty.append(str(w.found.path))
        self._notify(str(w.found.path), "empty" if empty else "updated" if w.existed else "added")

    def _store(self, pending: list[tuple[str, Parsed]], waiting: dict[str, list[_Waiting]],
               report: IngestReport) -> None:
        """Embed a batch of parsed files together (bigger batches run faster), then write each."""
        if not pending:
            return
        texts = [c.embed_text() for _, p in pending for c in p.chunks]
        vectors = self.embedder.embed(texts)
        offset = 0
        for h, parsed in pending:
            n = len(parsed.chunks)
            vecs = vectors[offset : offset + n]
            offset += n
            entries = waiting.pop(h)
            primary = str(entries[0].found.path)
            records = [
                ChunkRecord(
                    id=chunk_id(h, i), doc_id=0, seq=i, text=c.text, section=c.section, page=c.page,
                    page_end=c.page_end, char_start=c.char_start, char_end=c.char_end, t_start=c.t_start,
                    t_end=c.t_end, ocr=c.ocr, n_tokens=c.n_tokens,
                )
                for i, c in enumerate(parsed.chunks)
            ]
            added_at = time.time()
            # formats without their own dates (text, Markdown, images) get the file's modification time
            modified_at = parsed.modified_at or _iso_from_ns(entries[0].found.mtime_ns)
            doc_id = self.catalog.insert_document(
                content_hash=h, kind=parsed.kind, file_type=parsed.file_type,
                title=parsed.title or Path(primary).stem, author=parsed.author,
                created_at=parsed.created_at, modified_at=modified_at,
                size=entries[0].found.size, meta=parsed.meta, text=parsed.text, chunks=records,
            )
            if records:
                self.index.upsert(
                    [r.id for r in records], vecs,
                    [chunk_metadata(doc_id, parsed.kind, parsed.file_type, primary, parsed.created_at,
                                    modified_at, added_at, r) for r in records],
                )
            links = [(str(w.found.path), "file", w.found.size, w.found.mtime_ns) for w in entries]
            self._purge(self.catalog.finish_document(doc_id, links, h))
            for w in entries:
                self._count(w, report, empty=not records)
            report.chunks += n

    # -- forget / reindex -------------------------------------------------------------------------
    def forget(self, paths: Sequence[Path]) -> int:
        """Remove files (or everything under folders) from the library: sources, chunks, vectors."""
        self.recover()
        uris: list[str] = []
        for p in paths:
            a = str(absolute(p))
            uris += list(self.catalog.sources_under(a.rstrip("/") + "/"))
            if self.catalog.source(a) is not None:
                uris.append(a)
        self._purge(self.catalog.forget_sources(uris))
        return len(uris)

    def reindex(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Rebuild every vector from the catalog's chunk text with the configured embedding model."""
        self.catalog.set_meta(RUNNING_FLAG, "1")
        index = self.index  # opened for a rebuild: an empty collection for the configured model
        total = self.catalog.chunk_count()
        done = 0
        for batch in self.catalog.iter_chunk_batches(512):
            docs = self.catalog.documents(c.doc_id for c in batch)
            vectors = self.embedder.embed([embed_text(c.text, c.section) for c in batch])
            metas = []
            for c in batch:
                d = docs[c.doc_id]
                metas.append(chunk_metadata(c.doc_id, d.kind, d.file_type, d.paths[0] if d.paths else "",
                                            d.created_at, d.modified_at, d.added_at, c))
            index.upsert([c.id for c in batch], vectors, metas)
            done += len(batch)
            if progress:
                progress(done, total)
        for doc_id in self.catalog.document_ids_with_status(DOC_INDEXING):
            self.catalog.set_document_status(doc_id, DOC_INDEXED)
        self.catalog.set_meta("embed_model", self.embedder.name)
        self.catalog.set_meta("embed_dim", str(self.embedder.dim))
        self.catalog.set_meta(RUNNING_FLAG, "0")
        return done
