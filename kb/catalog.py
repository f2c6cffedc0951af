"""The SQLite catalog: source of truth for documents, their sources and versions, chunks and errors.

Chroma only mirrors chunk embeddings; every chunk id in Chroma is a chunk id here, so the vectors can be
rebuilt from the catalog (``kb reindex``) and orphans can be found by comparing id sets.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb.errors import CatalogError
from kb.migrations import migrate
from kb.paths import safe_text

# Document lifecycle. "indexing": chunks are in the catalog, vectors may be partial (a crash here is
# finished on the next start). "deleting": vectors are being removed, then the rows go.
DOC_INDEXING = "indexing"
DOC_INDEXED = "indexed"
DOC_EMPTY = "empty"
DOC_DELETING = "deleting"

SRC_INDEXED = "indexed"
SRC_EMPTY = "empty"
SRC_FAILED = "failed"

@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as stored: its text plus where it sits in the document (page, characters, seconds)."""

    id: str
    doc_id: int
    seq: int
    text: str
    section: str | None = None
    page: int | None = None
    page_end: int | None = None
    char_start: int = 0
    char_end: int = 0
    t_start: float | None = None
    t_end: float | None = None
    ocr: bool = False
    n_tokens: int = 0
    role: str | None = None  # quote, signature: text that is not the document's own words (weighed less)


@dataclass
class DocumentRecord:
    """A unique piece of content (by hash); one document may be reachable from several sources."""

    id: int
    content_hash: str
    kind: str
    file_type: str
    title: str | None
    author: str | None
    created_at: str | None
    modified_at: str | None
    size: int | None
    status: str
    chunk_count: int
    meta: dict[str, Any]
    added_at: float
    indexed_at: float | None
    paths: list[str] = field(default_factory=list)
    pipeline_version: str | None = None
    tags: list[str | None] = field(default_factory=list)  # the tag of each source, in the order of paths
    source_types: list[str] = field(default_factory=list)  # file | mail | attachment, in the order of paths


@dataclass(frozen=True)
class SourceRecord:
    """Where content came from (a file path, later a mail message), with the last outcome for it."""

    id: int
    uri: str
    source_type: str
    doc_id: int | None
    content_hash: str | None
    size: int | None
    mtime_ns: int | None
    status: str
    error: str | None
    updated_at: float
    warning: str | None = None
    parent_uri: str | None = None
    tag: str | None = None  # the watched folder's or mail account's tag

    @property
    def kept_previous(self) -> bool:
        """A failed update whose previous version is still indexed and searchable."""
        return self.status == SRC_FAILED and self.doc_id is not None


@dataclass(frozen=True)
class Link:
    """A source to point at a finished document, with the facts known about it."""

    uri: str
    source_type: str = "file"
    size: int | None = None
    mtime_ns: int | None = None
    parent_uri: str | None = None
    warning: str | None = None
    tag: str | None = None


def chunk_id(content_hash: str, seq: int) -> str:
    """Chunk ids derive from content, so re-ingesting the same content can never duplicate vectors."""
    return f"{content_hash[:24]}-{seq:05d}"


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
    db.row_factory = sqlite3.Row
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA foreign_keys=ON")
    db.execute("PRAGMA busy_timeout=10000")
    return db


class Catalog:
    """Thread-safe access to the catalog database.

    Writes go through one connection serialised by a lock; plain reads use a second connection (WAL lets
    them run beside a write), so a long write does not stall a search or a status request.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(path)
            migrate(self._db)
            self._rdb = _connect(path)
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"cannot open the catalog {path}: {exc}") from exc
        self._lock = threading.RLock()
        self._rlock = threading.Lock()

    def close(self) -> None:
        with self._lock, self._rlock:
            self._db.close()
            self._rdb.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: everything inside commits together or not at all."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._rlock:
            return self._rdb.execute(sql, params).fetchall()

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One read-only statement on the reader connection: search builds its own SQL (retrieval/lexical.py)
        without waiting behind writes."""
        return self._query(sql, params)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One statement on the write connection (its own transaction)."""
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- meta -------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- sources ----------------------------------------------------------------------------------
    def source(self, uri: str) -> SourceRecord | None:
        rows = self._query("SELECT * FROM sources WHERE uri=?", (uri,))
        return _source(rows[0]) if rows else None

    def sources_under(self, prefix: str, source_type: str = "file") -> dict[str, SourceRecord]:
        """Every source whose uri starts with prefix: one query for a whole folder scan."""
        rows = self._query(
            "SELECT * FROM sources WHERE source_type=? AND substr(uri, 1, ?)=?",
            (source_type, len(prefix), prefix),
        )
        return {r["uri"]: _source(r) for r in rows}

    def remember_forgotten(self, files: Iterable[tuple[str, int | None, int | None]]) -> None:
        """Files forgotten while still in a watched folder, as (uri, size, mtime_ns): kept out until they change."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO forgotten(uri, size, mtime_ns, forgotten_at) VALUES (?,?,?,?)",
                [(u, size, mtime, now) for u, size, mtime in files],
            )

    def forgotten(self, prefix: str) -> dict[str, tuple[int | None, int | None]]:
        """Forgotten files whose uri is `prefix` or starts with it: {uri: (size, mtime_ns)}."""
        rows = self._query("SELECT uri, size, mtime_ns FROM forgotten WHERE substr(uri, 1, ?)=?",
                           (len(prefix), prefix))
        return {r["uri"]: (r["size"], r["mtime_ns"]) for r in rows}

    def unforget(self, uris: Iterable[str]) -> None:
        """The files changed, went away, or someone asked for them again: they may come back."""
        uris = list(uris)
        if uris:
            with self.transaction() as db:
                db.executemany("DELETE FROM forgotten WHERE uri=?", [(u,) for u in uris])

    def all_sources(self, source_type: str | None = None) -> list[SourceRecord]:
        if source_type:
            return [_source(r) for r in self._query("SELECT * FROM sources WHERE source_type=?", (source_type,))]
        return [_source(r) for r in self._query("SELECT * FROM sources")]

    def children(self, parent_uri: str) -> dict[str, SourceRecord]:
        """The sources whose container is parent_uri (a message's or a dropped .eml's attachments)."""
        return {r["uri"]: _source(r) for r in self._query("SELECT * FROM sources WHERE parent_uri=?", (parent_uri,))}

    def descendants(self, uris: Iterable[str]) -> list[str]:
        """Every source inside these (attachments, their attachments, ...), breadth first, each once."""
        seen = set(uris)
        out: list[str] = []
        frontier = list(seen)
        while frontier:
            found: list[str] = []
            for i in range(0, len(frontier), 500):
                part = frontier[i : i + 500]
                marks = ",".join("?" * len(part))
                found += [r["uri"] for r in self._query(f"SELECT uri FROM sources WHERE parent_uri IN ({marks})", part)]
            frontier = [u for u in dict.fromkeys(found) if u not in seen]
            seen.update(frontier)
            out += frontier
        return out

    def containers(self, doc_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """For documents reached through an attachment: the message (or .eml/.msg file) it came in.

        Maps a document id to {"uri", "subject", "from", "date"} of the first such source's container.
        """
        ids = list(set(doc_ids))
        out: dict[int, dict[str, Any]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            rows = self._query(
                "SELECT s.doc_id AS doc_id, s.parent_uri AS parent, d.title AS title, d.author AS author,"
                " d.created_at AS created_at, d.meta AS meta FROM sources s"
                " LEFT JOIN sources p ON p.uri = s.parent_uri LEFT JOIN documents d ON d.id = p.doc_id"
                f" WHERE s.doc_id IN ({marks}) AND s.parent_uri IS NOT NULL ORDER BY s.id",
                part,
            )
            for r in rows:
                if r["doc_id"] in out:
                    continue
                meta = json.loads(r["meta"]) if r["meta"] else {}
                out[r["doc_id"]] = {
                    "uri": r["parent"], "subject": r["title"], "from": meta.get("from") or r["author"],
                    "date": meta.get("date") or r["created_at"],
                }
        return out

    def record_failure(
        self, uri: str, source_type: str, error: str, *, size: int | None, mtime_ns: int | None,
        parent_uri: str | None = None, tag: str | None = None,
    ) -> None:
        """Mark a source failed, keeping any previous good version searchable beside the error.

        A file that fails now (half-written, a timeout under load, turned corrupt) must not destroy what
        was indexed from it; the size and time of the failed attempt are kept so a scan does not queue the
        same bytes again (the job's own retries do that), while a further change does.
        """
        error = safe_text(error)
        with self.transaction() as db:
            row = db.execute("SELECT id FROM sources WHERE uri=?", (uri,)).fetchone()
            now = time.time()
            if row is None:
                db.execute(
                    "INSERT INTO sources(uri, source_type, doc_id, content_hash, size, mtime_ns, status, error,"
                    " first_seen, updated_at, parent_uri, tag) VALUES (?,?,NULL,NULL,?,?,?,?,?,?,?,?)",
                    (uri, source_type, size, mtime_ns, SRC_FAILED, error, now, now, parent_uri, tag),
                )
            else:
                db.execute(
                    "UPDATE sources SET size=?, mtime_ns=?, status=?, error=?, warning=NULL, updated_at=?,"
                    " parent_uri=coalesce(?, parent_uri), tag=? WHERE id=?",
                    (size, mtime_ns, SRC_FAILED, error, now, parent_uri, tag, row["id"]),
                )

    def link_source(
        self, uri: str, source_type: str, doc_id: int, *, content_hash: str, size: int | None,
        mtime_ns: int | None, status: str, parent_uri: str | None = None, warning: str | None = None,
        tag: str | None = None,
    ) -> list[int]:
        """Point a source at a document; returns the ids of documents that lost their last source."""
        with self.transaction() as db:
            old = db.execute("SELECT doc_id FROM sources WHERE uri=?", (uri,)).fetchone()
            error = "no text found in the file" if status == SRC_EMPTY else None
            self._upsert_source(
                db, uri, source_type, doc_id, content_hash, size, mtime_ns, status, error, parent_uri, warning, tag
            )
            if old and old["doc_id"] is not None and old["doc_id"] != doc_id:
                return self._mark_if_unreferenced(db, [old["doc_id"]])
        return []

    def tag_source(self, uri: str, tag: str | None) -> None:
        """Set a source's tag (its watched folder's), whatever its state."""
        with self.transaction() as db:
            db.execute("UPDATE sources SET tag=? WHERE uri=?", (tag, uri))

    def touch_source(self, uri: str, *, size: int, mtime_ns: int) -> None:
        """Same content, new timestamp (e.g. a `touch`): remember the stat so the next scan is instant."""
        with self.transaction() as db:
            db.execute(
                "UPDATE sources SET size=?, mtime_ns=?, updated_at=? WHERE uri=?",
                (size, mtime_ns, time.time(), uri),
            )

    def forget_sources(self, uris: Iterable[str]) -> list[int]:
        """Drop sources; returns documents left without any source (to be deleted with their vectors)."""
        uris = list(uris)
        with self.transaction() as db:
            doc_ids: list[int] = []
            for i in range(0, len(uris), 500):
                part = uris[i : i + 500]
                marks = ",".join("?" * len(part))
                doc_ids += [
                    r["doc_id"]
                    for r in db.execute(
                        f"SELECT doc_id FROM sources WHERE uri IN ({marks}) AND doc_id IS NOT NULL", part
                    )
                ]
                db.execute(f"DELETE FROM sources WHERE uri IN ({marks})", part)
            return self._mark_if_unreferenced(db, doc_ids)

    def sources_moving(self, uri: str) -> list[SourceRecord]:
        """What moves with a file or folder: the source at `uri`, the sources under it as a folder, and the
        parts of it as a container (attachments: `uri#n/...`)."""
        uri = uri.rstrip("/") or "/"
        rows = self._query(
            "SELECT * FROM sources WHERE uri=? OR substr(uri, 1, ?) IN (?, ?) ORDER BY id",
            (uri, len(uri) + 1, uri + "/", uri + "#"),
        )
        return [_source(r) for r in rows]

    def rename_sources(self, renames: dict[str, str], *, tag: str | None) -> tuple[set[int], list[int]]:
        """Give sources new uris (a file or folder moved) in one transaction; their documents stay as they are.

        A source already at a new uri (the target was overwritten by the move) is replaced by the moved one.
        Parent links follow (an attachment's container moved with it). Returns (documents whose sources
        changed, documents left without any source).
        """
        touched: set[int] = set()
        dropped: list[int] = []
        now = time.time()
        with self.transaction() as db:
            for old, new in renames.items():
                row = db.execute("SELECT id, doc_id, parent_uri FROM sources WHERE uri=?", (old,)).fetchone()
                if row is None:
                    continue
                if old == new:  # not moved, only its tag changes (the folder's tag changed in the settings)
                    db.execute("UPDATE sources SET tag=?, updated_at=? WHERE id=?", (tag, now, row["id"]))
                    if row["doc_id"] is not None:
                        touched.add(row["doc_id"])
                    continue
                target = db.execute("SELECT id, doc_id FROM sources WHERE uri=?", (new,)).fetchone()
                if target is not None:
                    if target["doc_id"] is not None:
                        dropped.append(target["doc_id"])
                    db.execute("DELETE FROM sources WHERE id=?", (target["id"],))
                parent = row["parent_uri"]
                if parent is not None and parent in renames:
                    parent = renames[parent]
                db.execute(
                    "UPDATE sources SET uri=?, parent_uri=?, tag=?, updated_at=? WHERE id=?",
                    (new, parent, tag, now, row["id"]),
                )
                if row["doc_id"] is not None:
                    touched.add(row["doc_id"])
            orphans = self._mark_if_unreferenced(db, dropped)
        return touched - set(orphans), orphans

    def _upsert_source(
        self, db: sqlite3.Connection, uri: str, source_type: str, doc_id: int | None,
        content_hash: str | None, size: int | None, mtime_ns: int | None, status: str, error: str | None,
        parent_uri: str | None = None, warning: str | None = None, tag: str | None = None,
    ) -> None:
        now = time.time()
        row = db.execute("SELECT id, content_hash FROM sources WHERE uri=?", (uri,)).fetchone()
        if row is None:
            cur = db.execute(
                "INSERT INTO sources(uri, source_type, doc_id, content_hash, size, mtime_ns, status, error,"
                " first_seen, updated_at, parent_uri, warning, tag) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (uri, source_type, doc_id, content_hash, size, mtime_ns, status, error, now, now, parent_uri,
                 warning, tag),
            )
            source_id = cur.lastrowid
            changed = content_hash is not None
        else:
            source_id = row["id"]
            changed = content_hash is not None and content_hash != row["content_hash"]
            db.execute(
                "UPDATE sources SET source_type=?, doc_id=?, content_hash=?, size=?, mtime_ns=?, status=?,"
                " error=?, updated_at=?, parent_uri=coalesce(?, parent_uri), warning=?, tag=? WHERE id=?",
                (source_type, doc_id, content_hash, size, mtime_ns, status, error, now, parent_uri, warning,
                 tag, source_id),
            )
        if changed:
            db.execute(
                "INSERT INTO versions(source_id, content_hash, seen_at) VALUES (?,?,?)",
                (source_id, content_hash, now),
            )

    def _mark_if_unreferenced(self, db: sqlite3.Connection, doc_ids: Iterable[int]) -> list[int]:
        orphans = []
        for doc_id in set(doc_ids):
            ref = db.execute("SELECT 1 FROM sources WHERE doc_id=? LIMIT 1", (doc_id,)).fetchone()
            if ref is None:
                db.execute("UPDATE documents SET status=? WHERE id=?", (DOC_DELETING, doc_id))
                orphans.append(doc_id)
        return orphans

    # -- documents --------------------------------------------------------------------------------
    def document_by_hash(self, content_hash: str) -> DocumentRecord | None:
        rows = self._query("SELECT * FROM documents WHERE content_hash=?", (content_hash,))
        return _document(rows[0]) if rows else None

    def document(self, doc_id: int) -> DocumentRecord | None:
        rows = self._query("SELECT * FROM documents WHERE id=?", (doc_id,))
        if not rows:
            return None
        doc = _document(rows[0])
        for r in self._query("SELECT uri, tag, source_type FROM sources WHERE doc_id=? ORDER BY id", (doc_id,)):
            doc.paths.append(r["uri"])
            doc.tags.append(r["tag"])
            doc.source_types.append(r["source_type"])
        return doc

    def documents(self, doc_ids: Iterable[int]) -> dict[int, DocumentRecord]:
        ids = list(set(doc_ids))
        out: dict[int, DocumentRecord] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            for r in self._query(f"SELECT * FROM documents WHERE id IN ({marks})", part):
                out[r["id"]] = _document(r)
            for r in self._query(
                f"SELECT doc_id, uri, tag, source_type FROM sources WHERE doc_id IN ({marks}) ORDER BY id", part
            ):
                out[r["doc_id"]].paths.append(r["uri"])
                out[r["doc_id"]].tags.append(r["tag"])
                out[r["doc_id"]].source_types.append(r["source_type"])
        return out

    def document_ids_with_status(self, *statuses: str) -> list[int]:
        marks = ",".join("?" * len(statuses))
        return [r["id"] for r in self._query(f"SELECT id FROM documents WHERE status IN ({marks})", statuses)]

    def unreferenced_documents(self) -> list[int]:
        """Finished documents no source points at (e.g. a crash between relinking and deleting)."""
        rows = self._query(
            "SELECT d.id FROM documents d WHERE d.status IN (?, ?) AND NOT EXISTS"
            " (SELECT 1 FROM sources s WHERE s.doc_id = d.id)",
            (DOC_INDEXED, DOC_EMPTY),
        )
        return [r["id"] for r in rows]

    def insert_document(
        self, *, content_hash: str, kind: str, file_type: str, title: str | None, author: str | None,
        created_at: str | None, modified_at: str | None, size: int | None, meta: dict[str, Any],
        text: str, chunks: Sequence[ChunkRecord], pipeline_version: str | None = None,
        claim_job: int | None = None,
    ) -> int:
        """Write a document and all its chunks in one transaction, status 'indexing' (vectors follow).

        `claim_job` names the job writing it: recovery never purges a document whose job is still alive.
        """
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO documents(content_hash, kind, file_type, title, author, created_at,"
                " modified_at, size, status, chunk_count, meta, added_at, pipeline_version, claim_job)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (content_hash, kind, file_type, safe_text(title) if title else None, author, created_at,
                 modified_at, size, DOC_INDEXING, len(chunks), json.dumps(meta, default=str), time.time(),
                 pipeline_version, claim_job),
            )
            doc_id = int(cur.lastrowid or 0)
            db.execute(
                "INSERT INTO document_text(doc_id, text) VALUES (?, ?)",
                (doc_id, zlib.compress(text.encode("utf-8", "replace"), 6)),
            )
            _index_document(db, doc_id, title, text)
            self._insert_chunks(db, doc_id, chunks)
        return doc_id

    def _insert_chunks(self, db: sqlite3.Connection, doc_id: int, chunks: Sequence[ChunkRecord]) -> None:
        # safe_text: a lone surrogate from a badly decoded source must not fail the whole document
        db.executemany(
            "INSERT INTO chunks(id, doc_id, seq, text, section, page, page_end, char_start, char_end,"
            " t_start, t_end, ocr, n_tokens, role) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (c.id, doc_id, c.seq, safe_text(c.text), safe_text(c.section) if c.section else None, c.page,
                 c.page_end, c.char_start, c.char_end, c.t_start, c.t_end, int(c.ocr), c.n_tokens, c.role)
                for c in chunks
            ],
        )

    def replace_document(
        self, doc_id: int, *, kind: str, file_type: str, title: str | None, author: str | None,
        created_at: str | None, modified_at: str | None, meta: dict[str, Any], text: str,
        chunks: Sequence[ChunkRecord], pipeline_version: str | None, claim_job: int | None,
    ) -> None:
        """A re-parse of the same bytes with a newer parser: new chunks under the same document id."""
        with self.transaction() as db:
            db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            db.execute(
                "UPDATE documents SET kind=?, file_type=?, title=?, author=?, created_at=?, modified_at=?, meta=?,"
                " status=?, chunk_count=?, pipeline_version=?, claim_job=? WHERE id=?",
                (kind, file_type, safe_text(title) if title else None, author, created_at, modified_at,
                 json.dumps(meta, default=str), DOC_INDEXING, len(chunks), pipeline_version, claim_job, doc_id),
            )
            db.execute(
                "INSERT OR REPLACE INTO document_text(doc_id, text) VALUES (?, ?)",
                (doc_id, zlib.compress(text.encode("utf-8", "replace"), 6)),
            )
            db.execute("DELETE FROM docs_fts WHERE rowid=?", (doc_id,))
            _index_document(db, doc_id, title, text)
            self._insert_chunks(db, doc_id, chunks)

    def finish_document(self, doc_id: int, links: Sequence[Link], content_hash: str) -> list[int]:
        """Mark a document indexed (or empty) and point its sources at it, atomically; release its claim.

        Returns documents that lost their last source (previous versions), to be purged.
        """
        with self.transaction() as db:
            row = db.execute("SELECT chunk_count FROM documents WHERE id=?", (doc_id,)).fetchone()
            empty = row is None or not row["chunk_count"]
            db.execute(
                "UPDATE documents SET status=?, indexed_at=?, claim_job=NULL WHERE id=?",
                (DOC_EMPTY if empty else DOC_INDEXED, time.time(), doc_id),
            )
            db.execute("DELETE FROM content_claims WHERE content_hash=?", (content_hash,))
            old: list[int] = []
            for ln in links:
                prev = db.execute("SELECT doc_id FROM sources WHERE uri=?", (ln.uri,)).fetchone()
                if prev and prev["doc_id"] is not None and prev["doc_id"] != doc_id:
                    old.append(prev["doc_id"])
                self._upsert_source(
                    db, ln.uri, ln.source_type, doc_id, content_hash, ln.size, ln.mtime_ns,
                    SRC_EMPTY if empty else SRC_INDEXED, "no text found in the file" if empty else None,
                    ln.parent_uri, ln.warning, ln.tag,
                )
            return self._mark_if_unreferenced(db, old)

    # -- content claims ---------------------------------------------------------------------------
    def claim_content(self, content_hash: str, job_id: int) -> int | None:
        """Take the right to parse this content; returns the job id of a running job that holds it.

        Two workers meeting the same bytes at once: the first claims and parses, the second waits for it
        and links to the finished document, instead of both failing on the content-hash constraint.
        """
        with self.transaction() as db:
            row = db.execute("SELECT job_id FROM content_claims WHERE content_hash=?", (content_hash,)).fetchone()
            if row is not None and row["job_id"] != job_id:
                holder = db.execute("SELECT state FROM jobs WHERE id=?", (row["job_id"],)).fetchone()
                if holder is not None and holder["state"] == "running":
                    return int(row["job_id"])
            db.execute(
                "INSERT OR REPLACE INTO content_claims(content_hash, job_id, claimed_at) VALUES (?,?,?)",
                (content_hash, job_id, time.time()),
            )
        return None

    def release_claims(self, job_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM content_claims WHERE job_id=?", (job_id,))

    def abandoned_documents(self) -> list[int]:
        """Documents half-written by a job that is no longer queued or running (recovery purges them)."""
        rows = self._query(
            "SELECT d.id FROM documents d WHERE d.status = ? AND NOT EXISTS"
            " (SELECT 1 FROM jobs j WHERE j.id = d.claim_job AND j.state IN ('queued', 'running'))",
            (DOC_INDEXING,),
        )
        return [r["id"] for r in rows]

    def resumable_document(self, content_hash: str, job_id: int) -> DocumentRecord | None:
        """A document this job started writing before a crash: its chunks are kept, vectors may be partial."""
        rows = self._query(
            "SELECT * FROM documents WHERE content_hash=? AND status=? AND claim_job=?",
            (content_hash, DOC_INDEXING, job_id),
        )
        return _document(rows[0]) if rows else None

    def set_document_status(self, doc_id: int, status: str) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE documents SET status=?, indexed_at=? WHERE id=?", (status, time.time(), doc_id)
            )

    def delete_document(self, doc_id: int) -> None:
        """Remove a document's rows; call only after its vectors are gone."""
        with self.transaction() as db:
            db.execute("UPDATE sources SET doc_id=NULL WHERE doc_id=?", (doc_id,))
            db.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            db.execute("DELETE FROM documents WHERE id=?", (doc_id,))

    def document_text(self, doc_id: int) -> str | None:
        rows = self._query("SELECT text FROM document_text WHERE doc_id=?", (doc_id,))
        return zlib.decompress(rows[0]["text"]).decode("utf-8") if rows else None

    # -- chunks -----------------------------------------------------------------------------------
    def chunks_of(self, doc_id: int) -> list[ChunkRecord]:
        return [_chunk(r) for r in self._query("SELECT * FROM chunks WHERE doc_id=? ORDER BY seq", (doc_id,))]

    def chunks_by_id(self, ids: Sequence[str]) -> dict[str, ChunkRecord]:
        out: dict[str, ChunkRecord] = {}
        for i in range(0, len(ids), 500):
            part = list(ids[i : i + 500])
            marks = ",".join("?" * len(part))
            for r in self._query(f"SELECT * FROM chunks WHERE id IN ({marks})", part):
                out[r["id"]] = _chunk(r)
        return out

    def iter_chunk_batches(self, size: int = 1000) -> Iterator[list[ChunkRecord]]:
        """All chunks of live documents, in pages, for rebuilding the vector index."""
        last = ""
        while True:
            rows = self._query(
                "SELECT c.* FROM chunks c JOIN documents d ON d.id=c.doc_id"
                " WHERE c.id > ? AND d.status != ? ORDER BY c.id LIMIT ?",
                (last, DOC_DELETING, size),
            )
            if not rows:
                return
            yield [_chunk(r) for r in rows]
            last = rows[-1]["id"]

    def finished_chunk_ids(self) -> set[str]:
        """Chunk ids of indexed documents: each must have a vector."""
        rows = self._query(
            "SELECT c.id FROM chunks c JOIN documents d ON d.id=c.doc_id WHERE d.status=?", (DOC_INDEXED,)
        )
        return {r["id"] for r in rows}

    def doc_ids_of_chunks(self, ids: Iterable[str]) -> set[int]:
        ids = list(ids)
        out: set[int] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ",".join("?" * len(part))
            out.update(r["doc_id"] for r in self._query(f"SELECT doc_id FROM chunks WHERE id IN ({marks})", part))
        return out

    def all_chunk_ids(self) -> set[str]:
        return {r["id"] for r in self._query("SELECT id FROM chunks")}

    def chunk_count(self) -> int:
        return int(self._query("SELECT count(*) AS n FROM chunks")[0]["n"])

    # -- status -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counts by kind, file type and status, and the most recent failures."""
        q = self._query
        by_status = {r["status"]: r["n"] for r in q("SELECT status, count(*) n FROM sources GROUP BY status")}
        by_kind = {r["kind"]: r["n"] for r in q("SELECT kind, count(*) n FROM documents GROUP BY kind")}
        by_type = {
            r["file_type"]: r["n"]
            for r in q("SELECT file_type, count(*) n FROM documents GROUP BY file_type ORDER BY n DESC")
        }
        doc_status = {r["status"]: r["n"] for r in q("SELECT status, count(*) n FROM documents GROUP BY status")}
        failures = [
            {"path": r["uri"], "error": r["error"], "at": r["updated_at"], "kept_previous": r["doc_id"] is not None}
            for r in q(
                "SELECT uri, error, updated_at, doc_id FROM sources WHERE status=?"
                " ORDER BY updated_at DESC LIMIT 20",
                (SRC_FAILED,),
            )
        ]
        warnings = [
            {"path": r["uri"], "warning": r["warning"]}
            for r in q("SELECT uri, warning FROM sources WHERE warning IS NOT NULL ORDER BY updated_at DESC LIMIT 20")
        ]
        return {
            "sources": sum(by_status.values()),
            "sources_by_status": by_status,
            "documents": sum(by_kind.values()),
            "documents_by_kind": by_kind,
            "documents_by_type": by_type,
            "documents_by_status": doc_status,
            "chunks": self.chunk_count(),
            "failures": failures,
            "warnings": warnings,
            "failed": by_status.get(SRC_FAILED, 0),
        }

    def outdated_documents(self, current: dict[str, str]) -> list[int]:
        """Documents whose recorded parser or chunker version is not the current one for their parser.

        `current` maps a parser name to its current 'name/version+chunker/N' string.
        """
        out = []
        for r in self._query("SELECT id, pipeline_version FROM documents WHERE status IN ('indexed', 'empty')"):
            v = r["pipeline_version"]
            name = (v or "").split("/", 1)[0]
            if v is None or (name in current and current[name] != v):
                out.append(int(r["id"]))
        return out


def _index_document(db: sqlite3.Connection, doc_id: int, title: str | None, text: str) -> None:
    """The document-level word index (title and whole text) that gives each document one lexical score."""
    db.execute(
        "INSERT INTO docs_fts(rowid, title, text) VALUES (?,?,?)",
        (doc_id, safe_text(title) if title else "", safe_text(text)),
    )


def _source(r: sqlite3.Row) -> SourceRecord:
    return SourceRecord(
        id=r["id"], uri=r["uri"], source_type=r["source_type"], doc_id=r["doc_id"],
        content_hash=r["content_hash"], size=r["size"], mtime_ns=r["mtime_ns"], status=r["status"],
        error=r["error"], updated_at=r["updated_at"], warning=r["warning"], parent_uri=r["parent_uri"],
        tag=r["tag"],
    )


def _document(r: sqlite3.Row) -> DocumentRecord:
    return DocumentRecord(
        id=r["id"], content_hash=r["content_hash"], kind=r["kind"], file_type=r["file_type"],
        title=r["title"], author=r["author"], created_at=r["created_at"], modified_at=r["modified_at"],
        size=r["size"], status=r["status"], chunk_count=r["chunk_count"], meta=json.loads(r["meta"]),
        added_at=r["added_at"], indexed_at=r["indexed_at"], pipeline_version=r["pipeline_version"],
    )


def _chunk(r: sqlite3.Row) -> ChunkRecord:
    return ChunkRecord(
        id=r["id"], doc_id=r["doc_id"], seq=r["seq"], text=r["text"], section=r["section"], page=r["page"],
        page_end=r["page_end"], char_start=r["char_start"], char_end=r["char_end"], t_start=r["t_start"],
        t_end=r["t_end"], ocr=bool(r["ocr"]), n_tokens=r["n_tokens"], role=r["role"],
    )
