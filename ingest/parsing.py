"""Parsing and chunking of one file, run in isolated worker processes.

A hostile file may hang or crash a parser (native code in PDFium, lxml, pandoc); in a worker process that
costs one file, recorded as failed, and a fresh worker takes over. With workers=0 everything runs inline
(fast unit tests, no isolation).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ingest.chunking import Chunk, Chunker, TokenCounter
from ingest.errors import IngestError
from ingest.parsers.base import ParserRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParseConfig:
    """Everything a worker process needs to build its own registry and chunker (picklable)."""

    tokenizer_dir: str | None
    max_tokens: int
    target_tokens: int
    max_unpacked_bytes: int
    ocr_languages: str = "eng"
    threads: int = 1
    whisper_model: str = "tiny.en"
    whisper_language: str | None = None
    models_dir: str | None = None  # where reassembled model files are kept (under the data dir)
    max_pages: int = 2000  # pages (PDF, TIFF) read from one document; the rest is refused with a reason
    max_chunks: int = 20000  # passages kept from one document; the rest is dropped with a recorded warning
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parsed:
    """A parsed and chunked file, ready to embed."""

    kind: str
    file_type: str
    title: str | None
    author: str | None
    created_at: str | None
    modified_at: str | None
    meta: dict[str, Any]
    text: str
    chunks: list[Chunk]


@dataclass
class Failed:
    error: str


Outcome = Parsed | Failed
RegistryFactory = Callable[[ParseConfig], ParserRegistry]


def parse_file(registry: ParserRegistry, chunker: Chunker, path: Path) -> Outcome:
    """Parse and chunk one file; every expected failure becomes a Failed with a readable reason."""
    try:
        parser, file_type = registry.for_path(path)
        doc = parser.parse(path, file_type)
        text, chunks = chunker.chunk(doc.elements)
    except IngestError as exc:
        return Failed(str(exc))
    except MemoryError:
        return Failed("out of memory while parsing: the file is too large or malformed")
    except RecursionError:
        return Failed("the file's structure is nested too deeply to parse")
    except Exception as exc:  # a parser bug on odd input must not stop the run
        log.debug("parse of %s failed", path, exc_info=True)
        return Failed(f"could not parse: {type(exc).__name__}: {exc}")
    return Parsed(
        kind=doc.kind, file_type=file_type, title=doc.title, author=doc.author, created_at=doc.created_at,
        modified_at=doc.modified_at, meta=doc.meta, text=text, chunks=chunks,
    )


# -- worker process state -------------------------------------------------------------------------
_worker: tuple[ParserRegistry, Chunker] | None = None


def _init_worker(config: ParseConfig, factory: RegistryFactory) -> None:
    global _worker
    from kb.models import offline_environment

    offline_environment()
    # Parsers yield the CPU to the embedder: torch's threads stall badly when a core is taken from
    # them mid-batch, so overlapping at equal priority is slower than not overlapping at all.
    with contextlib.suppress(OSError):
        os.nice(10)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(config.threads)
    counter: TokenCounter
    if config.tokenizer_dir:
        from kb.embedding import Tokenizer

        counter = Tokenizer(Path(config.tokenizer_dir)).count
    else:
        counter = _word_count
    _worker = (factory(config), Chunker(counter, config.max_tokens, config.target_tokens))


def _word_count(texts: Any) -> list[int]:
    return [len(t.split()) for t in texts]


def _warm() -> None:
    assert _worker is not None
    _worker[0].warm_up()


def _work(path: str) -> Outcome:
    assert _worker is not None
    return parse_file(*_worker, Path(path))


class ParseService:
    """Runs parse jobs inline or in a pool of worker processes, surviving crashes and hangs."""

    def __init__(
        self, config: ParseConfig, factory: RegistryFactory, *, workers: int, timeout_s: float,
        chunker: Chunker | None = None,
    ) -> None:
        self.config = config
        self.factory = factory
        self.workers = workers
        self.timeout_s = timeout_s
        self._pool: ProcessPoolExecutor | None = None
        self._inline: tuple[ParserRegistry, Chunker] | None = None
        self._inline_chunker = chunker

    def registry(self) -> ParserRegistry:
        """A registry in this process, for cheap questions such as 'is this type supported?'."""
        return self._inline_state()[0]

    def _inline_state(self) -> tuple[ParserRegistry, Chunker]:
        if self._inline is None:
            chunker = self._inline_chunker
            if chunker is None:
                from kb.embedding import Tokenizer

                counter = (
                    Tokenizer(Path(self.config.tokenizer_dir)).count if self.config.tokenizer_dir else _word_count
                )
                chunker = Chunker(counter, self.config.max_tokens, self.config.target_tokens)
            self._inline = (self.factory(self.config), chunker)
        return self._inline

    def warm_up(self) -> None:
        """Start workers and load parser libraries ahead of the first file (a service does this once)."""
        if self.workers == 0:
            self._inline_state()[0].warm_up()
            return
        if self._pool is None:
            self._pool = self._new_pool()
        for f in [self._pool.submit(_warm) for _ in range(self.workers)]:
            f.result()

    def _still_reporting(self, path: Path) -> bool:
        """Did the parser of path report progress within the timeout? (See kb.progress.)"""
        if not self.config.progress_db:
            return False
        from kb.progress import ProgressBoard

        board = ProgressBoard(self.config.progress_db)
        try:
            last = board.last_update(str(path))
        finally:
            board.close()
        return last is not None and time.time() - last < self.timeout_s

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent may hold torch's thread pools, which do not survive a fork.
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(self.config, self.factory),
        )

    def close(self) -> None:
        """Let idle workers exit cleanly (a stuck one was already killed by run())."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        procs = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in procs:  # a worker still busy with an abandoned file is not waited for long
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()

    def _kill_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def run(self, paths: Iterator[Path]) -> Iterator[tuple[Path, Outcome]]:
        """Parse paths as they come, yielding (path, outcome) in completion order.

        Pulls lazily from `paths`, keeping at most workers+2 jobs in flight so a slow consumer (the
        embedder) applies back-pressure and a hang can be pinned to the oldest job.
        """
        if self.workers == 0:
            registry, chunker = self._inline_state()
            for p in paths:
                yield p, parse_file(registry, chunker, p)
            return
        queue: deque[tuple[Path, int]] = deque()  # (path, attempts so far)
        inflight: dict[Future[Outcome], tuple[Path, int]] = {}
        order: deque[Future[Outcome]] = deque()
        source_done = False
        last_progress = time.monotonic()
        while True:
            while not source_done and len(queue) + len(inflight) < self.workers + 2:
                nxt = next(paths, None)
                if nxt is None:
                    source_done = True
                else:
                    queue.append((nxt, 0))
            # A retried job (it was in a pool that crashed) runs alone, so a second crash is its own.
            while queue and len(inflight) < self.workers + 2:
                solo_running = any(a > 0 for _, a in inflight.values())
                if solo_running or (queue[0][1] > 0 and inflight):
                    break
                if self._pool is None:
                    self._pool = self._new_pool()
                path, attempts = queue.popleft()
                fut = self._pool.submit(_work, str(path))
                inflight[fut] = (path, attempts)
                order.append(fut)
            if not inflight:
                if source_done and not queue:
                    return
                continue
            done, _ = wait(list(inflight), timeout=1.0, return_when=FIRST_COMPLETED)
            crashed: list[tuple[Path, int]] = []
            for fut in done:
                path, attempts = inflight.pop(fut)
                order.remove(fut)
                try:
                    outcome = fut.result()
                except BrokenProcessPool:
                    crashed.append((path, attempts))
                    continue
                yield path, outcome
                last_progress = time.monotonic()  # time spent by the consumer is not the parser's
            if crashed:
                crashed += list(inflight.values())
                inflight.clear()
                order.clear()
                self._kill_pool()
                last_progress = time.monotonic()
                for path, attempts in reversed(crashed):
                    if attempts > 0:
                        yield path, Failed("the parser crashed on this file (a worker process died)")
                    else:
                        queue.appendleft((path, 1))
                continue
            if inflight and time.monotonic() - last_progress > self.timeout_s:
                if self._still_reporting(inflight[order[0]][0]):
                    continue  # slow, not stuck: an hour of audio reports progress as it goes
                oldest = order.popleft()
                path, _ = inflight.pop(oldest)
                log.warning("parse of %s timed out after %.0f s", path, self.timeout_s)
                for job in inflight.values():
                    queue.appendleft(job)
                inflight.clear()
                order.clear()
                self._kill_pool()
                last_progress = time.monotonic()
                yield path, Failed(f"parsing took longer than {self.timeout_s:.0f} s and was stopped")
