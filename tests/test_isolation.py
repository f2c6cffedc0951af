"""Parser processes: a crashing or hanging parser costs one file, never the run."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ingest.parsers.base import Element, ParsedDocument, ParserRegistry
from ingest.parsing import Failed, ParseConfig, Parsed, ParseService


class Hostile:
    """Crashes the process on .crash files and hangs on .hang files; reads .ok files."""

    name = "hostile"

    def parse(self, path: Path, file_type: str) -> ParsedDocument:
        if file_type == "crash":
            os._exit(139)  # like a segfault in native code
        if file_type == "hang":
            time.sleep(3600)
        if file_type == "slow":  # long but alive: reports progress like a long transcription
            from kb.progress import ProgressBoard

            board = ProgressBoard(path.parent / "progress.db")
            for i in range(6):
                board.update(str(path), "working", i, 6, every_s=0)
                time.sleep(1)
        return ParsedDocument([Element(path.read_text())])


def hostile_registry(config: ParseConfig) -> ParserRegistry:
    reg = ParserRegistry()
    reg.register(Hostile(), "crash", "hang", "ok", "slow")
    return reg


def test_crash_and_hang_isolated(tmp_path: Path) -> None:
    names = ["a.ok", "b.crash", "c.ok", "d.hang", "e.ok"]
    for n in names:
        (tmp_path / n).write_text(f"content of {n}")
    config = ParseConfig(tokenizer_dir=None, max_tokens=100, target_tokens=50, max_unpacked_bytes=1 << 30)
    service = ParseService(config, hostile_registry, workers=1, timeout_s=4)
    try:
        started = time.monotonic()
        results = dict(service.run(iter(tmp_path / n for n in names)))
    finally:
        service.close()
    assert time.monotonic() - started < 60
    out = {p.name: r for p, r in results.items()}
    assert set(out) == set(names)
    for n in ("a.ok", "c.ok", "e.ok"):
        assert isinstance(out[n], Parsed) and out[n].chunks[0].text == f"content of {n}"
    assert isinstance(out["b.crash"], Failed) and "crashed" in out["b.crash"].error
    assert isinstance(out["d.hang"], Failed) and "longer than 4 s" in out["d.hang"].error


def test_slow_but_reporting_is_not_killed(tmp_path: Path) -> None:
    (tmp_path / "long.slow").write_text("a long recording")
    config = ParseConfig(tokenizer_dir=None, max_tokens=100, target_tokens=50, max_unpacked_bytes=1 << 30,
                         progress_db=str(tmp_path / "progress.db"))
    service = ParseService(config, hostile_registry, workers=1, timeout_s=3)
    try:
        ((_, outcome),) = list(service.run(iter([tmp_path / "long.slow"])))
    finally:
        service.close()
    assert isinstance(outcome, Parsed), outcome
