"""Job handlers for one source: ingest it, forget it; and the folder scan that produces such jobs.

Each operation is safe to repeat and to run beside others: the catalog decides (content claims, the
source's recorded size, time and hash), never an in-memory list of one run.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.parsers.base import ParserRegistry, ProgressFn, Source
from ingest.parsing import Failed, Parsed, SourceParser
from ingest.scan import Scanner
from ingest.store import Interrupted, Store
from kb.catalog import DOC_EMPTY, DOC_INDEXED, SRC_EMPTY, SRC_INDEXED, Catalog, Link
from kb.errors import IndexMismatchError
from kb.jobs import Defer, Done, Fail, Handoff, Job, JobResult
from kb.paths import display, from_uri

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What a handler gets besides the job: progress reporting, the stop signal, its thread's parser."""

    progress: ProgressFn
    stopping: Callable[[], bool]
    stop_event: Any  # threading.Event set when work in flight must be abandoned
    parser: SourceParser | None = None


def file_hash(path: Path, progress: ProgressFn | None = None) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
            done += len(block)
            if progress is not None and size > 64 << 20:
                progress("hashing", done, size)
    return h.hexdigest()


class IngestHandler:
    """`ingest`: bring the catalog in line with one file (parse, embed, store, or record why not)."""

    def __init__(
        self, catalog: Catalog, store: Store, registry: Callable[[], ParserRegistry], *, max_file_bytes: int,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self._registry = registry
        self.max_file_bytes = max_file_bytes

    def __call__(self, job: Job, ctx: JobContext) -> JobResult:
        result = self._ingest(job, ctx)
        if isinstance(result, Fail) and job.uri is not None and "tag" in job.payload:
            self.catalog.tag_source(job.uri, job.payload["tag"])  # a failure is listed under its folder's tag
        return result

    def _ingest(self, job: Job, ctx: JobContext) -> JobResult:
        assert job.uri is not None
        uri = job.uri
        path = from_uri(uri)
        force = bool(job.payload.get("force"))
        src = self.catalog.source(uri)
        # the watched folder's tag, set by whoever queued the job; jobs without one keep the source's
        tag = job.payload.get("tag", src.tag if src is not None else None)
        try:
            st = path.stat()
        except FileNotFoundError:
            if src is not None:  # gone before we got to it: the library follows the folder
                self.store.forget([uri])
                return Done("removed")
            return self._fail(uri, None, None, "no such file", transient=False)
        except OSError as exc:
            return self._fail(uri, None, None, f"cannot read the file: {exc.strerror or exc}", transient=True)
        size, mtime_ns = st.st_size, st.st_mtime_ns
        if not path.is_file():
            return self._fail(uri, size, mtime_ns, "not a regular file", transient=False)
        if size > self.max_file_bytes:
            return self._fail(
                uri, size, mtime_ns,
                f"file is {size / 2**20:.0f} MiB, over the {self.max_file_bytes / 2**20:.0f} MiB limit "
                "(setting max_file_mb)", transient=False,
            )
        if size == 0:
            return self._fail(uri, size, mtime_ns, "the file is empty (0 bytes)", transient=False)
        source = Source(uri=uri, name=path.name, path=path)
        if not self._registry().supports(source):
            ext = path.suffix.lower() or "(none)"
            return self._fail(uri, size, mtime_ns, f"unsupported file type {ext}: not ingested", transient=False)
        try:
            h = file_hash(path, ctx.progress)
        except OSError as exc:
            return self._fail(uri, size, mtime_ns, f"cannot read the file: {exc.strerror or exc}", transient=True)
        link = Link(uri, "file", size, mtime_ns, tag=tag)
        existed = src is not None and src.doc_id is not None
        if not force and src is not None and src.content_hash == h and src.status in (SRC_INDEXED, SRC_EMPTY):
            self.catalog.touch_source(uri, size=size, mtime_ns=mtime_ns)
            return Done("unchanged")
        doc = self.catalog.document_by_hash(h)
        if doc is not None and doc.status in (DOC_INDEXED, DOC_EMPTY) and not force:
            self.store.link(doc, [link])  # the same content is already in the library: no parse, no embedding
            return Done(self._outcome(existed, doc.status == DOC_EMPTY))
        holder = self.catalog.claim_content(h, job.id)
        if holder is not None:
            return Defer(0.5, f"waiting for job {holder}, which is reading the same content")
        doc = self.catalog.document_by_hash(h)  # the previous holder may have finished just now
        if doc is not None and doc.status in (DOC_INDEXED, DOC_EMPTY) and not force:
            self.catalog.release_claims(job.id)
            self.store.link(doc, [link])
            return Done(self._outcome(existed, doc.status == DOC_EMPTY))
        resumable = self.catalog.resumable_document(h, job.id)
        if resumable is not None:  # this job was killed while writing it: finish, embedding only what is missing
            self.store.finish(resumable.id, h, [link], progress=ctx.progress)
            return Done(self._outcome(existed, not resumable.chunk_count))
        if doc is not None and doc.status not in (DOC_INDEXED, DOC_EMPTY):
            self.store.purge([doc.id])  # left half-written by a job that is gone
        try:
            self.store.index.check_model()  # before any parsing is spent
        except IndexMismatchError:
            if self.catalog.get_meta("reindex_target") is None:
                raise
            self.catalog.release_claims(job.id)
            return Defer(30.0, "waiting for the reindex to the new embedding model to finish")
        assert ctx.parser is not None
        outcome = ctx.parser.parse(source, ctx.progress, ctx.stop_event)
        if isinstance(outcome, Failed):
            self.catalog.release_claims(job.id)
            return self._fail(uri, size, mtime_ns, outcome.error, transient=outcome.transient)
        if not isinstance(outcome, Parsed):  # stopped: the service is shutting down
            self.catalog.release_claims(job.id)
            return Defer(0.0, "interrupted by a stop; will run again")
        if outcome.warnings:
            link = Link(uri, "file", size, mtime_ns, warning="; ".join(outcome.warnings)[:2000], tag=tag)
        parsed = outcome

        def store() -> Done | Defer:
            # On the runner's store thread: this worker is already parsing its next source.
            try:
                self.store.write(
                    job_id=job.id, content_hash=h, parsed=parsed, links=[link], progress=ctx.progress, size=size,
                    primary_mtime_ns=mtime_ns, should_stop=ctx.stopping,
                )
            except Interrupted:
                return Defer(0.0, "interrupted by a stop; resumes where it stopped")
            return Done(self._outcome(existed, not parsed.chunks))

        return Handoff(store)

    @staticmethod
    def _outcome(existed: bool, empty: bool) -> str:
        return "empty" if empty else "updated" if existed else "added"

    def _fail(self, uri: str, size: int | None, mtime_ns: int | None, error: str, *, transient: bool) -> Fail:
        self.catalog.record_failure(uri, "file", error, size=size, mtime_ns=mtime_ns)
        return Fail(error, transient=transient)


class ForgetHandler:
    """`forget`: drop a source (or every source under a folder) and whatever only it referenced."""

    def __init__(self, catalog: Catalog, store: Store) -> None:
        self.catalog = catalog
        self.store = store

    def __call__(self, job: Job, ctx: JobContext) -> JobResult:
        assert job.uri is not None
        uris = list(self.catalog.sources_under(job.uri.rstrip("/") + "/"))
        if self.catalog.source(job.uri) is not None:
            uris.append(job.uri)
        self.store.forget(uris)
        return Done("removed" if uris else "unchanged")


class ScanHandler:
    """`scan`: walk files and folders and queue a job for each change (into the requester's batch)."""

    def __init__(self, scanner: Scanner, jobs: Any) -> None:
        self.scanner = scanner
        self.jobs = jobs

    def __call__(self, job: Job, ctx: JobContext) -> JobResult:
        p = job.payload
        started = time.monotonic()
        paths = [from_uri(u) for u in p.get("paths", [])]
        report = self.scanner.scan(
            paths, batch=p.get("batch"), force=bool(p.get("force")), mirror=bool(p.get("mirror", True))
        )
        info = report.to_dict()
        info["scan_seconds"] = round(time.monotonic() - started, 3)
        if p.get("batch"):
            self.jobs.update_batch(p["batch"], info)
        log.info("scanned %s: %d files, %d queued", ", ".join(display(str(x)) for x in paths), report.files,
                 report.queued)
        return Done("scanned")

