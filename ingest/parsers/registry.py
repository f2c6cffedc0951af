"""The default parser registry: which parser reads which file type."""

from __future__ import annotations

from ingest.parsers.base import ParserRegistry
from ingest.parsers.documents import PARTITIONERS, UnstructuredParser
from ingest.parsers.pdf import PdfParser
from ingest.parsers.text import DelimitedParser, TextParser

TEXT_TYPES = ("txt", "text", "log", "json", "ndjson", "jsonl", "xml")


def default_registry(max_unpacked_bytes: int) -> ParserRegistry:
    reg = ParserRegistry()
    reg.register(TextParser(), *TEXT_TYPES)
    reg.register(DelimitedParser(), "csv", "tsv")
    reg.register(PdfParser(), "pdf")
    reg.register(UnstructuredParser(max_unpacked_bytes=max_unpacked_bytes), *PARTITIONERS)
    return reg
