"""Parsers turn one file into a ParsedDocument; the registry picks one by file type."""

from ingest.parsers.base import Element, ParsedDocument, Parser, ParserRegistry

__all__ = ["Element", "ParsedDocument", "Parser", "ParserRegistry"]
