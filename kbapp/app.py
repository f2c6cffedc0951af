"""The composition root: builds every component from the settings, once, and wires them together.

The App is also the library's one interface for people (the `Library` protocol in server/api.py): the
CLI calls it directly when it owns the data directory, and through the service's API when a service does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ingest.handlers import ForgetHandler, IngestHandler, ScanHandler
from ingest.moves import MoveHandler
from ingest.parsers.base import ParserRegistry
from ingest.parsers.registry import default_registry
from ingest.parsing import InlineParser, ParseConfig, ParserProcess
from ingest.recovery import RecoveryReport, RepairHandler, recover
from ingest.reindex import ReindexHandler, drop_stale_collections
from ingest.scan import Scanner
from ingest.store import Store
from kb.blobs import BlobStore
from kb.catalog import Catalog, DocumentRecord
from kb.embedding import Embedder, SentenceTransformerEmbedder
from kb.errors import ConfigError, IndexMismatchError, KbError
from kb.index import VectorIndex, VectorStore
from kb.jobs import DONE, FAILED, HELD, LANE_FAST, LANE_MAINT, LANE_SLOW, QUEUED, RUNNING, JobQueue
from kb.models import offline_environment
from kb.paths import absolute, display, to_uri
from kb.settings import Settings
from kbapp.folders import FolderJobs, tagger
from kbapp.runner import Runner
from kbapp.summaries import AfterIngest, SummarizeHandler, meetings, queue_summary
from kbapp.views import LibraryViews
from retrieval.filters import Filters
from retrieval.search import Searcher
from watchers.folders import FolderWatcher
from watchers.health import HealthBoard

if TYPE_CHECKING:  # the IMAP client loads only when mail is wanted; the answer model only when asked
    from kb.llm import LanguageModel
    from kbapp.mailout import MailOut
    from watchers.health import HealthBoard
    from watchers.mail import MailWatcher

log = logging.getLogger(__name__)


class App(LibraryViews):
    """Holds the long-lived components of one kb instance. Heavy pieces are built on first use."""

    def __init__(
        self, settings: Settings, embedder: Embedder | None = None, llm: LanguageModel | None = None
    ) -> None:
        offline_environment()
        self._llm = llm
        self._llm_lock = threading.Lock()
        self.settings = settings
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.catalog = Catalog(settings.catalog_path)
        self.jobs = JobQueue(
            self.catalog, retry_base_s=settings.job_retry_base_s, max_attempts=settings.job_max_attempts
        )
        self._embedder = embedder
        self._index: VectorIndex | None = None
        self._index_lock = threading.Lock()
        self._runner: Runner | None = None
        self._warm_parsers: dict[str, list[Any]] = {}
        self.role = "library"  # "service" for `kb watch`, "one-off" for a command owning the directory
        self.health = HealthBoard()  # what the watchers report (folders, mail accounts)
        self.folder_tag = tagger(settings.inbox)
        self.loading: dict[str, str] = {}  # model role -> loading | ready | failed: reason (the status page)

    def warm_up(self, lanes: Sequence[str] = (LANE_FAST,)) -> None:
        """Load the embedding model and start parser processes now, so the first file is not slow."""
        self.loading.setdefault("embedding", "loading")
        try:
            self.embedder.embed(["warm up"])
        except Exception as exc:
            self.loading["embedding"] = f"failed: {describe_error(exc)}"
            raise
        self.loading["embedding"] = "ready"
        self.index()
        if self.role == "service" and self.settings.llm_preload:
            self.loading["answer"] = "loading"
            threading.Thread(target=self._preload_llm, name="kb-llm-load", daemon=True).start()
        if self.settings.workers == 0:
            self.inline_parser.warm_up()
            return
        for lane in lanes:
            n = self.settings.workers if lane == LANE_FAST else self.settings.slow_workers
            for _ in range(n):
                parser = self.new_parser(lane)
                parser.warm_up()
                with self._index_lock:
                    self._warm_parsers.setdefault(lane, []).append(parser)

    # -- components -------------------------------------------------------------------------------
    @cached_property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            s = self.settings
            self._embedder = SentenceTransformerEmbedder(
                s.embed_model, batch_size=s.embed_batch_size, threads=s.cpu_threads()
            )
        return self._embedder

    def summary_model(self) -> LanguageModel | None:
        """The model that condenses meeting summaries: the answer model unless summary_llm is off; None when
        there is no usable one (the extractive summary is made then, and the reason logged)."""
        if self._llm is not None or self.settings.summary_llm:
            try:
                return self.language_model()
            except KbError as exc:
                log.warning("meeting summaries stay extractive: %s", exc)
        return None

    @cached_property
    def vectors(self) -> VectorStore:
        return VectorStore.open(path=self.settings.chroma_dir, url=self.settings.chroma_url)

    def index(self) -> VectorIndex:
        """The current collection; a finished reindex swaps it, and every caller picks up the new one."""
        with self._index_lock:
            if self._index is None:
                name = self.catalog.get_meta("collection")
                assert name is not None  # set by the catalog's migrations
                e = self.embedder
                index = self.vectors.collection(name, e.name, e.dim)
                # No model check here: deleting vectors works whatever model made them. Embedding into or
                # searching this collection checks (VectorIndex.check_model) and says to run `kb reindex`.
                if self.catalog.get_meta("embed_model") is None:
                    self.catalog.set_meta("embed_model", e.name)
                    self.catalog.set_meta("embed_dim", str(e.dim))
                self._index = index
            return self._index

    def _swap_index(self, new: VectorIndex) -> None:
        with self._index_lock:
            self._index = new

    @cached_property
    def parse_config(self) -> ParseConfig:
        s = self.settings
        tokenizer_dir = getattr(self.embedder, "model_dir", None)
        parsers = max(1, s.workers + s.slow_workers)
        return ParseConfig(
            tokenizer_dir=str(tokenizer_dir) if tokenizer_dir else None,
            max_tokens=self.embedder.max_tokens,
            target_tokens=s.chunk_tokens,
            max_unpacked_bytes=int(s.max_unpacked_mb * 2**20),
            ocr_languages=s.ocr_languages,
            threads=max(1, s.cpu_threads() // parsers),
            whisper_model=s.whisper_model,
            whisper_language=s.whisper_language,
            models_dir=str(s.models_dir),
            max_pages=s.max_pages,
            max_chunks=s.max_chunks,
            parts_dir=str(s.blobs_dir / "parts"),
            max_attachment_bytes=int(s.mail_max_attachment_mb * 2**20),
        )

    def _chunker(self) -> Any:
        if getattr(self.embedder, "model_dir", None) is None:  # a test embedder: size chunks with its counter
            from ingest.chunking import Chunker

            return Chunker(self.embedder.count_tokens, self.embedder.max_tokens, self.settings.chunk_tokens)
        return None

    @cached_property
    def inline_parser(self) -> InlineParser:
        """Parsing in this process: the registry for cheap questions, and all parsing when workers=0."""
        return InlineParser(self.parse_config, default_registry, chunker=self._chunker())

    def registry(self) -> ParserRegistry:
        return self.inline_parser.registry()

    def new_parser(self, lane: str) -> Any:
        """A parser for one worker thread: its own process (a warmed-up one if there is), or the inline
        parser when workers=0."""
        s = self.settings
        if s.workers == 0:
            return self.inline_parser
        with self._index_lock:
            warm = self._warm_parsers.get(lane)
            if warm:
                return warm.pop()
        return ParserProcess(
            self.parse_config, default_registry, memory_mb=s.parse_memory_mb, stall_timeout_s=s.parse_timeout_s,
            max_seconds=s.parse_max_s, recycle_mb=s.parse_recycle_mb,
        )

    @cached_property
    def store(self) -> Store:
        return Store(self.catalog, self.index, self.embedder)

    @cached_property
    def scanner(self) -> Scanner:
        s = self.settings
        return Scanner(
            self.catalog, self.jobs, slow_lane_bytes=int(s.slow_lane_mb * 2**20),
            mass_delete_ratio=s.mass_delete_ratio, mass_delete_min=s.mass_delete_min, ignore=s.watch_ignore,
            tag_for=self.folder_tag,
        )

    def folder_watcher(self) -> FolderWatcher:
        """The watcher of the inbox folders, queueing jobs for what changes in them (the service starts it)."""
        s = self.settings
        sink = FolderJobs(
            self.jobs, tag_for=self.folder_tag, slow_lane_bytes=int(s.slow_lane_mb * 2**20),
            submit_scan=self._rescan,
        )
        return FolderWatcher(
            s.inbox, sink, self.health, ignore=s.watch_ignore, settle_s=s.watch_settle_s, poll_s=s.watch_poll_s,
            exclude=[s.data_dir],  # a watched folder holding the data directory must not ingest the catalog
        )

    def _rescan(self, paths: Sequence[str]) -> None:
        for p in paths:  # one job per folder: asking again while one is queued does not queue it twice
            self.submit_scan([p], key=f"scan:{to_uri(absolute(Path(p)))}")

    def _scanned(self, paths: list[Path]) -> None:
        """A full scan of a watched folder is its 'last sync' (it compared the whole folder with the library)."""
        done = {absolute(p) for p in paths}
        for folder in self.settings.inbox:
            if absolute(folder.path) in done and self.health.known("folder", str(folder.path)):
                self.health.update("folder", str(folder.path), last_sync=time.time())

    def watch_health(self) -> list[dict[str, Any]]:
        """What the watchers report: each folder's (and mail account's) state, mode and last error."""
        return self.health.snapshot()

    # -- answers ------------------------------------------------------------------------------------
    def language_model(self) -> LanguageModel:
        """The answer model, built once per process: an OpenAI-compatible server when llm_url is set, else a
        GGUF file run here (a packaged model or a path)."""
        with self._llm_lock:
            if self._llm is None:
                s = self.settings
                if s.llm_url:
                    from kb.llm_remote import RemoteModel

                    self._llm = RemoteModel(
                        s.llm_url, model=s.llm_remote_model, api_key=s.llm_api_key, context_tokens=s.llm_context_tokens
                    )
                else:
                    from kb.llm_local import LocalModel
                    from kb.models import llm_model_path

                    path = llm_model_path(s.llm_model, s.models_dir)
                    self._llm = LocalModel(
                        path, context_tokens=s.llm_context_tokens, threads=s.llm_threads or s.cpu_threads(),
                        name=s.llm_model if path.name != s.llm_model else path.stem,
                    )
            return self._llm

    def _preload_llm(self) -> None:
        """Load the answer model's weights now (the service, at start), so the first question does not wait."""
        try:
            load = getattr(self.language_model(), "load", None)
            if load is not None:
                load()
            self.loading["answer"] = "ready"
        except Exception as exc:  # reported again, as one line, to whoever asks a question
            self.loading["answer"] = f"failed: {describe_error(exc)}"
            log.warning("the answer model is not available: %s", describe_error(exc))

    def ask_stream(
        self, question: str, k: int | None = None, kind: str | None = None, file_type: str | None = None,
        tag: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """An answer as JSON events: the passages, the tokens as generated, then the checked answer."""
        from retrieval.answer import answer_stream, to_json

        s = self.settings
        model = self.language_model()

        def search(q: str, n: int) -> list[Any]:
            return self.searcher.search(q, k=n, filters=Filters(kind=kind, file_type=file_type, tag=tag))

        events = answer_stream(
            question, search, model, k=k or s.answer_passages, max_tokens=s.llm_max_tokens,
            min_similarity=s.answer_min_similarity, min_coverage=s.answer_min_coverage,
        )
        for event in events:
            out = to_json(event)
            for p in out.get("passages") or out.get("answer", {}).get("passages") or []:
                _display_hit(p)
            yield out

    def ask(self, question: str, **options: Any) -> dict[str, Any]:
        """The checked answer with its passages (ask_stream's last event), for callers that do not stream."""
        final: dict[str, Any] = {}
        for event in self.ask_stream(question, **options):
            if event["event"] == "answer":
                final = event["answer"]
        return final

    @cached_property
    def searcher(self) -> Searcher:
        return Searcher(self.catalog, self.index, self.embedder)

    @cached_property
    def mail_blobs(self) -> BlobStore:
        """Raw mail messages as fetched (content-addressed), to show, re-parse and take attachments from."""
        return BlobStore(self.settings.blobs_dir / "mail", ".eml")

    def mail_watcher(self, health: HealthBoard | None = None) -> MailWatcher:
        """The IMAP sync of every configured account (the service starts and stops it)."""
        from watchers.mail import MailWatcher

        s = self.settings
        return MailWatcher(
            s.mail, self.catalog, self.jobs, self.mail_blobs, health or self.health,
            max_message_bytes=int(s.mail_max_message_mb * 2**20), slow_lane_bytes=int(s.slow_lane_mb * 2**20),
        )

    def handlers(self) -> dict[str, Any]:
        ingest = IngestHandler(
            self.catalog, self.store, self.registry, max_file_bytes=self.settings.max_file_bytes,
            jobs=self.jobs, mail_blobs=self.mail_blobs, parts=BlobStore(self.settings.blobs_dir / "parts"),
            slow_lane_bytes=int(self.settings.slow_lane_mb * 2**20),
        )
        summarize: Any = SummarizeHandler(self.catalog, self.store, self.summary_model)
        if self.mailout is not None and self.settings.meeting_mail_tags:
            from kbapp.mailout import MeetingMail

            summarize = MeetingMail(summarize, self.mailout)  # a summarized meeting gets its e-mail queued
        return {
            "ingest": AfterIngest(ingest, self.catalog, self.jobs),  # a stored meeting gets its summary queued
            "summarize": summarize,
            "forget": ForgetHandler(self.catalog, self.store),
            "move": MoveHandler(self.catalog, self.store, self.scanner),
            "scan": ScanHandler(self.scanner, self.jobs, on_scanned=self._scanned),
            "repair": RepairHandler(self.catalog, self.store),
            "reindex": ReindexHandler(self.catalog, lambda: self.vectors, self.embedder, self.store, self._swap_index),
        }

    # -- mail out -------------------------------------------------------------------------------
    @cached_property
    def mailout(self) -> MailOut | None:
        """Meeting e-mails, the digest and the outbox sender; None when no SMTP server is configured."""
        if self.settings.smtp is None:
            return None
        from kbapp.mailout import MailOut

        return MailOut(self.settings, self.catalog)

    def start_mailout(self) -> MailOut | None:
        """The service sends mail: the outbox and the digest's schedule run in a thread of their own."""
        if self.mailout is not None:
            self.mailout.start()
        return self.mailout

    def stop_mailout(self) -> None:
        mailout = self.__dict__.get("mailout")
        if mailout is not None:
            mailout.stop()

    def _mail_configured(self) -> MailOut:
        if self.mailout is None:
            raise ConfigError("no SMTP server configured (add an [smtp] table to kb.toml, or set KB_SMTP)")
        return self.mailout

    def send_digest(self) -> dict[str, Any]:
        """`kb digest --now`: queue a digest of what arrived since the last one and send it from here (the
        outbox's sender retries it if the server does not take it now); the entry's state as recorded."""
        from kbapp.mailout import deliver_now

        mailout = self._mail_configured()
        run = mailout.digest_now()
        entry = deliver_now(mailout, run.key)
        return {
            "key": run.key, "state": entry.state if entry else None, "reply": entry.reply if entry else None,
            "error": entry.last_error if entry else None, "recipients": list(entry.recipients) if entry else [],
            "retry_at": entry.next_attempt if entry and entry.state == "queued" else None,
        }

    def retry_outbox(self) -> dict[str, Any]:
        """`kb mail outbox --retry`: failed and waiting e-mails are due now, and sent from here at once."""
        mailout = self._mail_configured()
        n = mailout.outbox.retry()
        done = mailout.outbox.deliver_due(mailout.transport) if n else []
        return {"retried": n, "results": [
            {"state": e.state, "subject": e.subject, "reply": e.reply, "error": e.last_error} for e in done
        ]}

    # -- running ----------------------------------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Once, when this process becomes the owner of writes (service start, or a one-off command).

        The two-way check of catalog against Chroma reads every id: it runs when the last owner did not
        stop cleanly (or never recorded that it did, as a catalog from before this version).
        """
        full = self.catalog.get_meta("owner_clean") != "1"
        self.catalog.set_meta("owner_clean", "0")
        self._rollback_abandoned_reindex()
        report = recover(self.catalog, self.jobs, self.store, full=full)
        drop_stale_collections(self.catalog, self.vectors)
        return report

    def mark_clean(self) -> None:
        """The owner stops cleanly: the next start can skip the full reconciliation."""
        if not self.jobs.jobs([RUNNING], limit=1):
            self.catalog.set_meta("owner_clean", "1")

    def _rollback_abandoned_reindex(self) -> None:
        target = self.catalog.get_meta("reindex_target")
        if target is None:
            return
        job = self.jobs.by_key("reindex")
        if job is None or job.state not in (QUEUED, RUNNING):
            log.warning("dropping the unfinished rebuild %s (its job is gone)", target)
            self.vectors.drop(target)
            self.catalog.execute("DELETE FROM meta WHERE key='reindex_target'")

    def start_workers(self, batches: Sequence[str] | None = None) -> Runner:
        s = self.settings
        lanes: dict[str, tuple[list[str], int]]
        if s.workers == 0:  # one in-process parser, not thread-safe: one thread parses everything
            lanes = {LANE_FAST: ([LANE_FAST, LANE_SLOW], 1), LANE_MAINT: ([LANE_MAINT], 1)}
        else:
            lanes = {
                LANE_FAST: ([LANE_FAST], s.workers), LANE_SLOW: ([LANE_SLOW], s.slow_workers),
                LANE_MAINT: ([LANE_MAINT], 1),
            }
        self._runner = Runner(self.jobs, self.handlers(), lanes, self.new_parser, batches=batches)
        self._runner.start()
        return self._runner

    def stop_workers(self, grace_s: float = 10.0) -> None:
        if self._runner is not None:
            self._runner.stop(grace_s)
            self._runner = None

    def run_batch(self, batch: str, on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Do one batch's work in this process (no service running) and return its final state."""
        runner = self.start_workers(batches=[batch])
        try:
            while True:
                state = self.batch(batch)
                assert state is not None
                if on_progress is not None:
                    on_progress(state)
                # work other terminals asked of this one-off owner is finished too before it goes
                others = [self.batch(b) for b in runner.batches() or [] if b != batch]
                if state["complete"] and all(o is None or o["complete"] for o in others):
                    return state
                self.jobs.wait(0.2)
        finally:
            runner.stop(grace_s=0)
            self._runner = None

    def _adopt(self, batch: str) -> str:
        """A batch submitted while a one-off runner works: it is that runner's work too."""
        runner = self._runner
        if runner is not None and not runner.stopping:
            runner.add_batch(batch)
        return batch

    # -- one-off work in this process (tests, and the CLI when no service runs) ------------------
    def ingest(self, paths: Sequence[Path | str], *, force: bool = False, mirror: bool = True) -> dict[str, Any]:
        """Ingest files and folders now, in this process; returns the summary (added, failed, ...)."""
        from kbapp.report import summarize

        state = self.run_batch(self.submit_ingest([str(p) for p in paths], force=force, mirror=mirror))
        return summarize(state)

    def forget(self, paths: Sequence[Path | str]) -> int:
        state = self.run_batch(self.submit_forget([str(p) for p in paths]))
        return int(state["outcomes"].get("removed", 0))

    def reindex(self, *, reparse: bool = False) -> dict[str, Any]:
        return self.run_batch(self.submit_reindex(reparse=reparse))

    def summarize(self, paths: Sequence[Path | str] = (), *, all_meetings: bool = False) -> dict[str, Any]:
        return self.run_batch(self.submit_summarize([str(p) for p in paths], all_meetings=all_meetings))

    # -- the library's operations (the Library protocol) -----------------------------------------
    def submit_ingest(self, paths: Sequence[str], *, force: bool = False, mirror: bool = True) -> str:
        """Queue a scan of files and folders; its jobs join the returned batch."""
        uris = [to_uri(absolute(Path(p))) for p in paths]
        # a file named here was asked for: if someone forgot it, it comes back (a folder keeps its forgotten)
        self.catalog.unforget([u for u in uris if u in self.catalog.forgotten(u)])
        batch = self.jobs.new_batch("ingest", {"paths": [display(u) for u in uris]})
        payload = {"paths": uris, "force": force, "mirror": mirror, "batch": batch}
        self.jobs.submit("scan", key=f"scan:{batch}", payload=payload, lane=LANE_FAST, priority=-1, batch=batch)
        return self._adopt(batch)

    def submit_scan(self, paths: Sequence[str], *, key: str) -> None:
        """A background scan with no one waiting for it (the service's periodic inbox scan)."""
        uris = [to_uri(absolute(Path(p))) for p in paths]
        payload = {"paths": uris, "force": False, "mirror": True}
        self.jobs.submit("scan", key=key, payload=payload, lane=LANE_FAST, priority=-1)

    def submit_forget(self, paths: Sequence[str]) -> str:
        uris = [to_uri(absolute(Path(p))) for p in paths]
        batch = self.jobs.new_batch("forget", {"paths": [display(u) for u in uris]})
        targets: list[str] = []
        for u in uris:  # a folder becomes one job per source under it
            targets += list(self.catalog.sources_under(u.rstrip("/") + "/"))
            if self.catalog.source(u) is not None:
                targets.append(u)
        with self.jobs.transaction() as db:
            for u in dict.fromkeys(targets):
                self.jobs.enqueue(db, "forget", u, lane=LANE_FAST, batch=batch, payload={"keep_out": True})
        return self._adopt(batch)

    def submit_reindex(self, *, reparse: bool = False) -> str:
        """A rebuild of every vector; with reparse, a fresh parse of documents from older parser versions."""
        batch = self.jobs.new_batch("reindex", {"reparse": reparse})
        if reparse:
            with self.jobs.transaction() as db:
                for uri in self.outdated_sources():
                    self.jobs.enqueue(db, "ingest", uri, payload={"force": True}, batch=batch)
        else:
            self.jobs.submit("reindex", key="reindex", lane=LANE_MAINT, batch=batch)
        return self._adopt(batch)

    def submit_summarize(self, paths: Sequence[str] = (), *, all_meetings: bool = False) -> str:
        """Remake the summaries of the recordings at these paths (files or folders), or of every meeting.

        Paths that hold no recording are listed in the batch's info as `not_meetings`.
        """
        uris = [to_uri(absolute(Path(p))) for p in paths]
        found_docs: list[DocumentRecord] = meetings(self.catalog) if all_meetings else []
        not_meetings: list[str] = []
        for u in uris:
            found = [s for s in self.catalog.sources_under(u.rstrip("/") + "/").values() if s.doc_id is not None]
            src = self.catalog.source(u)
            if src is not None and src.doc_id is not None:
                found.append(src)
            docs = self.catalog.documents([s.doc_id for s in found if s.doc_id is not None])
            here = [d for d in docs.values() if d.kind == "meeting"]
            if not here:
                not_meetings.append(display(u))
            found_docs += here
        batch = self.jobs.new_batch("summarize", {"paths": [display(u) for u in uris], "all": all_meetings,
                                                  "not_meetings": not_meetings})
        with self.jobs.transaction() as db:
            for doc in {d.id: d for d in found_docs}.values():
                queue_summary(self.jobs, db, doc.id, doc.paths[0] if doc.paths else None, force=True, batch=batch)
        return self._adopt(batch)

    def outdated_sources(self) -> list[str]:
        """One source of each document parsed by an older parser or chunker version."""
        registry = self.registry()
        from ingest.chunking import CHUNKER_VERSION

        current = {
            p.name: f"{registry.version_of(p)}+chunker/{CHUNKER_VERSION}" for p in registry.parsers()
        }
        docs = self.catalog.documents(self.catalog.outdated_documents(current))
        return [d.paths[0] for d in docs.values() if d.paths]

    def batch(self, batch: str) -> dict[str, Any] | None:
        return self.jobs.batch(batch)

    def retry(self, job_ids: Sequence[int] | None = None) -> dict[str, Any]:
        """Failed work queued again now, as a batch the requester can follow."""
        batch = self.jobs.new_batch("retry")
        return {"retried": self.jobs.retry(job_ids, batch=batch), "batch": self._adopt(batch)}

    def held(self, *, confirm: bool | None = None) -> dict[str, Any]:
        """Deletions waiting for confirmation; confirm=True runs them (as a batch to follow), False drops them."""
        jobs = self.jobs.jobs([HELD], limit=100000)
        if confirm is None:
            return {"held": len(jobs), "paths": [display(j.uri or "") for j in jobs[:50]]}
        if not confirm:
            return {"discarded": self.jobs.release_held(confirm=False)}
        batch = self.jobs.new_batch("forget")
        return {"released": self.jobs.release_held(confirm=True, batch=batch), "batch": self._adopt(batch)}

    def search(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> list[dict[str, Any]]:
        """Top k documents, each with its best passages (the best one's fields at the top level)."""
        return self.search_page(query, k, kind, file_type, tag, source, after, before)["hits"]

    def search_page(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> dict[str, Any]:
        """A page of results and the facet counts (kind, file type, tag) of everything the same query found."""
        filters = Filters(kind=kind, file_type=file_type, tag=tag, source_type=source, after=after, before=before)
        result = self.searcher.run(query, k, filters)
        out = [_display_hit(h.to_dict()) for h in result.hits]
        return {"hits": out, "facets": result.facets, "collapsed": result.collapsed}

    def status(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.catalog.stats()
        stats["data_dir"] = str(self.settings.data_dir.resolve())
        stats["embed_model"] = self.catalog.get_meta("embed_model")
        stats["collection"] = self.catalog.get_meta("collection")
        stats["jobs"] = self.jobs.counts()
        stats["in_progress"] = [
            {"path": display(j.uri or j.key), "action": j.action, "stage": j.stage, "done": j.done, "total": j.total}
            for j in self.jobs.jobs([RUNNING], limit=50)
        ]
        stats["failed_jobs"] = [
            {"id": j.id, "path": display(j.uri or j.key), "action": j.action, "error": j.last_error,
             "attempts": j.attempts, "retry_at": j.run_after if j.state == QUEUED else None}
            for j in self.jobs.jobs([FAILED], limit=20)
        ] + [
            {"id": j.id, "path": display(j.uri or j.key), "action": j.action, "error": j.last_error,
             "attempts": j.attempts, "retry_at": j.run_after}
            for j in self.jobs.jobs([QUEUED], limit=200) if j.last_error
        ][:20]
        stats["held"] = stats["jobs"].get(HELD, 0)
        stats["watch"] = self.watch_health()
        from watchers.mail import folder_status

        stats["mail_folders"] = folder_status(self.catalog)
        if self.mailout is not None:
            stats["mail_out"] = self.mailout.status()
        stats.update(self.machine_status())  # models (and which still load), index and disk sizes
        for f in stats["failures"]:
            f["path"] = display(f["path"])
        for w in stats["warnings"]:
            w["path"] = display(w["path"])
        return stats

    def live_summary(self) -> dict[str, Any]:
        """What `kb watch`'s status line shows: the queue, the last finished job, failures, watcher health."""
        counts = self.jobs.counts()
        last = next(iter(self.jobs.jobs([DONE, FAILED], limit=1)), None)
        return {
            "queued": counts.get(QUEUED, 0), "running": counts.get(RUNNING, 0), "failed": counts.get(FAILED, 0),
            "last": None if last is None else {
                "at": last.updated_at, "outcome": last.outcome or last.state, "path": last.uri or last.key,
            },
            "watch": self.watch_health(),
        }

    def check(self) -> None:
        """Open the index now, so an unreachable Chroma is reported at start. A model mismatch is not fatal
        here: the owner must run, if only to carry out the `kb reindex` that resolves it (searches and
        ingests say so meanwhile)."""
        try:
            self.index().check_model()
        except IndexMismatchError as exc:
            log.warning("%s", exc)

    def close(self) -> None:
        self.stop_workers(grace_s=0)
        self.stop_mailout()
        for parsers in self._warm_parsers.values():
            for p in parsers:
                p.close()
        if "inline_parser" in self.__dict__:
            self.inline_parser.close()
        self.catalog.close()


def _display_hit(d: dict[str, Any]) -> dict[str, Any]:
    """A hit's locations as people read them (paths, not file:// URIs), in place."""
    d["path"] = display(d["path"] or "")
    d["paths"] = [display(p) for p in d["paths"]]
    if d.get("message"):
        d["message"]["uri"] = display(d["message"]["uri"] or "")
    return d


def describe_error(exc: BaseException) -> str:
    """One line for a person, whatever went wrong (our errors, SQLite, Chroma, the OS)."""
    import sqlite3

    if isinstance(exc, KbError):
        return str(exc)
    if isinstance(exc, sqlite3.Error):
        return f"catalog error: {exc}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {display(str(exc.filename))}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc}"
