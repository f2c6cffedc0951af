"""What the pages show, read from the catalog and the job queue (read-only; every write goes through the API).

The Library's own methods for documents, meetings and jobs belong to the service; these readers give the
pages the same facts from the catalog directly, so the pages work against any App.
"""

from __future__ import annotations

import json
import time
from pathlib import PurePosixPath
from typing import Any

from kb.catalog import ChunkRecord, DocumentRecord
from kb.paths import display

IMAGE_TYPES = {"png", "jpg", "jpeg", "gif", "webp", "bmp", "svg"}
AUDIO_TYPES = {"wav", "mp3", "m4a", "aac", "flac", "ogg", "opus", "oga"}
VIDEO_TYPES = {"mp4", "webm", "mkv", "mov", "m4v"}
TEXT_TYPES = {"txt", "md", "markdown", "csv", "tsv", "json", "xml", "rst", "org", "text"}
PAGE_CHUNKS = 400  # chunks shown on one document page: a 1,000-page book is read in parts

# a document's status as people read it
STATUS_WORDS = {"indexed": "ready", "empty": "empty", "failed": "failed", "indexing": "processing",
                "deleting": "being removed", "queued": "queued", "running": "processing", "held": "held"}


def viewer_of(doc: DocumentRecord) -> str:
    """How the original is shown: pdf, image, audio, video, mail, text or none (a download link)."""
    ft = (doc.file_type or "").lower()
    if doc.kind == "mail" or ft in ("eml", "msg"):
        return "mail"
    if ft == "pdf":
        return "pdf"
    if ft in IMAGE_TYPES:
        return "image"
    if ft in VIDEO_TYPES:
        return "video"
    if ft in AUDIO_TYPES or doc.kind == "meeting":
        return "audio"
    if ft in TEXT_TYPES:
        return "text"
    return "none"


def _source_rows(library: Any, doc_id: int) -> list[dict[str, Any]]:
    rows = library.catalog.read(
        "SELECT uri, source_type, status, error, warning, parent_uri, updated_at, first_seen FROM sources"
        " WHERE doc_id=? ORDER BY id", (doc_id,),
    )
    return [dict(r) | {"path": display(r["uri"])} for r in rows]


def _children(library: Any, uris: list[str]) -> list[dict[str, Any]]:
    """The attachments of a message (sources whose parent is one of its sources), with their documents."""
    if not uris:
        return []
    marks = ",".join("?" * len(uris))
    rows = library.catalog.read(
        "SELECT s.uri, s.doc_id, s.status, s.error, s.source_type, d.title, d.file_type, d.kind, d.size"
        f" FROM sources s LEFT JOIN documents d ON d.id=s.doc_id WHERE s.parent_uri IN ({marks}) ORDER BY s.id",
        uris,
    )
    out = []
    for r in rows:
        if r["source_type"] == "summary":
            continue
        name = r["title"] or PurePosixPath(str(r["uri"]).split("#", 1)[-1]).name or display(r["uri"])
        out.append(dict(r) | {"name": name})
    return out


def summary_of(library: Any, doc: DocumentRecord) -> dict[str, Any] | None:
    """A meeting's summary (sections of bullets with their times), when one has been made."""
    for r in library.catalog.read(
        "SELECT id, meta FROM documents WHERE kind='summary' AND json_extract(meta, '$.meeting_doc')=?"
        " ORDER BY id DESC LIMIT 1", (doc.id,),
    ):
        meta = json.loads(r["meta"] or "{}")
        summary = meta.get("summary")
        if isinstance(summary, dict):
            return summary | {"doc_id": r["id"], "method": meta.get("method"), "model": meta.get("model")}
    return None


def document_view(
    library: Any, doc_id: int, chunk: str | None = None, part: int | None = None
) -> dict[str, Any] | None:
    """Everything the document page shows, or None when there is no such document."""
    doc = library.catalog.document(doc_id)
    if doc is None:
        return None
    chunks: list[ChunkRecord] = library.catalog.chunks_of(doc_id)
    cited = next((c for c in chunks if c.id == chunk), None) if chunk else None
    parts = max(1, -(-len(chunks) // PAGE_CHUNKS))
    if part is None:
        part = (cited.seq // PAGE_CHUNKS) if cited is not None else 0
    part = max(0, min(parts - 1, part))
    shown = chunks[part * PAGE_CHUNKS : (part + 1) * PAGE_CHUNKS]
    sources = _source_rows(library, doc_id)
    container = library.catalog.containers([doc_id]).get(doc_id)
    if container:
        parent = library.catalog.source(container["uri"]) if container.get("uri") else None
        container = container | {"doc_id": parent.doc_id if parent else None, "path": display(container["uri"] or "")}
    meta = doc.meta or {}
    summary = summary_of(library, doc) if doc.kind == "meeting" else None
    meeting = None
    if doc.kind == "summary" and meta.get("meeting_doc"):
        meeting = library.catalog.document(int(meta["meeting_doc"]))
    return {
        "doc": doc, "chunks": shown, "chunk_total": len(chunks), "part": part, "parts": parts,
        "cited": cited, "sources": sources, "container": container, "viewer": viewer_of(doc),
        "attachments": _children(library, [s["uri"] for s in sources]) if doc.kind == "mail" else [],
        "summary": summary, "meeting": meeting, "meta": meta, "status": STATUS_WORDS.get(doc.status, doc.status),
        "paths": [display(p) for p in doc.paths],
    }


LIBRARY_FILTERS = {
    "ready": "s.status='indexed'", "empty": "s.status='empty'", "failed": "s.status='failed'",
}


def library_items(
    library: Any, status: str | None = None, kind: str | None = None, q: str | None = None,
    offset: int = 0, limit: int = 50,
) -> dict[str, Any]:
    """Sources with their documents (newest first), and the queue, for the library page."""
    where, params = ["s.source_type != 'summary'"], []
    if status in LIBRARY_FILTERS:
        where.append(LIBRARY_FILTERS[status])
    if kind:
        where.append("d.kind=?")
        params.append(kind)
    if q:
        where.append("(s.uri LIKE ? ESCAPE '\\' OR d.title LIKE ? ESCAPE '\\')")
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        params += [like, like]
    sql_where = " AND ".join(where)
    total = int(library.catalog.read(
        f"SELECT count(*) AS n FROM sources s LEFT JOIN documents d ON d.id=s.doc_id WHERE {sql_where}", params,
    )[0]["n"])
    rows = library.catalog.read(
        "SELECT s.id AS source_id, s.uri, s.source_type, s.status AS source_status, s.error, s.warning, s.doc_id,"
        " s.updated_at, s.first_seen, d.title, d.kind, d.file_type, d.size, d.status AS doc_status, d.chunk_count,"
        " d.created_at, d.modified_at, d.added_at, d.meta"
        f" FROM sources s LEFT JOIN documents d ON d.id=s.doc_id WHERE {sql_where}"
        " ORDER BY s.updated_at DESC, s.id DESC LIMIT ? OFFSET ?", [*params, limit, offset],
    )
    items = []
    for r in rows:
        meta = json.loads(r["meta"] or "{}") if r["meta"] else {}
        status_word = STATUS_WORDS.get(r["source_status"], r["source_status"])
        if r["doc_status"] == "indexing":
            status_word = "processing"
        items.append({
            "source_id": r["source_id"], "uri": r["uri"], "path": display(r["uri"]), "source_type": r["source_type"],
            "status": status_word, "error": r["error"], "warning": r["warning"], "doc_id": r["doc_id"],
            "title": r["title"], "kind": r["kind"], "file_type": r["file_type"], "size": r["size"],
            "date": r["created_at"] or r["modified_at"], "updated_at": r["updated_at"],
            "chunks": r["chunk_count"], "duration_s": meta.get("duration_s"),
        })
    return {"total": total, "offset": offset, "limit": limit, "items": items, "jobs": queue(library)}


def queue(library: Any, limit: int = 50) -> list[dict[str, Any]]:
    """Queued, running and held work (what the library page shows above the documents), running first."""
    rows = library.catalog.read(
        "SELECT id, action, uri, key, state, stage, done, total, attempts, last_error, run_after, updated_at"
        " FROM jobs WHERE state IN ('running', 'queued', 'held')"
        " ORDER BY CASE state WHEN 'running' THEN 0 WHEN 'queued' THEN 1 ELSE 2 END, priority, id LIMIT ?",
        (limit,),
    )
    now = time.time()
    out = []
    for r in rows:
        path = "scanning folders" if r["action"] == "scan" and not r["uri"] else display(r["uri"] or r["key"])
        out.append({
            "id": r["id"], "action": r["action"], "path": path, "state": r["state"], "stage": r["stage"],
            "done": r["done"], "total": r["total"], "attempts": r["attempts"], "error": r["last_error"],
            "waiting_s": max(0.0, r["run_after"] - now) if r["state"] == "queued" else 0.0,
        })
    return out


def failed_jobs(library: Any, uri: str) -> list[int]:
    """The failed (or failing and waiting) jobs of a source: what its retry button queues again."""
    rows = library.catalog.read(
        "SELECT id FROM jobs WHERE uri=? AND (state='failed' OR (state='queued' AND last_error IS NOT NULL))",
        (uri,),
    )
    return [int(r["id"]) for r in rows]


def meetings_list(library: Any, offset: int = 0, limit: int = 100) -> dict[str, Any]:
    """Recordings, newest first, with duration, date and whether a summary exists."""
    total = int(library.catalog.read("SELECT count(*) AS n FROM documents WHERE kind='meeting'")[0]["n"])
    rows = library.catalog.read(
        "SELECT d.id, d.title, d.created_at, d.added_at, d.status, d.meta,"
        " (SELECT s.id FROM documents s WHERE s.kind='summary' AND json_extract(s.meta, '$.meeting_doc')=d.id"
        "  LIMIT 1) AS summary_id"
        " FROM documents d WHERE d.kind='meeting' ORDER BY coalesce(d.created_at, '') DESC, d.added_at DESC"
        " LIMIT ? OFFSET ?", (limit, offset),
    )
    docs = library.catalog.documents(int(r["id"]) for r in rows)
    items = []
    for r in rows:
        meta = json.loads(r["meta"] or "{}")
        d = docs.get(int(r["id"]))
        items.append({
            "id": r["id"], "title": r["title"] or (PurePosixPath(display(d.paths[0])).name if d and d.paths else "?"),
            "date": r["created_at"], "added_at": r["added_at"], "duration_s": meta.get("duration_s"),
            "status": STATUS_WORDS.get(r["status"], r["status"]), "has_summary": r["summary_id"] is not None,
            "path": display(d.paths[0]) if d and d.paths else "",
        })
    return {"total": total, "items": items}
