"""Snippets with the matched terms marked as offsets (the UI escapes the text and highlights safely)."""

from __future__ import annotations

import re

from retrieval.query import Item, Query, fold

_SUFFIX = re.compile(r"(ing|ed|es|s)$")


def _pattern(item: Item) -> str:
    if item.kind == "substring":
        return re.escape(item.tokens[0])
    if item.kind == "prefix":
        return rf"\b{re.escape(item.tokens[0])}\w*"
    toks = [_word(t) for t in item.tokens]
    return r"\W+".join(toks)


def _word(tok: str) -> str:
    """A query word as the index matches it (porter stems): 'boilers' marks 'boiler' and 'boiling'."""
    stem = _SUFFIX.sub("", tok) if len(tok) > 4 else tok
    return rf"\b{re.escape(stem)}\w*" if stem != tok or len(tok) > 3 else rf"\b{re.escape(tok)}\b"


def matches(text: str, query: Query) -> list[tuple[int, int]]:
    """(start, end) of every marked term in `text`, in order, not overlapping."""
    pats = [_pattern(i) for i in query.highlight_terms()]
    if not pats:
        return []
    folded = fold(text)
    spans = sorted((m.start(), m.end()) for p in pats for m in re.finditer(p, folded) if m.end() > m.start())
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if out and s < out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def snippet(text: str, query: Query, width: int = 240) -> tuple[str, list[tuple[int, int]]]:
    """A window of the text around its first match, on word boundaries, and the marked spans within it."""
    flat = " ".join(text.split())
    spans = matches(flat, query)
    if len(flat) <= width:
        return flat, spans
    centre = spans[0][0] if spans else 0
    start = max(0, centre - width // 3)
    end = min(len(flat), start + width)
    start = max(0, end - width)
    if start > 0:
        start = flat.find(" ", start) + 1 or start
    if end < len(flat):
        cut = flat.rfind(" ", start, end)
        end = cut if cut > start else end
    lead = "…" if start > 0 else ""
    out = lead + flat[start:end] + ("…" if end < len(flat) else "")
    shift = len(lead) - start
    inside = [(s + shift, min(e, end) + shift) for s, e in spans if s >= start and s < end]
    return out, inside
