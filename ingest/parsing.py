"""Parsing and chunking of one source, inline or in a parser child process.

A hostile file may hang a parser, crash it (native code in PDFium, lxml, pandoc) or balloon its memory (a
zip bomb). In a ParserProcess that costs one file, recorded as failed with a readable reason, and a fresh
child takes the next one. Each job worker thread of the service owns one ParserProcess; InlineParser does
the same work in the calling process (workers=0: fast unit tests, no isolation).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from ingest.chunking import CHUNKER_VERSION, Chunk, Chunker, TokenCounter
from ingest.errors import IngestError, ParserCrashed
from ingest.parsers.base import AttachmentRef, ParserRegistry, ProgressFn, Source, no_progress

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
    parts_dir: str | None = None  # blob store for attachments a parser saves (None: they are only listed)
    max_attachment_bytes: int = 25 * 2**20  # larger attachments are listed with a reason, not saved
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parsed:
    """A parsed and chunked source, ready to embed."""

    kind: str
    file_type: str
    title: str | None
    author: str | None
    created_at: str | None
    modified_at: str | None
    meta: dict[str, Any]
    text: str
    chunks: list[Chunk]
    parser_version: str  # e.g. "pdf/2+chunker/2": documents made by older versions can be found and redone
    warnings: list[str] = field(default_factory=list)  # shown with the document: what was left out and why
    attachments: list[AttachmentRef] = field(default_factory=list)  # files inside, each to be ingested


@dataclass
class Failed:
    """The source could not be parsed; `error` is shown to the user against it.

    `transient` says whether trying the same bytes again later may succeed: a timeout, a crash or an
    unreadable file may; a corrupt, encrypted or unsupported file (an IngestError) will not.
    """

    error: str
    transient: bool = False


@dataclass
class Stopped:
    """The parse was abandoned because the service is stopping: requeue the job without counting an attempt."""

    reason: str = "parsing was abandoned because the service is stopping"


Outcome = Parsed | Failed | Stopped
RegistryFactory = Callable[[ParseConfig], ParserRegistry]

OUT_OF_MEMORY = "out of memory while parsing: the file is too large or malformed"
CRASHED = "the parser crashed on this file (a worker process died)"


def memory_error(memory_mb: int) -> str:
    """The reason recorded when a parse went over the memory ceiling."""
    return f"the parser used more than {memory_mb} MiB of memory and was stopped (setting parse_memory_mb)"


def parse_source(
    registry: ParserRegistry, chunker: Chunker, source: Source, progress: ProgressFn, config: ParseConfig
) -> Outcome:
    """Parse and chunk one source in this process; every expected failure becomes a Failed with a reason."""
    try:
        parser, file_type = registry.for_source(source)
        doc = parser.parse(source, file_type, progress)
        progress("chunking", 0, None)  # tokenizing a book takes a while; the caller's stall timer sees it
        text, chunks = chunker.chunk(doc.elements)
    except IngestError as exc:
        return Failed(str(exc))
    except MemoryError:
        return Failed(OUT_OF_MEMORY)
    except RecursionError:
        return Failed("the file's structure is nested too deeply to parse")
    except OSError as exc:
        if exc.errno is None:  # PIL and friends raise bare OSErrors for bad data: that is the file, not the disk
            log.debug("parse of %s failed", source.name, exc_info=True)
            return Failed(f"could not parse: {type(exc).__name__}: {exc}")
        return Failed(f"could not read the file: {exc.strerror or exc}", transient=True)
    except Exception as exc:  # a parser bug on odd input must not stop the run
        log.debug("parse of %s failed", source.name, exc_info=True)
        return Failed(f"could not parse: {type(exc).__name__}: {exc}")
    warnings = [str(w) for w in doc.meta.get("warnings", [])]
    if len(chunks) > config.max_chunks:
        warnings.append(
            f"only the first {config.max_chunks:,} passages were indexed (the document has {len(chunks):,}; "
            "setting max_chunks)"
        )
        chunks = chunks[: config.max_chunks]
    if doc.attachments:
        doc.meta["attachments"] = [a.to_dict() for a in doc.attachments]
    return Parsed(
        kind=doc.kind, file_type=file_type, title=doc.title, author=doc.author, created_at=doc.created_at,
        modified_at=doc.modified_at, meta=doc.meta, text=text, chunks=chunks,
        parser_version=f"{registry.version_of(parser)}+chunker/{CHUNKER_VERSION}", warnings=warnings,
        attachments=list(doc.attachments),
    )


def build_chunker(config: ParseConfig) -> Chunker:
    """The chunker a parser process uses: the embedding model's tokenizer, or a word count without one."""
    counter: TokenCounter
    if config.tokenizer_dir:
        from kb.embedding import Tokenizer

        counter = Tokenizer(Path(config.tokenizer_dir)).count
    else:
        counter = _word_count
    return Chunker(counter, config.max_tokens, config.target_tokens)


def _word_count(texts: Any) -> list[int]:
    return [len(t.split()) for t in texts]


class SourceParser(Protocol):
    """What a job worker needs: InlineParser and ParserProcess both fit."""

    @property
    def pid(self) -> int | None: ...

    def warm_up(self, stop: threading.Event | None = None) -> None: ...

    def parse(
        self, source: Source, progress: ProgressFn = no_progress, stop: threading.Event | None = None
    ) -> Outcome: ...

    def close(self) -> None: ...


class _Abandoned(BaseException):
    """Raised through an inline parser's progress call when stop is set (BaseException: parsers that catch
    Exception to report a bad file must not swallow it)."""


class InlineParser:
    """Parses in the calling process: no isolation, no deadline, no memory ceiling (workers=0, unit tests).

    `stop` is honoured at the parser's next progress report. Safe to share between threads only if the
    registry's parsers are.
    """

    def __init__(self, config: ParseConfig, factory: RegistryFactory, chunker: Chunker | None = None) -> None:
        self.config = config
        self._factory = factory
        self._chunker = chunker
        self._registry: ParserRegistry | None = None

    @property
    def pid(self) -> int | None:
        """None: there is no child process."""
        return None

    def registry(self) -> ParserRegistry:
        """The registry, built on first use (also for cheap questions such as 'is this type supported?')."""
        if self._registry is None:
            self._registry = self._factory(self.config)
        return self._registry

    def _chunker_now(self) -> Chunker:
        if self._chunker is None:
            self._chunker = build_chunker(self.config)
        return self._chunker

    def warm_up(self, stop: threading.Event | None = None) -> None:
        """Load parser libraries ahead of the first file."""
        self.registry().warm_up()

    def parse(
        self, source: Source, progress: ProgressFn = no_progress, stop: threading.Event | None = None
    ) -> Outcome:
        """Parse and chunk one source here and now."""
        if stop is not None and stop.is_set():
            return Stopped()

        def report(stage: str, done: float, total: float | None = None) -> None:
            if stop is not None and stop.is_set():
                raise _Abandoned
            progress(stage, done, total)

        try:
            return parse_source(self.registry(), self._chunker_now(), source, report, self.config)
        except _Abandoned:
            return Stopped()

    def close(self) -> None:
        """Nothing to release."""


# -- the parser child process ---------------------------------------------------------------------------
_POLL_S = 0.2  # how often a waiting parent checks memory, the deadlines and the stop event
_PROGRESS_EVERY_S = 0.1  # the child forwards at most this often (the parent only needs signs of life)
_CLOSE_WAIT_S = 5.0
_CHILD_CODE = "import sys, json; sys.path[:] = json.loads(sys.argv[1]); import ingest.parsing as p; p._child_main()"
_CHILD_FD_ENV = "KB_PARSER_FD"


@dataclass(frozen=True)
class _Boot:
    """The first message to a new child: how to build its registry, and its memory limit."""

    config: ParseConfig
    factory: bytes  # pickled, so its module (and the parser libraries) loads after the limits are set
    data_limit: int  # bytes of RLIMIT_DATA; 0 for none


def _data_limit_mb(memory_mb: int, threads: int) -> int:
    """RLIMIT_DATA for a child with the given RSS ceiling: a backstop for allocations faster than the poll.

    RLIMIT_DATA counts virtual data, not resident memory, and runs well above RSS: every native thread's
    stack (8 MiB each: ctranslate2 and OpenMP start two per core) plus malloc arenas. Measured with
    unstructured+spaCy, tokenizers, PDFium, Tesseract and faster-whisper (base, 16 threads) loaded and used:
    VmData 1.38 GiB for 1.09 GiB RSS. Too tight a limit does not give a clean MemoryError there: libgomp
    aborts the process ("Thread creation failed") and ctranslate2 raises "mkl_malloc: failed to allocate
    memory". So the allowance is generous, and the RSS poll stays the ceiling the user sets.
    """
    if memory_mb <= 0:
        return 0
    return memory_mb + memory_mb // 4 + 256 + 16 * max(1, threads)


class ParserProcess:
    """One parser child process, used for one source at a time, recycled when it fails or grows.

    The child (a fresh interpreter, not a fork: the service holds torch's thread pools, which do not survive
    a fork) builds its registry and chunker once and then parses the sources it is sent, reporting progress
    as it goes. The parent enforces, per parse: a stall timeout (no progress for stall_timeout_s; a long
    recording that keeps reporting is not stopped), an absolute limit (max_seconds), and a memory ceiling
    (the child's RSS, polled every 0.2 s, plus RLIMIT_DATA in the child as a backstop). A child that was
    killed or died is replaced on the next parse; one that grew past recycle_mb is replaced after the file.
    memory_mb or recycle_mb of 0 turns that check off.

    Not meant to be shared: one worker thread uses one ParserProcess. Calls from several threads are
    serialised by a lock; close() from another thread abandons a running parse (it returns Stopped).

    The child is started with subprocess rather than multiprocessing's spawn: spawn re-imports the parent's
    __main__ in the child (the `kb` console script, hence the CLI and the composition root), and cannot set
    the thread variables before the parser libraries load or start the child in its own process group.
    """

    def __init__(
        self, config: ParseConfig, factory: RegistryFactory, *, memory_mb: int, stall_timeout_s: float,
        max_seconds: float, recycle_mb: int,
    ) -> None:
        self.config = config
        self.factory = factory
        self.memory_mb = memory_mb
        self.stall_timeout_s = stall_timeout_s
        self.max_seconds = max_seconds
        self.recycle_mb = recycle_mb
        self._data_limit_mb = _data_limit_mb(memory_mb, config.threads or os.cpu_count() or 1)
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._data_mb = 0.0  # the most virtual data the child had in this parse: a memory death or a crash?

    def __enter__(self) -> ParserProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The child's process id, or None when no child is running."""
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def rss_mb(self) -> float:
        """The running child's resident memory in MiB (0 when there is none)."""
        pid = self.pid
        return _memory_mb(pid)[0] if pid is not None else 0.0

    # -- public operations ---------------------------------------------------------------------------------
    def warm_up(self, stop: threading.Event | None = None) -> None:
        """Start the child and load the parser libraries now rather than inside the first file's parse.

        Raises what the child's registry raised while warming (e.g. a missing model package), or
        ParserCrashed when the child died or stalled doing it.
        """
        with self._lock:
            started = time.monotonic()
            early = self._ensure_child(started, no_progress, stop)
            if isinstance(early, Stopped):
                return
            if early is not None:
                raise ParserCrashed(f"the parser process could not start: {early.error}")
            try:
                assert self._conn is not None
                self._conn.send(("warm",))
            except OSError:
                self._kill()
                raise ParserCrashed(f"the parser process could not start: {CRASHED}") from None
            kind, payload = self._await("warmed", started, no_progress, stop)
            if kind == "warmed":
                if payload is not None:
                    raise payload
                return
            outcome = self._failure(kind, payload)
            if isinstance(outcome, Failed):
                raise ParserCrashed(f"the parser process failed while loading its libraries: {outcome.error}")

    def parse(
        self, source: Source, progress: ProgressFn = no_progress, stop: threading.Event | None = None
    ) -> Outcome:
        """Parse and chunk one source in the child, forwarding its progress to `progress` in this thread.

        Returns Stopped promptly (the child is killed) when `stop` is set or close() is called meanwhile.
        """
        with self._lock:
            started = time.monotonic()
            try:
                return self._parse(source, progress, stop, started)
            except BaseException:
                self._kill()  # e.g. the progress callback raised: the child must not go on with the file
                raise

    def close(self) -> None:
        """End the child cleanly; kill it if it does not exit within a few seconds.

        Safe from another thread while a parse runs: that parse returns Stopped. The next parse after close()
        starts a new child.
        """
        self._closing.set()
        try:
            with self._lock:
                proc, conn = self._proc, self._conn
                if proc is not None and conn is not None and proc.poll() is None:
                    with contextlib.suppress(OSError, ValueError):
                        conn.send(None)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(_CLOSE_WAIT_S)
                self._kill()
        finally:
            self._closing.clear()

    # -- internals ---------------------------------------------------------------------------------------------
    def _parse(self, source: Source, progress: ProgressFn, stop: threading.Event | None, started: float) -> Outcome:
        if (stop is not None and stop.is_set()) or self._closing.is_set():
            return Stopped()  # before starting a child for nothing
        self._data_mb = 0.0
        early = self._ensure_child(started, progress, stop)
        if early is not None:
            return early
        assert self._conn is not None
        try:
            self._conn.send(("parse", source))
        except OSError:  # died while idle, after the liveness check: not this file's fault, try a fresh one
            self._kill()
            early = self._ensure_child(started, progress, stop)
            if early is not None:
                return early
            try:
                self._conn.send(("parse", source))
            except OSError:
                self._kill()
                return Failed(CRASHED, transient=True)
        kind, payload = self._await("done", started, progress, stop)
        if kind != "done":
            outcome = self._failure(kind, payload)
            if isinstance(outcome, Failed):
                log.warning("parse of %s failed: %s", source.name, outcome.error)
            return outcome
        outcome = payload
        if isinstance(outcome, Failed) and outcome.error == OUT_OF_MEMORY and self._data_limit_mb:
            # MemoryError under RLIMIT_DATA is the ceiling, reached between two polls. The heap may be
            # left fragmented and large: the child is replaced.
            self._kill()
            return Failed(memory_error(self.memory_mb))
        rss = self.rss_mb()
        if 0 < self.recycle_mb < rss:
            log.info("parser process %s holds %.0f MiB after %s: replacing it", self.pid, rss, source.name)
            self._kill()  # idle, nothing to flush: a kill is instant where a clean exit tears down libraries
        assert isinstance(outcome, Parsed | Failed)
        return outcome

    def _ensure_child(
        self, started: float, progress: ProgressFn, stop: threading.Event | None
    ) -> Failed | Stopped | None:
        """Start a child unless one is running and idle; None when it is ready, else why it is not."""
        if self._proc is not None and self._proc.poll() is None:
            return None
        self._kill()
        self._start()
        kind, payload = self._await("ready", started, progress, stop)
        if kind == "ready":
            return None
        return self._failure(kind, payload)

    def _start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        if self.config.threads > 0:  # before any library loads: OpenBLAS and OpenMP read these once
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.config.threads)
        env[_CHILD_FD_ENV] = str(child_sock.fileno())
        path = json.dumps([p for p in sys.path if isinstance(p, str)])
        try:
            # Own session: a kill reaches the Tesseract and pandoc processes the parser started, and a
            # Ctrl-C in the terminal reaches only the parent, which decides what to stop. Its stdout goes to
            # stderr: a library printing there must not mix into the CLI's output.
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_CODE, path], env=env, pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL, stdout=_stderr_fd(), start_new_session=True,
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        conn = Connection(parent_sock.detach())
        self._proc, self._conn, self._data_mb = proc, conn, 0.0
        with contextlib.suppress(OSError):  # it died at once: _await sees it
            conn.send(_Boot(self.config, pickle.dumps(self.factory), self._data_limit_mb << 20))
        log.debug("started parser process %s", proc.pid)

    def _await(
        self, want: str, started: float, progress: ProgressFn, stop: threading.Event | None
    ) -> tuple[str, Any]:
        """Wait for the child's `want` message, forwarding progress; or say why waiting ended.

        Returns (want, payload), or (reason, detail) with reason one of stopped, stalled, overtime, memory,
        crashed, init_failed. The child is still running only in the first case.
        """
        proc, conn = self._proc, self._conn
        assert proc is not None and conn is not None
        last = time.monotonic()
        next_poll = 0.0
        while True:
            if (stop is not None and stop.is_set()) or self._closing.is_set():
                return "stopped", None
            now = time.monotonic()
            if now - last >= self.stall_timeout_s:
                return "stalled", None
            if now - started >= self.max_seconds:
                return "overtime", None
            if now >= next_poll:
                rss, data = _memory_mb(proc.pid)
                self._data_mb = max(self._data_mb, data)
                if 0 < self.memory_mb < rss:
                    return "memory", None
                if proc.poll() is not None and not conn.poll():
                    return "crashed", None  # dead, yet no EOF: a helper it started still holds the socket
                next_poll = now + _POLL_S
            timeout = min(_POLL_S, self.stall_timeout_s - (now - last), self.max_seconds - (now - started))
            if not wait([conn], max(0.0, timeout)):
                continue  # a child that died without a word shows as EOF on its end of the socket
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                return "crashed", None
            last = time.monotonic()
            kind = msg[0]
            if kind == "progress":
                progress(msg[1], msg[2], msg[3])
            elif kind == want:
                return kind, msg[1] if len(msg) > 1 else None
            elif kind == "init_failed":
                return kind, msg[1]

    def _failure(self, kind: str, detail: Any) -> Failed | Stopped:
        """Kill the child and turn why waiting ended into an outcome."""
        data_mb = self._data_mb
        self._kill()
        if kind == "stopped":
            return Stopped()
        if kind == "stalled":
            return Failed(f"parsing stopped after {_duration(self.stall_timeout_s)} without progress", transient=True)
        if kind == "overtime":
            return Failed(f"parsing took longer than the {_duration(self.max_seconds)} limit", transient=True)
        if kind == "memory":
            return Failed(memory_error(self.memory_mb))
        if kind == "init_failed":
            return Failed(f"the parser process could not start: {detail}", transient=True)
        # Native code that hits RLIMIT_DATA often aborts instead of raising MemoryError.
        if self._data_limit_mb and data_mb >= 0.9 * self._data_limit_mb:
            return Failed(memory_error(self.memory_mb))
        return Failed(CRASHED, transient=True)

    def _kill(self) -> None:
        """Kill the child and everything it started (its process group), and reap it."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return
        # The child leads its own process group (start_new_session). Killed even when the child is already
        # gone: a helper it started (Tesseract) may still be running, and keeps the group id from reuse.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            proc.wait(_CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:  # stuck in the kernel (D state): nothing more to do from here
            log.warning("parser process %s did not exit after SIGKILL", proc.pid)


def _stderr_fd() -> int:
    """Where the child's stdout goes: our stderr, or nowhere when a daemon has closed it."""
    try:
        os.fstat(2)
    except OSError:
        return subprocess.DEVNULL
    return 2


def _duration(seconds: float) -> str:
    """600 -> '600 s', 21600 -> '6 h', 5400 -> '1.5 h'."""
    if seconds >= 3600:
        hours = seconds / 3600
        return f"{hours:.0f} h" if hours == int(hours) else f"{hours:.1f} h"
    return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:g} s"


_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def _memory_mb(pid: int) -> tuple[float, float]:
    """(resident MiB of pid and all its descendants, virtual data MiB of pid itself); zeros once it is gone.

    Read from /proc (no psutil in the runtime). Descendants count: Tesseract's memory is the parse's too.
    """
    rss = data = 0.0
    todo = [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            with open(f"/proc/{p}/statm", "rb") as f:
                fields = f.read().split()
        except OSError:
            continue
        rss += int(fields[1]) * _PAGE_MB
        if p == pid:
            data = int(fields[5]) * _PAGE_MB
        todo.extend(_children(p))
    return rss, data


def _children(pid: int) -> list[int]:
    """Child process ids of pid, from every thread's children list (Linux CONFIG_PROC_CHILDREN)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _child_main() -> None:
    """The child's loop: build the registry and chunker once, then parse what the parent sends."""
    fd = int(os.environ.pop(_CHILD_FD_ENV))
    os.set_inheritable(fd, False)  # helper programs must not hold the parent's socket open
    conn = Connection(fd)
    try:
        boot: _Boot = conn.recv()
    except (EOFError, OSError):
        return  # the parent gave up on us before we started
    _exit_with_parent()
    if boot.data_limit:
        _limit_data(boot.data_limit)
    try:
        registry, chunker = _init_child(boot)
    except BaseException as exc:
        log.debug("parser process start failed", exc_info=True)
        with contextlib.suppress(OSError):
            conn.send(("init_failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready",))
    last_sent = 0.0
    last_stage = ""

    def progress(stage: str, done: float, total: float | None = None) -> None:
        nonlocal last_sent, last_stage
        now = time.monotonic()
        if stage == last_stage and now - last_sent < _PROGRESS_EVERY_S and done != total:
            return
        last_sent, last_stage = now, stage
        conn.send(("progress", stage, done, total))

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if msg is None:
            return
        if msg[0] == "warm":
            try:
                registry.warm_up()
            except Exception as exc:
                conn.send(("warmed", _picklable(exc)))
                continue
            conn.send(("warmed", None))
        elif msg[0] == "parse":
            try:
                outcome = parse_source(registry, chunker, msg[1], progress, boot.config)
                try:
                    conn.send(("done", outcome))
                except (pickle.PicklingError, TypeError, AttributeError) as exc:  # e.g. odd objects in meta
                    conn.send(("done", Failed(f"could not parse: the result cannot be returned ({exc})")))
            except OSError:
                return  # the parent is gone (a progress report or the result could not be sent)


def _init_child(boot: _Boot) -> tuple[ParserRegistry, Chunker]:
    from kb.models import offline_environment

    offline_environment()
    # Parsers yield the CPU to the embedder: torch's threads stall badly when a core is taken from
    # them mid-batch, so overlapping at equal priority is slower than not overlapping at all. At the
    # lowest priority a parse runs in the embedder's gaps (tokenising, storing, waiting for the next
    # document); when there is nothing to embed it has the machine to itself anyway.
    with contextlib.suppress(OSError):
        os.nice(19)
    factory: RegistryFactory = pickle.loads(boot.factory)
    return factory(boot.config), build_chunker(boot.config)


def _limit_data(limit: int) -> None:
    """Cap the child's virtual data (see _data_limit_mb); malloc then fails instead of eating the machine."""
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))


def _exit_with_parent() -> None:
    """Kill this child's process group when the parent dies: in its own session, nothing else would."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="kb-parent-watch", daemon=True).start()


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc

