"""Meeting summaries: key points, decisions, action items and open questions, each bullet tied to its time.

Grounding over fluency. The transcript's salient sentences are selected first (extractive: TF-IDF centrality
plus cue phrases, see retrieval.transcript); a language model, when there is one, only condenses those
sentences into bullets. Every model bullet names the excerpts it comes from, and its content words must
come from them: a bullet that says more than was said is dropped and its sentences are kept as said.
Sentences the model left out are kept as said too, so nothing selected is lost.

A section whose sentences do not fit the model's context is condensed in pieces that do (map), and the
pieces' bullets are then merged (reduce), in rounds until one prompt holds them: never truncated. With no
model, the extractive summary alone is the summary.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kb.catalog import ChunkRecord
from kb.llm import ChatMessage, LanguageModel
from retrieval.transcript import Cues, Sentence, content_words, cues, salience, sentences_of, similarity

log = logging.getLogger(__name__)

SUMMARIZER_VERSION = 1
KEY_POINTS, DECISIONS, ACTIONS, QUESTIONS = "key_points", "decisions", "action_items", "open_questions"
SECTIONS = {KEY_POINTS: "Key points", DECISIONS: "Decisions", ACTIONS: "Action items", QUESTIONS: "Open questions"}
# Words a condensed bullet may use that its sentences need not contain: the framing of a summary.
FRAMING = frozenset(content_words(
    "decided decision agreed agreement discussed discussion mentioned noted team group meeting action owner "
    "due deadline question open unclear whether plan planned propose proposed suggested suggestion needs "
    "asked asks responsible confirm confirmed"
))
SYSTEM = (
    "You condense excerpts of a meeting transcript into short bullet points. Use only what the excerpts say: "
    "add no facts, names, numbers or dates. Start every bullet with the numbers of the excerpts it comes from "
    "in square brackets, like [2] or [2,5]. One bullet per line, each line starting with '- '."
)
HINTS = {
    KEY_POINTS: "the main points discussed",
    DECISIONS: "what was decided",
    ACTIONS: "who will do what, and by when if it was said",
    QUESTIONS: "the questions left open, phrased as questions",
}
MERGE_HINT = (
    " These bullets come from consecutive parts of one meeting: merge bullets that say the same thing, keep"
    " the others."
)


# -- the result ------------------------------------------------------------------------------------------
@dataclass
class Bullet:
    """One line of a summary and the transcript it rests on (sentences, their times and chunks)."""

    text: str
    t_start: float | None
    t_end: float | None
    chunk_ids: list[str]
    sentences: list[int]  # indexes of the transcript sentences it comes from
    owner: str | None = None  # action items: who, when the meeting said so
    due: str | None = None  # action items: by when, as said ("by Friday", "2024-05-02")
    condensed: bool = False  # written by the model (and checked against its sentences), else quoted

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bullet:
        return cls(text=str(d.get("text") or ""), t_start=d.get("t_start"), t_end=d.get("t_end"),
                   chunk_ids=list(d.get("chunk_ids") or []), sentences=list(d.get("sentences") or []),
                   owner=d.get("owner"), due=d.get("due"), condensed=bool(d.get("condensed")))


@dataclass
class Section:
    name: str  # key_points | decisions | action_items | open_questions
    title: str
    bullets: list[Bullet] = field(default_factory=list)


@dataclass
class Summary:
    """A meeting's summary as data (sections, bullets, times, source chunks) and as Markdown text."""

    title: str
    duration_s: float | None
    sections: list[Section]
    model: str | None = None  # the model that condensed it; None: extractive only
    pieces: int = 0  # model prompts that condensed it (map and reduce)
    notes: list[str] = field(default_factory=list)  # what a reader should know: what was left out and why
    version: int = SUMMARIZER_VERSION

    @property
    def method(self) -> str:
        return "extractive" if self.model is None else "condensed"

    def section(self, name: str) -> Section:
        return next(s for s in self.sections if s.name == name)

    def bullets(self) -> list[Bullet]:
        return [b for s in self.sections for b in s.bullets]

    def to_markdown(self) -> str:
        out = [f"# Summary: {self.title}", ""]
        how = "selected transcript sentences" if self.model is None else f"sentences condensed by {self.model}"
        length = f"{clock(self.duration_s)} recording; " if self.duration_s else ""
        out += [f"_{length}{how}. Times point into the recording._", ""]
        for s in self.sections:
            out.append(f"## {s.title}")
            if not s.bullets:
                out.append("- (none)")
            for b in s.bullets:
                out.append(f"- {bullet_line(b)}")
            out.append("")
        if self.notes:
            out.append("## Notes")
            out += [f"- {n}" for n in self.notes]
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title, "duration_s": self.duration_s, "model": self.model, "pieces": self.pieces,
            "notes": list(self.notes), "version": self.version,
            "sections": [{"name": s.name, "title": s.title, "bullets": [b.to_dict() for b in s.bullets]}
                         for s in self.sections],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Summary:
        sections = [Section(s["name"], s["title"], [Bullet.from_dict(b) for b in s["bullets"]])
                    for s in d.get("sections", [])]
        return cls(title=d.get("title") or "", duration_s=d.get("duration_s"), sections=sections,
                   model=d.get("model"), pieces=int(d.get("pieces") or 0), notes=list(d.get("notes") or []),
                   version=int(d.get("version") or SUMMARIZER_VERSION))


def clock(seconds: float | None) -> str:
    """m:ss (h:mm:ss past an hour)."""
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def time_label(b: Bullet) -> str:
    if b.t_start is None:
        return ""
    if b.t_end is None or int(b.t_end) <= int(b.t_start):
        return f"[{clock(b.t_start)}]"
    return f"[{clock(b.t_start)}-{clock(b.t_end)}]"


def bullet_line(b: Bullet, *, times: bool = True) -> str:
    """A bullet as one line of text: its time, its words, and for action items the owner and date."""
    extra = [x for x in (f"owner: {b.owner}" if b.owner else "", f"due: {b.due}" if b.due else "") if x]
    label = time_label(b) if times else ""
    return " ".join(x for x in (label, b.text, f"({'; '.join(extra)})" if extra else "") if x)


# -- extractive selection --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Limits:
    """How many sentences each section takes, by the transcript's length (more said, more kept)."""

    n_sentences: int

    @property
    def key_points(self) -> int:
        return min(12, max(3, round(math.sqrt(self.n_sentences))))

    @property
    def per_section(self) -> int:
        return min(25, max(8, round(math.sqrt(self.n_sentences))))


def _bullet(s: Sentence, c: Cues | None = None) -> Bullet:
    return Bullet(text=s.text, t_start=s.t_start, t_end=s.t_end, chunk_ids=[s.chunk_id], sentences=[s.index],
                  owner=c.owner if c else None, due=c.due if c else None)


def extract(sentences: Sequence[Sentence], notes: list[str] | None = None) -> dict[str, list[Bullet]]:
    """Each section's salient sentences as quoted bullets, in the order they were said.

    A sentence goes to one section: a question; else an action item (a promise, or a decision naming an
    owner or a date); else a decision; else, if among the most central of the rest, a key point.
    """
    notes = notes if notes is not None else []
    scores = salience(sentences)
    limits = Limits(len(sentences))
    found: dict[str, list[tuple[float, Sentence, Cues]]] = {DECISIONS: [], ACTIONS: [], QUESTIONS: []}
    rest: list[tuple[float, Sentence]] = []
    for s, score in zip(sentences, scores, strict=True):
        words = len(s.text.split())
        if words < 4 or len(content_words(s.text)) < 2:
            continue  # "Okay, sounds good." carries nothing
        c = cues(s.text)
        if c.question:
            found[QUESTIONS].append((score, s, c))
        elif c.action and (not c.decision or c.owner or c.due):
            found[ACTIONS].append((score, s, c))
        elif c.decision:
            found[DECISIONS].append((score, s, c))
        else:
            rest.append((score, s))
    out: dict[str, list[Bullet]] = {}
    for name, items in found.items():
        items.sort(key=lambda x: -x[0])
        kept = _distinct([(sc, s) for sc, s, _ in items], limits.per_section)
        if len(items) > len(kept):
            notes.append(f"{SECTIONS[name]}: {len(kept)} of {len(items)} candidate sentences kept (the most "
                         "central, near-duplicates dropped).")
        by_index = {s.index: c for _, s, c in items}
        out[name] = [_bullet(s, by_index[s.index]) for s in sorted(kept, key=lambda s: s.index)]
    out[KEY_POINTS] = [_bullet(s) for s in sorted(_spread(rest, limits.key_points, len(sentences)),
                                                  key=lambda s: s.index)]
    return out


def _spread(candidates: list[tuple[float, Sentence]], limit: int, n_sentences: int) -> list[Sentence]:
    """Key points from the whole meeting: the most central sentence of each stretch of it first (a long
    meeting moves from topic to topic), then the most central of the rest."""
    ranked = sorted(candidates, key=lambda x: -x[0])
    if not ranked or limit <= 0:
        return []
    stretch = max(1, math.ceil(n_sentences / limit))
    firsts: dict[int, tuple[float, Sentence]] = {}
    for score, s in ranked:
        firsts.setdefault(s.index // stretch, (score, s))
    chosen = _distinct(sorted(firsts.values(), key=lambda x: -x[0]), limit)
    taken = {s.index for s in chosen}
    more = [(sc, s) for sc, s in ranked if s.index not in taken]
    return _distinct([(1.0, s) for s in chosen] + more, limit)


def _distinct(ranked: Sequence[tuple[float, Sentence]], limit: int, max_sim: float = 0.7) -> list[Sentence]:
    """The best `limit` sentences, skipping any that repeats one already taken."""
    kept: list[Sentence] = []
    for _, s in ranked:
        if len(kept) >= limit:
            break
        if all(similarity(s.text, k.text) < max_sim for k in kept):
            kept.append(s)
    return kept


# -- condensing with a model -----------------------------------------------------------------------------
class SummaryStopped(Exception):
    """The summary was abandoned between model calls because the service is stopping."""


Progress = Callable[[str, float, "float | None"], None]


def _no_progress(stage: str, done: float, total: float | None = None) -> None:
    pass


_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])?\s*(?:\[\s*([\d,\s]+)\]\s*[:.-]?\s*)?(.+?)\s*$")
# A time the model copied from the excerpt's label: "(0:31)", "[1:02:03]" (times come from the sources instead).
_TIME = re.compile(r"[(\[]?\b\d{1,2}:\d{2}(?::\d{2})?\b[)\]]?")
# The prompt's own headings: a small model that goes on writing starts a new "Excerpts:" block.
STOP = ("Excerpts:", "Section:", "Bullets:")


class Condenser:
    """Asks the model to condense one section's bullets, in pieces that fit its context, and checks each answer."""

    def __init__(
        self, model: LanguageModel, texts: dict[int, str], *, progress: Progress = _no_progress,
        should_stop: Callable[[], bool] = lambda: False, max_rounds: int = 4,
    ) -> None:
        self.model = model
        self.texts = texts  # transcript sentence index -> its words, for checking bullets
        self.progress = progress
        self.should_stop = should_stop
        self.max_rounds = max_rounds
        self.calls = 0
        self.notes: list[str] = []
        ctx = int(model.context_tokens)
        self.out_tokens = max(64, min(400, ctx // 4))
        frame = model.count_tokens(SYSTEM + "Section: Open questions (the questions left open, phrased as "
                                   "questions)." + MERGE_HINT + "\nExcerpts:\n\nBullets:")
        self.budget = ctx - self.out_tokens - frame - 16  # what the excerpts may take in one prompt

    def condense(self, name: str, bullets: list[Bullet]) -> list[Bullet]:
        """The section's bullets condensed: map over pieces, then merge rounds until one piece holds them."""
        if not bullets:
            return []
        current, merging = bullets, False
        for _ in range(self.max_rounds):
            pieces = self._pieces(current)
            out: list[Bullet] = []
            for piece in pieces:
                out += self._ask(name, piece, merging) if len(piece) > 0 else []
            if len(pieces) <= 1 or (merging and len(out) >= len(current)):
                return out  # one piece said it all, or merging no longer shrinks the list
            current, merging = out, True
        self.notes.append(f"{SECTIONS[name]}: still more than one piece after {self.max_rounds} rounds of merging; "
                          "the bullets of the last round are kept.")
        return current

    def _pieces(self, bullets: list[Bullet]) -> list[list[Bullet]]:
        """Consecutive runs of bullets whose prompt lines fit the budget (a bullet too long alone is its own run)."""
        pieces: list[list[Bullet]] = [[]]
        used = 0
        for b in bullets:
            n = self.model.count_tokens(self._line(0, b)) + 2
            if pieces[-1] and used + n > self.budget:
                pieces.append([])
                used = 0
            pieces[-1].append(b)
            used += n
        return pieces

    @staticmethod
    def _line(i: int, b: Bullet) -> str:
        label = f" ({clock(b.t_start)})" if b.t_start is not None else ""
        return f"[{i}]{label} {b.text}"

    def _ask(self, name: str, piece: list[Bullet], merging: bool) -> list[Bullet]:
        """One prompt: the model's checked bullets, plus every input it did not cover kept as it was."""
        if self.should_stop():
            raise SummaryStopped()
        lines = [self._line(i, b) for i, b in enumerate(piece, 1)]
        if self.model.count_tokens("\n".join(lines)) > self.budget:
            self.notes.append(f"{SECTIONS[name]}: a passage too long for the model's context was kept as said.")
            return piece
        user = (f"Section: {SECTIONS[name]} ({HINTS[name]}).{MERGE_HINT if merging else ''}\nExcerpts:\n"
                + "\n".join(lines) + "\n\nBullets:")
        messages = [ChatMessage("system", SYSTEM), ChatMessage("user", user)]
        self.calls += 1
        self.progress("summarizing", self.calls, None)
        # a condensation is no longer than what it condenses: a model that rambles on is cut short
        max_tokens = min(self.out_tokens, self.model.count_tokens("\n".join(lines)) + 4 * len(lines) + 16)
        try:
            reply = "".join(self.model.stream(messages, max_tokens=max_tokens, temperature=0.0, stop=STOP))
        except Exception as exc:  # a model server gone, a broken model file: the sentences stay as said
            log.warning("the language model failed while summarizing: %s", exc)
            self.notes.append(f"{SECTIONS[name]}: the model failed ({type(exc).__name__}: {exc}); "
                              "sentences kept as said.")
            return piece
        return self._check(reply, piece, max_tokens)

    def _check(self, reply: str, piece: list[Bullet], max_tokens: int) -> list[Bullet]:
        rows = [ln for ln in reply.splitlines() if ln.strip()]
        if rows and self.model.count_tokens(reply) >= max_tokens - 2:
            rows = rows[:-1]  # the answer ran out of tokens: its last line may be cut mid-thought
        made: list[Bullet] = []
        covered: set[int] = set()
        for row in rows:
            m = _LINE.match(row)
            if m is None or not m.group(2):
                continue
            text = " ".join(_TIME.sub(" ", m.group(2)).split()).strip('"').strip()
            if not text:
                continue
            cited = [int(x) for x in re.findall(r"\d+", m.group(1) or "")]
            if any(not 1 <= r <= len(piece) for r in cited) or text.endswith(":"):
                continue  # cites an excerpt that is not there, or breaks off: a confused answer
            refs = sorted(set(cited))
            if not refs:  # no reference given: the one input it must come from, if any
                best = max(range(len(piece)), key=lambda i: similarity(text, piece[i].text))
                refs = [best + 1]
            if covered.issuperset(refs):
                continue  # says again what an earlier bullet of this answer said
            sources = [piece[r - 1] for r in refs]
            if not self._grounded(text, sources):
                continue
            same = len(sources) == 1 and text == sources[0].text
            made.append(sources[0] if same else _merge(text, sources))  # an echo is still a quote
            covered.update(refs)
        kept = [b for i, b in enumerate(piece, 1) if i not in covered]
        return sorted(made + kept, key=lambda b: (b.t_start if b.t_start is not None else math.inf, b.sentences))

    def _grounded(self, text: str, sources: list[Bullet]) -> bool:
        """Every content word of the bullet is in the transcript sentences it names (or is summary framing)."""
        words = content_words(text)
        said = set(content_words(" ".join(self.texts.get(i, "") for b in sources for i in b.sentences)))
        said |= set(content_words(" ".join(b.text for b in sources)))
        if not words or not all(w in said or w in FRAMING for w in words):
            return False
        # and keeps enough of them to still say something (not "Discussion point 29")
        per_source = sum(len(set(content_words(b.text))) for b in sources) / len(sources)
        return len(set(words)) >= min(3.0, per_source) and len(set(words)) >= per_source / 3


def _merge(text: str, sources: list[Bullet]) -> Bullet:
    starts = [b.t_start for b in sources if b.t_start is not None]
    ends = [b.t_end for b in sources if b.t_end is not None]
    return Bullet(
        text=text, t_start=min(starts) if starts else None, t_end=max(ends) if ends else None,
        chunk_ids=list(dict.fromkeys(c for b in sources for c in b.chunk_ids)),
        sentences=sorted({i for b in sources for i in b.sentences}),
        owner=next((b.owner for b in sources if b.owner), None), due=next((b.due for b in sources if b.due), None),
        condensed=True,
    )


# -- the whole ----------------------------------------------------------------------------------------------
def summarize(
    chunks: Sequence[ChunkRecord], *, title: str, duration_s: float | None = None,
    model: LanguageModel | None = None, progress: Progress = _no_progress,
    should_stop: Callable[[], bool] = lambda: False,
) -> Summary:
    """A meeting's summary from its transcript chunks; condensed by `model` when given, else extractive."""
    sentences = sentences_of(chunks)
    notes: list[str] = []
    picked = extract(sentences, notes)
    calls = 0
    if model is not None and any(picked.values()):
        condenser = Condenser(model, {s.index: s.text for s in sentences}, progress=progress,
                              should_stop=should_stop)
        if condenser.budget < 32:
            notes.append(f"the model's context ({model.context_tokens} tokens) is too small to condense with; "
                         "sentences kept as said.")
            model = None
        else:
            picked = {name: condenser.condense(name, bullets) for name, bullets in picked.items()}
            notes += condenser.notes
            calls = condenser.calls
    sections = [Section(name, title_, picked.get(name, [])) for name, title_ in SECTIONS.items()]
    if not sentences:
        notes.append("the recording has no transcribed speech.")
    return Summary(title=title, duration_s=duration_s, sections=sections,
                   model=getattr(model, "name", None) if model is not None else None, pieces=calls, notes=notes)
