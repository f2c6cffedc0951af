"""The job runner: worker threads per lane, a heartbeat, and a graceful stop.

Lanes keep long work from blocking short work: 'fast' (documents), 'slow' (recordings, big files) and
'maint' (reindex, repair) each have their own threads, and each parsing thread owns its own parser
process. A graceful stop lets work in flight finish for a grace period, then abandons it (the parser
process is killed) and puts the job back in the queue; kill -9 loses nothing either, since the job stays
'running' in the catalog and is taken again at the next start.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ingest.handlers import JobContext
from kb.errors import KbError
from kb.jobs import Defer, Done, Fail, Handoff, Job, JobQueue, JobResult
from kb.paths import display

log = logging.getLogger(__name__)

Handler = Callable[[Job, JobContext], JobResult]


class Runner:
    """Runs queued jobs until stopped. With `batches`, only those batches' jobs (a one-off CLI command,
    plus what other commands ask of it meanwhile: `add_batch`)."""

    def __init__(
        self, jobs: JobQueue, handlers: Mapping[str, Handler], lanes: Mapping[str, tuple[Sequence[str], int]],
        parser_factory: Callable[[str], Any], *, batches: Sequence[str] | None = None, heartbeat_s: float = 10.0,
        progress_every_s: float = 0.5,
    ) -> None:
        self.jobs = jobs
        self.handlers = handlers
        self.lanes = dict(lanes)
        self.parser_factory = parser_factory
        self._batches: set[str] | None = None if batches is None else set(batches)
        self.heartbeat_s = heartbeat_s
        self.progress_every_s = progress_every_s
        self._stopping = threading.Event()  # claim nothing new
        self._abort = threading.Event()  # abandon work in flight
        self._threads: list[threading.Thread] = []
        self._inflight: dict[int, Job] = {}
        self._lock = threading.Lock()
        self._parsers: list[Any] = []
        # Parsed documents waiting to be embedded and stored: small, so parsing runs at most one ahead.
        self._handoffs: queue.Queue[tuple[Job, Callable[[], JobResult], float] | None] = queue.Queue(maxsize=1)

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> None:
        for lane, (claims, n) in self.lanes.items():
            for i in range(n):
                t = threading.Thread(
                    target=self._loop, args=(lane, tuple(claims)), name=f"kb-{lane}-{i}", daemon=True
                )
                t.start()
                self._threads.append(t)
        hb = threading.Thread(target=self._heartbeat, name="kb-heartbeat", daemon=True)
        hb.start()
        self._store = threading.Thread(target=self._store_loop, name="kb-store", daemon=True)
        self._store.start()
        self._threads.append(hb)

    def stop(self, grace_s: float = 10.0) -> None:
        """Claim nothing more; let work in flight finish for grace_s, then abandon and requeue it."""
        self._stopping.set()
        self.jobs.notify()
        deadline = time.monotonic() + grace_s
        while self.busy() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._abort.set()
        for t in self._threads:
            t.join(timeout=30)
        self._handoffs.put(None)  # after the lane threads: nothing more can be handed off
        # The slice being written finishes (a stop is honoured between slices): never two writers at once.
        self._store.join()
        for parser in self._parsers:
            close = getattr(parser, "close", None)
            if close is not None:
                close()

    def batches(self) -> list[str] | None:
        """The batches this runner works for (None: every job)."""
        with self._lock:
            return None if self._batches is None else sorted(self._batches)

    def add_batch(self, batch: str) -> None:
        """Take on another batch (a second terminal's command, asked of this one-off owner)."""
        with self._lock:
            if self._batches is not None:
                self._batches.add(batch)
        self.jobs.notify()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def busy(self) -> bool:
        with self._lock:
            return bool(self._inflight)

    def inflight(self) -> list[Job]:
        with self._lock:
            return list(self._inflight.values())

    # -- work -------------------------------------------------------------------------------------
    def _loop(self, lane: str, claims: tuple[str, ...]) -> None:
        """One worker thread: claim a job of its lanes, run it, record the result; its own parser process."""
        parser: Any = None
        while not self._stopping.is_set():
            try:
                job = self.jobs.claim(claims, batches=self.batches())
            except (sqlite3.Error, KbError) as exc:  # a locked or failing catalog: wait, do not die
                log.error("cannot claim a job: %s", exc)
                self._stopping.wait(2.0)
                continue
            if job is None:
                due = self.jobs.next_due(claims)
                wait = 1.0 if due is None else max(0.01, min(1.0, due - self.jobs.clock()))
                self.jobs.wait(wait, self._stopping.is_set)
                continue
            if parser is None and job.action == "ingest":
                parser = self.parser_factory(lane)
                if parser is not None:
                    self._parsers.append(parser)
            with self._lock:
                self._inflight[job.id] = job
            handed_off = False
            try:
                handed_off = self._run(job, parser)
            finally:
                if not handed_off:
                    with self._lock:
                        self._inflight.pop(job.id, None)

    def _store_loop(self) -> None:
        """Finish handed-off jobs (embed, write) one at a time, in order; on abort, requeue what waits."""
        while True:
            item = self._handoffs.get()
            if item is None:
                return
            job, work, started = item
            try:
                if self._abort.is_set():
                    result: JobResult = Defer(0.0, "interrupted by a stop; will run again")
                else:
                    result = self._guard(job, work)
                self._finish(job, result, started)
            finally:
                with self._lock:
                    self._inflight.pop(job.id, None)

    def _guard(self, job: Job, work: Callable[[], JobResult]) -> JobResult:
        """Run handler code, turning every exception into a failure of this job only."""
        try:
            return work()
        except KbError as exc:
            return Fail(str(exc), transient=True)
        except sqlite3.Error as exc:
            return Fail(f"catalog error: {exc}", transient=True)
        except Exception as exc:  # a bug or a Chroma failure must cost one job, never the service
            log.exception("job %s (%s %s) failed", job.id, job.action, display(job.uri or ""))
            return Fail(f"internal error: {type(exc).__name__}: {exc}", transient=True)

    def _run(self, job: Job, parser: Any) -> bool:
        """Run a job's handler; returns True when its end was handed to the store thread."""
        handler = self.handlers.get(job.action)
        last = [0.0]

        def progress(stage: str, done: float, total: float | None = None) -> None:
            now = time.monotonic()
            if now - last[0] < self.progress_every_s and (total is None or done < total):
                return
            last[0] = now
            # progress is advisory: a busy catalog must not fail the work
            with contextlib.suppress(sqlite3.Error):
                self.jobs.progress(job.id, stage, done, total)

        ctx = JobContext(progress=progress, stopping=self._abort.is_set, stop_event=self._abort, parser=parser)
        started = time.monotonic()
        result: JobResult
        if handler is None:
            result = Fail(f"unknown job action '{job.action}'")
        else:
            result = self._guard(job, lambda: handler(job, ctx))
        if isinstance(result, Handoff):
            self._handoffs.put((job, result.work, started))  # blocks while the store thread is behind
            return True
        self._finish(job, result, started)
        return False

    def _finish(self, job: Job, result: JobResult, started: float) -> None:
        if self._abort.is_set() and isinstance(result, Fail) and result.transient:
            result = Defer(0.0, "interrupted by a stop; will run again")
        try:
            self._record(job, result)
        except sqlite3.Error as exc:  # the job stays 'running' and is taken again: never lost
            log.error("cannot record the end of job %s: %s", job.id, exc)
        log.info(
            "job %s %s %s: %s in %.2f s", job.id, job.action, display(job.uri or ""), _describe(result),
            time.monotonic() - started,
        )
        return

    def _record(self, job: Job, result: JobResult) -> None:
        assert not isinstance(result, Handoff)
        if isinstance(result, Done):
            self.jobs.complete(job.id, result.outcome)
        elif isinstance(result, Defer):
            self.jobs.defer(job.id, result.delay_s, result.note)
        else:
            self.jobs.fail(job.id, result.error, transient=result.transient)

    def _heartbeat(self) -> None:
        while not self._abort.wait(self.heartbeat_s):
            ids = [j.id for j in self.inflight()]
            try:
                self.jobs.heartbeat(ids)
            except sqlite3.Error as exc:
                log.warning("heartbeat failed: %s", exc)


def _describe(result: JobResult) -> str:
    if isinstance(result, Handoff):
        return "handed off"
    if isinstance(result, Done):
        return result.outcome
    if isinstance(result, Defer):
        return f"deferred ({result.note})"
    return f"failed: {result.error}"
