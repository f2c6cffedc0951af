"""Hybrid search at the level people read: documents, each with its best passages.

Dense (Chroma, cosine over chunks) and lexical (SQLite FTS5 over whole documents, retrieval/lexical.py) each
give every document one score; both are filtered the same way before they are fused on normalised scores
(retrieval/fusion.py). A page of k results is k distinct documents; each carries its best passages (chunks
scored by both sides), with near-duplicate passages collapsed and a snippet whose matched terms are offsets.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kb.catalog import DOC_INDEXED, Catalog, ChunkRecord, DocumentRecord
from kb.embedding import Embedder
from kb.errors import IndexMismatchError
from kb.index import VectorIndex
from retrieval.filters import Filters
from retrieval.fusion import DEFAULT, Weights, fuse, normalise
from retrieval.lexical import Lexical
from retrieval.query import Query, parse, words
from retrieval.snippets import snippet

# Chunks with a role (a reply's quoted message, a signature) count this much of their score: the quoted text
# is in the library as its own message already, and a reply's own words should come first.
ROLE_WEIGHT = 0.5
# A chunk this short with no sentence in it is a heading on its own: shown with the passage that follows it.
HEADING_CHARS = 120
# So is a chunk of at most this many word pieces (a title line the chunker left alone because the paragraph
# after it did not fit beside it: 4,575 of SciFact's 5,183 abstracts), when the next chunk continues it.
#
# Headings and short leads stay chunks of their own in the index, and travel with their text in what a hit
# shows (the passage is the chunk after the lead, its snippet read from the lead on). Measured on SciFact
# train (first 1,245 documents of the corpus, 258 queries whose relevant documents are among them), a
# chunker that carried them into the next chunk instead (11,255 chunks of 154 word pieces against 15,023 of
# 116) ranked no better: dense nDCG@10 0.788 against 0.793, hybrid 0.844 against 0.850 (tuning half alone:
# dense 0.812 / 0.818, hybrid 0.885 / 0.883). A title alone is a sharp vector for the claims people type;
# shown alone it says nothing.
LEAD_TOKENS = 48
MODES = ("hybrid", "dense", "lexical")
# How deep each side looks before fusion: 100 documents by keywords, 100 chunks by meaning. Fixed for a page
# of any usual size because min-max normalisation reads the last score of each list, so what the benchmark
# measures at k=10 is what a page of 10 gets. On SciFact train (tuning half, half the corpus indexed), 100
# and 100 ranked as well as any of 50/100/300 x 100/200/300 (0.818 against 0.801-0.818), and 100 chunks is
# the cheapest: 300 added ~6 ms of CPU a search at 100,000 chunks.
LEXICAL_DEPTH = 100
DENSE_DEPTH = 100


def depths(k: int) -> tuple[int, int]:
    """(documents by keywords, chunks by meaning) that a search for k results fuses."""
    return max(LEXICAL_DEPTH, k), max(DENSE_DEPTH, 3 * k)


@dataclass
class Passage:
    """One chunk of a hit's document, with how it scored and a snippet with the matches marked."""

    chunk: ChunkRecord
    score: float
    similarity: float | None
    snippet: str = ""
    highlights: list[tuple[int, int]] = field(default_factory=list)  # [start, end) offsets in `snippet`
    shown: str = ""  # the text the snippet is cut from (a heading alone comes with the chunk after it)

    def to_dict(self) -> dict[str, Any]:
        c = self.chunk
        return {
            "chunk_id": c.id, "seq": c.seq, "page": c.page, "page_end": c.page_end, "section": c.section,
            "char_start": c.char_start, "char_end": c.char_end, "t_start": c.t_start, "t_end": c.t_end,
            "ocr": c.ocr, "role": c.role, "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "text": c.text, "snippet": self.snippet, "highlights": [list(h) for h in self.highlights],
        }


@dataclass
class Hit:
    """One document found, its fused score and its best passages (best first)."""

    document: DocumentRecord
    score: float  # fused normalised score, comparable within one result list
    passages: list[Passage]
    similarity: float | None = None  # best cosine similarity among its chunks, when the dense side found one
    message: dict[str, Any] | None = None  # for an attachment: the message it came in (uri, subject, from, date)

    @property
    def chunk(self) -> ChunkRecord:
        return self.passages[0].chunk

    @property
    def snippet(self) -> str:
        return self.passages[0].snippet

    def to_dict(self) -> dict[str, Any]:
        """The document and, at the top level, its best passage (what a one-line listing shows)."""
        d, best = self.document, self.passages[0].to_dict()
        out = {
            "document_id": d.id, "title": d.title, "path": d.paths[0] if d.paths else None,
            "paths": d.paths, "tag": d.tags[0] if d.tags else None, "kind": d.kind, "file_type": d.file_type,
            "created_at": d.created_at, "modified_at": d.modified_at, "message": self.message,
            **{k: v for k, v in best.items() if k not in ("score", "similarity")},
            "score": round(self.score, 6),
            "similarity": None if self.similarity is None else round(self.similarity, 4),
            "passages": [p.to_dict() for p in self.passages],
        }
        return out


@dataclass
class SearchResult:
    hits: list[Hit]
    facets: dict[str, dict[str, int]] = field(default_factory=dict)  # counts over every document found
    collapsed: int = 0  # documents left out because their passages repeat a better hit's


@dataclass
class Sides:
    """What each side found, before fusion (the benchmark tunes fusion on these)."""

    dense_docs: dict[int, float]
    lexical_docs: dict[int, float]
    records: dict[str, ChunkRecord]  # the dense side's chunks
    dense_chunks: dict[str, float]  # chunk id -> cosine similarity


def where_clause(
    kind: str | None = None, file_type: str | None = None, tag: str | None = None
) -> dict[str, Any] | None:
    """Chroma's filter for the search filters people use (kept for callers that filter the dense side only)."""
    return Filters(kind=kind, file_type=file_type, tag=tag).chroma()


def fingerprint(text: str) -> str:
    """Same words, same passage: quoted mail and copies in two files differ only in marks and spacing."""
    return hashlib.blake2b(" ".join(words(text)).encode(), digest_size=12).hexdigest()


def _heading_only(chunk: ChunkRecord) -> bool:
    text = chunk.text.strip()
    return len(text) <= HEADING_CHARS and not any(p in text for p in (".", "!", "?"))


def _leads(chunk: ChunkRecord, follow: ChunkRecord) -> bool:
    """Whether chunk is shown with follow, the chunk after it: a heading alone, or a short lead (a title line)
    continued by text of the same section, both the document's own words (not a quote or a signature)."""
    if chunk.role is not None or follow.role is not None:
        return False
    if _heading_only(chunk):
        return True
    return 0 < chunk.n_tokens <= LEAD_TOKENS and follow.section == chunk.section


class Searcher:
    def __init__(
        self, catalog: Catalog, index: Callable[[], VectorIndex], embedder: Embedder, weights: Weights = DEFAULT
    ) -> None:
        self.catalog = catalog
        self._index = index
        self.embedder = embedder
        self.weights = weights
        self.lexical = Lexical(catalog)

    def _vector(self, text: str) -> Any:
        """The query's vector, or None when there is no text for it or the vectors are being rebuilt."""
        if not text:
            return None
        try:
            self._index().check_model()
        except IndexMismatchError:
            # The vectors are being rebuilt for a new model: keywords answer meanwhile, not an error.
            if self.catalog.get_meta("reindex_target") is None:
                raise
            return None
        embed_query = getattr(self.embedder, "embed_query", None)
        return embed_query(text) if embed_query else self.embedder.embed([text])[0]

    def _dense(
        self, vector: Any, depth: int, filters: Filters, where: dict[str, Any] | None, enough: int
    ) -> dict[str, float]:
        """Nearest chunks (id -> similarity) passing the filters. Chroma's own filter costs ~80 ms on 100,000
        chunks (it lists every matching id first), so a filtered search first looks wider without it and
        keeps what the catalog allows; only when that finds too few documents does Chroma filter."""
        index = self._index()
        chroma = filters.chroma()
        if where is not None:
            return dict(index.query(vector, depth, where if chroma is None else {"$and": [chroma, where]}))
        if not filters:
            return dict(index.query(vector, depth, None))
        wide = index.query(vector, 5 * depth, None)
        recs = self.catalog.chunks_by_id([c for c, _ in wide])
        ok = self.lexical.allowed({c.doc_id for c in recs.values()}, filters)
        kept = [(c, s) for c, s in wide if c in recs and recs[c].doc_id in ok]
        if len({recs[c].doc_id for c, _ in kept}) >= enough or chroma is None:
            return dict(kept[:depth])
        return dict(index.query(vector, depth, chroma))

    def search(
        self, query: str, k: int = 10, where: dict[str, Any] | None = None, *, tag: str | None = None,
        filters: Filters | None = None, passages: int = 3,
    ) -> list[Hit]:
        """Top k documents with their best passages. `filters` apply to both sides; a raw Chroma `where`
        (any chunk metadata) can only filter the dense side, so with it the keyword side is left out."""
        if tag:
            filters = Filters(**{**(filters or Filters()).__dict__, "tag": tag})
        return self.run(query, k, filters, passages=passages, where=where).hits

    def run(
        self, text: str, k: int = 10, filters: Filters | None = None, *, passages: int = 3,
        where: dict[str, Any] | None = None, mode: str = "hybrid",
    ) -> SearchResult:
        """The whole search: parse, both sides filtered, fused per document, passages, facets."""
        filters = filters or Filters()
        query = parse(text.strip())
        if not query:
            return SearchResult([])
        depth_docs, depth_chunks = depths(k)
        sides = self.sides(query, depth_docs, depth_chunks * (4 if where else 1), filters, where=where, mode=mode)
        dense_docs, lexical_docs = sides.dense_docs, sides.lexical_docs
        records, dense_chunks = sides.records, sides.dense_chunks
        fused = fuse(dense_docs, lexical_docs, self.weights)
        # Ties (one side's best against the other's best) go to the keyword match: it is the exact one.
        order = sorted(fused, key=lambda d: (-round(fused[d], 9), -lexical_docs.get(d, 0.0)))
        facets = self.lexical.facets(order)
        top = order[: 2 * k + 5]  # slack for documents collapsed as duplicates or mid-update
        docs = self.catalog.documents(top)
        top = [d for d in top if d in docs and docs[d].status == DOC_INDEXED]

        by_doc = self._passages(query, top, records, dense_chunks, filters, mode)
        hits: list[Hit] = []
        seen: set[str] = set()
        collapsed = 0
        for doc_id in top:
            kept = []
            for p in by_doc.get(doc_id, []):
                fp = fingerprint(p.chunk.text)
                if fp in seen:
                    continue
                seen.add(fp)
                kept.append(p)
            if not kept:
                collapsed += 1
                continue
            sims = [p.similarity for p in kept if p.similarity is not None]
            kept = kept[: max(1, passages)]
            for p in kept:  # snippets only for what is shown: matching costs more than the search itself
                p.snippet, p.highlights = snippet(p.shown or p.chunk.text, query)
            hits.append(Hit(docs[doc_id], fused[doc_id], kept, max(sims) if sims else None))
            if len(hits) == k:
                break
        containers = self.catalog.containers(h.document.id for h in hits)
        for h in hits:
            h.message = containers.get(h.document.id)
        return SearchResult(hits, facets, collapsed)

    def sides(
        self, query: Query, depth_docs: int, depth_chunks: int, filters: Filters, *,
        where: dict[str, Any] | None = None, mode: str = "hybrid",
    ) -> Sides:
        """Each side's score per document, both filtered the same way (and exclusions removed) before fusion:
        dense is a document's best chunk similarity, lexical its BM25 over the whole text."""
        excluded = self.lexical.excluded(query)

        dense_chunks: dict[str, float] = {}
        if mode != "lexical":
            vector = self._vector(query.dense_text)
            if vector is not None:
                dense_chunks = self._dense(vector, depth_chunks, filters, where, max(10, depth_docs // 5))
        lexical_docs: dict[int, float] = {}
        if mode != "dense" and where is None:
            lexical_docs = self.lexical.documents(query, depth_docs, filters)

        records = self.catalog.chunks_by_id(list(dense_chunks))
        allowed = self.lexical.allowed({c.doc_id for c in records.values()}, filters) - excluded
        dense_docs: dict[int, float] = {}
        for cid, sim in dense_chunks.items():
            rec = records.get(cid)
            if rec is None or rec.doc_id not in allowed:
                continue
            s = sim * (ROLE_WEIGHT if rec.role else 1.0)
            dense_docs[rec.doc_id] = max(dense_docs.get(rec.doc_id, -1.0), s)
        lexical_docs = {d: s for d, s in lexical_docs.items() if d not in excluded}
        if lexical_docs:
            # A meeting's summary restates its transcript: its words count at ROLE_WEIGHT on the keyword side
            # too (its chunks, role "summary", already do on the meaning side), so the recording comes first.
            ids = list(lexical_docs)
            marks = ",".join("?" * len(ids))
            for r in self.catalog.read(f"SELECT id FROM documents WHERE kind='summary' AND id IN ({marks})", ids):
                lexical_docs[r["id"]] *= ROLE_WEIGHT

        return Sides(dense_docs, lexical_docs, records, dense_chunks)

    def _passages(
        self, query: Query, doc_ids: list[int], records: dict[str, ChunkRecord], dense: dict[str, float],
        filters: Filters, mode: str,
    ) -> dict[int, list[Passage]]:
        """Each document's chunks scored by both sides (normalised over these documents), best first."""
        wanted = set(doc_ids)
        lex: dict[str, float] = {}
        if mode != "dense":
            lex = {cid: s for cid, d, s in self.lexical.passages(query, 50 * max(1, len(doc_ids)), filters, doc_ids)}
        dense_here = {c: s for c, s in dense.items() if c in records and records[c].doc_id in wanted}
        # Divided by the best rather than min-max: among a few passages of one document, min-max would put
        # the weakest at zero on each side and let a short signature tie the document's own words.
        scores = fuse(dense_here, lex, Weights(self.weights.dense, self.weights.lexical, "max"))
        missing = [c for c in scores if c not in records]
        records = {**records, **self.catalog.chunks_by_id(missing)} if missing else records
        # A document matched only as a whole (its words spread over chunks): its first chunk stands for it.
        found = {records[c].doc_id for c in scores if c in records}
        for doc_id in wanted - found:
            rows = self.catalog.read("SELECT id FROM chunks WHERE doc_id=? ORDER BY seq LIMIT 1", (doc_id,))
            if rows:
                scores[rows[0]["id"]] = 0.0
        fetch = [c for c in scores if c not in records]
        if fetch:
            records = {**records, **self.catalog.chunks_by_id(fetch)}
        out: dict[int, list[Passage]] = {}
        heads: dict[tuple[int, int], str] = {}
        for cid in sorted(scores, key=lambda c: -scores[c]):
            rec = records.get(cid)
            if rec is None:
                continue
            if rec.role is None and (_heading_only(rec) or 0 < rec.n_tokens <= LEAD_TOKENS):
                heads[(rec.doc_id, rec.seq)] = cid
            s = scores[cid] * (ROLE_WEIGHT if rec.role else 1.0)
            out.setdefault(rec.doc_id, []).append(Passage(rec, s, dense.get(cid)))
        # A heading or title line alone is a poor passage: the chunk after it takes its place (its record is what
        # answers quote), with the better of the two scores and similarities; `shown` and the snippet read the
        # lead first. Hit.similarity is unchanged: it was already the best over both chunks.
        followers = self.lexical.heading_followers(list(heads))
        nxt = self.catalog.chunks_by_id(list(followers.values())) if followers else {}
        for doc_id, plist in out.items():
            merged: dict[str, Passage] = {}
            for p in plist:
                follow = nxt.get(followers.get((doc_id, p.chunk.seq), ""))
                if follow is None or not _leads(p.chunk, follow):
                    merged.setdefault(p.chunk.id, p)
                    continue
                same = next((q for q in plist if q.chunk.id == follow.id), None)
                sims = [x for x in (p.similarity, same.similarity if same else None) if x is not None]
                merged[follow.id] = Passage(
                    follow, max(p.score, same.score if same else p.score), max(sims) if sims else None,
                    shown=p.chunk.text + "\n" + follow.text,
                )
            out[doc_id] = sorted(merged.values(), key=lambda p: -p.score)
        return out


__all__ = ["Filters", "Hit", "Passage", "SearchResult", "Searcher", "Weights", "normalise", "where_clause"]
