"""Hybrid search: dense (Chroma, cosine) and lexical (SQLite FTS5, BM25) fused by reciprocal rank."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kb.catalog import DOC_INDEXED, Catalog, ChunkRecord, DocumentRecord
from kb.embedding import Embedder
from kb.errors import IndexMismatchError
from kb.index import VectorIndex

RRF_K = 60
# Chunks with a role (a reply's quoted message, a signature) count this much of their fused score: the
# quoted text is in the library as its own message already, and a reply's own words should come first.
ROLE_WEIGHT = 0.5


@dataclass
class Hit:
    """One search result: the chunk, its document, and how it scored."""

    chunk: ChunkRecord
    document: DocumentRecord
    score: float  # fused reciprocal-rank score, comparable within one result list
    similarity: float | None  # cosine similarity from the dense side, when it found the chunk
    snippet: str
    message: dict[str, Any] | None = None  # for an attachment: the message it came in (uri, subject, from, date)

    def to_dict(self) -> dict[str, Any]:
        c, d = self.chunk, self.document
        return {
            "chunk_id": c.id, "document_id": d.id, "title": d.title, "path": d.paths[0] if d.paths else None,
            "paths": d.paths, "tag": d.tags[0] if d.tags else None, "kind": d.kind, "file_type": d.file_type,
            "page": c.page,
            "page_end": c.page_end, "section": c.section, "char_start": c.char_start,
            "char_end": c.char_end, "t_start": c.t_start, "t_end": c.t_end, "ocr": c.ocr,
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "snippet": self.snippet, "text": c.text, "role": c.role, "message": self.message,
        }


def where_clause(
    kind: str | None = None, file_type: str | None = None, tag: str | None = None
) -> dict[str, Any] | None:
    """Chroma's filter for the search filters people use."""
    filters: list[dict[str, Any]] = []
    if tag:
        filters.append({"tag": tag})
    if file_type:
        filters.append({"file_type": file_type.lower().lstrip(".")})
    if kind:
        filters.append({"kind": kind})
    return None if not filters else filters[0] if len(filters) == 1 else {"$and": filters}


class Searcher:
    def __init__(self, catalog: Catalog, index: Callable[[], VectorIndex], embedder: Embedder) -> None:
        self.catalog = catalog
        self._index = index
        self.embedder = embedder

    def _dense(self, query: str, depth: int, where: dict[str, Any] | None) -> list[tuple[str, float]]:
        index = self._index()
        try:
            index.check_model()
        except IndexMismatchError:
            # The vectors are being rebuilt for a new model: keywords answer meanwhile, not an error.
            if self.catalog.get_meta("reindex_target") is None:
                raise
            return []
        vector = self.embedder.embed([query])[0]
        return index.query(vector, depth, where)

    def search(
        self, query: str, k: int = 10, where: dict[str, Any] | None = None, *, tag: str | None = None
    ) -> list[Hit]:
        """Top k passages. `where` filters the dense side only (the keyword side is then left out); `tag`
        filters both sides."""
        query = query.strip()
        if not query:
            return []
        depth = max(4 * k, 40)
        dense_where = where
        if tag:
            tagged = where_clause(tag=tag)
            dense_where = tagged if where is None else {"$and": [where, tagged]}
        dense = self._dense(query, depth, dense_where)
        lexical = [] if where else self.catalog.lexical_search(query, depth, tag=tag or None)
        fused: dict[str, float] = {}
        for ranked in (dense, lexical):
            for rank, (cid, _score) in enumerate(ranked):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (RRF_K + rank + 1)
        similarity = dict(dense)
        chunks = self.catalog.chunks_by_id(list(fused))
        for cid, rec in chunks.items():
            if rec.role is not None:
                fused[cid] *= ROLE_WEIGHT
        order = sorted(fused, key=lambda c: fused[c], reverse=True)
        docs = self.catalog.documents({c.doc_id for c in chunks.values()})
        hits: list[Hit] = []
        for cid in order:
            chunk = chunks.get(cid)
            doc = docs.get(chunk.doc_id) if chunk else None
            if chunk is None or doc is None or doc.status != DOC_INDEXED:
                continue  # a document mid-update or being removed
            hits.append(Hit(chunk, doc, fused[cid], similarity.get(cid), snippet(chunk.text, query)))
            if len(hits) == k:
                break
        containers = self.catalog.containers(h.document.id for h in hits)
        for h in hits:
            h.message = containers.get(h.document.id)
        return hits


def snippet(text: str, query: str, width: int = 240) -> str:
    """A window of the chunk around the first query term it contains, on word boundaries."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    terms = [t for t in re.findall(r"\w+", query.lower()) if len(t) > 2]
    low = flat.lower()
    hits = [i for i in (low.find(t) for t in terms) if i >= 0]
    centre = min(hits) if hits else 0
    start = max(0, centre - width // 3)
    end = min(len(flat), start + width)
    start = max(0, end - width)
    if start > 0:
        start = flat.find(" ", start) + 1 or start
    if end < len(flat):
        end = flat.rfind(" ", start, end) if flat.rfind(" ", start, end) > start else end
    return ("…" if start > 0 else "") + flat[start:end] + ("…" if end < len(flat) else "")
