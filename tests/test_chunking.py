"""Chunking follows structure, respects the model's limit and keeps exact character spans."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from ingest.parsers.base import LIST_ITEM, TABLE, TEXT, TITLE, Element


def words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def test_sections_start_chunks_and_carry_titles() -> None:
    els = [
        Element("Intro", TITLE, level=1), Element("alpha " * 10, TEXT),
        Element("Method", TITLE, level=1), Element("beta " * 10, TEXT),
        Element("Detail", TITLE, level=2), Element("gamma " * 10, TEXT),
    ]
    full, chunks = Chunker(words, max_tokens=50, target_tokens=40).chunk(els)
    assert [c.section for c in chunks] == ["Intro", "Method", "Method > Detail"]
    assert chunks[0].text.startswith("Intro")
    for c in chunks:
        assert full[c.char_start : c.char_end] == c.text


def test_table_kept_whole_when_it_fits_and_split_by_rows_when_not() -> None:
    small = Element("\n".join(f"r{i} | x" for i in range(5)), TABLE)
    big = Element("\n".join(f"row{i} | a b c" for i in range(40)), TABLE)
    _, chunks = Chunker(words, max_tokens=60, target_tokens=30).chunk([Element("p " * 20), small, big])
    assert any(c.text == small.text for c in chunks)
    big_chunks = [c for c in chunks if "row" in c.text]
    assert len(big_chunks) > 1
    for c in big_chunks:  # split between rows, never inside one
        assert all(line.startswith("row") and line.endswith("a b c") for line in c.text.split("\n"))


def test_no_chunk_exceeds_the_model_limit() -> None:
    long_para = Element(". ".join(["word " * 30] * 20), TEXT)
    wall = Element("x" * 5000, TEXT)  # one huge "word"
    _, chunks = Chunker(lambda ts: [max(len(t.split()), len(t) // 20) for t in ts], 64, 48).chunk(
        [long_para, wall]
    )
    assert chunks and all(c.n_tokens <= 64 for c in chunks)
    assert "".join(c.text for c in chunks if "x" in c.text).count("x") == 5000  # nothing lost


def test_pages_and_times_carried() -> None:
    els = [Element("one two", TEXT, page=3), Element("three four", LIST_ITEM, page=4),
           Element("said this", TEXT, t_start=1.5, t_end=3.0), Element("and that", TEXT, t_start=3.0, t_end=4.2)]
    _, chunks = Chunker(words, 100, 100).chunk(els)
    assert (chunks[0].page, chunks[0].page_end) == (3, 4)
    assert (chunks[0].t_start, chunks[0].t_end) == (1.5, 4.2)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TEXT, TITLE, TABLE, LIST_ITEM]),
                          st.text(alphabet="ab \n.", min_size=1, max_size=400)), max_size=30))
def test_spans_exact_and_limits_hold(items: list[tuple[str, str]]) -> None:
    els = [Element(t, k) for k, t in items if t.strip()]
    full, chunks = Chunker(words, max_tokens=20, target_tokens=12).chunk(els)
    for c in chunks:
        assert full[c.char_start : c.char_end] == c.text
        assert len(c.text.split()) <= 20
    # every word of the document is in some chunk
    assert sum(len(c.text.split()) for c in chunks) >= sum(len(e.text.split()) for e in els) - 0
