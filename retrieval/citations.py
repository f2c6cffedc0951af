"""Checking an answer's citations against the passages the model was given.

A citation `[n]` stays only when passage n was given to the model and shares the content of the sentence
it ends: lexical overlap of content words (lowercased, a plural 's' folded, stop words left out). The words
that matter most are the sentence's own, beyond restating the question: at least half of those must occur
in the passage, and every number among them. A sentence the model left uncited gets the given passage that
supports it best, when one does. Everything here is plain text processing: what the model wrote, or what
a document says, cannot change how it works.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CITATION = re.compile(r"\s*\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[^\s\[])")
MIN_SHARE = 0.5  # of the sentence's new content words that the cited passage must contain

STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being below
    between both but by can could did do does doing down during each either few for from further had has have
    having he her here hers herself him himself his how i if in into is it its itself just me more most my
    myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
    such than that the their theirs them themselves then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your yours yourself
    yourselves according passage passages answer question source sources text document documents says said
    one many much may might must shall""".split()  # noqa: SIM905
)


def content_words(text: str) -> set[str]:
    """The words that carry a text's content: lowercased, a plural 's' folded, stop words removed."""
    out = set()
    for w in _WORD.findall(text.lower()):
        if w in STOP_WORDS or (len(w) < 2 and not w.isdigit()):
            continue
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.add(w)
    return out


def supports(sentence: str, passage: str, question: str = "") -> bool:
    """Does the passage share the sentence's content? (Its words beyond the question's, mostly.)"""
    words = content_words(CITATION.sub("", sentence))
    if not words:
        return False
    have = content_words(passage)
    new = words - content_words(question)
    pool = new or words
    shared = pool & have
    if any(w.isdigit() and w not in have for w in new):
        return False  # a number (a year, an amount) the passage does not contain is never supported by it
    return bool(shared) and len(shared) >= MIN_SHARE * len(pool)


def split_sentences(text: str) -> list[str]:
    """Sentences, each keeping the citations that end it (also a citation written after the full stop)."""
    return [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]


@dataclass
class CitationCheck:
    """The answer with only supported citations, and what was changed."""

    text: str
    cited: list[int]  # passage numbers cited by the checked answer, in order of first use
    dropped: list[dict[str, object]] = field(default_factory=list)  # {"n", "sentence", "reason"}
    added: list[dict[str, object]] = field(default_factory=list)  # {"n", "sentence"}: uncited, then attributed
    supported_sentences: int = 0
    sentences: int = 0


def check_citations(
    answer: str, passages: Mapping[int, str], question: str = "", *, attribute: bool = True
) -> CitationCheck:
    """Drop every citation that points outside `passages` or at a passage that does not support its sentence;
    with `attribute`, give an uncited sentence the given passage that supports it best (if any does)."""
    out: list[str] = []
    cited: list[int] = []
    dropped: list[dict[str, object]] = []
    added: list[dict[str, object]] = []
    supported = 0
    sentences = split_sentences(answer)
    for sentence in sentences:
        bare = CITATION.sub("", sentence).strip()
        keep: list[int] = []
        numbers: list[int] = []
        for group in CITATION.findall(sentence):
            numbers += [int(x) for x in re.split(r"\s*[,;]\s*", group)]
        for n in dict.fromkeys(numbers):
            if n not in passages:
                dropped.append({"n": n, "sentence": bare, "reason": "no such passage was given"})
            elif not supports(bare, passages[n], question):
                dropped.append({"n": n, "sentence": bare, "reason": "the passage does not support the sentence"})
            else:
                keep.append(n)
        if not numbers and attribute:
            best = _best_support(bare, passages, question)
            if best is not None:
                keep.append(best)
                added.append({"n": best, "sentence": bare})
        if keep:
            supported += 1
        out.append(_with_citations(bare, keep))
        cited += [n for n in keep if n not in cited]
    return CitationCheck(" ".join(out).strip(), cited, dropped, added, supported, len(sentences))


def _best_support(sentence: str, passages: Mapping[int, str], question: str) -> int | None:
    words = content_words(sentence) - content_words(question) or content_words(sentence)
    scored = [
        (len(words & content_words(text)), -n, n) for n, text in passages.items() if supports(sentence, text, question)
    ]
    return max(scored)[2] if scored else None


def _with_citations(sentence: str, numbers: Sequence[int]) -> str:
    if not numbers:
        return sentence
    marks = "".join(f"[{n}]" for n in numbers)
    m = re.match(r"^(.*?)([.!?…]*)$", sentence, re.S)
    body, end = (m.group(1), m.group(2)) if m else (sentence, "")
    return f"{body.rstrip()} {marks}{end}"


def neutralize(text: str) -> str:
    """Passage text as the model sees it: bracketed numbers (a document's own footnotes, or a fake `[3]`)
    become `(3)`, and our passage delimiters cannot be closed or opened from inside."""
    text = re.sub(r"\[(\s*\d{1,3}(?:\s*[,;]\s*\d{1,3})*\s*)\]", r"(\1)", text)
    return re.sub(r"(?i)</?\s*passage\b[^>]*>", "", text)
