"""Keyword search over the catalog's FTS5 indexes, built safely from a parsed query (retrieval/query.py).

Three indexes (migration 6): `docs_fts` (title and whole text of each document: one lexical score per
document, which ranks better than its best chunk's), `chunks_fts` (chunk words: which passages match) and
`chunks_tri` (trigrams: CJK text and symbol words such as C++ as substrings). Every string that reaches
MATCH is built here from folded word tokens, each quoted, so nothing a person types is FTS5 syntax.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from kb.catalog import Catalog
from retrieval.filters import Filters
from retrieval.query import Item, Query

TITLE_WEIGHT = 2.0  # bm25 column weights in docs_fts: a word in the title says more than one in the text
SECTION_WEIGHT = 0.5  # ... and in chunks_fts, a word in the section heading a little less than in the text


def _fts_item(item: Item) -> str | None:
    if item.kind == "term":
        return f'"{item.tokens[0]}"'
    if item.kind == "phrase":
        return '"' + " ".join(item.tokens) + '"'
    if item.kind == "prefix":
        return f'"{item.tokens[0]}"*'
    return None  # substrings go to the trigram index


def word_match(query: Query) -> str | None:
    """The FTS5 expression for the word indexes: all `must` items, else any `should` item."""
    must = [e for e in map(_fts_item, query.must) if e]
    if must:
        return " AND ".join(must)
    should = list(dict.fromkeys(e for e in map(_fts_item, query.should) if e))
    return " OR ".join(should[:64]) or None


def _substrings(items: Iterable[Item]) -> list[str]:
    return list(dict.fromkeys(i.tokens[0] for i in items if i.kind == "substring"))


def _like(s: str) -> str:
    return "%" + s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _in(ids: Sequence[int]) -> str:
    return ",".join(str(int(i)) for i in ids)


class Lexical:
    """Document and passage keyword scores (higher is better), filters applied in SQL."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def documents(self, query: Query, k: int, filters: Filters) -> dict[int, float]:
        """Up to k documents by BM25 over their whole text (plus trigram matches for CJK and symbols)."""
        cond, params = filters.sql("d")
        out: dict[int, float] = {}
        match = word_match(query)
        if match:
            rows = self.catalog.read(
                f"SELECT f.rowid AS id, bm25(docs_fts, {TITLE_WEIGHT}, 1.0) AS score FROM docs_fts f"
                f" JOIN documents d ON d.id = f.rowid WHERE docs_fts MATCH ? AND {cond}"
                " ORDER BY score LIMIT ?",
                (match, *params, k),
            )
            out = {int(r["id"]): -float(r["score"]) for r in rows}
        subs = _substrings(query.positive)
        if subs:
            for _cid, doc_id, score in self._substring_chunks(subs, 4 * k, filters, None):
                out[doc_id] = max(out.get(doc_id, 0.0), score)
        return out

    def passages(
        self, query: Query, k: int, filters: Filters, doc_ids: Sequence[int] | None = None
    ) -> list[tuple[str, int, float]]:
        """Up to k matching chunks as (chunk id, document id, score), optionally within some documents."""
        cond, params = filters.sql("d")
        if doc_ids is not None:
            doc_ids = sorted(self.allowed(doc_ids, filters))
            if not doc_ids:
                return []
            cond += f" AND c.doc_id IN ({_in(doc_ids)})"
        out: list[tuple[str, int, float]] = []
        match = word_match(query)
        if match and doc_ids is not None:
            # Within a few documents (a result page's passages): their chunks' rowids are checked against
            # each match (`+` keeps SQLite from handing them to FTS5 one by one) instead of a join per match:
            # 4.4 ms of CPU against 16.8 ms on 100,000 chunks, same rows.
            rows = self.catalog.read(
                f"SELECT c.id AS id, c.doc_id AS doc_id, x.score AS score FROM"
                f" (SELECT rowid AS r, bm25(chunks_fts, 1.0, {SECTION_WEIGHT}) AS score FROM chunks_fts"
                f"  WHERE chunks_fts MATCH ? AND +rowid IN (SELECT rowid FROM chunks WHERE doc_id IN ({_in(doc_ids)}))"
                "  ORDER BY score LIMIT ?) x JOIN chunks c ON c.rowid = x.r ORDER BY x.score",
                (match, k),
            )
            out = [(r["id"], int(r["doc_id"]), -float(r["score"])) for r in rows]
        elif match:
            rows = self.catalog.read(
                f"SELECT c.id AS id, c.doc_id AS doc_id, bm25(chunks_fts, 1.0, {SECTION_WEIGHT}) AS score"
                " FROM chunks_fts JOIN chunks c ON c.rowid = chunks_fts.rowid JOIN documents d ON d.id = c.doc_id"
                f" WHERE chunks_fts MATCH ? AND {cond} ORDER BY score LIMIT ?",
                (match, *params, k),
            )
            out = [(r["id"], int(r["doc_id"]), -float(r["score"])) for r in rows]
        subs = _substrings(query.positive)
        if subs:
            out.extend(self._substring_chunks(subs, k, filters, doc_ids))
        return out

    def _substring_chunks(
        self, subs: list[str], k: int, filters: Filters, doc_ids: Sequence[int] | None
    ) -> list[tuple[str, int, float]]:
        """Chunks containing any of the substrings: the trigram index for three characters or more; shorter
        ones (a two-character Chinese word, C#) by LIKE, which the trigram index cannot serve (a scan)."""
        cond, params = filters.sql("d")
        if doc_ids is not None:
            cond += f" AND c.doc_id IN ({_in(doc_ids)})"
        long = [s for s in subs if len(s) >= 3]
        short = [s for s in subs if len(s) < 3]
        found: dict[str, tuple[int, float]] = {}
        if long:
            match = " OR ".join('"' + s.replace('"', '""') + '"' for s in long)
            rows = self.catalog.read(
                "SELECT c.id AS id, c.doc_id AS doc_id, bm25(chunks_tri) AS score FROM chunks_tri"
                " JOIN chunks c ON c.rowid = chunks_tri.rowid JOIN documents d ON d.id = c.doc_id"
                f" WHERE chunks_tri MATCH ? AND {cond} ORDER BY score LIMIT ?",
                (match, *params, k),
            )
            found.update({r["id"]: (int(r["doc_id"]), -float(r["score"])) for r in rows})
        if short:
            likes = " OR ".join("c.text LIKE ? ESCAPE '\\'" for _ in short)
            rows = self.catalog.read(
                f"SELECT c.id AS id, c.doc_id AS doc_id FROM chunks c JOIN documents d ON d.id = c.doc_id"
                f" WHERE ({likes}) AND {cond} LIMIT ?",
                (*[_like(s) for s in short], *params, k),
            )
            for r in rows:
                if r["id"] not in found:
                    found[r["id"]] = (int(r["doc_id"]), 1.0)
        return [(cid, d, s) for cid, (d, s) in found.items()]

    def excluded(self, query: Query) -> set[int]:
        """Documents containing any excluded word, phrase or substring."""
        if not query.exclude:
            return set()
        out: set[int] = set()
        words = [e for e in map(_fts_item, query.exclude) if e]
        if words:
            rows = self.catalog.read("SELECT rowid AS id FROM docs_fts WHERE docs_fts MATCH ?", (" OR ".join(words),))
            out.update(int(r["id"]) for r in rows)
        subs = _substrings(query.exclude)
        if subs:
            out.update(d for _, d, _ in self._substring_chunks(subs, 1_000_000, Filters(), None))
        return out

    def allowed(self, doc_ids: Iterable[int], filters: Filters) -> set[int]:
        """Which of these documents pass the filters (and are indexed): the check a dense hit goes through."""
        ids = list(dict.fromkeys(doc_ids))
        if not ids:
            return set()
        cond, params = filters.sql("d")
        rows = self.catalog.read(f"SELECT d.id AS id FROM documents d WHERE d.id IN ({_in(ids)}) AND {cond}", params)
        return {int(r["id"]) for r in rows}

    def facets(self, doc_ids: Sequence[int]) -> dict[str, dict[str, int]]:
        """Counts by kind, file type and tag over the documents a query found (for the filter menus)."""
        out: dict[str, dict[str, int]] = {"kind": {}, "file_type": {}, "tag": {}}
        if not doc_ids:
            return out
        ids = _in(doc_ids)
        for col in ("kind", "file_type"):
            sql = f"SELECT {col} AS v, count(*) AS n FROM documents WHERE id IN ({ids}) GROUP BY v"
            for r in self.catalog.read(sql):
                out[col][str(r["v"])] = int(r["n"])
        rows = self.catalog.read(
            f"SELECT tag AS v, count(DISTINCT doc_id) AS n FROM sources WHERE doc_id IN ({ids}) AND tag IS NOT NULL"
            " GROUP BY v"
        )
        out["tag"] = {str(r["v"]): int(r["n"]) for r in rows}
        return out

    def heading_followers(self, chunk_keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], Any]:
        """For (doc id, seq) of heading-only chunks: the row of the chunk right after each one."""
        out: dict[tuple[int, int], Any] = {}
        for doc_id, seq in chunk_keys:
            rows = self.catalog.read("SELECT id FROM chunks WHERE doc_id=? AND seq=?", (doc_id, seq + 1))
            if rows:
                out[(doc_id, seq)] = rows[0]["id"]
        return out
