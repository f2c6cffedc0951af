"""What the web UI and the JSON API read about the library: the list, one document, its text and original,
meetings, the queue, and the actions on one item (retry, forget).

A mixin of the App (kbapp/app.py) so the composition root stays one object; every method reads the catalog
through its reader connection and returns plain dicts (their shapes are in the docstrings: the pages and
the API are written against them). Paths are shown with `display` (never raw bytes or control characters).

Items of the library are referred to by a `ref`: a document id ("12"), or, for what has no document yet, a
source ("s34": a file that failed before its first version was stored) or a queued job ("j56": a file
dropped a moment ago). A ref is never a path: nothing a request names can point outside the catalog.
"""

from __future__ import annotations

import contextlib
import mimetypes
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb.catalog import SRC_EMPTY, SRC_FAILED, ChunkRecord, DocumentRecord
from kb.errors import KbError
from kb.jobs import FAILED, HELD, LANE_FAST, QUEUED, RUNNING
from kb.paths import display, from_uri

if TYPE_CHECKING:
    from kb.blobs import BlobStore
    from kb.catalog import Catalog
    from kb.jobs import JobQueue
    from kb.settings import Settings

MAX_LIMIT = 200
STATUSES = ("queued", "processing", "ready", "empty", "failed")

# Shown inline by a browser and harmless there; everything else is a download. Active types (HTML, SVG,
# XML, scripts) are never inline: they could run script in the service's origin.
_INLINE = ("application/pdf", "text/plain", "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp",
           "audio/", "video/")
_AS_TEXT = ("text/markdown", "text/csv", "text/tab-separated-values", "text/x-rst", "text/x-org")
_VIDEO_TYPES = {"mp4", "m4v", "mkv", "webm", "mov", "avi", "mpeg", "mpg", "ogv"}


class NotFound(KbError):
    """The library has no such item (a document id, source or job that does not exist or is gone)."""


@dataclass(frozen=True)
class Original:
    """The bytes behind a document, as the catalog knows them: a file, a kept mail message or attachment."""

    path: Path
    content_type: str
    filename: str
    inline: bool
    size: int


def _limit(limit: int | None, default: int = 50) -> int:
    return max(1, min(MAX_LIMIT, default if limit is None else int(limit)))


def _status(job_state: str | None, src_status: str | None) -> str:
    if job_state == RUNNING:
        return "processing"
    if job_state == QUEUED:
        return "queued"
    if src_status == SRC_FAILED:
        return "failed"
    if src_status == SRC_EMPTY:
        return "empty"
    return "ready"


def _name(uri: str) -> str:
    """The last part of a source's identity, to show: a file name, an attachment's name, 'message 12'."""
    if "#" in uri:
        tail = uri.rsplit("#", 1)[1]
        return tail.split("/", 1)[1] if "/" in tail else f"part {tail}"
    if uri.startswith("imap://"):
        return "message " + uri.rsplit(";UID=", 1)[-1]
    return uri.rstrip("/").rsplit("/", 1)[-1]


def content_type_of(file_type: str, name: str) -> tuple[str, bool]:
    """The Content-Type to serve a document's original with, and whether it may be shown inline."""
    guessed = mimetypes.guess_type(name if "." in name else f"x.{file_type}")[0] or "application/octet-stream"
    if file_type == "eml" or guessed == "message/rfc822":
        return "text/plain", True  # the raw message, as text: never rendered as HTML
    if guessed in _AS_TEXT:
        return "text/plain", True
    if guessed == "text/plain":
        return "text/plain", True
    if guessed == "image/svg+xml" or "html" in guessed or "xml" in guessed or "javascript" in guessed:
        return "application/octet-stream", False
    return guessed, any(guessed == t or (t.endswith("/") and guessed.startswith(t)) for t in _INLINE)


class LibraryViews:
    """The App's read side for people (pages and API) and its per-item actions."""

    catalog: Catalog
    jobs: JobQueue
    settings: Settings
    if TYPE_CHECKING:

        @property
        def mail_blobs(self) -> BlobStore: ...  # the App's (a cached property there)

    loading: dict[str, str]  # model role -> "loading" | "ready" | "failed: reason" (set by the App)

    # -- the library list ---------------------------------------------------------------------------
    _LIST_SQL = """
        SELECT s.id AS source_id, s.uri AS uri, s.source_type AS source_type, s.doc_id AS doc_id,
               s.status AS src_status, s.error AS error, s.warning AS warning, s.parent_uri AS parent_uri,
               s.tag AS tag, s.size AS size, s.updated_at AS updated_at, s.first_seen AS first_seen,
               j.id AS job_id, j.state AS job_state, j.stage AS stage, j.done AS done, j.total AS total,
               j.last_error AS job_error
          FROM sources s
          LEFT JOIN jobs j ON j.uri = s.uri AND j.action = 'ingest' AND j.state IN ('queued', 'running')
         WHERE s.source_type != 'summary'
        UNION ALL
        SELECT NULL, j.uri, coalesce(json_extract(j.payload, '$.source_type'), 'file'), NULL, NULL, NULL, NULL,
               json_extract(j.payload, '$.parent'), json_extract(j.payload, '$.tag'), json_extract(j.payload, '$.size'),
               j.updated_at, j.created_at, j.id, j.state, j.stage, j.done, j.total, j.last_error
          FROM jobs j
         WHERE j.action = 'ingest' AND j.state IN ('queued', 'running') AND j.uri IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM sources s2 WHERE s2.uri = j.uri)
    """
    _STATUS_SQL = """CASE WHEN job_state = 'running' THEN 'processing' WHEN job_state = 'queued' THEN 'queued'
        WHEN src_status = 'failed' THEN 'failed' WHEN src_status = 'empty' THEN 'empty' ELSE 'ready' END"""

    def documents(
        self, status: str | None = None, kind: str | None = None, tag: str | None = None, q: str | None = None,
        offset: int = 0, limit: int | None = 50, source: str | None = None,
    ) -> dict[str, Any]:
        """The library as people see it: every file, message and attachment with its state, newest first.

        Not only finished documents: a file queued a moment ago (no document yet), one being read (with
        progress), and one that failed (with the reason; `kept_previous` when an older version is still
        searchable). Filters: status (queued, processing, ready, empty, failed), kind (document, scan,
        meeting, mail), tag, source (file, mail, attachment), q (words in the name or title).
        Returns {"total", "offset", "limit", "items": [item]}; an item is
        {"ref", "id" (document id or None), "source_id", "job_id", "name", "path", "title", "kind",
        "file_type", "source", "tag", "status", "error", "warning", "kept_previous", "progress"
        ({"stage", "done", "total"} or None), "date" (the document's own date), "added_at", "updated_at",
        "size", "chunks", "ocr_confidence" (a scan's mean, 0-100), "duration_s" (a recording's), "parent"
        ({"ref", "path"} of the message an attachment came in, or None)}.
        """
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {', '.join(STATUSES)}")
        offset = max(0, int(offset))
        limit = _limit(limit)
        where, params = ["1=1"], []
        if status:
            where.append(f"({self._STATUS_SQL}) = ?")
            params.append(status)
        if tag:
            where.append("x.tag = ?")
            params.append(tag)
        if source:
            where.append("x.source_type = ?")
            params.append(source)
        if kind:
            where.append("d.kind = ?")
            params.append(kind)
        if q:
            like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            where.append("(x.uri LIKE ? ESCAPE '\\' OR d.title LIKE ? ESCAPE '\\')")
            params += [like, like]
        body = (f"FROM ({self._LIST_SQL}) x LEFT JOIN documents d ON d.id = x.doc_id"
                f" WHERE {' AND '.join(where)}")
        total = int(self.catalog.read(f"SELECT count(*) AS n {body}", params)[0]["n"])
        rows = self.catalog.read(
            "SELECT x.*, d.title AS title, d.kind AS kind, d.file_type AS file_type, d.created_at AS created_at,"
            " d.modified_at AS modified_at, d.chunk_count AS chunks, d.added_at AS doc_added,"
            " json_extract(d.meta, '$.ocr_confidence') AS ocr_confidence,"
            " json_extract(d.meta, '$.duration_s') AS duration_s"
            f" {body} ORDER BY x.updated_at DESC, x.source_id DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        parents = {r["parent_uri"] for r in rows if r["parent_uri"]}
        parent_refs = self._refs_of(parents)
        items = []
        for r in rows:
            uri = r["uri"]
            st = _status(r["job_state"], r["src_status"])
            ref = str(r["doc_id"]) if r["doc_id"] is not None else (
                f"s{r['source_id']}" if r["source_id"] is not None else f"j{r['job_id']}")
            name = _name(uri)
            items.append({
                "ref": ref, "id": r["doc_id"], "source_id": r["source_id"], "job_id": r["job_id"],
                "name": display(name), "path": display(uri), "title": r["title"], "kind": r["kind"],
                "file_type": r["file_type"] or (name.rsplit(".", 1)[1].lower() if "." in name else None),
                "source": r["source_type"], "tag": r["tag"], "status": st,
                "error": r["error"] if st == "failed" else r["job_error"],
                "warning": r["warning"], "kept_previous": st == "failed" and r["doc_id"] is not None,
                "progress": {"stage": r["stage"], "done": r["done"], "total": r["total"]}
                if r["job_state"] == RUNNING else None,
                "date": r["created_at"] or r["modified_at"], "added_at": r["doc_added"] or r["first_seen"],
                "updated_at": r["updated_at"], "size": r["size"], "chunks": r["chunks"],
                "ocr_confidence": r["ocr_confidence"], "duration_s": r["duration_s"],
                "parent": {"ref": parent_refs.get(r["parent_uri"]), "path": display(r["parent_uri"])}
                if r["parent_uri"] else None,
            })
        return {"total": total, "offset": offset, "limit": limit, "items": items}

    def _refs_of(self, uris: set[str]) -> dict[str, str | None]:
        out: dict[str, str | None] = {}
        for u in uris:
            src = self.catalog.source(u)
            out[u] = None if src is None else (str(src.doc_id) if src.doc_id is not None else f"s{src.id}")
        return out

    # -- one item -----------------------------------------------------------------------------------
    def _resolve(self, ref: str | int) -> tuple[DocumentRecord | None, list[str], int | None]:
        """A ref's document (if any), its source uris and a job id (for a queued file with no source yet)."""
        text = str(ref).strip()
        try:
            if text.isdigit():
                doc = self.catalog.document(int(text))
                if doc is None or doc.status == "deleting":
                    raise NotFound(f"no document {text}")
                return doc, list(doc.paths), None
            if text[:1] == "s" and text[1:].isdigit():
                rows = self.catalog.read("SELECT uri, doc_id FROM sources WHERE id=?", (int(text[1:]),))
                if not rows:
                    raise NotFound(f"no library item {text}")
                doc = self.catalog.document(rows[0]["doc_id"]) if rows[0]["doc_id"] is not None else None
                return doc, [rows[0]["uri"]], None
            if text[:1] == "j" and text[1:].isdigit():
                job = self.jobs.get(int(text[1:]))
                if job is None or job.uri is None:
                    raise NotFound(f"no library item {text}")
                return None, [job.uri], job.id
        except OverflowError:
            pass
        raise NotFound(f"no library item {text[:40]!r}")

    def document(self, ref: str | int) -> dict[str, Any]:
        """One document (or a queued/failed item) with everything its page shows.

        {"ref", "id", "title", "kind", "file_type", "author", "created_at", "modified_at", "size", "status"
        (as in the library list), "error", "chunks", "added_at", "indexed_at", "sources": [{"path", "source",
        "tag", "status", "error"}], "meta" (what the parser recorded), "original" ({"url", "content_type",
        "inline", "filename"} or None when the bytes are not available), "mail" ({"from", "to", "cc", "date",
        "subject", "message_id"} for a message, else None), "attachments": [{"ref", "name", "content_type",
        "size", "status", "error"}] (of a message or a container file), "parent" ({"ref", "title", "kind"}:
        the message an attachment came in), "ocr" ({"confidence" (mean, 0-100, or None), "pages"} for a scan
        or a PDF with OCR'd pages, else None), "media" ({"duration_s", "video": bool} for a recording),
        "summary_ref" (a meeting's summary document), "meeting_ref" (a summary's meeting)}.
        """
        doc, uris, job_id = self._resolve(ref)
        sources = [s for s in (self.catalog.source(u) for u in uris) if s is not None]
        job_rows = self.catalog.read(
            f"SELECT * FROM jobs WHERE action='ingest' AND state IN ('queued','running') AND uri IN "
            f"({','.join('?' * len(uris))})", uris) if uris else []
        job = job_rows[0] if job_rows else None
        src0 = sources[0] if sources else None
        st = _status(job["state"] if job else None, src0.status if src0 else None)
        out: dict[str, Any] = {
            "ref": str(ref), "id": doc.id if doc else None, "title": doc.title if doc else None,
            "name": display(_name(uris[0])) if uris else None,
            "kind": doc.kind if doc else None, "file_type": doc.file_type if doc else None,
            "author": doc.author if doc else None, "created_at": doc.created_at if doc else None,
            "modified_at": doc.modified_at if doc else None, "size": doc.size if doc else (src0.size if src0 else None),
            "status": st, "error": (src0.error if src0 and st == "failed" else (job["last_error"] if job else None)),
            "progress": {"stage": job["stage"], "done": job["done"], "total": job["total"]}
            if job is not None and job["state"] == RUNNING else None,
            "job_id": job["id"] if job else job_id,
            "chunks": doc.chunk_count if doc else 0, "added_at": doc.added_at if doc else None,
            "indexed_at": doc.indexed_at if doc else None,
            "sources": [{"path": display(s.uri), "source": s.source_type, "tag": s.tag, "status": s.status,
                         "error": s.error, "warning": s.warning} for s in sources],
            "meta": {}, "original": None, "mail": None, "attachments": [], "parent": None, "ocr": None,
            "media": None, "summary_ref": None, "meeting_ref": None,
        }
        if doc is None:
            return out
        meta = dict(doc.meta)
        summary = meta.pop("summary", None)
        out["meta"] = {k: v for k, v in meta.items() if k not in ("ocr", "attachments", "parts", "references")}
        orig = self._original_of(doc)
        if orig is not None:
            out["original"] = {"url": f"/api/v1/documents/{doc.id}/original", "content_type": orig.content_type,
                               "inline": orig.inline, "filename": display(orig.filename), "size": orig.size}
        if doc.kind == "mail":
            out["mail"] = {"subject": doc.title, **{k: meta.get(k) for k in ("from", "to", "cc", "date", "message_id")}}
        children = [c for u in doc.paths for c in self.catalog.children(u).values() if c.source_type != "summary"]
        kids = self.catalog.documents([c.doc_id for c in children if c.doc_id is not None])
        for c in children:
            k = kids.get(c.doc_id) if c.doc_id is not None else None
            ref_c = str(c.doc_id) if c.doc_id is not None else f"s{c.id}"
            out["attachments"].append({
                "ref": ref_c, "name": display(_name(c.uri)), "title": k.title if k else None,
                "file_type": k.file_type if k else None, "size": c.size, "status": _status(None, c.status),
                "error": c.error,
            })
        for s in sources:
            if s.parent_uri and out["parent"] is None:
                p = self.catalog.source(s.parent_uri)
                pd = self.catalog.document(p.doc_id) if p is not None and p.doc_id is not None else None
                if p is not None:
                    out["parent"] = {"ref": str(p.doc_id) if p.doc_id is not None else f"s{p.id}",
                                     "title": pd.title if pd else None, "kind": pd.kind if pd else None,
                                     "path": display(p.uri)}
        if doc.kind == "scan" or meta.get("ocr_pages"):
            out["ocr"] = {"confidence": meta.get("ocr_confidence"), "pages": meta.get("ocr_pages")}
        if doc.kind == "meeting":
            out["media"] = {"duration_s": meta.get("duration_s"), "video": doc.file_type in _VIDEO_TYPES,
                            "language": meta.get("language")}
            sdoc = self._summary_of(doc)
            out["summary_ref"] = str(sdoc.id) if sdoc else None
        if doc.kind == "summary" and meta.get("meeting_doc") is not None:
            out["meeting_ref"] = str(meta["meeting_doc"])
            out["summary"] = summary
        return out

    def document_text(self, ref: str | int) -> dict[str, Any]:
        """A document's text as its chunks, in order, so a page can show it and mark one passage.

        {"ref", "id", "title", "kind", "chunks": [{"id", "ordinal", "text", "section", "page", "page_end",
        "start_s", "end_s", "role", "ocr", "char_start", "char_end"}]}; an item without a document has none.
        """
        doc, _, _ = self._resolve(ref)
        chunks = self.catalog.chunks_of(doc.id) if doc else []
        return {"ref": str(ref), "id": doc.id if doc else None, "title": doc.title if doc else None,
                "kind": doc.kind if doc else None, "chunks": [_chunk(c) for c in chunks]}

    def document_original(self, ref: str | int) -> Original:
        """The original bytes of a document: only a file, message or attachment the catalog records for it.

        Raises NotFound when the id is unknown or the bytes are gone (a deleted file). The path comes from
        the catalog, never from the request.
        """
        doc, _, _ = self._resolve(ref)
        orig = self._original_of(doc) if doc else None
        if orig is None:
            raise NotFound(f"the original of {ref} is not available (the file was moved or deleted)")
        return orig

    def _original_of(self, doc: DocumentRecord) -> Original | None:
        from kb.blobs import BlobStore

        for uri, kind in zip(doc.paths, doc.source_types, strict=False):
            path: Path | None = None
            name = _name(uri)
            if kind == "file":
                path = from_uri(uri)
            elif kind == "mail":
                path, name = self.mail_blobs.path(doc.content_hash), f"message-{doc.id}.eml"
            elif kind == "attachment":
                path = BlobStore(self.settings.blobs_dir / "parts").path(doc.content_hash)
            if path is None:
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            if not path.is_file():
                continue
            ctype, inline = content_type_of(doc.file_type, name)
            return Original(path=path, content_type=ctype, filename=name, inline=inline, size=st.st_size)
        return None

    def retry_document(self, ref: str | int) -> dict[str, Any]:
        """Read an item again: its failed (or waiting-to-retry) jobs queued now, or, for a file with no job
        left, a fresh forced ingest. Returns {"batch", "retried"} (a batch the caller can follow)."""
        _, uris, _ = self._resolve(ref)
        marks = ",".join("?" * len(uris))
        ids = [int(r["id"]) for r in self.catalog.read(
            f"SELECT id FROM jobs WHERE uri IN ({marks}) AND action='ingest' AND (state=? OR"
            f" (state=? AND last_error IS NOT NULL))", [*uris, FAILED, QUEUED])]
        batch = self.jobs.new_batch("retry", {"paths": [display(u) for u in uris]})
        retried = self.jobs.retry(ids, batch=batch) if ids else 0
        if not retried:
            files = [u for u in uris if not u.startswith("imap://") and "#" not in u]
            with self.jobs.transaction() as db:
                for u in files:
                    self.jobs.enqueue(db, "ingest", u, payload={"force": True}, lane=LANE_FAST, batch=batch)
            retried = len(files)
        if not retried:
            raise ValueError("nothing to retry: fetch the message (or ingest its container) again")
        return {"batch": batch, "retried": retried}

    def forget_document(self, ref: str | int) -> dict[str, Any]:
        """Remove an item from the library (with its attachments and summary), as a batch to follow.

        A file still in a watched folder stays out until its bytes change (the forget job keeps its stat).
        Returns {"batch", "forgotten": number of sources}.
        """
        _, uris, _ = self._resolve(ref)
        batch = self.jobs.new_batch("forget", {"paths": [display(u) for u in uris]})
        with self.jobs.transaction() as db:
            for u in uris:
                self.jobs.enqueue(db, "forget", u, lane=LANE_FAST, batch=batch, payload={"keep_out": True})
        return {"batch": batch, "forgotten": len(uris)}

    def submit_files(self, paths: list[Path]) -> str:
        """Queue files just written into a watched folder (an upload) for reading now, as one batch: each
        shows in the library as queued at once, before any scan; the watcher seeing them too changes nothing
        (one job per file)."""
        from ingest.scan import job_key, lane_for
        from kb.paths import absolute, to_uri

        batch = self.jobs.new_batch("ingest", {"paths": [display(to_uri(absolute(p))) for p in paths]})
        slow = int(self.settings.slow_lane_mb * 2**20)
        with self.jobs.transaction() as db:
            for p in paths:
                path = absolute(p)
                uri = to_uri(path)
                size = path.stat().st_size if path.exists() else 0
                payload = {"tag": self.settings.folder_tag(path)}
                self.jobs.enqueue(db, "ingest", uri, key=job_key("ingest", uri, payload),
                                  lane=lane_for(path, size, slow), payload=payload, batch=batch)
        return batch

    # -- meetings -----------------------------------------------------------------------------------
    def _summary_of(self, meeting: DocumentRecord) -> DocumentRecord | None:
        from kbapp.summaries import summary_docs

        docs = [d for d in summary_docs(self.catalog, meeting) if d.status == "indexed"]
        return max(docs, key=lambda d: d.indexed_at or 0) if docs else None

    def meetings(self, offset: int = 0, limit: int | None = 50) -> dict[str, Any]:
        """Recordings, newest first: {"total", "offset", "limit", "items": [{"ref", "id", "title", "name",
        "date", "duration_s", "video", "file_type", "summary_ref", "summary_status" ("ready", "queued",
        "processing", "failed" or None), "added_at"}]}."""
        offset, limit = max(0, int(offset)), _limit(limit)
        total = int(self.catalog.read(
            "SELECT count(*) AS n FROM documents WHERE kind='meeting' AND status='indexed'")[0]["n"])
        rows = self.catalog.read(
            "SELECT id FROM documents WHERE kind='meeting' AND status='indexed'"
            " ORDER BY coalesce(created_at, '') DESC, added_at DESC LIMIT ? OFFSET ?", (limit, offset))
        docs = self.catalog.documents(int(r["id"]) for r in rows)
        items = []
        for r in rows:
            d = docs[int(r["id"])]
            s = self._summary_of(d)
            job = self.jobs.by_key(f"summary:{d.id}")
            sstat = "ready" if s else None
            if job is not None and job.state in (QUEUED, RUNNING):
                sstat = "processing" if job.state == RUNNING else "queued"
            elif s is None and job is not None and job.state == FAILED:
                sstat = "failed"
            items.append({
                "ref": str(d.id), "id": d.id, "title": d.title, "name": display(_name(d.paths[0])) if d.paths else None,
                "date": d.created_at, "duration_s": d.meta.get("duration_s"), "video": d.file_type in _VIDEO_TYPES,
                "file_type": d.file_type, "summary_ref": str(s.id) if s else None, "summary_status": sstat,
                "added_at": d.added_at,
            })
        return {"total": total, "offset": offset, "limit": limit, "items": items}

    def meeting(self, ref: str | int) -> dict[str, Any]:
        """One recording: {"ref", "id", "title", "date", "duration_s", "video", "file_type", "original"
        (as in document()), "summary" ({"ref", "method", "model", "notes", "sections": [{"name", "title",
        "bullets": [{"text", "t_start", "t_end", "chunk_ids", "owner", "due"}]}]} or None), "segments":
        [{"id", "start_s", "end_s", "text"}]}. NotFound when the ref is not a meeting."""
        doc, _, _ = self._resolve(ref)
        if doc is None or doc.kind != "meeting":
            raise NotFound(f"no meeting {str(ref)[:40]}")
        base = self.document(doc.id)
        s = self._summary_of(doc)
        summary = None
        if s is not None:
            data = s.meta.get("summary") or {}
            summary = {"ref": str(s.id), "method": s.meta.get("method"), "model": s.meta.get("model"),
                       "notes": data.get("notes", []),
                       "sections": [{"name": sec.get("name"), "title": sec.get("title"),
                                     "bullets": [{k: b.get(k) for k in ("text", "t_start", "t_end", "chunk_ids",
                                                                         "owner", "due")}
                                                 for b in sec.get("bullets", [])]}
                                    for sec in data.get("sections", [])]}
        segments = [{"id": c.id, "start_s": c.t_start, "end_s": c.t_end, "text": c.text}
                    for c in self.catalog.chunks_of(doc.id)]
        return {"ref": str(doc.id), "id": doc.id, "title": doc.title, "name": base["name"], "date": doc.created_at,
                "duration_s": doc.meta.get("duration_s"), "video": doc.file_type in _VIDEO_TYPES,
                "file_type": doc.file_type, "original": base["original"], "summary": summary, "segments": segments}

    # -- the queue and the machine ------------------------------------------------------------------
    def jobs_view(self, limit: int | None = 50) -> dict[str, Any]:
        """The work queue: {"counts" (by state, plus "retrying"), "running": [job], "queued": [job] (next
        first), "failed": [job], "held": n}; a job is {"id", "action", "path", "state", "stage", "done",
        "total", "attempts", "error", "retry_at", "updated_at"}."""
        limit = _limit(limit)

        def one(j: Any) -> dict[str, Any]:
            return {"id": j.id, "action": j.action, "path": display(j.uri or j.key), "state": j.state,
                    "stage": j.stage, "done": j.done, "total": j.total, "attempts": j.attempts,
                    "error": j.last_error, "retry_at": j.run_after if j.state == QUEUED and j.last_error else None,
                    "updated_at": j.updated_at}

        from kb.jobs import _job

        queued = [_job(r) for r in self.catalog.read(
            "SELECT * FROM jobs WHERE state=? ORDER BY priority, run_after LIMIT ?", (QUEUED, limit))]
        counts = self.jobs.counts()
        return {"counts": counts, "running": [one(j) for j in self.jobs.jobs([RUNNING], limit=limit)],
                "queued": [one(j) for j in queued], "failed": [one(j) for j in self.jobs.jobs([FAILED], limit=limit)],
                "held": counts.get(HELD, 0)}

    _disk_lock = threading.Lock()

    def machine_status(self) -> dict[str, Any]:
        """What the status page adds to status(): models (and which still load), index and disk sizes.

        {"models": {"embedding": {"name", "state"}, "answer": {"name", "state"}, "loading": [roles]},
        "index_bytes", "catalog_bytes", "data_bytes", "disk_free_bytes", "disk_total_bytes"} (sizes are
        measured at most every 30 s: walking a large index costs).
        """
        s = self.settings
        loading = dict(getattr(self, "loading", {}))
        answer = s.llm_url or s.llm_model
        models = {
            "embedding": {"name": s.embed_model, "state": loading.get("embedding", "not loaded")},
            "answer": {"name": answer, "state": loading.get("answer", "not loaded")},
            "loading": sorted(k for k, v in loading.items() if v == "loading"),
        }
        with self._disk_lock:
            cached: tuple[float, dict[str, Any]] | None = self.__dict__.get("_disk_cache")
            if cached is None or time.monotonic() - cached[0] > 30:
                catalog = _tree_size(s.catalog_path) + _tree_size(Path(str(s.catalog_path) + "-wal"))
                sizes: dict[str, Any] = {"index_bytes": _tree_size(s.chroma_dir), "catalog_bytes": catalog,
                                         "data_bytes": _tree_size(s.data_dir)}
                try:
                    du = shutil.disk_usage(s.data_dir)
                    free: int | None = du.free
                    total: int | None = du.total
                except OSError:
                    free = total = None
                sizes.update(disk_free_bytes=free, disk_total_bytes=total)
                cached = (time.monotonic(), sizes)
                self.__dict__["_disk_cache"] = cached
        return {"models": models, **cached[1]}


def _chunk(c: ChunkRecord) -> dict[str, Any]:
    out = {"id": c.id, "ordinal": c.seq, "text": c.text, "section": c.section, "page": c.page,
           "page_end": c.page_end, "start_s": c.t_start, "end_s": c.t_end, "role": c.role, "ocr": c.ocr,
           "char_start": c.char_start, "char_end": c.char_end}
    if c.t_start is not None:  # a transcript passage: each line with the time it starts
        from retrieval.transcript import timed_lines

        out["lines"] = [{"start_s": t, "text": line} for t, line in timed_lines(c.text, c.t_start, c.t_end)]
    return out


def _tree_size(path: Path) -> int:
    """Bytes used by a file or a folder tree (0 when it does not exist)."""
    try:
        if path.is_file():
            return path.stat().st_size
        total = 0
        for root, _dirs, files in os.walk(path):
            for f in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, f)).st_size
        return total
    except OSError:
        return 0
