"""Writing documents: embed chunks, then catalog and Chroma in an order that survives a crash anywhere.

1. catalog: the document and all its chunks, status 'indexing', claimed by its job (one transaction);
2. Chroma: upsert the chunk vectors in slices (ids derive from the content hash, so a retry overwrites);
3. catalog: status 'indexed', the sources pointed at it, the claim released (one transaction);
4. previous versions: status 'deleting', then vectors removed, then rows.
A job killed between 1 and 3 runs again and resumes its document (only missing vectors are embedded);
recovery at service start completes 4 and purges documents whose job no longer exists.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path

import numpy as np

from ingest.chunking import embed_text
from ingest.parsing import Parsed
from kb.catalog import DOC_EMPTY, DOC_INDEXED, Catalog, ChunkRecord, DocumentRecord, Link, chunk_id
from kb.embedding import Embedder
from kb.index import Metadata, VectorIndex
from kb.paths import display, from_uri

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, float, "float | None"], None]


def _timestamp(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError, OSError):
        return None


def iso_from_ns(mtime_ns: int | None) -> str | None:
    return datetime.fromtimestamp(mtime_ns / 1e9).isoformat(timespec="seconds") if mtime_ns else None


def chunk_metadata(doc: DocumentRecord, chunk: ChunkRecord) -> Metadata:
    """Chroma metadata for filtering: a copy of catalog facts (kept current by `Store.refresh_metadata`)."""
    md: Metadata = {
        "doc_id": doc.id, "kind": doc.kind, "file_type": doc.file_type, "path": doc.paths[0] if doc.paths else "",
        "source_type": doc.source_types[0] if doc.source_types else "file", "added_ts": int(doc.added_at),
        "seq": chunk.seq, "ocr": chunk.ocr,
        # the first source's tag; "" when untagged, so a tag that went away is overwritten, not left behind
        "tag": (doc.tags[0] if doc.tags else None) or "",
    }
    for key, iso in (("created_ts", doc.created_at), ("modified_ts", doc.modified_at)):
        ts = _timestamp(iso)
        if ts is not None:
            md[key] = ts
    if chunk.page is not None:
        md["page"] = chunk.page
    if chunk.t_start is not None:
        md["t_start"] = chunk.t_start
    if chunk.role is not None:
        md["role"] = chunk.role
    return md


class Interrupted(Exception):
    """A write stopped between slices because the service is stopping (the job resumes later)."""


class Store:
    """Embeds and writes parsed documents; purges documents; keeps Chroma metadata in line."""

    # Chunks embedded and upserted at a time: progress, memory, and how soon a stop is honoured (a slice
    # takes seconds on a busy machine; the runner waits for the slice in flight before releasing the lock).
    SLICE = 128

    def __init__(
        self, catalog: Catalog, index: Callable[[], VectorIndex], embedder: Embedder,
        *, write_lock: threading.RLock | None = None,
    ) -> None:
        self.catalog = catalog
        self._index = index
        self.embedder = embedder
        # Held for every vector write; a reindex holds it while it swaps collections.
        self.write_lock = write_lock or threading.RLock()

    @property
    def index(self) -> VectorIndex:
        return self._index()

    # -- writing ----------------------------------------------------------------------------------
    def write(
        self, *, job_id: int | None, content_hash: str, parsed: Parsed, links: Sequence[Link],
        vectors: np.ndarray | None = None, progress: ProgressFn | None = None, size: int | None = None,
        primary_mtime_ns: int | None = None, should_stop: Callable[[], bool] | None = None,
    ) -> tuple[int, list[int]]:
        """Store a parsed document for its sources; returns (doc id, ids of replaced documents purged)."""
        records = [
            ChunkRecord(
                id=chunk_id(content_hash, i), doc_id=0, seq=i, text=c.text, section=c.section, page=c.page,
                page_end=c.page_end, char_start=c.char_start, char_end=c.char_end, t_start=c.t_start,
                t_end=c.t_end, ocr=c.ocr, n_tokens=c.n_tokens, role=c.role,
            )
            for i, c in enumerate(parsed.chunks)
        ]
        primary = links[0].uri if links else ""
        # formats without their own dates (text, Markdown, images) get the file's modification time
        modified_at = parsed.modified_at or iso_from_ns(primary_mtime_ns)
        existing = self.catalog.document_by_hash(content_hash)
        if existing is not None:  # a re-parse of the same bytes (`kb reindex --reparse`): replace in place
            doc_id = existing.id
            self.catalog.replace_document(
                doc_id, kind=parsed.kind, file_type=parsed.file_type,
                title=parsed.title or display(Path(from_uri(primary)).stem), author=parsed.author,
                created_at=parsed.created_at, modified_at=modified_at, meta=parsed.meta, text=parsed.text,
                chunks=records, pipeline_version=parsed.parser_version, claim_job=job_id,
            )
            surplus = [chunk_id(content_hash, i) for i in range(len(records), existing.chunk_count)]
            if surplus:
                with self.write_lock:
                    self.index.delete_ids(surplus)
        else:
            doc_id = self.catalog.insert_document(
                content_hash=content_hash, kind=parsed.kind, file_type=parsed.file_type,
                title=parsed.title or display(Path(from_uri(primary)).stem), author=parsed.author,
                created_at=parsed.created_at, modified_at=modified_at, size=size, meta=parsed.meta,
                text=parsed.text, chunks=records, pipeline_version=parsed.parser_version, claim_job=job_id,
            )
        return doc_id, self.finish(
            doc_id, content_hash, links, vectors=vectors, progress=progress, should_stop=should_stop
        )

    def finish(
        self, doc_id: int, content_hash: str, links: Sequence[Link], *, vectors: np.ndarray | None = None,
        progress: ProgressFn | None = None, should_stop: Callable[[], bool] | None = None,
    ) -> list[int]:
        """Steps 2-4 for a document whose rows are written: vectors (the missing ones), then link sources."""
        doc = self.catalog.document(doc_id)
        if doc is None:
            return []
        if not doc.paths:
            doc.paths, doc.tags = [ln.uri for ln in links[:1]], [ln.tag for ln in links[:1]]
            doc.source_types = [ln.source_type for ln in links[:1]]
        chunks = self.catalog.chunks_of(doc_id)
        if chunks:
            self._upsert(doc, chunks, vectors, progress, should_stop)
        # The vectors were written with this document's first path: no metadata refresh needed here.
        orphans = self.catalog.finish_document(doc_id, links, content_hash)
        self.purge(orphans)
        return orphans

    def _upsert(
        self, doc: DocumentRecord, chunks: list[ChunkRecord], vectors: np.ndarray | None,
        progress: ProgressFn | None, should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.index.check_model()  # never mix vectors of two models in one collection
        if vectors is not None and len(vectors) == len(chunks):
            todo = list(range(len(chunks)))
        else:
            vectors = None
            have = self.index.existing([c.id for c in chunks])  # resuming: only what is missing
            todo = [i for i, c in enumerate(chunks) if c.id not in have]
        # Slices of similar length: the model pads every text of a batch to its longest, so slicing a
        # length-sorted list wastes as little as embedding the whole document in one call would.
        todo.sort(key=lambda i: len(chunks[i].text) + len(chunks[i].section or ""))
        for start in range(0, len(todo), self.SLICE):
            if should_stop is not None and should_stop():
                raise Interrupted()
            part = todo[start : start + self.SLICE]
            sel = [chunks[i] for i in part]
            vecs = vectors[part] if vectors is not None else self.embed([embed_text(c.text, c.section) for c in sel])
            with self.write_lock:
                self.index.upsert([c.id for c in sel], vecs, [chunk_metadata(doc, c) for c in sel])
            if progress is not None:
                progress("embedding", min(start + len(part), len(todo)), len(todo))

    def resume_vectors(self, doc: DocumentRecord) -> None:
        """Embed and upsert whichever of a document's chunks have no vector."""
        chunks = self.catalog.chunks_of(doc.id)
        if chunks:
            self._upsert(doc, chunks, None, None)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.embedder.embed(list(texts))

    def link(self, doc: DocumentRecord, links: Sequence[Link]) -> list[int]:
        """Point sources at an existing document (the same content seen at another path)."""
        orphans: list[int] = []
        status = "empty" if doc.status == DOC_EMPTY else "indexed"
        for ln in links:
            orphans += self.catalog.link_source(
                ln.uri, ln.source_type, doc.id, content_hash=doc.content_hash, size=ln.size, mtime_ns=ln.mtime_ns,
                status=status, parent_uri=ln.parent_uri, warning=ln.warning, tag=ln.tag,
            )
        self.purge(orphans)
        return orphans

    # -- removing ---------------------------------------------------------------------------------
    def purge(self, doc_ids: Iterable[int]) -> None:
        """Remove documents: vectors first, then rows (a crash between leaves 'deleting' for recovery)."""
        for doc_id in doc_ids:
            with self.write_lock:
                self.index.delete_document(doc_id)
            self.catalog.delete_document(doc_id)

    def forget(self, uris: Sequence[str]) -> int:
        """Drop sources and everything inside them (a message's attachments, theirs, ...); documents left
        without any source go with their vectors. Returns the sources asked for that were dropped."""
        asked = len(uris)
        uris = [*uris, *self.catalog.descendants(uris)]
        survivors = {s.doc_id for s in (self.catalog.source(u) for u in uris) if s is not None and s.doc_id}
        orphans = self.catalog.forget_sources(uris)
        self.purge(orphans)
        self.refresh_metadata([d for d in survivors if d not in orphans])
        return asked

    def refresh_metadata(self, doc_ids: Iterable[int]) -> None:
        """Copy catalog facts (first path, kind, dates) into Chroma metadata where they changed."""
        docs = self.catalog.documents(doc_ids)
        for doc in docs.values():
            if doc.status != DOC_INDEXED or not doc.paths:
                continue
            chunks = self.catalog.chunks_of(doc.id)
            if not chunks:
                continue
            got = self.index.metadata([chunks[0].id])
            current = got.get(chunks[0].id)
            want = chunk_metadata(doc, chunks[0])
            if current is not None and all(current.get(k) == v for k, v in want.items() if k != "seq"):
                continue
            with self.write_lock:
                self.index.update_metadata([c.id for c in chunks], [chunk_metadata(doc, c) for c in chunks])

