"""The search query language people type, parsed into a structure (never passed through as FTS5 syntax).

    boiler service        either word; documents with both rank first (stopwords alone never make a match)
    boiler AND service    both words required
    "exact phrase"        the words in this order
    boil*                 any word starting with "boil"
    -invoice  -"paid in full"  NOT x   leave out documents containing these
    e-mail                the phrase "e mail" or the word "email"
    T cells, vitamin D    a single letter or symbol stays, bound to its neighbour as a phrase
    C++, C#               matched as a substring (the word index drops the symbols)
    中文, 日本語           CJK runs matched as substrings through the trigram index

Case and diacritics are folded on both sides (the index uses `remove_diacritics 2`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

# Words that never carry a match on their own: "the boiler" must not return every chunk with "the".
_STOP = (
    "a an and are as at be but by for from has have he her his i if in into is it its me my no not of on or "
    "our she so such that the their them then there these they this to was we were what when where which who "
    "will with you your"
)
STOPWORDS = frozenset(_STOP.split(" "))

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\uff66-\uff9f"
_CJK_RUN = re.compile(f"[{_CJK}]+")
# One lexeme of the query: a quoted phrase (optionally negated), or a run of non-space characters.
_LEXEME = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(rf"[^\W{_CJK}]+")
# A word with symbols the word index drops but that carry meaning: C++, C#, F#.
_SYMBOLIC = re.compile(r"^\w+[+#]+$")


class _FoldTable(dict[int, str]):
    """str.translate table that works out each character's folded form once, on first sight."""

    def __missing__(self, code: int) -> str:
        ch = chr(code)
        base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c)).lower()
        out = base if len(base) == 1 else (ch.lower() if len(ch.lower()) == 1 else ch)
        self[code] = out
        return out


_FOLD = _FoldTable()


def fold(text: str) -> str:
    """Lower case without diacritics, one character out for each character in (so offsets still match)."""
    return text.lower() if text.isascii() else text.translate(_FOLD)


def words(text: str) -> list[str]:
    """The folded words of a text, split as the index's unicode61 tokenizer splits them (CJK apart)."""
    return _WORD.findall(fold(text))


@dataclass(frozen=True)
class Item:
    """One thing to match: a word, a phrase (words in order), a prefix, or a substring (CJK, C++)."""

    kind: str  # "term" | "phrase" | "prefix" | "substring"
    tokens: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.tokens) if self.kind != "substring" else self.tokens[0]


@dataclass
class Query:
    """A parsed query: `should` items rank (any may match), `must` items are all required, `exclude`d
    ones remove documents; `dense_text` is what the embedding model reads (no operators, no exclusions)."""

    should: list[Item] = field(default_factory=list)
    must: list[Item] = field(default_factory=list)
    exclude: list[Item] = field(default_factory=list)
    dense_text: str = ""

    @property
    def positive(self) -> list[Item]:
        return self.must + self.should

    def highlight_terms(self) -> list[Item]:
        """Everything a snippet should mark: the positive items (phrases also as their words)."""
        return self.positive

    def __bool__(self) -> bool:
        return bool(self.positive or self.dense_text)


def _items(raw: str, *, quoted: bool) -> list[Item]:
    """Items for one lexeme (or a quoted phrase's text)."""
    out: list[Item] = []
    folded = fold(raw)
    for run in _CJK_RUN.findall(folded):
        out.extend(_cjk_items(run))
    rest = _CJK_RUN.sub(" ", folded)
    if quoted:
        toks = tuple(_WORD.findall(rest))
        if len(toks) > 1:
            out.append(Item("phrase", toks))
        elif toks:
            out.append(Item("term", toks))
        return out
    if _SYMBOLIC.match(rest):
        out.append(Item("substring", (rest,)))
        return out
    prefix = rest.endswith("*")
    toks = tuple(_WORD.findall(rest))
    if not toks:
        return out
    if prefix and len(toks) == 1:
        out.append(Item("prefix", toks))
    elif len(toks) > 1:
        # e-mail, covid-19, o'clock: the words in order, or written together (email)
        out.append(Item("phrase", toks))
        out.append(Item("term", ("".join(toks),)))
    else:
        out.append(Item("term", toks))
    return out


def _cjk_items(run: str) -> list[Item]:
    """A CJK run as substrings: short runs whole, long ones (a typed sentence) as overlapping trigrams."""
    if len(run) <= 4:
        return [Item("substring", (run,))]
    return [Item("substring", (run[i:i + 3],)) for i in range(0, len(run) - 2)]


def parse(text: str) -> Query:
    """Parse what a person typed; unknown syntax is just text."""
    q = Query()
    dense: list[str] = []
    lexemes: list[tuple[str, bool, bool]] = []  # (text, quoted, negated)
    for m in _LEXEME.finditer(text):
        if m.group(3) is not None:
            tok = m.group(3)
            neg = tok.startswith("-") and len(tok) > 1
            lexemes.append((tok[1:] if neg else tok, False, neg))
        else:
            lexemes.append((m.group(2), True, m.group(1) == "-"))
    groups: list[tuple[list[Item], bool]] = []  # items of one lexeme, whether AND binds it to its neighbours
    and_next = negate_next = False
    for raw, quoted, neg in lexemes:
        if not quoted and raw in ("AND", "&&"):
            and_next = True
            if groups:
                groups[-1] = (groups[-1][0], True)
            continue
        if not quoted and raw == "OR":
            continue
        if not quoted and raw == "NOT":
            negate_next = True
            continue
        items = _items(raw, quoted=quoted)
        if neg or negate_next:
            q.exclude.extend(items)
        else:
            groups.append((items, and_next))
            dense.append(raw)
        and_next = negate_next = False
    for items, required in groups:
        (q.must if required else q.should).extend(items)
    q.dense_text = " ".join(dense).strip()
    q.should = _drop_stopwords(_bind_letters(q.should), keep_all=not q.must)
    q.should = list(dict.fromkeys(i for i in q.should if i not in q.must))
    return q


def _drop_stopwords(items: list[Item], *, keep_all: bool) -> list[Item]:
    """Stopwords never carry a match, unless the query is nothing but stopwords ("the who")."""
    content = [i for i in items if not (i.kind == "term" and i.tokens[0] in STOPWORDS)]
    return content if content or not keep_all else items


def _bind_letters(items: list[Item]) -> list[Item]:
    """A single letter or symbol word ("T cells", "vitamin D", "α helix") would match far too much on its
    own, and dropping it loses meaning: it travels as a phrase with its neighbour, which also stays."""
    out: list[Item] = []
    for n, it in enumerate(items):
        if it.kind != "term" or len(it.tokens[0]) > 1 or it.tokens[0].isdigit():
            out.append(it)
            continue
        nxt = items[n + 1] if n + 1 < len(items) and items[n + 1].kind == "term" else None
        prev = items[n - 1] if n > 0 and items[n - 1].kind == "term" else None
        if nxt is not None:
            out.append(Item("phrase", (it.tokens[0], nxt.tokens[0])))
        elif prev is not None:
            out.append(Item("phrase", (prev.tokens[0], it.tokens[0])))
        else:
            out.append(it)  # the query is just the letter
    return out
