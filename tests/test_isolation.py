"""Parser processes: a crashing, hanging or memory-hungry parser costs one file, never the run."""

from __future__ import annotations

import json
import mmap
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.parsers.base import Element, ParsedDocument, ParserRegistry, ProgressFn, Source
from ingest.parsing import CRASHED, Failed, ParseConfig, Parsed, ParserProcess, Stopped, memory_error

pytestmark = pytest.mark.slow

MiB = 1 << 20
_kept: list[bytearray] = []  # what a "keep" file leaves behind in the child, like a leaky library


class Hostile:
    """A parser that misbehaves according to the file type; .ok files are read normally."""

    name = "hostile"
    version = 1

    def warm_up(self) -> None:
        _kept.append(bytearray(MiB))  # something to see: warm_up runs in the child, once

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        if file_type == "crash":
            os._exit(139)  # like a segfault in native code
        if file_type == "hang":
            time.sleep(3600)
        if file_type == "subhang":  # stuck in a helper program, as a parser waiting on Tesseract would be
            helper = subprocess.Popen(["sleep", "3600"])
            Path(source.read_bytes().decode()).write_text(str(helper.pid))
            helper.wait()
        if file_type == "slow":  # long but alive: reports progress like a long transcription
            seconds = float(source.read_bytes())
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                progress("transcribing", seconds - (end - time.monotonic()), seconds)
                time.sleep(0.1)
        if file_type == "grow":  # a zip bomb: memory grows fast until something stops it
            blocks = [bytearray(64 * MiB) for _ in range(24)]  # 1.5 GiB, every page written
            del blocks
        if file_type == "shm":  # memory RLIMIT_DATA does not see (shared pages): only the RSS poll catches it
            area = mmap.mmap(-1, 1536 * MiB)
            for off in range(0, len(area), 4096):
                area[off] = 1
                if off % (64 * MiB) == 0:
                    time.sleep(0.01)
        if file_type == "keep":  # succeeds but leaves 300 MiB behind
            _kept.append(bytearray(300 * MiB))
        if file_type == "info":
            info = {
                "pid": os.getpid(), "warmed": len(_kept), "nice": os.nice(0),
                "omp": os.environ.get("OMP_NUM_THREADS"),
                "data_limit": resource.getrlimit(resource.RLIMIT_DATA)[0],
                "composition_root": "kb.app" in sys.modules or "kb.cli" in sys.modules,
            }
            return ParsedDocument([Element(json.dumps(info))])
        return ParsedDocument([Element(source.read_bytes().decode())])


def hostile_registry(config: ParseConfig) -> ParserRegistry:
    reg = ParserRegistry()
    reg.register(Hostile(), "crash", "hang", "subhang", "slow", "grow", "shm", "keep", "info", "ok")
    return reg


CONFIG = ParseConfig(tokenizer_dir=None, max_tokens=100, target_tokens=50, max_unpacked_bytes=1 << 30, threads=1)


def src(name: str, content: str = "") -> Source:
    return Source(uri=f"test://{name}", name=name, data=(content or f"content of {name}").encode())


@pytest.fixture
def proc() -> Iterator[ParserProcess]:
    p = ParserProcess(CONFIG, hostile_registry, memory_mb=500, stall_timeout_s=1.5, max_seconds=30, recycle_mb=400)
    yield p
    p.close()


def text_of(outcome: object) -> str:
    assert isinstance(outcome, Parsed), outcome
    return outcome.chunks[0].text


def test_crash_and_hang_cost_one_file_each(proc: ParserProcess) -> None:
    assert text_of(proc.parse(src("a.ok"))) == "content of a.ok"
    first = proc.pid
    assert first is not None

    crashed = proc.parse(src("b.crash"))
    assert crashed == Failed(CRASHED, transient=True)
    assert proc.pid is None  # replaced on the next parse
    assert text_of(proc.parse(src("c.ok"))) == "content of c.ok"
    assert proc.pid not in (None, first)

    for i in range(5):  # quick successes do not stretch the next file's deadline
        proc.parse(src(f"{i}.ok"))
    started = time.monotonic()
    hung = proc.parse(src("d.hang"))
    took = time.monotonic() - started
    assert hung == Failed("parsing stopped after 1.5 s without progress", transient=True)
    assert 1.5 <= took < 3.5
    assert text_of(proc.parse(src("e.ok"))) == "content of e.ok"


def test_slow_but_reporting_is_not_killed(proc: ParserProcess) -> None:
    seen: list[tuple[str, float, float | None, int]] = []

    def progress(stage: str, done: float, total: float | None = None) -> None:
        seen.append((stage, done, total, threading.get_ident()))

    outcome = proc.parse(src("long.slow", "3.5"), progress)  # more than twice the stall timeout
    assert text_of(outcome) == "3.5"
    assert len(seen) >= 10
    assert {s[0] for s in seen} >= {"transcribing"}
    assert {s[3] for s in seen} == {threading.get_ident()}  # forwarded in the calling thread


def test_absolute_limit_stops_even_a_reporting_parser() -> None:
    with ParserProcess(
        CONFIG, hostile_registry, memory_mb=500, stall_timeout_s=1.0, max_seconds=2.0, recycle_mb=400
    ) as p:
        p.parse(src("warm.ok"))  # the limit is per parse: the child's start-up is not the point here
        started = time.monotonic()
        outcome = p.parse(src("long.slow", "30"))
        assert outcome == Failed("parsing took longer than the 2 s limit", transient=True)
        assert time.monotonic() - started < 3.5


@pytest.mark.parametrize("kind", ["grow", "shm"])
def test_memory_ceiling(kind: str) -> None:
    with ParserProcess(
        CONFIG, hostile_registry, memory_mb=500, stall_timeout_s=10, max_seconds=30, recycle_mb=400
    ) as proc:
        before = proc.parse(src("a.ok"))
        assert isinstance(before, Parsed)
        first = proc.pid
        started = time.monotonic()
        outcome = proc.parse(src(f"bomb.{kind}"))
        assert outcome == Failed(memory_error(500), transient=False)
        assert "more than 500 MiB" in outcome.error and "parse_memory_mb" in outcome.error
        assert time.monotonic() - started < 5
        after = proc.parse(src("b.ok"))
        assert text_of(after) == "content of b.ok"
        assert proc.pid not in (None, first)  # a fresh child, small again
        assert 0 < proc.rss_mb() < 200


def test_big_child_is_recycled_after_a_success() -> None:
    with ParserProcess(
        CONFIG, hostile_registry, memory_mb=500, stall_timeout_s=5, max_seconds=30, recycle_mb=200
    ) as proc:
        assert text_of(proc.parse(src("a.keep"))) == "content of a.keep"
        assert proc.pid is None  # 300 MiB left behind is over recycle_mb: the child was replaced
        assert isinstance(proc.parse(src("b.ok")), Parsed)
        small = proc.pid
        assert small is not None
        assert isinstance(proc.parse(src("c.ok")), Parsed)
        assert proc.pid == small  # a small child is kept


def test_stop_event_abandons_the_parse_promptly(proc: ParserProcess) -> None:
    proc.parse(src("a.ok"))
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    outcome = proc.parse(src("b.hang"), stop=stop)
    assert isinstance(outcome, Stopped)
    assert time.monotonic() - started < 1.5
    assert proc.pid is None
    assert isinstance(proc.parse(src("c.ok"), stop=stop), Stopped)  # still stopping: no new child
    assert text_of(proc.parse(src("d.ok"))) == "content of d.ok"


def test_close_from_another_thread_abandons_the_parse(proc: ParserProcess) -> None:
    proc.parse(src("a.ok"))
    threading.Timer(0.5, proc.close).start()
    started = time.monotonic()
    assert isinstance(proc.parse(src("b.hang")), Stopped)
    assert time.monotonic() - started < 1.5


def test_helper_programs_die_with_the_child(proc: ParserProcess, tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    outcome = proc.parse(src("a.subhang", str(pid_file)))
    assert isinstance(outcome, Failed) and "without progress" in outcome.error
    helper = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while Path(f"/proc/{helper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # killed with the child's process group, reaped by init
    assert not Path(f"/proc/{helper}").exists() or "Z" in Path(f"/proc/{helper}/stat").read_text().split()[2]


def test_warm_up_and_child_setup(proc: ParserProcess) -> None:
    proc.warm_up()
    pid = proc.pid
    assert pid is not None
    info = json.loads(text_of(proc.parse(src("x.info"))))
    assert info["pid"] == pid
    assert info["warmed"] == 1  # the registry's warm_up ran in this child
    assert info["nice"] >= 10  # parsers yield the CPU to the embedder
    assert info["omp"] == "1"
    assert 500 * MiB < info["data_limit"] < 2048 * MiB  # RLIMIT_DATA backstop a bit above the ceiling
    assert info["composition_root"] is False
    proc.close()
    assert proc.pid is None
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
