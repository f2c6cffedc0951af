"""The parser Protocol, the structured result every parser returns, and the registry by file type."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from ingest.errors import UnsupportedType

# Element kinds that drive chunking: a title starts a section; tables and code stay whole if they fit.
TITLE = "title"
TEXT = "text"
LIST_ITEM = "list"
TABLE = "table"
CODE = "code"

# Element roles: text that is in a document but not its own words (a reply's quoted message, a mail
# signature). Chunks never mix roles, and search weighs role chunks less.
QUOTE = "quote"
SIGNATURE = "signature"


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
    role: str | None = None  # None: the document's own text; QUOTE or SIGNATURE


@dataclass(frozen=True)
class AttachmentRef:
    """A file inside a container (a message's attachment), saved by the parser for its own ingest job.

    `blob` names the bytes in the parts blob store; it is None when they were not saved, and then `error`
    says why (over the size limit, encrypted, an archive), to be recorded against the attachment.
    `index` is its position in the container (from 1), which with the container's uri makes its identity.
    """

    index: int
    filename: str
    content_type: str
    size: int
    blob: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index, "filename": self.filename, "content_type": self.content_type, "size": self.size,
            "blob": self.blob, "error": self.error,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AttachmentRef:
        return cls(
            index=int(d["index"]), filename=str(d.get("filename") or ""), content_type=str(d.get("content_type") or ""),
            size=int(d.get("size") or 0), blob=d.get("blob"), error=d.get("error"),
        )


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
    attachments: list[AttachmentRef] = field(default_factory=list)  # files inside, each ingested on its own


# Progress of long work inside one parse: (stage, done, total or None). Parsers call it as they go (every
# page, every minute of audio); the caller decides what to do with it (job progress, a deadline reset).
ProgressFn = Callable[[str, float, "float | None"], None]


def no_progress(stage: str, done: float, total: float | None = None) -> None:
    """A ProgressFn that ignores everything (tests, inline one-off parses)."""


@dataclass(frozen=True)
class Source:
    """Something to parse: a name (its file type comes from it) and an opener for its bytes.

    Not only files: a mail attachment is a Source with `data` (or a blob `path` under the data dir) and the
    message it came from as `parent_uri`. Picklable, so it travels to parser processes.
    """

    uri: str  # identity in the catalog: a file path, later a mail message or attachment
    name: str  # file name as the user knows it: decides the file type, shown in errors
    path: Path | None = None  # a local file holding the bytes, when there is one
    data: bytes | None = None  # or the bytes themselves
    parent_uri: str | None = None  # the message an attachment belongs to

    @classmethod
    def from_path(cls, path: Path, uri: str | None = None) -> Source:
        return cls(uri=uri if uri is not None else str(path), name=path.name, path=path)

    @property
    def file_type(self) -> str:
        """Lower-case extension without the dot ('' when there is none)."""
        return os.path.splitext(self.name)[1].lower().lstrip(".")

    def open(self) -> BinaryIO:
        """The bytes, as a binary stream (the caller closes it)."""
        if self.path is not None:
            return self.path.open("rb")
        return io.BytesIO(self.data or b"")

    def read_bytes(self) -> bytes:
        with self.open() as f:
            return f.read()

    def size(self) -> int:
        return self.path.stat().st_size if self.path is not None else len(self.data or b"")

    @contextmanager
    def local_file(self) -> Iterator[Path]:
        """A file path holding the bytes: the real file, or a temporary copy for libraries that need a name."""
        if self.path is not None:
            yield self.path
            return
        suffix = os.path.splitext(self.name)[1][:16]
        with tempfile.TemporaryDirectory(prefix="kb-src-") as tmp:
            p = Path(tmp) / f"source{suffix}"
            p.write_bytes(self.data or b"")
            yield p


class Parser(Protocol):
    """Reads one source of the types it registered for. Raises an IngestError subclass on bad input.

    `version` goes up whenever a change would extract different text from the same bytes, so documents
    parsed by an older version can be found and re-parsed (`kb reindex --reparse`).
    """

    name: str
    version: int

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument: ...


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

    def supports(self, source: Source) -> bool:
        return source.file_type in self._by_type or self._sniff_text(source)

    def _sniff_text(self, source: Source) -> bool:
        if self._text is None:
            return False
        from ingest.parsers.textutil import looks_like_text

        try:
            with source.open() as f:
                head = f.read(8192)
        except OSError:
            return False
        return looks_like_text(head)

    def warm_up(self) -> None:
        """Let parsers that have one-off start-up costs (imports, models) pay them now."""
        for parser in {id(p): p for p in self._by_type.values()}.values():
            warm = getattr(parser, "warm_up", None)
            if warm is not None:
                warm()

    def parsers(self) -> list[Parser]:
        """Each registered parser once (the text fallback included)."""
        found = {id(p): p for p in self._by_type.values()}
        if self._text is not None:
            found[id(self._text)] = self._text
        return list(found.values())

    def types(self) -> list[str]:
        return sorted(self._by_type)

    def version_of(self, parser: Parser) -> str:
        """The recorded version of what a parser produces, e.g. 'pdf/2'."""
        return f"{parser.name}/{getattr(parser, 'version', 1)}"

    def for_source(self, source: Source) -> tuple[Parser, str]:
        t = source.file_type
        parser = self._by_type.get(t)
        if parser is None and self._text is not None and self._sniff_text(source):
            return self._text, t or "txt"
        if parser is None:
            what = f"'.{t}' files" if t else "files without an extension"
            raise UnsupportedType(f"unsupported file type: {what} are not ingested")
        return parser, t
