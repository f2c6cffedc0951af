"""parse_source and InlineParser: outcomes, reasons, retry hints, versions and warnings (no child processes)."""

from __future__ import annotations

import errno
import threading

import pytest

from ingest.chunking import CHUNKER_VERSION
from ingest.errors import CorruptFile, EncryptedFile
from ingest.parsers.base import Element, ParsedDocument, ParserRegistry, ProgressFn, Source, no_progress
from ingest.parsing import (
    OUT_OF_MEMORY,
    Failed,
    InlineParser,
    ParseConfig,
    Parsed,
    Stopped,
    _duration,
    build_chunker,
    parse_source,
)

CONFIG = ParseConfig(tokenizer_dir=None, max_tokens=20, target_tokens=10, max_unpacked_bytes=1 << 20, max_chunks=3)


class Fake:
    """Behaves according to the source's content: a paragraph per line, or the named failure."""

    name = "fake"
    version = 3

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        text = source.read_bytes().decode()
        failures: dict[str, BaseException] = {
            "corrupt": CorruptFile("the file is damaged"),
            "encrypted": EncryptedFile("the file is password protected"),
            "memory": MemoryError(),
            "recursion": RecursionError(),
            "unreadable": OSError(errno.EIO, "Input/output error"),
            "badimage": OSError("image file is truncated"),
            "bug": RuntimeError("boom"),
        }
        if text in failures:
            raise failures[text]
        for i in range(3):
            progress("pages", i + 1, 3)
        return ParsedDocument(
            [Element(line) for line in text.splitlines()], title="T", meta={"warnings": ["page 2 was blank"]}
        )


def fake_registry(config: ParseConfig) -> ParserRegistry:
    reg = ParserRegistry()
    reg.register(Fake(), "fake")
    return reg


def run(content: str, name: str = "doc.fake") -> object:
    source = Source(uri=name, name=name, data=content.encode())
    return parse_source(fake_registry(CONFIG), build_chunker(CONFIG), source, no_progress, CONFIG)


def test_parsed_carries_versions_and_warnings() -> None:
    outcome = run("one two three\nfour five")
    assert isinstance(outcome, Parsed)
    assert outcome.parser_version == f"fake/3+chunker/{CHUNKER_VERSION}" == "fake/3+chunker/2"
    assert outcome.warnings == ["page 2 was blank"]
    assert outcome.title == "T" and outcome.file_type == "fake"


def test_chunks_over_max_chunks_are_dropped_with_a_warning() -> None:
    outcome = run("\n".join(" ".join(["word"] * 9) for _ in range(5)))  # one chunk per line
    assert isinstance(outcome, Parsed)
    assert len(outcome.chunks) == 3
    assert outcome.warnings[-1] == (
        "only the first 3 passages were indexed (the document has 5; setting max_chunks)"
    )


@pytest.mark.parametrize(
    ("content", "error", "transient"),
    [
        ("corrupt", "the file is damaged", False),
        ("encrypted", "the file is password protected", False),
        ("memory", OUT_OF_MEMORY, False),
        ("recursion", "the file's structure is nested too deeply to parse", False),
        ("unreadable", "could not read the file: Input/output error", True),
        ("badimage", "could not parse: OSError: image file is truncated", False),
        ("bug", "could not parse: RuntimeError: boom", False),
    ],
)
def test_failures_say_why_and_whether_to_retry(content: str, error: str, transient: bool) -> None:
    assert run(content) == Failed(error, transient=transient)


def test_unsupported_type_is_not_worth_retrying() -> None:
    outcome = run("\x00\x01binary", name="x.weird")
    assert isinstance(outcome, Failed) and not outcome.transient
    assert "unsupported file type" in outcome.error


def test_inline_parser_forwards_progress_and_honours_stop() -> None:
    parser = InlineParser(CONFIG, fake_registry)
    seen: list[tuple[str, float, float | None]] = []

    def record(stage: str, done: float, total: float | None = None) -> None:
        seen.append((stage, done, total))

    outcome = parser.parse(Source("a", "a.fake", data=b"hello"), record)
    assert isinstance(outcome, Parsed) and outcome.chunks[0].text == "hello"
    assert seen[:3] == [("pages", 1, 3), ("pages", 2, 3), ("pages", 3, 3)]
    assert parser.pid is None

    stop = threading.Event()

    def stop_midway(stage: str, done: float, total: float | None = None) -> None:
        stop.set()  # the service starts stopping while the parser is at work

    assert isinstance(parser.parse(Source("b", "b.fake", data=b"x"), stop_midway, stop), Stopped)
    assert isinstance(parser.parse(Source("c", "c.fake", data=b"x"), no_progress, stop), Stopped)
    parser.close()


def test_durations_read_naturally() -> None:
    assert [_duration(s) for s in (1.5, 2, 600, 3600, 21600, 5400)] == [
        "1.5 s", "2 s", "600 s", "1 h", "6 h", "1.5 h"
    ]
