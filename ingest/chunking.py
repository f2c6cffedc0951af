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
    n_tokens: int = 0

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
            if el.kind == TITLE:
                if cur and not all(p.el.kind == TITLE for p in cur):
                    flush()
                level = el.level or 1
                stack = [(lv, t) for lv, t in stack if lv < level] + [(level, el.text[:120])]
                section = " > ".join(t for _, t in stack[-2:])
            oversized_block = el.kind in (TABLE, CODE) and n > self.target and cur_tokens + n > self.max
            if n > self.max or oversized_block:
                flush()
                for piece in self._split(el, start, n):
                    chunks.append(self._make([piece], full, section))
                continue
            # Headings alone never make a chunk: they wait for their first paragraph (within the limit).
            headings_only = all(p.el.kind == TITLE for p in cur)
            if cur and cur_tokens + n > (self.max if headings_only else self.target):
                flush()
            if not cur:
                cur_section = section
            cur.append(_Piece(el.text, start, el, n))
            cur_tokens += n
        flush()
        return full, self._verify(chunks, full)

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
        )

    def _split(self, el: Element, start: int, n: int) -> list[_Piece]:
        """Split one oversized element: tables by rows, prose at sentences, then at words."""
        text = el.text
        units = _spans(text, _LINE if el.kind in (TABLE, CODE) else _SENTENCE)
        counts = self.count([text[a:b] for a, b in units])
        fine: list[tuple[int, int, int]] = []
        for (a, b), c in zip(units, counts, strict=True):
            if c > self.target:
                words = _spans(text[a:b], re.compile(r"\s+"))
                wc = self.count([text[a + x : a + y] for x, y in words])
                for (x, y), k in zip(words, wc, strict=True):
                    if k <= self.target:
                        fine.append((a + x, a + y, k))
                        continue
                    # One "word" longer than a chunk (base64, a URL wall): cut it by characters.
                    step = max(1, (y - x) * self.target // (2 * k))
                    for s0 in range(a + x, a + y, step):
                        fine.append((s0, min(s0 + step, a + y), self.target // 2))
            else:
                fine.append((a, b, c))
        pieces: list[_Piece] = []
        group: list[tuple[int, int, int]] = []
        total = 0
        for a, b, c in fine:
            if group and total + c > self.target:
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

    def _verify(self, chunks: list[Chunk], full: str) -> list[Chunk]:
        """Count the exact text the model will read; re-split the rare chunk that still overflows."""
        if not chunks:
            return chunks
        counts = self.count([c.text for c in chunks])
        out: list[Chunk] = []
        for c, n in zip(chunks, counts, strict=True):
            c.n_tokens = n
            if n <= self.max:
                out.append(c)
                continue
            el = Element(c.text, page=c.page, t_start=c.t_start, t_end=c.t_end, ocr=c.ocr)
            for p in self._split(el, c.char_start, n):
                out.append(
                    Chunk(p.text, c.section, p.start, p.start + len(p.text), c.page, c.page_end,
                          c.t_start, c.t_end, c.ocr, p.tokens)
                )
        return out


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
