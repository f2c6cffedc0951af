"""Structure-following chunking sized in the embedding model's own word pieces.

Sections start at titles; paragraphs and list items are packed up to a target size; tables and code stay
whole when they fit and split by rows otherwise; anything over the model's limit is split at sentences,
then words, so no chunk is ever silently truncated by the embedder.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingest.parsers.base import CODE, TABLE, TITLE, Element

TokenCounter = Callable[[Sequence[str]], list[int]]
# Goes up whenever the same elements would be cut into different chunks; recorded with each document (next to
# the parser's version) so documents chunked by an older version can be found and re-chunked.
# 2: the section heading the model reads in front of a chunk counts against the token limit.
CHUNKER_VERSION = 2
SEP = "\n\n"
_SENTENCE = re.compile(r"(?<=[.!?;:])\s+|\n+")
_LINE = re.compile(r"\n")


@dataclass
class Chunk:
    """A piece of a document ready to embed, with where it came from."""

    text: str
    section: str | None
    char_start: int
    char_end: int
    page: int | None = None
    page_end: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    ocr: bool = False
    n_tokens: int = 0  # word pieces of embed_text(), what the model actually reads
    role: str | None = None  # the elements' role (quote, signature); a chunk never mixes roles

    def embed_text(self) -> str:
        return embed_text(self.text, self.section)


def embed_text(text: str, section: str | None) -> str:
    """What the model reads: the section heading gives a chunk context it may lack on its own."""
    if section and not text.startswith(section.rsplit(" > ", 1)[-1]):
        return f"{section}\n{text}"
    return text


@dataclass
class _Piece:
    text: str
    start: int
    el: Element
    tokens: int


class Chunker:
    """Cuts a document's elements into chunks whose embedded text (heading included) fits the model."""

    def __init__(self, count_tokens: TokenCounter, max_tokens: int, target_tokens: int = 192) -> None:
        self.count = count_tokens
        self.max = max_tokens
        self.target = min(target_tokens, max_tokens)

    def chunk(self, elements: Sequence[Element]) -> tuple[str, list[Chunk]]:
        """Return the document's full text (elements joined by blank lines) and its chunks."""
        parts: list[str] = []
        starts: list[int] = []
        pos = 0
        for el in elements:
            starts.append(pos)
            parts.append(el.text)
            pos += len(el.text) + len(SEP)
        full = SEP.join(parts)
        counts = self.count([e.text for e in elements])
        heading = _HeadingCost(self.count)

        chunks: list[Chunk] = []
        cur: list[_Piece] = []
        cur_tokens = 0
        stack: list[tuple[int, str]] = []
        section: str | None = None

        cur_section: str | None = None

        def flush() -> None:
            nonlocal cur, cur_tokens
            if cur:  # headings with no body before the next heading still hold searchable words
                chunks.append(self._make(cur, full, cur_section))
            cur, cur_tokens = [], 0

        for el, start, n in zip(elements, starts, counts, strict=True):
            if cur and cur[-1].el.role != el.role:
                flush()  # a reply's own words and the message it quotes are weighed apart in search
            if el.kind == TITLE:
                if cur and not all(p.el.kind == TITLE for p in cur):
                    flush()
                level = el.level or 1
                stack = [(lv, t) for lv, t in stack if lv < level] + [(level, el.text[:120])]
                section = self._short_section(" > ".join(t for _, t in stack[-2:]), heading)
            # The model reads the heading in front of a chunk that does not start with it, so the heading's
            # word pieces come out of the chunk's budget: `alone` if this element starts a chunk, `overhead`
            # for the chunk being packed.
            alone = heading.cost(section, el.text)
            overhead = heading.cost(cur_section, cur[0].text) if cur else alone
            oversized_block = el.kind in (TABLE, CODE) and n > self.target and cur_tokens + n > self.max - overhead
            if n > self.max - alone or oversized_block:
                flush()
                # Every piece after the first is read with the heading in front: size them all for it.
                for piece in self._split(el, start, n, self._budget(heading.cost(section, ""))):
                    chunks.append(self._make([piece], full, section))
                continue
            # Headings alone never make a chunk: they wait for their first paragraph (within the limit). One that
            # does not fit beside it (or a title line set as a paragraph) stays a chunk of its own: carrying it
            # into the next chunk ranked no better on SciFact, and search shows it with the text after it
            # (LEAD_TOKENS in retrieval/search.py has the measurement).
            headings_only = all(p.el.kind == TITLE for p in cur)
            limit = min(self.max if headings_only else self.target, self.max - overhead)
            if cur and cur_tokens + n > limit:
                flush()
            if not cur:
                cur_section = section
            cur.append(_Piece(el.text, start, el, n))
            cur_tokens += n
        flush()
        return full, self._verify(chunks, heading)

    def _budget(self, heading_tokens: int) -> int:
        """Word pieces a split piece may hold when the model reads heading_tokens in front of it."""
        return max(1, min(self.target, self.max - heading_tokens))

    def _short_section(self, section: str, heading: _HeadingCost) -> str | None:
        """The section path, cut so its heading never takes more than half of the model's limit.

        Real headings are far below that; an OCR'd or CJK wall set as a heading is not. The parent level goes
        first, then the end of the heading, so what is left is still a prefix of the heading's own text.
        """
        cap = self.max // 2
        if heading.tokens(section) <= cap:
            return section
        last = section.rsplit(" > ", 1)[-1]
        if heading.tokens(last) <= cap:
            return last
        lo, hi = 0, len(last)  # the longest prefix within the cap
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count([last[:mid]])[0] <= cap:
                lo = mid
            else:
                hi = mid - 1
        cut = last[:lo]
        space = cut.rfind(" ")
        if space > 0:  # end at a word boundary when there is one
            cut = cut[:space]
        return cut.rstrip() or None

    def _make(self, pieces: list[_Piece], full: str, section: str | None) -> Chunk:
        start = pieces[0].start
        end = pieces[-1].start + len(pieces[-1].text)
        pages = [p.el.page for p in pieces if p.el.page is not None]
        t0 = [p.el.t_start for p in pieces if p.el.t_start is not None]
        t1 = [p.el.t_end for p in pieces if p.el.t_end is not None]
        return Chunk(
            text=full[start:end],
            section=section,
            char_start=start,
            char_end=end,
            page=pages[0] if pages else None,
            page_end=pages[-1] if pages else None,
            t_start=min(t0) if t0 else None,
            t_end=max(t1) if t1 else None,
            ocr=any(p.el.ocr for p in pieces),
            n_tokens=sum(p.tokens for p in pieces),
            role=pieces[0].el.role,
        )

    def _split(self, el: Element, start: int, n: int, budget: int) -> list[_Piece]:
        """Split one oversized element into pieces of at most `budget` word pieces: tables by rows, prose at
        sentences, then at words."""
        text = el.text
        units = _spans(text, _LINE if el.kind in (TABLE, CODE) else _SENTENCE)
        counts = self.count([text[a:b] for a, b in units])
        fine: list[tuple[int, int, int]] = []
        for (a, b), c in zip(units, counts, strict=True):
            if c > budget:
                words = _spans(text[a:b], re.compile(r"\s+"))
                wc = self.count([text[a + x : a + y] for x, y in words])
                for (x, y), k in zip(words, wc, strict=True):
                    if k <= budget:
                        fine.append((a + x, a + y, k))
                        continue
                    # One "word" longer than a chunk (base64, a URL wall): cut it by characters.
                    step = max(1, (y - x) * budget // (2 * k))
                    for s0 in range(a + x, a + y, step):
                        fine.append((s0, min(s0 + step, a + y), max(1, budget // 2)))
            else:
                fine.append((a, b, c))
        pieces: list[_Piece] = []
        group: list[tuple[int, int, int]] = []
        total = 0
        for a, b, c in fine:
            if group and total + c > budget:
                pieces.append(self._piece(text, group, start, el, total))
                group, total = [], 0
            group.append((a, b, c))
            total += c
        if group:
            pieces.append(self._piece(text, group, start, el, total))
        return pieces

    @staticmethod
    def _piece(text: str, group: list[tuple[int, int, int]], start: int, el: Element, tokens: int) -> _Piece:
        a, b = group[0][0], group[-1][1]
        return _Piece(text[a:b], start + a, el, tokens)

    def _verify(self, chunks: list[Chunk], heading: _HeadingCost) -> list[Chunk]:
        """Count the exact text the model will read (heading included); re-split the rare chunk that overflows.

        Packing adds up per-element counts, and word pieces are not quite additive across joins; this pass
        is what guarantees the limit.
        """
        if not chunks:
            return chunks
        counts = self.count([c.embed_text() for c in chunks])
        out: list[Chunk] = []
        for c, n in zip(chunks, counts, strict=True):
            out.extend(self._fit(c, n, heading, 1))
        return out

    def _fit(self, c: Chunk, n: int, heading: _HeadingCost, shrink: int) -> list[Chunk]:
        """c, or c re-split until every piece's embedded text is within the limit (n: its embedded count)."""
        c.n_tokens = n
        # A piece of one character cannot be cut further; shrink bounds the recursion on odd tokenizers.
        if n <= self.max or len(c.text) < 2 or shrink > 64:
            return [c]
        budget = max(1, self._budget(heading.cost(c.section, "")) // shrink)
        el = Element(c.text, page=c.page, t_start=c.t_start, t_end=c.t_end, ocr=c.ocr, role=c.role)
        subs = [
            Chunk(p.text, c.section, p.start, p.start + len(p.text), c.page, c.page_end, c.t_start, c.t_end, c.ocr,
                  role=c.role)
            for p in self._split(el, c.char_start, n, budget)
        ]
        counts = self.count([s.embed_text() for s in subs])
        if len(subs) == 1 and subs[0].text == c.text:  # the split found no cut at this budget: go finer
            return self._fit(c, n, heading, shrink * 2)
        out: list[Chunk] = []
        for s, k in zip(subs, counts, strict=True):
            out.extend(self._fit(s, k, heading, shrink * 2 if k > self.max else 1))
        return out


class _HeadingCost:
    """Word pieces of section headings, counted once per heading within one document."""

    def __init__(self, count: TokenCounter) -> None:
        self._count = count
        self._cache: dict[str, int] = {}

    def tokens(self, section: str) -> int:
        if section not in self._cache:
            self._cache[section] = self._count([section])[0]
        return self._cache[section]

    def cost(self, section: str | None, first_text: str) -> int:
        """What the heading adds to a chunk that starts with first_text (nothing when it starts with it)."""
        if not section or embed_text(first_text, section) == first_text:
            return 0
        return self.tokens(section)


def _spans(text: str, sep: re.Pattern[str]) -> list[tuple[int, int]]:
    """Non-empty (start, end) spans of text between separator matches."""
    out = []
    pos = 0
    for m in sep.finditer(text):
        if m.start() > pos:
            out.append((pos, m.start()))
        pos = m.end()
    if pos < len(text):
        out.append((pos, len(text)))
    return out or [(0, len(text))]
