"""Checking an answer's citations against the passages the model was given.

A citation `[n]` stays only when passage n was given to the model and holds what its sentence adds to the
question: the sentence's content words beyond the question's (folded: case, accents, plural and -ed/-ing
endings; stop words left out), at least half of them, and every name and number among them, since a wrong
answer most often names another person or year. A sentence that only restates the question adds nothing
and is supported by nothing. With a `min_coverage`, the passage must also be about the question (`about`):
hold that share of the question's content words, its names and numbers, and its negation if it has one.
A sentence left without a citation that stands (never cited, or cited wrongly) is re-pointed to the given
passage that supports it best, when one does. Everything here is plain text processing: what the model
wrote, or what a document says, cannot change how it works; a passage can only back a sentence its own
text holds.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CITATION = re.compile(r"\s*\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[^\s\[])")
_NEGATION = re.compile(r"\b(?:not|never|no|none|nor|neither|without)\b|n't\b", re.I)
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


def fold(word: str) -> str:
    """A word's comparable form: lowercased, accents removed, a few English endings cut (plural, -ed, -ing, a final e),
    the same cut on both sides of a comparison, so 'condemned' meets 'condemn' and 'Céloron' meets 'Celoron'."""
    w = unicodedata.normalize("NFKD", word.lower())
    w = "".join(ch for ch in w if not unicodedata.combining(ch))
    if w.isdigit() or len(w) <= 3:
        return w
    if w.endswith("ies") and len(w) > 4:
        return w[:-3] + "y"
    for end in ("ing", "ed", "s"):
        if w.endswith(end) and len(w) - len(end) >= 3 and not w.endswith("ss"):
            w = w[: -len(end)]
            break
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def content_words(text: str) -> set[str]:
    """The words that carry a text's content, folded (see fold), stop words removed."""
    return {fold(w) for w in _WORD.findall(text) if _is_content(w)}


def _is_content(word: str) -> bool:
    low = word.lower()
    return low not in STOP_WORDS and (len(low) >= 2 or low.isdigit())


def key_terms(sentence: str) -> set[str]:
    """The sentence's names and numbers (folded): a capitalised word or one holding a digit. These are what a
    wrong answer most often gets wrong (another person, another year), so each must occur in the passage."""
    return {
        fold(w) for w in _WORD.findall(sentence) if _is_content(w) and (w[0].isupper() or any(c.isdigit() for c in w))
    }


def answer_words(sentence: str, question: str = "") -> set[str]:
    """What a sentence adds to the question: its content words the question does not already hold."""
    return content_words(CITATION.sub("", sentence)) - content_words(question)


def coverage(question: str, passage: str) -> float:
    """The share of the question's content words the passage holds (1.0 for a question with none)."""
    words = content_words(question)
    return len(words & content_words(passage)) / len(words) if words else 1.0


def question_terms(question: str) -> set[str]:
    """The names and numbers a question asks about (folded): its capitalised words past the first (a question's
    first word is capitalised anyway) and any word holding a digit."""
    words = _WORD.findall(question)
    return {
        fold(w) for i, w in enumerate(words)
        if _is_content(w) and ((i > 0 and w[0].isupper()) or any(c.isdigit() for c in w))
    }


def about(question: str, passage: str, min_coverage: float) -> bool:
    """Is the passage about what was asked, closely enough to answer it? It holds `min_coverage` of the
    question's content words, every name and number the question asks about, and, for a negated question
    ("what did they not..."), a negation too. A question on a passage's topic with a swapped entity, year or
    relation, or a negation the text does not carry, is not answered by that passage, however close its
    words: saying so beats an answer about something else."""
    if min_coverage <= 0:
        return True
    if coverage(question, passage) < min_coverage or not question_terms(question) <= content_words(passage):
        return False
    return not _NEGATION.search(question) or bool(_NEGATION.search(passage))


def supports(sentence: str, passage: str, question: str = "", min_coverage: float = 0.0) -> bool:
    """Does the passage hold what the sentence adds to the question?

    The sentence's own content beyond restating the question must mostly occur in the passage (MIN_SHARE), and
    all of its names and numbers must. A sentence that only restates the question adds nothing to support: it is
    not an answer, whatever passage it cites."""
    new = answer_words(sentence, question)
    if not new:
        return False
    have = content_words(passage)
    if not key_terms(CITATION.sub("", sentence)) & new <= have:
        return False  # a name or number the passage does not contain: another entity, another year
    if len(new & have) < MIN_SHARE * len(new):
        return False
    return about(question, passage, min_coverage)


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
    answer: str, passages: Mapping[int, str], question: str = "", *, attribute: bool = True,
    min_coverage: float = 0.0,
) -> CitationCheck:
    """Drop every citation that points outside `passages` or at a passage that does not support its sentence;
    with `attribute`, give a sentence left without a citation (never cited, or all its citations dropped) the
    given passage that supports it best, if one does: a model that cites [2] for what passage 1 says is
    re-pointed to [1], not only corrected by a deletion."""
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
            elif not supports(bare, passages[n], question, min_coverage):
                dropped.append({"n": n, "sentence": bare, "reason": "the passage does not support the sentence"})
            else:
                keep.append(n)
        if not keep and attribute:
            best = best_support(bare, passages, question, min_coverage)
            if best is not None:
                keep.append(best)
                added.append({"n": best, "sentence": bare})
        if keep:
            supported += 1
        out.append(_with_citations(bare, keep))
        cited += [n for n in keep if n not in cited]
    return CitationCheck(" ".join(out).strip(), cited, dropped, added, supported, len(sentences))


def best_support(
    sentence: str, passages: Mapping[int, str], question: str = "", min_coverage: float = 0.0
) -> int | None:
    """The given passage that supports the sentence best: the most of its new words, its answer's words in the
    passage's own order (the span literally there) next, the better-ranked passage (lower number) on a tie."""
    words = answer_words(sentence, question)
    scored = [
        (len(words & content_words(text)), _span_found(sentence, text, question), -n, n)
        for n, text in passages.items() if supports(sentence, text, question, min_coverage)
    ]
    return max(scored)[3] if scored else None


def _span_found(sentence: str, passage: str, question: str) -> bool:
    """Whether the sentence's longest run of new content words occurs in the passage as written (folded)."""
    q = content_words(question)
    runs: list[list[str]] = [[]]
    for w in _WORD.findall(CITATION.sub("", sentence)):
        f = fold(w)
        if _is_content(w) and f not in q:
            runs[-1].append(f)
        elif runs[-1]:
            runs.append([])
    longest = max(runs, key=len)
    folded = " ".join(fold(w) for w in _WORD.findall(passage) if _is_content(w))
    return bool(longest) and f" {' '.join(longest)} " in f" {folded} "


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
