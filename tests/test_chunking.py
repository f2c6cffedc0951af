"""Chunking follows structure, respects the model's limit and keeps exact character spans."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.chunking import Chunker
from ingest.parsers.base import LIST_ITEM, TABLE, TEXT, TITLE, Element


def words(texts: Sequence[str]) -> list[int]:
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


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([TEXT, TITLE, TABLE, LIST_ITEM]),
                          st.text(alphabet="ab \n.", min_size=1, max_size=400)), max_size=30))
def test_embedded_text_within_limit(items: list[tuple[str, str]]) -> None:
    """The heading the model reads in front of a chunk counts too, even for absurdly long headings."""
    els = [Element(t, k, level=i % 3) for i, (k, t) in enumerate(items) if t.strip()]
    full, chunks = Chunker(words, max_tokens=20, target_tokens=12).chunk(els)
    for c in chunks:
        assert full[c.char_start : c.char_end] == c.text
        assert len(c.embed_text().split()) <= 20
        assert c.n_tokens == len(c.embed_text().split())


def test_heading_counts_against_the_limit() -> None:
    heading = Element(" ".join(f"h{i}" for i in range(8)), TITLE, level=1)
    paras = [Element(" ".join(f"w{i}" for i in range(18)), TEXT) for _ in range(3)]
    _, chunks = Chunker(words, max_tokens=20, target_tokens=20).chunk([heading, *paras])
    assert chunks[0].text.startswith("h0")  # the heading starts the first chunk, so it is not repeated
    assert all(c.section == heading.text for c in chunks)
    assert all(len(c.embed_text().split()) <= 20 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == " ".join(e.text for e in [heading, *paras]).split()


def test_real_tokenizer_embedded_text_within_model_limit() -> None:
    """Exactly what is embedded (heading + text, in the model's word pieces) fits the model's 254."""
    from kb.embedding import Tokenizer
    from kb.models import embedding_model_path

    count = Tokenizer(embedding_model_path("all-MiniLM-L6-v2")).count
    chapter = Element("Annual report of the regional water authority on infrastructure maintenance, "
                      "procurement and the long-term renewal programme for 2023", TITLE, level=1)
    heading = Element("Appendix C: detailed breakdown of pumping-station refurbishment costs, contractor "
                      "performance reviews and outstanding liabilities (unaudited)", TITLE, level=2)
    sentence = ("The Kirkwall pumping station's refurbishment, delayed by supplier insolvency, cost "
                "£1,284,330.17 against a budget of £975,000; see table 14b for the itemised variance. ")
    near = sentence * 5
    while count([near])[0] < 246:
        near += "Maintenance continues. "
    # Paragraphs just under the limit on their own (the heading pushes them over), one far over it.
    paras = [Element(near, TEXT), Element(sentence * 3, TEXT), Element(near, TEXT), Element(sentence * 40, TEXT)]
    assert 246 <= count([near])[0] <= 254
    els = [chapter, Element(sentence, TEXT), heading, *paras, Element("A short closing note.", TEXT)]
    full, chunks = Chunker(count, max_tokens=254, target_tokens=192).chunk(els)
    embedded = [c.embed_text() for c in chunks]
    assert any(e != c.text for e, c in zip(embedded, chunks, strict=True))  # headings are carried
    sizes = count(embedded)
    assert max(sizes) <= 254, sizes
    assert [c.n_tokens for c in chunks] == sizes
    for c in chunks:
        assert full[c.char_start : c.char_end] == c.text
