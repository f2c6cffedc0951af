"""Plain text, JSON and XML read as text: paragraph-split, encoding detected, binary junk refused."""

from __future__ import annotations

import json
import re
from typing import Any

from ingest.errors import CorruptFile
from ingest.parsers.base import TABLE, TEXT, TITLE, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.textutil import clean, decode_text

# A line standing alone that looks like a heading: numbered, or underlined, or short without a period.
_NUMBERED = re.compile(r"^(\d+(\.\d+)*)\.?\s+\S.{0,80}$")
_PARA = re.compile(r"\n\s*\n")


def paragraphs_to_elements(text: str, page: int | None = None) -> list[Element]:
    """Split text at blank lines; short standalone lines that read as headings become titles."""
    out: list[Element] = []
    for block in _PARA.split(text):
        block = clean(block)
        if not block:
            continue
        lines = block.split("\n")
        if len(lines) == 2 and set(lines[1]) <= set("=-~^*#") and len(lines[1]) >= 3:
            out.append(Element(lines[0], TITLE, page=page, level=1 if "=" in lines[1] else 2))
            continue
        if len(lines) == 1 and _is_heading(block):
            m = _NUMBERED.match(block)
            level = m.group(1).count(".") + 1 if m else 1
            out.append(Element(block, TITLE, page=page, level=level))
            continue
        out.append(Element(block, TEXT, page=page))
    return out


def _is_heading(line: str) -> bool:
    if len(line) > 90 or line.endswith((".", ",", ";", ":", "?", "!")) or len(line.split()) > 12:
        return False
    if _NUMBERED.match(line):
        return True
    words = line.split()
    return len(words) <= 8 and (line.isupper() or sum(w[:1].isupper() for w in words) >= max(1, len(words) - 1))


class TextParser:
    """txt/log/md-less plain text, JSON (flattened to key: value lines) and XML (text content)."""

    name = "text"
    version = 1

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        data = source.read_bytes()
        text, encoding = decode_text(data)
        meta: dict[str, Any] = {"encoding": encoding}
        if file_type in ("json", "ndjson", "jsonl"):
            text = _json_text(text, file_type)
        elif file_type == "xml":
            text = _xml_text(text)
        elements = paragraphs_to_elements(text)
        title = next((e.text for e in elements if e.kind == TITLE), None)
        return ParsedDocument(elements=elements, title=title, meta=meta)


def _json_text(text: str, file_type: str) -> str:
    """JSON as readable lines ('a.b: value'), so keys and values are searchable without the syntax."""
    try:
        if file_type == "json":
            docs: list[Any] = [json.loads(text)]
        else:
            docs = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
    except json.JSONDecodeError as exc:
        raise CorruptFile(f"invalid JSON: {exc}") from None
    out: list[str] = []
    for d in docs:
        lines: list[str] = []
        _flatten(d, "", lines)
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _flatten(value: Any, key: str, out: list[str], depth: int = 0) -> None:
    if depth > 50:
        out.append(f"{key}: …")
    elif isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{key}.{k}" if key else str(k), out, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{key}[{i}]", out, depth + 1)
        if not value:
            out.append(f"{key}: []")
    elif value is not None and value != "":
        out.append(f"{key}: {value}" if key else str(value))


def _xml_text(text: str) -> str:
    """Text content of an XML document, one paragraph per element with text; raw text if unparseable.

    The stdlib parser refuses external entities, and expat caps entity expansion (billion laughs).
    """
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError:
        return re.sub(r"<[^>]+>", " ", text)
    parts = []
    for el in root.iter():
        t = (el.text or "").strip()
        if t:
            parts.append(t)
        tail = (el.tail or "").strip()
        if tail:
            parts.append(tail)
    return "\n\n".join(parts)


class DelimitedParser:
    """CSV and TSV as a table (rows of ' | '-joined cells): any encoding, ragged rows tolerated."""

    name = "delimited"
    version = 1

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        import csv
        import io

        text, encoding = decode_text(source.read_bytes())
        if file_type == "tsv":
            delimiter = "\t"
        else:
            try:
                delimiter = csv.Sniffer().sniff(text[:20000], delimiters=",;\t|").delimiter
            except csv.Error:
                delimiter = ","
        csv.field_size_limit(10 * 1024 * 1024)
        rows = []
        try:
            for row in csv.reader(io.StringIO(text), delimiter=delimiter):
                cells = [clean(c) for c in row]
                if any(cells):
                    rows.append(" | ".join(cells))
        except csv.Error as exc:
            raise CorruptFile(f"malformed {file_type.upper()}: {exc}") from None
        elements = [Element("\n".join(rows), TABLE)] if rows else []
        return ParsedDocument(elements=elements, meta={"encoding": encoding, "rows": len(rows)})
