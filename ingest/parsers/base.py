"""The parser Protocol, the structured result every parser returns, and the registry by file type."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ingest.errors import UnsupportedType

# Element kinds that drive chunking: a title starts a section; tables and code stay whole if they fit.
TITLE = "title"
TEXT = "text"
LIST_ITEM = "list"
TABLE = "table"
CODE = "code"


@dataclass
class Element:
    """One structural piece of a document: a heading, paragraph, list item, table, or speech segment."""

    text: str
    kind: str = TEXT
    page: int | None = None
    t_start: float | None = None
    t_end: float | None = None
    ocr: bool = False
    level: int = 0  # heading depth where the format says it (1 = top)


@dataclass
class ParsedDocument:
    """What a parser extracted: ordered elements plus whatever document metadata the format carries."""

    elements: list[Element]
    kind: str = "document"  # document | scan | meeting | mail
    title: str | None = None
    author: str | None = None
    created_at: str | None = None  # ISO 8601
    modified_at: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class Parser(Protocol):
    """Reads one file of the types it registered for. Raises an IngestError subclass on bad input."""

    name: str

    def parse(self, path: Path, file_type: str) -> ParsedDocument: ...


class ParserRegistry:
    """Maps file types (lower-case extensions without the dot) to parsers."""

    def __init__(self) -> None:
        self._by_type: dict[str, Parser] = {}
        self._text: Parser | None = None

    def register_text_fallback(self, parser: Parser) -> None:
        """Files of unknown type that turn out to be plain text (README, LICENSE, .cfg) go here."""
        self._text = parser

    def register(self, parser: Parser, *file_types: str) -> None:
        for t in file_types:
            self._by_type[t.lower()] = parser

    def file_type(self, path: Path) -> str:
        return path.suffix.lower().lstrip(".")

    def supports(self, path: Path) -> bool:
        return self.file_type(path) in self._by_type or self._sniff_text(path)

    def _sniff_text(self, path: Path) -> bool:
        if self._text is None:
            return False
        from ingest.parsers.textutil import looks_like_text

        return looks_like_text(path)

    def warm_up(self) -> None:
        """Let parsers that have one-off start-up costs (imports, models) pay them now."""
        for parser in {id(p): p for p in self._by_type.values()}.values():
            warm = getattr(parser, "warm_up", None)
            if warm is not None:
                warm()

    def types(self) -> list[str]:
        return sorted(self._by_type)

    def for_path(self, path: Path) -> tuple[Parser, str]:
        t = self.file_type(path)
        parser = self._by_type.get(t)
        if parser is None and self._text is not None and self._sniff_text(path):
            return self._text, t or "txt"
        if parser is None:
            what = f"'.{t}' files" if t else "files without an extension"
            raise UnsupportedType(f"unsupported file type: {what} are not ingested")
        return parser, t
