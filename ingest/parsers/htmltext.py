"""HTML to text with the stdlib tokenizer: the fallback when unstructured gives up, and mail bodies.

`html.parser.HTMLParser` is a flat tokenizer: it builds no tree and never recurses, so markup nested
100,000 levels deep (where lxml stops and unstructured returns nothing) costs no more than flat markup.
Headings become titles, other block tags end a paragraph, script and style are dropped.
"""

from __future__ import annotations

import codecs
import re
from html.parser import HTMLParser

from ingest.errors import CorruptFile
from ingest.parsers.base import TEXT, TITLE, Element
from ingest.parsers.textutil import clean, decode_text

_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "body", "caption", "center", "dd", "details", "dialog", "div",
    "dl", "dt", "fieldset", "figcaption", "figure", "footer", "form", "header", "hgroup", "hr", "html", "legend",
    "li", "main", "menu", "nav", "ol", "p", "pre", "section", "summary", "table", "tbody", "tfoot", "thead",
    "tr", "ul",
})
_HEADING = {f"h{i}": i for i in range(1, 7)}
# Only the tags whose content the tokenizer reads raw up to the end tag: skipping anything else would drop
# the rest of the page when its end tag is missing.
_SKIP = frozenset({"script", "style"})
_CELL = frozenset({"td", "th"})
_WS = re.compile(r"\s+")
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


class _TextExtractor(HTMLParser):
    """Collects (kind, level, text) blocks from a token stream; keeps no stack of open elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[Element] = []
        self._buf: list[str] = []
        self._skip: str | None = None  # the script/style-like tag whose content is being dropped
        self._heading = 0  # level of the heading being read, 0 outside headings
        self._pre = 0
        self._title = False  # inside <title>: shown as the document title, not as body text

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._title = False
        if self._skip is not None:
            return
        if tag in _SKIP:
            self._skip = tag
        elif tag == "title":
            self._title = True
        elif tag == "br":
            self._buf.append("\n")
        elif tag in _CELL:
            self._buf.append(" | " if self._buf and not self._buf[-1].endswith("\n") else "")
        elif tag in _HEADING:
            self._flush()
            self._heading = _HEADING[tag]
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre":
                self._pre += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("br", "hr") or tag in _BLOCK:
            self.handle_starttag(tag, attrs)
        # <div/> in HTML opens a div, but there is nothing to close: treat it as a bare break.

    def handle_endtag(self, tag: str) -> None:
        self._title = False
        if self._skip is not None:
            if tag == self._skip:
                self._skip = None
            return
        if tag in _HEADING:
            self._flush()
            self._heading = 0
        elif tag in _BLOCK:
            self._flush()
            if tag == "pre" and self._pre:
                self._pre -= 1

    def handle_data(self, data: str) -> None:
        if self._skip is not None or self._title:
            return
        self._buf.append(data if self._pre else _WS.sub(" ", data))

    def _flush(self) -> None:
        text = clean("".join(self._buf))
        self._buf.clear()
        if not text:
            return
        if self._heading and len(text) < 200:
            self.elements.append(Element(text, TITLE, level=self._heading))
        else:
            self.elements.append(Element(text, TEXT))

    def finish(self) -> list[Element]:
        self.close()
        self._flush()
        return self.elements


def html_elements(markup: str) -> list[Element]:
    """Paragraphs and headings of an HTML document, in order, without scripts and styles."""
    parser = _TextExtractor()
    # Fed in slices so a multi-megabyte page is tokenised as it goes rather than buffered twice.
    for i in range(0, len(markup), 1 << 20):
        parser.feed(markup[i : i + (1 << 20)])
    return parser.finish()


def html_text(markup: str) -> str:
    """The text of an HTML document, one paragraph per block."""
    return "\n\n".join(e.text for e in html_elements(markup))


def decode_html(data: bytes, declared: str | None = None) -> str:
    """Decode HTML bytes: a BOM, the declared charset (header or <meta>), UTF-8, then a best guess."""
    if data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return decode_text(data)[0]
    if declared is None:
        m = _META_CHARSET.search(data[:8192])
        declared = m.group(1).decode("ascii", "replace") if m else None
    if declared:
        try:
            codecs.lookup(declared)
            return data.decode(declared, errors="replace")
        except LookupError:
            pass  # an unknown charset name: guess as if none was given
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return decode_text(data)[0]
    except CorruptFile:
        return data.decode("utf-8", errors="replace")
