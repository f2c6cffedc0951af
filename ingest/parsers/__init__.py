"""Parsers turn one source (a file, later a mail attachment) into a ParsedDocument; the registry picks one."""

from ingest.parsers.base import Element, ParsedDocument, Parser, ParserRegistry, ProgressFn, Source, no_progress

__all__ = ["Element", "ParsedDocument", "Parser", "ParserRegistry", "ProgressFn", "Source", "no_progress"]
