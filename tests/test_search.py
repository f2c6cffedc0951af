"""Search that behaves: each query form, filters on both sides, CJK, diacritics, documents with passages."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from conftest import AppFactory

from kb.catalog import Catalog
from kbapp.app import App
from retrieval.filters import Filters
from retrieval.fusion import Weights, fuse, normalise
from retrieval.lexical import word_match
from retrieval.query import Item, fold, parse
from retrieval.snippets import snippet

# -- the query language (pure) ------------------------------------------------------------------------


def test_and_requires_both_and_stopwords_never_carry_a_match() -> None:
    q = parse("boiler AND service")
    assert q.must == [Item("term", ("boiler",)), Item("term", ("service",))] and not q.should
    assert word_match(q) == '"boiler" AND "service"'
    assert word_match(parse("the boiler and the service")) == '"boiler" OR "service"'
    assert word_match(parse("the who")) == '"the" OR "who"'  # only stopwords: they are the query


def test_phrases_prefixes_exclusions_hyphens() -> None:
    q = parse('"exact phrase" boil* -invoice -"paid in full" NOT draft e-mail')
    assert Item("phrase", ("exact", "phrase")) in q.should
    assert Item("prefix", ("boil",)) in q.should
    assert {i.text for i in q.exclude} == {"invoice", "paid in full", "draft"}
    assert Item("phrase", ("e", "mail")) in q.should and Item("term", ("email",)) in q.should
    assert "invoice" not in q.dense_text and "draft" not in q.dense_text
    assert word_match(q) is not None and "invoice" not in (word_match(q) or "")


def test_single_letters_and_symbols_keep_their_meaning() -> None:
    assert parse("T cells").should == [Item("phrase", ("t", "cells")), Item("term", ("cells",))]
    assert Item("phrase", ("vitamin", "d")) in parse("vitamin D").should
    assert Item("phrase", ("α", "helix")) in parse("α helix").should
    assert parse("C++ templates").should[0] == Item("substring", ("c++",))


def test_cjk_runs_become_substrings_and_user_syntax_never_reaches_fts() -> None:
    assert parse("東京 weather").should[0] == Item("substring", ("東京",))
    long = parse("機械学習の研究")
    assert all(i.kind == "substring" and len(i.text) == 3 for i in long.should)
    nasty = parse('NEAR(a b) "unbalanced col:x ^y {z}')
    match = word_match(nasty) or ""
    assert "NEAR(" not in match and ":" not in match and "^" not in match and "{" not in match


def test_fold_keeps_offsets_and_snippets_mark_matches() -> None:
    assert fold("Crème Brûlée ÉCOLE") == "creme brulee ecole"
    text, marks = snippet("We ate crème brûlée after the boilers were serviced.", parse("creme boiler"))
    assert [text[s:e] for s, e in marks] == ["crème", "boilers"]


def test_fusion_normalises_each_side() -> None:
    assert normalise({"a": 10.0, "b": 5.0, "c": 0.0}) == {"a": 1.0, "b": 0.5, "c": 0.0}
    fused = fuse({"a": 0.9, "b": 0.5, "x": 0.1}, {"b": 30.0, "c": 10.0, "y": 0.0}, Weights(0.5, 0.5))
    assert fused["b"] > fused["a"] > fused["c"] > fused["x"] == fused["y"] == 0.0


# -- through the library (hash embedder) --------------------------------------------------------------


@pytest.fixture()
def library(make_app: AppFactory, tmp_path: Path) -> App:
    app = make_app()
    docs = tmp_path / "docs"
    docs.mkdir()
    files = {
        "boiler.txt": "The boiler service is booked for Thursday. The engineer checks the pressure.",
        "and.txt": "Salt and pepper and more salt and vinegar, and so on and on.",
        "boiling.md": "# Kitchen\n\nBoiling pasta needs a large pot and plenty of salt.",
        "email.txt": "Send the e-mail to the landlord about the broken window.",
        "phrase.txt": "The exact phrase appears here in full.",
        "scatter.txt": "A phrase that is not exact, scattered words about an exact match.",
        "tcell.txt": "Regulatory T cells suppress the immune response in mice.",
        "cpp.txt": "Templates in C++ are resolved at compile time by the compiler.",
        "cafe.txt": "We met at the Café Müller near the station.",
        "tokyo.txt": "東京の天気は晴れです。明日は雨が降るでしょう。",
        "invoice.txt": "Boiler invoice: paid in full for the annual service.",
        "copy1.txt": "Quarterly report of the garden committee: compost, sheds and kohlrabi.",
        "copy2.txt": "Quarterly report of the garden committee: compost, sheds and kohlrabi!",
    }
    for name, text in files.items():
        (docs / name).write_text(text + "\n", encoding="utf-8")
    os.utime(docs / "invoice.txt", (1_600_000_000, 1_600_000_000))  # 2020-09-13
    app.ingest([docs])
    return app


def names(app: App, query: str, k: int = 10, **kw: str) -> list[str]:
    return [Path(h["path"]).name for h in app.search(query, k=k, **kw)]


def lexical(app: App, query: str, **kw: str) -> list[str]:
    res = app.searcher.run(query, 10, Filters(**kw), mode="lexical")  # type: ignore[arg-type]
    return [Path(h.document.paths[0]).name for h in res.hits]


def test_each_query_form_on_the_keyword_side(library: App) -> None:
    assert "and.txt" not in lexical(library, "boiler AND service")
    assert set(lexical(library, "boiler AND service")) == {"boiler.txt", "invoice.txt"}
    assert "boiling.md" in lexical(library, "boil*")
    assert lexical(library, "e-mail") == ["email.txt"]
    assert lexical(library, '"exact phrase"') == ["phrase.txt"]
    assert lexical(library, "boiler -invoice") == ["boiler.txt"]
    assert lexical(library, 'service -"paid in full"') == ["boiler.txt"]
    assert lexical(library, "T cells")[0] == "tcell.txt"
    assert lexical(library, "C++") == ["cpp.txt"]


def test_diacritics_and_case_folded_both_ways(library: App) -> None:
    assert lexical(library, "cafe muller") == ["cafe.txt"]
    assert lexical(library, "CAFÉ") == ["cafe.txt"]


def test_cjk_is_matched_lexically(library: App) -> None:
    assert lexical(library, "東京") == ["tokyo.txt"]  # two characters: below a trigram
    assert lexical(library, "天気は晴れ") == ["tokyo.txt"]
    hit = library.search("東京", k=1)[0]
    assert hit["path"].endswith("tokyo.txt")


def test_filters_apply_to_both_sides_with_and_without_keyword_hits(library: App) -> None:
    assert names(library, "boiler", file_type="md") == ["boiling.md"]  # no keyword hit: dense, filtered
    assert names(library, "salt", file_type="md") == ["boiling.md"]  # keyword hit, filtered
    assert names(library, "boiler service", after="2020-01-01", before="2020-12-31") == ["invoice.txt"]
    assert lexical(library, "service", before="2020-12-31") == ["invoice.txt"]
    assert names(library, "boiler", kind="mail") == []
    assert names(library, "boiler", source="mail") == []


def test_a_page_is_distinct_documents_with_passages_snippets_and_facets(library: App) -> None:
    page = library.search_page("boiler service", k=5)
    hits = page["hits"]
    assert len({h["document_id"] for h in hits}) == len(hits)
    top = hits[0]
    assert top["passages"] and top["passages"][0]["chunk_id"] == top["chunk_id"]
    marked = [top["snippet"][s:e].lower() for s, e in top["highlights"]]
    assert "boiler" in marked and "service" in marked
    assert sum(page["facets"]["file_type"].values()) >= len(hits)


def test_near_duplicate_passages_are_collapsed(library: App) -> None:
    got = names(library, "quarterly report garden committee kohlrabi")
    assert len({"copy1.txt", "copy2.txt"} & set(got)) == 1


def test_migration_6_builds_the_new_indexes_from_existing_rows(library: App, tmp_path: Path) -> None:
    path = library.catalog.path
    library.close()
    db = sqlite3.connect(path)
    db.executescript(
        "DROP TABLE docs_fts; DROP TABLE chunks_tri; DROP TRIGGER chunks_ai; DROP TRIGGER chunks_ad;"
        " DROP TRIGGER documents_fts_ad; DROP TABLE outbox; DROP TABLE schedules; DROP TABLE forgotten;"
        " DELETE FROM schema_migrations WHERE version >= 6;"  # a catalog at version 5
    )
    db.commit()
    db.close()
    cat = Catalog(path)
    try:
        n_docs = cat.read("SELECT count(*) AS n FROM documents")[0]["n"]
        assert cat.read("SELECT count(*) AS n FROM docs_fts")[0]["n"] == n_docs
        assert cat.read("SELECT count(*) AS n FROM chunks_tri WHERE chunks_tri MATCH '\"天気は\"'")[0]["n"] == 1
    finally:
        cat.close()


def test_a_title_line_alone_is_shown_with_the_text_after_it(make_app: AppFactory, tmp_path: Path) -> None:
    """SciFact's shape: a title line, then a paragraph too long to sit beside it, so the title is a chunk of its
    own (kept for ranking); the passage shown and given to the model is the text with its title in front."""
    app = make_app()
    docs = tmp_path / "docs"
    docs.mkdir()
    body = " ".join(f"Older adults in trial arm {i} took calcium with their meals every morning." for i in range(16))
    (docs / "lead.txt").write_text("Vitamin D supplements lower the risk of hip fractures.\n\n" + body + "\n")
    app.ingest([docs])
    chunks = app.catalog.chunks_of(app.search("vitamin", k=1)[0]["document_id"])
    assert chunks[0].text.startswith("Vitamin D") and len(chunks) >= 2  # the title is its own chunk
    for query in ("vitamin hip fractures", "vitamin fractures calcium meals"):  # the title alone; both chunks
        hit = app.searcher.run(query, 1).hits[0]
        assert [p.chunk.seq for p in hit.passages].count(0) == 0  # the title never stands alone
        best = hit.passages[0]
        assert best.chunk.seq == 1 and best.shown.startswith("Vitamin D supplements")
        assert "Older adults" in best.shown and best.snippet.startswith("Vitamin D")
        marked = {best.snippet[s:e].lower() for s, e in best.highlights}
        assert "vitamin" in marked
        assert len({p.chunk.id for p in hit.passages}) == len(hit.passages)
