"""A meeting transcript as timed sentences, with what makes a sentence matter: salience and cue phrases.

Pure text logic, no model: sentences come from a recording's chunks (each chunk has a start and end time;
a sentence inside it gets times interpolated by its character position), salience is TF-IDF centrality
(how much a sentence shares the meeting's recurring content words), and cue phrases say whether a
sentence states a decision, an action item (with its owner and date when said) or a question.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kb.catalog import ChunkRecord

# Sentence ends: punctuation then space, or a line break (Whisper segments are joined by blank lines).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


STOPWORDS = _words(
    """a about above after again against all also am an and any are aren't as at be because been before being
    below between both but by can can't cannot could couldn't did didn't do does doesn't doing don't down during
    each few for from further get got had hadn't has hasn't have haven't having he he'd he'll he's her here
    here's hers herself him himself his how how's i i'd i'll i'm i've if in into is isn't it it's its itself
    just let's like me more most much mustn't my myself no nor not now of off ok okay on once only or other
    ought our ours ourselves out over own really right same say says said she she'd she'll she's should
    shouldn't so some such than that that's the their theirs them themselves then there there's these they
    they'd they'll they're they've thing things think this those through to too um uh under until up us very
    was wasn't we we'd we'll we're we've well were weren't what what's when when's where where's which while
    who who's whom why why's will with won't would wouldn't yeah yes you you'd you'll you're you've your yours
    yourself yourselves going gonna want wanna know mean actually maybe one two"""
)


@dataclass(frozen=True)
class Sentence:
    """One sentence of the transcript, where it was said and which chunk holds it."""

    index: int
    text: str
    t_start: float | None
    t_end: float | None
    chunk_id: str


def sentences_of(chunks: Sequence[ChunkRecord]) -> list[Sentence]:
    """The transcript's sentences in order, each with times interpolated inside its chunk by character."""
    out: list[Sentence] = []
    for c in chunks:
        text = c.text
        n = max(1, len(text))
        pos = 0
        for part in _SENTENCE_END.split(text):
            start = text.find(part, pos) if part else pos
            pos = start + len(part)
            clean = " ".join(part.split())
            if not clean:
                continue
            t0 = t1 = None
            if c.t_start is not None:
                end = c.t_end if c.t_end is not None else c.t_start
                span = max(0.0, end - c.t_start)
                t0 = round(c.t_start + span * start / n, 2)
                t1 = round(c.t_start + span * (start + len(part)) / n, 2)
            out.append(Sentence(len(out), clean, t0, t1, c.id))
    return out


def timed_lines(text: str, t_start: float | None, t_end: float | None) -> list[tuple[float | None, str]]:
    """A transcript chunk's lines (Whisper segments, joined by blank lines), each with the time it starts,
    interpolated by character position like sentences_of, so a page can play from any line."""
    out: list[tuple[float | None, str]] = []
    n = max(1, len(text))
    pos = 0
    for part in re.split(r"\n\s*\n", text):
        start = text.find(part, pos)
        pos = start + len(part)
        clean = " ".join(part.split())
        if not clean:
            continue
        t = None
        if t_start is not None:
            span = max(0.0, (t_end if t_end is not None else t_start) - t_start)
            t = round(t_start + span * start / n, 2)
        out.append((t, clean))
    return out


def content_words(text: str) -> list[str]:
    """The words that carry meaning (no stop words, no fillers), lower case and lightly stemmed."""
    return [stem(w) for w in _WORD.findall(text.lower()) if w not in STOPWORDS and (len(w) > 2 or w.isdigit())]


def stem(word: str) -> str:
    """A crude suffix strip, so 'decided'/'decides', 'rooms'/'room' compare equal (English only)."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def salience(sentences: Sequence[Sentence]) -> list[float]:
    """TF-IDF centrality: each sentence's cosine to the meeting's centroid (0 for sentences without content)."""
    bags = [Counter(content_words(s.text)) for s in sentences]
    n = len(bags)
    df: Counter[str] = Counter()
    for b in bags:
        df.update(b.keys())
    idf = {w: math.log((n + 1) / (d + 1)) + 1.0 for w, d in df.items()}
    vecs = [_unit({w: tf * idf[w] for w, tf in b.items()}) for b in bags]
    centroid: Counter[str] = Counter()
    for v in vecs:
        centroid.update(v)
    cu = _unit(dict(centroid))
    return [sum(x * cu.get(w, 0.0) for w, x in v.items()) for v in vecs]


def similarity(a: str, b: str) -> float:
    """Cosine of two texts' content-word counts (near-duplicate detection)."""
    va, vb = _unit(dict(Counter(content_words(a)))), _unit(dict(Counter(content_words(b))))
    return sum(x * vb.get(w, 0.0) for w, x in va.items())


def _unit(v: dict[str, float]) -> dict[str, float]:
    norm = math.sqrt(sum(x * x for x in v.values()))
    return {w: x / norm for w, x in v.items()} if norm else {}


# -- cue phrases -----------------------------------------------------------------------------------------
_DECISION = re.compile(
    r"\b(?:decided|decision|agreed|agree(?:s|ment)? (?:on|that|to)|approved|settled on|we(?:'ll| will) go with|"
    r"let's go with|going with|concluded|resolved|signed off|final(?:ly)? chose|chose|(?:is|are) confirmed)\b",
    re.I,
)
_WEEKDAY = r"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
_MONTH = (r"(?:january|february|march|april|may|june|july|august|september|october|november|december|"
          r"jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec)")
_DATE = re.compile(
    r"\b(?:(?:by|before|on|until|till|due|for)\s+)?(?:"
    r"\d{4}-\d{2}-\d{2}"
    rf"|(?:next|this|coming)\s+(?:week|month|quarter|year|{_WEEKDAY})"
    rf"|{_WEEKDAY}(?:\s+(?:morning|afternoon|evening))?"
    r"|tomorrow|tonight|today|end of (?:the )?(?:day|week|month|quarter|year|sprint)"
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}"
    r"|in\s+(?:two|three|four|\d+)\s+(?:days|weeks|months)"
    r")\b",
    re.I,
)
# A name (capitalised words, not a pronoun) before the promise: "Maria will", "John Smith is going to".
_OWNER = re.compile(
    r"\b([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)(?:'ll|\s+(?:will|shall|is going to|is gonna|needs to|has to|"
    r"should|agreed to|offered to|volunteered to|is responsible for|takes care of))\b"
    # minutes style, at the start: "Maria to send the notes" (not "Welcome to the meeting", "Turning to costs")
    r"|^(?![A-Z][a-z]+ing\b)([A-Z][a-z]+)\s+to\s+"
    r"(?!(?:be|the|a|an|our|your|my|his|her|their|this|that|these|those|all|everyone|everybody|you|us|them|it)\b)"
    r"[a-z]+"
)
_ASSIGNED = re.compile(r"\b(?:assigned to|owner(?: is)?:?|owned by)\s+([A-Z][a-z]+(?:\s+[A-Z][a-z]+)?)")
_NOT_NAMES = _words(
    "I We You He She They It This That There These Those What Which Who Why How When Where Someone Somebody "
    "Everyone Everybody Nobody Anyone Then And But So Also Maybe Okay Ok Yes No Well Now Next Our The "
    "Monday Tuesday Wednesday Thursday Friday Saturday Sunday Today Tomorrow Let Please Can Could Would "
    "Everything Nothing Something All Each Both Finally Hopefully Going Need Have Want Back Due Try Thanks "
    "Time Here Nothing Somebody Anybody Anything Everybody Whoever Whatever Meeting Action Welcome Hello Hi Hey "
    "Good Thank Sorry Moving Turning Coming Going Returning Switching Listen Look Remember Note"
)
_ACTION = re.compile(
    r"\b(?:action items?|to-?do|follow[- ]up|will (?:send|prepare|write|draft|book|call|email|e-mail|check|"
    r"review|update|share|schedule|organi[sz]e|fix|finish|look into|contact|set up|circulate)|"
    r"(?:i|we)(?:'ll| will| am going to| are going to| need to| have to)\s+[a-z]+)\b",
    re.I,
)
_QUESTION_CUE = re.compile(
    r"\b(?:open question|still (?:unclear|open|undecided)|not (?:yet )?(?:sure|clear|decided)|"
    r"(?:we|i) (?:don't|do not) know (?:yet )?(?:if|whether|how|what|when|who)|to be (?:decided|determined|confirmed)|"
    r"tbd|need to (?:find out|figure out|clarify)|unresolved|remains to be seen)\b",
    re.I,
)


@dataclass(frozen=True)
class Cues:
    """What a sentence says it is."""

    decision: bool
    action: bool
    question: bool
    owner: str | None
    due: str | None


def cues(text: str) -> Cues:
    """Decision, action item (owner and date when stated) and question cues of one sentence."""
    owner = None
    for m in (*_ASSIGNED.finditer(text), *_OWNER.finditer(text)):
        name = next(g for g in m.groups() if g)
        first = name.split()[0]
        if first not in _NOT_NAMES:
            owner = name if name.split()[-1] not in _NOT_NAMES else first
            break
    date = _DATE.search(text)
    due = " ".join(date.group(0).split()) if date else None
    words = len(text.split())
    question = (text.rstrip().endswith("?") and words >= 4) or bool(_QUESTION_CUE.search(text))
    decision = bool(_DECISION.search(text))
    action = bool(_ACTION.search(text)) or owner is not None or (
        due is not None and bool(re.search(r"\b(?:will|'ll|need to|has to|have to|must|should)\b", text, re.I))
    )
    return Cues(decision=decision, action=action, question=question, owner=owner, due=due)
