"""Job handlers for one source: ingest it, forget it; and the folder scan that produces such jobs.

Each operation is safe to repeat and to run beside others: the catalog decides (content claims, the
source's recorded size, time and hash), never an in-memory list of one run.
"""

from __future__ import annotations

import hashlib
import logging
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ingest.parsers.base import AttachmentRef, ParserRegistry, ProgressFn, Source
from ingest.parsing import Failed, Parsed, SourceParser
from ingest.scan import Scanner, lane_for
from ingest.store import Interrupted, Store
from kb.blobs import BlobStore
from kb.catalog import DOC_EMPTY, DOC_INDEXED, SRC_EMPTY, SRC_INDEXED, Catalog, DocumentRecord, Link
from kb.errors import IndexMismatchError
from kb.jobs import LANE_FAST, Defer, Done, Fail, Handoff, Job, JobQueue, JobResult
from kb.paths import attachment_uri, display, from_uri

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


# Source types: a file in a folder, a message from a mail account, a file inside a message (or .eml/.msg).
FILE = "file"
MAIL = "mail"
ATTACHMENT = "attachment"
# Messages inside messages are unpacked this deep; the attachments of one nested deeper are recorded, unread.
MAX_NESTING = 3
# File types whose documents may list attachments (checked again when unchanged, in case of a crash).
CONTAINER_TYPES = frozenset({"eml", "msg"})


@dataclass
class _Input:
    """What an ingest job reads, wherever its bytes live (a file, a raw message blob, an attachment blob)."""

    source: Source
    source_type: str
    size: int
    mtime_ns: int | None
    tag: str | None
    depth: int  # 0 for files and messages; a container's attachment is one deeper than it

    def link(self, warning: str | None = None) -> Link:
        return Link(self.source.uri, self.source_type, self.size, self.mtime_ns, parent_uri=self.source.parent_uri,
                    warning=warning, tag=self.tag)


class IngestHandler:
    """`ingest`: bring the catalog in line with one source (parse, embed, store, or record why not).

    The job says what to read: a file (a path uri, no source_type), a message (`source_type` "mail": the
    raw bytes in the mail blob store), or an attachment (`source_type` "attachment": bytes a parser saved in
    the parts blob store, with its container as `parent`). From the hash on it is one path for all three.
    A container's attachments (see ingest.parsers.attachments) are queued as jobs of their own once it is
    stored, and those it no longer has are forgotten.
    """

    def __init__(
        self, catalog: Catalog, store: Store, registry: Callable[[], ParserRegistry], *, max_file_bytes: int,
        jobs: JobQueue | None = None, mail_blobs: BlobStore | None = None, parts: BlobStore | None = None,
        slow_lane_bytes: int = 64 << 20, max_nesting: int = MAX_NESTING,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self._registry = registry
        self.max_file_bytes = max_file_bytes
        self.jobs = jobs
        self.mail_blobs = mail_blobs
        self.parts = parts
        self.slow_lane_bytes = slow_lane_bytes
        self.max_nesting = max_nesting

    def __call__(self, job: Job, ctx: JobContext) -> JobResult:
        assert job.uri is not None
        source_type = job.payload.get("source_type")
        payload = job.payload
        if source_type is None:
            # e.g. `kb reindex --reparse` asks again by uri alone: a message or attachment it has seen is
            # read from its saved bytes again (their blob name is their content hash), never as a path
            src = self.catalog.source(job.uri)
            if src is not None and src.source_type in (MAIL, ATTACHMENT) and src.content_hash:
                source_type = src.source_type
                payload = {
                    "source_type": source_type, "blob": src.content_hash, "tag": src.tag, "parent": src.parent_uri,
                    "name": job.uri.rpartition("#")[2].partition("/")[2] or None, "depth": self._depth(src.uri),
                    **job.payload,
                }
        source_type = source_type or FILE
        if source_type == FILE:
            got = self._file_input(job)
        elif source_type in (MAIL, ATTACHMENT):
            got = self._blob_input(job, source_type, payload)
        else:
            return Fail(f"unknown source type {source_type!r}", transient=False)
        if not isinstance(got, _Input):
            return got
        return self._ingest(job, ctx, got, bool(payload.get("force")))

    def _file_input(self, job: Job) -> _Input | JobResult:
        assert job.uri is not None
        uri = job.uri
        # the watched folder's tag, set by whoever queued the job; a job without one keeps the source's
        if "tag" in job.payload:
            tag = job.payload["tag"]
        else:
            known = self.catalog.source(uri)
            tag = known.tag if known is not None else None
        path = from_uri(uri)
        try:
            st = path.stat()
        except FileNotFoundError:
            if self.catalog.source(uri) is not None:  # gone before we got to it: the library follows the folder
                self.store.forget([uri])
                return Done("removed")
            return self._fail(uri, FILE, None, None, "no such file", transient=False, tag=tag)
        except OSError as exc:
            return self._fail(uri, FILE, None, None, f"cannot read the file: {exc.strerror or exc}", transient=True,
                              tag=tag)
        size, mtime_ns = st.st_size, st.st_mtime_ns
        tomb = self.catalog.forgotten(uri).get(uri)
        if tomb is not None:
            if tomb == (size, mtime_ns) and not job.payload.get("force"):
                return Done("forgotten")  # someone forgot these bytes: they stay out until the file changes
            self.catalog.unforget([uri])
        if not path.is_file():
            return self._fail(uri, FILE, size, mtime_ns, "not a regular file", transient=False, tag=tag)
        if size > self.max_file_bytes:
            return self._fail(
                uri, FILE, size, mtime_ns,
                f"file is {size / 2**20:.0f} MiB, over the {self.max_file_bytes / 2**20:.0f} MiB limit "
                "(setting max_file_mb)", transient=False, tag=tag,
            )
        if size == 0:
            return self._fail(uri, FILE, size, mtime_ns, "the file is empty (0 bytes)", transient=False, tag=tag)
        return _Input(Source(uri=uri, name=path.name, path=path), FILE, size, mtime_ns, tag, 0)

    def _depth(self, uri: str) -> int:
        """How many containers a source is inside (0 for a file or a message)."""
        depth = 0
        src = self.catalog.source(uri)
        while src is not None and src.parent_uri is not None and depth <= self.max_nesting:
            depth += 1
            src = self.catalog.source(src.parent_uri)
        return depth

    def _blob_input(self, job: Job, source_type: str, p: dict[str, Any]) -> _Input | JobResult:
        """A message (the mail watcher saved its raw bytes) or an attachment (a parser saved them)."""
        assert job.uri is not None
        uri, tag = job.uri, p.get("tag")
        parent = p.get("parent") if source_type == ATTACHMENT else None
        size = p.get("size")
        if parent is not None and self.catalog.source(parent) is None:
            # its container was forgotten after this job was queued: nothing to attach it to
            if self.catalog.source(uri) is not None:
                self.store.forget([uri])
            return Done("removed")
        if p.get("error") or not p.get("blob"):
            error = p.get("error") or "the content was not saved"
            return self._fail(uri, source_type, size, None, error, transient=False, parent=parent, tag=tag)
        blobs = self.mail_blobs if source_type == MAIL else self.parts
        if blobs is None:
            return Fail(f"no blob store for {source_type} sources is configured", transient=False)
        try:
            path = blobs.path(str(p["blob"]))
            size = path.stat().st_size
        except ValueError as exc:
            return self._fail(uri, source_type, size, None, str(exc), transient=False, parent=parent, tag=tag)
        except OSError as exc:
            error = f"the saved content is missing ({exc.strerror or exc}): fetch or ingest its container again"
            return self._fail(uri, source_type, size, None, error, transient=False, parent=parent, tag=tag)
        # the parser is chosen by the name: a raw message is RFC 822 (.eml); an attachment has its own
        name = "message.eml" if source_type == MAIL else str(p.get("name") or "attachment")
        source = Source(uri=uri, name=name, path=path, parent_uri=parent)
        return _Input(source, source_type, size, None, tag, int(p.get("depth") or 0))

    def _ingest(self, job: Job, ctx: JobContext, got: _Input, force: bool) -> JobResult:
        uri, source = got.source.uri, got.source
        size, mtime_ns = got.size, got.mtime_ns
        src = self.catalog.source(uri)
        if not self._registry().supports(source):
            ext = source.file_type or "(none)"
            ext = f".{ext}" if source.file_type else ext
            return self._fail_input(got, f"unsupported file type {ext}: not ingested", transient=False)
        try:
            h = file_hash(source.path, ctx.progress) if source.path is not None else _data_hash(source.data)
        except OSError as exc:
            return self._fail_input(got, f"cannot read the file: {exc.strerror or exc}", transient=True)
        link = got.link()
        existed = src is not None and src.doc_id is not None
        if not force and src is not None and src.content_hash == h and src.status in (SRC_INDEXED, SRC_EMPTY):
            if mtime_ns is not None:
                self.catalog.touch_source(uri, size=size, mtime_ns=mtime_ns)
            if src.doc_id is not None and (got.source_type != FILE or source.file_type in CONTAINER_TYPES):
                # a crash may have come between storing a container and queuing its attachments
                self._sync_children(job, got, self.catalog.document(src.doc_id), missing_only=True)
            return Done("unchanged")
        doc = self.catalog.document_by_hash(h)
        if doc is not None and doc.status in (DOC_INDEXED, DOC_EMPTY) and not force:
            self.store.link(doc, [link])  # the same content is already in the library: no parse, no embedding
            self._sync_children(job, got, doc)
            return Done(self._outcome(existed, doc.status == DOC_EMPTY))
        holder = self.catalog.claim_content(h, job.id)
        if holder is not None:
            return Defer(0.5, f"waiting for job {holder}, which is reading the same content")
        doc = self.catalog.document_by_hash(h)  # the previous holder may have finished just now
        if doc is not None and doc.status in (DOC_INDEXED, DOC_EMPTY) and not force:
            self.catalog.release_claims(job.id)
            self.store.link(doc, [link])
            self._sync_children(job, got, doc)
            return Done(self._outcome(existed, doc.status == DOC_EMPTY))
        resumable = self.catalog.resumable_document(h, job.id)
        if resumable is not None:  # this job was killed while writing it: finish, embedding only what is missing
            self.store.finish(resumable.id, h, [link], progress=ctx.progress)
            self._sync_children(job, got, self.catalog.document(resumable.id))
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
            return self._fail_input(got, outcome.error, transient=outcome.transient)
        if not isinstance(outcome, Parsed):  # stopped: the service is shutting down
            self.catalog.release_claims(job.id)
            return Defer(0.0, "interrupted by a stop; will run again")
        if outcome.warnings:
            link = got.link(warning="; ".join(outcome.warnings)[:2000])
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
            self._queue_children(job, got, parsed.attachments)
            return Done(self._outcome(existed, not parsed.chunks))

        return Handoff(store)

    # -- attachments ----------------------------------------------------------------------------------
    def _sync_children(self, job: Job, got: _Input, doc: DocumentRecord | None, *, missing_only: bool = False) -> None:
        """Queue the attachments recorded on a container's document (content seen before, or a resumed job)."""
        raw = (doc.meta.get("attachments") if doc is not None else None) or []
        refs = []
        for d in raw:
            try:
                refs.append(AttachmentRef.from_dict(d))
            except (KeyError, TypeError, ValueError):
                continue  # a listing from before attachments were saved: nothing to queue
        if not refs and missing_only:
            return
        self._queue_children(job, got, refs, missing_only=missing_only)

    def _queue_children(
        self, job: Job, got: _Input, refs: list[AttachmentRef], *, missing_only: bool = False
    ) -> None:
        """One ingest job per attachment (one that was not saved carries the reason, recorded when it runs),
        and a forget job for each attachment the container no longer has (an edited .eml): in one
        transaction, so a crash leaves all or none of it. They join the container's unfinished batches, so
        `kb ingest` of a folder waits for the attachments too."""
        if self.jobs is None:
            return
        parent = got.source.uri
        # only its attachments: other sources hang off a container too (a recording's summary)
        known = {u: s for u, s in self.catalog.children(parent).items() if s.source_type == ATTACHMENT}
        wanted: dict[str, AttachmentRef] = {attachment_uri(parent, r.index, r.filename): r for r in refs}
        if missing_only:
            wanted = {u: r for u, r in wanted.items() if u not in known and self.jobs.by_key(f"src:{u}") is None}
            known = {}
        if not wanted and not known:
            return
        with self.jobs.transaction() as db:
            batches = [r[0] for r in db.execute(
                "SELECT batch_id FROM batch_jobs WHERE job_id=? AND settled=0", (job.id,)
            )] or [None]
            for uri, ref in wanted.items():
                payload: dict[str, Any] = {
                    "source_type": ATTACHMENT, "blob": ref.blob, "name": ref.filename, "parent": parent,
                    "tag": got.tag, "depth": got.depth + 1, "size": ref.size,
                }
                error = ref.error
                if error is None and got.depth >= self.max_nesting:
                    error = f"not read: attachments of messages nested more than {self.max_nesting} deep"
                if error is None and ref.blob is None:
                    error = "the attachment was not saved"
                if error is not None:
                    payload.update(blob=None, error=error)
                lane = lane_for(Path(ref.filename), ref.size, self.slow_lane_bytes) if error is None else LANE_FAST
                for batch in batches:
                    self.jobs.enqueue(db, "ingest", uri, payload=payload, lane=lane, batch=batch)
            for uri in known:
                if uri not in wanted:
                    for batch in batches:
                        self.jobs.enqueue(db, "forget", uri, batch=batch)

    @staticmethod
    def _outcome(existed: bool, empty: bool) -> str:
        return "empty" if empty else "updated" if existed else "added"

    def _fail_input(self, got: _Input, error: str, *, transient: bool) -> Fail:
        return self._fail(got.source.uri, got.source_type, got.size, got.mtime_ns, error, transient=transient,
                          parent=got.source.parent_uri, tag=got.tag)

    def _fail(
        self, uri: str, source_type: str, size: int | None, mtime_ns: int | None, error: str, *, transient: bool,
        parent: str | None = None, tag: str | None = None,
    ) -> Fail:
        self.catalog.record_failure(uri, source_type, error, size=size, mtime_ns=mtime_ns, parent_uri=parent,
                                    tag=tag)
        return Fail(error, transient=transient)


def _data_hash(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


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
        if job.payload.get("keep_out"):
            # Someone forgot it (not a file gone from its folder: one deleted and written again must come back).
            # A file still on disk (in a watched folder, the next scan would read it again) is remembered with
            # its stat, so it stays out until its bytes change; recorded first, so a crash in between leaves
            # the tombstone and the job, which runs again.
            files = [u for u in uris if (src := self.catalog.source(u)) is not None and src.source_type == FILE]
            self.catalog.remember_forgotten(still_there(files))
        self.store.forget(uris)
        return Done("removed" if uris else "unchanged")


def still_there(uris: Sequence[str]) -> list[tuple[str, int, int]]:
    """The files (sources of type file) among `uris` still on disk, with their size and mtime."""
    out = []
    for u in uris:
        try:
            st = from_uri(u).stat()
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((u, st.st_size, st.st_mtime_ns))
    return out


class ScanHandler:
    """`scan`: walk files and folders and queue a job for each change (into the requester's batch)."""

    def __init__(
        self, scanner: Scanner, jobs: Any, on_scanned: Callable[[list[Path]], None] | None = None
    ) -> None:
        self.scanner = scanner
        self.jobs = jobs
        self.on_scanned = on_scanned  # e.g. the watched folders' "last sync" on the health board

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
        if self.on_scanned is not None:
            self.on_scanned(paths)
        return Done("scanned")

