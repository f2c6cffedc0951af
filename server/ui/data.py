"""What the pages show, read from the catalog and the job queue (read-only; every write goes through the API).

The Library's own methods for documents, meetings and jobs belong to the service; these readers give the
pages the same facts from the catalog directly, so the pages work against any App.
"""

from __future__ import annotations

import json
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
        name = PurePosixPath(str(r["uri"]).split("#", 1)[-1]).name or r["title"] or display(r["uri"])
        out.append(dict(r) | {"name": name, "title": r["title"] if r["title"] != name else None})
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
