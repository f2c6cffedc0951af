"""The `summarize` job: a meeting's summary written as a document of kind `summary`, linked to the meeting.

The summary is computed by retrieval.summary and stored through the normal Store (catalog rows, then
vectors): one chunk per bullet, carrying the bullet's times, so a search hit in a summary points into the
recording. Its source is `<meeting uri>#summary` with the meeting's source as parent, so forgetting the
meeting (or the message it came in) forgets the summary, and moving it moves the summary along (as a
container's attachments move with it). The structured summary (sections, bullets, times,
source chunk ids) is kept in the document's meta for the e-mails that will send it.

It lives in the composition root because it joins two layers: retrieval (the summary) and ingest (the store).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from ingest.chunking import Chunk, embed_text
from ingest.parsing import Parsed
from ingest.store import Interrupted, Store
from kb.catalog import DOC_INDEXED, Catalog, DocumentRecord, Link
from kb.errors import IndexMismatchError
from kb.jobs import LANE_SLOW, Defer, Done, Fail, Handoff, Job, JobQueue, JobResult
from kb.llm import LanguageModel
from kb.paths import display
from retrieval.summary import SUMMARIZER_VERSION, Summary, SummaryStopped, bullet_line, summarize

log = logging.getLogger(__name__)

SUMMARY = "summary"  # the kind, file type and source type of summary documents
MEETING = "meeting"
ACTION = "summarize"
PRIORITY = 1  # after the transcripts waiting in the same lane: searchable recordings first


def summary_uri(meeting_uri: str) -> str:
    """A summary's source: a part of its recording, as an attachment is a part of its message."""
    return f"{meeting_uri}#{SUMMARY}"


def job_key(doc_id: int) -> str:
    return f"{SUMMARY}:{doc_id}"


def summary_docs(catalog: Catalog, meeting: DocumentRecord) -> list[DocumentRecord]:
    """The summary documents hanging off a meeting's sources."""
    ids = [s.doc_id for p in meeting.paths for s in catalog.children(p).values()
           if s.source_type == SUMMARY and s.doc_id is not None]
    return list(catalog.documents(ids).values())


def is_current(catalog: Catalog, meeting: DocumentRecord) -> bool:
    """Whether the meeting has a summary of its present transcript (same content, same indexing)."""
    return any(d.meta.get("meeting_hash") == meeting.content_hash
               and d.meta.get("meeting_indexed_at") == meeting.indexed_at for d in summary_docs(catalog, meeting))


def queue_summary(
    jobs: JobQueue, db: Any, doc_id: int, uri: str | None, *, force: bool, batch: str | None = None
) -> None:
    """Queue (inside the caller's transaction) the summary job of one meeting document; `uri` (the meeting's
    first source) is what status and failures show."""
    jobs.enqueue(db, ACTION, uri, key=job_key(doc_id), payload={"doc_id": doc_id, "force": force}, lane=LANE_SLOW,
                 priority=PRIORITY, batch=batch)


def meetings(catalog: Catalog) -> list[DocumentRecord]:
    """Every indexed meeting document."""
    rows = catalog._query("SELECT id FROM documents WHERE kind=? AND status=? ORDER BY id", (MEETING, DOC_INDEXED))
    docs = catalog.documents(int(r["id"]) for r in rows)
    return [docs[i] for i in sorted(docs)]


class AfterIngest:
    """Wraps the ingest handler: once a source's document is stored and it is a meeting without a current
    summary, its summary job is queued, joining the ingest job's waiting batches (so `kb ingest` of a
    recording also waits for its summary, and a one-off command makes it). Any outcome but a removal
    checks, so a crash between storing the transcript and queuing the summary is mended by the rerun."""

    def __init__(self, handler: Callable[[Job, Any], JobResult], catalog: Catalog, jobs: JobQueue) -> None:
        self.handler = handler
        self.catalog = catalog
        self.jobs = jobs

    def __call__(self, job: Job, ctx: Any) -> JobResult:
        result = self.handler(job, ctx)
        if isinstance(result, Handoff):
            work = result.work
            return Handoff(lambda: self._then(job, work()))
        return self._then(job, result)

    def _then(self, job: Job, result: Any) -> Any:
        if isinstance(result, Done) and result.outcome in ("added", "updated", "unchanged") and job.uri:
            try:
                self.queue_if_needed(job)
            except Exception as exc:  # the transcript is stored: a missing summary must not fail it
                log.warning("could not queue the summary of %s: %s", display(job.uri), exc)
        return result

    def queue_if_needed(self, job: Job) -> None:
        assert job.uri is not None
        src = self.catalog.source(job.uri)
        if src is None or src.doc_id is None:
            return
        doc = self.catalog.document(src.doc_id)
        if doc is None or doc.kind != MEETING or doc.status != DOC_INDEXED or is_current(self.catalog, doc):
            return
        with self.jobs.transaction() as db:
            batches = [r[0] for r in db.execute(
                "SELECT batch_id FROM batch_jobs WHERE job_id=? AND settled=0", (job.id,)
            )] or [None]
            for batch in batches:
                queue_summary(self.jobs, db, doc.id, doc.paths[0] if doc.paths else None, force=False, batch=batch)


class SummarizeHandler:
    """`summarize`: (re)make the summary document of one meeting document (payload doc_id, force)."""

    def __init__(self, catalog: Catalog, store: Store, model: Callable[[], LanguageModel | None]) -> None:
        self.catalog = catalog
        self.store = store
        self.model = model  # asked at each job: the model may be configured, or fail to load, later

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.store.embedder.count_tokens(texts)

    @property
    def max_tokens(self) -> int:
        return self.store.embedder.max_tokens

    def __call__(self, job: Job, ctx: Any) -> JobResult:
        doc = self.catalog.document(int(job.payload.get("doc_id", 0)))
        if doc is None or not doc.paths or doc.status != DOC_INDEXED:
            return Done("skipped")  # forgotten or replaced since it was queued
        if doc.kind != MEETING:
            return Fail(f"{display(doc.paths[0])} is not a recording (kind {doc.kind}): nothing to summarize")
        if not job.payload.get("force") and is_current(self.catalog, doc):
            return Done("unchanged")
        try:
            self.store.index.check_model()
        except IndexMismatchError:
            if self.catalog.get_meta("reindex_target") is None:
                raise
            return Defer(30.0, "waiting for the reindex to the new embedding model to finish")
        model = self.model()
        try:
            summary = summarize(
                self.catalog.chunks_of(doc.id), title=doc.title or display(doc.paths[0]),
                duration_s=doc.meta.get("duration_s"), model=model, progress=ctx.progress, should_stop=ctx.stopping,
            )
        except SummaryStopped:
            return Defer(0.0, "interrupted by a stop; will run again")
        return self.write(job, doc, summary)

    def write(self, job: Job, meeting: DocumentRecord, summary: Summary) -> JobResult:
        """Store the summary as a document of its own and drop older summaries of this meeting."""
        text = summary.to_markdown()
        primary = meeting.paths[0]
        h = hashlib.sha256(f"{SUMMARY}\n{meeting.content_hash}\n{text}".encode()).hexdigest()
        parsed = Parsed(
            kind=SUMMARY, file_type=SUMMARY, title=f"Summary: {summary.title}", author=summary.model,
            created_at=meeting.created_at, modified_at=None, text=text, chunks=self.chunks(summary, text),
            parser_version=f"{SUMMARY}/{SUMMARIZER_VERSION}",
            meta={
                "meeting_doc": meeting.id, "meeting_uri": primary, "meeting_hash": meeting.content_hash,
                "meeting_indexed_at": meeting.indexed_at, "method": summary.method, "model": summary.model,
                "summary": summary.to_dict(),
            },
        )
        uri = summary_uri(primary)
        link = Link(uri, SUMMARY, size=len(text.encode()), parent_uri=primary, tag=meeting.tags[0] if meeting.tags
                    else None)
        try:
            self.store.write(job_id=job.id, content_hash=h, parsed=parsed, links=[link], size=len(text.encode()))
        except Interrupted:
            return Defer(0.0, "interrupted by a stop; resumes where it stopped")
        stale = [s.uri for p in meeting.paths for s in self.catalog.children(p).values()
                 if s.source_type == SUMMARY and s.uri != uri]
        if stale:  # a summary made under the meeting's old path (it moved since)
            self.store.forget(stale)
        return Done("summarized" if summary.model else "extractive")

    def chunks(self, summary: Summary, text: str) -> list[Chunk]:
        """One chunk per bullet (section heading in front for the model), with the bullet's times; a bullet
        longer than the embedding model reads is cut at words, never truncated by the model.

        The chunks have the role `summary`: search weighs them less than the transcript's own words (as it
        does quoted mail), since a bullet repeats what the recording says; `--kind summary` finds them alone.
        """
        out: list[Chunk] = []
        pos = 0
        for section in summary.sections:
            heading = f"Summary: {summary.title[:80]} > {section.title}"
            for b in section.bullets:
                line = bullet_line(b, times=False)
                start = text.find(line, pos)
                start = pos if start < 0 else start
                pos = start + len(line)
                for piece in self._fit(line, heading):
                    out.append(Chunk(
                        text=piece, section=heading, char_start=start, char_end=start + len(line),
                        t_start=b.t_start, t_end=b.t_end, n_tokens=self.count_tokens([embed_text(piece, heading)])[0],
                        role=SUMMARY,
                    ))
        return out

    def _fit(self, line: str, heading: str) -> list[str]:
        if self.count_tokens([embed_text(line, heading)])[0] <= self.max_tokens:
            return [line]
        pieces: list[str] = []
        words = line.split()
        cur: list[str] = []
        for w in words:
            if cur and self.count_tokens([embed_text(" ".join([*cur, w]), heading)])[0] > self.max_tokens:
                pieces.append(" ".join(cur))
                cur = []
            cur.append(w)
        if cur:
            pieces.append(" ".join(cur))
        return pieces
