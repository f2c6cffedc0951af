"""The JSON API of the service (Litestar). Today the CLI's client path; the web UI builds on the same routes.

It only translates: HTTP in, a call on the `Library` out, JSON back, and every error as one JSON shape
`{"error": {"type": ..., "message": ...}}` with a fitting status code. It never touches the store itself.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Stream
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR

from kb.errors import ConfigError, KbError

API = "/api/v1"
MAX_QUERY = 2000  # characters of a search or a question over HTTP
log = logging.getLogger(__name__)


class Library(Protocol):
    """What the API needs from the library (the composition root's App implements it)."""

    def status(self) -> dict[str, Any]: ...

    def search(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def search_page(
        self, query: str, k: int = 5, kind: str | None = None, file_type: str | None = None, tag: str | None = None,
        source: str | None = None, after: str | None = None, before: str | None = None,
    ) -> dict[str, Any]: ...

    def submit_ingest(self, paths: Sequence[str], *, force: bool = False, mirror: bool = True) -> str: ...

    def submit_forget(self, paths: Sequence[str]) -> str: ...

    def submit_reindex(self, *, reparse: bool = False) -> str: ...

    def submit_summarize(self, paths: Sequence[str] = (), *, all_meetings: bool = False) -> str: ...

    def batch(self, batch: str) -> dict[str, Any] | None: ...

    def retry(self, job_ids: Sequence[int] | None = None) -> dict[str, Any]: ...

    def held(self, *, confirm: bool | None = None) -> dict[str, Any]: ...

    def send_digest(self) -> dict[str, Any]: ...

    def retry_outbox(self) -> dict[str, Any]: ...

    def ask_stream(
        self, question: str, k: int | None = None, kind: str | None = None, file_type: str | None = None,
        tag: str | None = None,
    ) -> Iterator[dict[str, Any]]: ...


class WebLibrary(Library, Protocol):
    """What the web UI and the full JSON API need besides: the library's items, as kbapp/views.py gives them
    (each method's docstring there documents its dict shape). Items are named by a `ref` ("12" a document,
    "s34" a failed source, "j56" a queued file), never by a path."""

    settings: Any  # kb.settings.Settings

    def documents(
        self, status: str | None = None, kind: str | None = None, tag: str | None = None, q: str | None = None,
        offset: int = 0, limit: int | None = 50, source: str | None = None,
    ) -> dict[str, Any]: ...

    def document(self, ref: str | int) -> dict[str, Any]: ...

    def document_text(self, ref: str | int) -> dict[str, Any]: ...

    def document_original(self, ref: str | int) -> Any: ...  # kbapp.views.Original (path, content_type, ...)

    def retry_document(self, ref: str | int) -> dict[str, Any]: ...

    def forget_document(self, ref: str | int) -> dict[str, Any]: ...

    def meetings(self, offset: int = 0, limit: int | None = 50) -> dict[str, Any]: ...

    def meeting(self, ref: str | int) -> dict[str, Any]: ...

    def jobs_view(self, limit: int | None = 50) -> dict[str, Any]: ...

    def watch_health(self) -> list[dict[str, Any]]: ...

    def submit_files(self, paths: list[Any]) -> str: ...  # files an upload wrote into the inbox, queued now


if TYPE_CHECKING:
    CoreDep = Library
    LibraryDep = WebLibrary
else:  # injected dependencies are not validated: Litestar must not try isinstance() on a Protocol
    CoreDep = Any
    LibraryDep = Any


@dataclass
class SearchRequest:
    query: str
    k: int = 5
    kind: str | None = None
    file_type: str | None = None
    tag: str | None = None  # a watched folder's (or mail account's) tag
    source: str | None = None  # "file" or "mail"
    after: str | None = None  # ISO date, inclusive: the document's date (written, else modified, else added)
    before: str | None = None
    facets: bool = False  # answer {"hits": [...], "facets": {...}} instead of the list of hits


@dataclass
class AskRequest:
    question: str
    k: int | None = None  # passages retrieved (default: the answer_passages setting)
    kind: str | None = None
    file_type: str | None = None
    tag: str | None = None


@dataclass
class IngestRequest:
    paths: list[str]
    force: bool = False
    mirror: bool = True


@dataclass
class PathsRequest:
    paths: list[str]


@dataclass
class ReindexRequest:
    reparse: bool = False


@dataclass
class SummarizeRequest:
    paths: list[str] = field(default_factory=list)
    all: bool = False  # every meeting in the library


@dataclass
class RetryRequest:
    job_ids: list[int] = field(default_factory=list)


@dataclass
class HeldRequest:
    confirm: bool


def _error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if isinstance(exc, HTTPException):
        headers = {k: v for k, v in (exc.headers or {}).items()}
        return Response({"error": {"type": type(exc).__name__, "message": exc.detail}}, status_code=exc.status_code,
                        headers=headers)
    if isinstance(exc, (KbError, ValueError)):
        status = HTTP_400_BAD_REQUEST if isinstance(exc, (ConfigError, ValueError)) else 409
        if type(exc).__name__ == "NotFound":
            status = 404
        return Response({"error": {"type": type(exc).__name__, "message": str(exc)}}, status_code=status)
    message = f"catalog error: {exc}" if isinstance(exc, sqlite3.Error) else f"{type(exc).__name__}: {exc}"
    request.logger.exception("request failed")
    return Response({"error": {"type": "internal", "message": message}}, status_code=HTTP_500_INTERNAL_SERVER_ERROR)


def _ndjson(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Events as JSON lines. The status line went out with the first byte, so an error is the last event."""
    try:
        for event in events:
            yield json.dumps(event, ensure_ascii=False) + "\n"
    except Exception as exc:
        if not isinstance(exc, (KbError, ValueError)):
            log.exception("answer failed")
        message = str(exc) if isinstance(exc, KbError) else f"{type(exc).__name__}: {exc}"
        yield json.dumps({"event": "error", "error": {"type": type(exc).__name__, "message": message}}) + "\n"




def _sse(events: Iterator[dict[str, Any]]) -> Iterator[str]:
    """Answer events as Server-Sent Events: passages, token..., answer (or error), then done."""
    try:
        for event in events:
            kind = str(event.get("event") or "message")
            data = {k: v for k, v in event.items() if k != "event"}
            if kind == "passages":
                payload: Any = data.get("passages", [])
            elif kind == "token":
                payload = data.get("text", data.get("token", ""))
            elif kind == "answer":
                payload = data.get("answer", data)
            else:
                payload = data
            yield f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"
    except Exception as exc:
        if not isinstance(exc, (KbError, ValueError)):
            log.exception("answer failed")
        message = str(exc) if isinstance(exc, KbError) else f"{type(exc).__name__}: {exc}"
        yield f"event: error\ndata: {json.dumps({'message': message}, ensure_ascii=False)}\n\n"
    yield "event: done\ndata: {}\n\n"


def _bounded(k: int, lo: int = 1, hi: int = 200) -> int:
    return max(lo, min(hi, int(k)))


@get(f"{API}/health", sync_to_thread=False)
def health(library: CoreDep) -> dict[str, Any]:
    """Whether the service answers (no login needed)."""
    # role: "service" (kb watch / kb serve) or "one-off" (a command owning the directory for a moment)
    return {"ok": True, "pid": os.getpid(), "role": getattr(library, "role", "library")}


@get(f"{API}/status", sync_to_thread=True)
def status(library: CoreDep) -> dict[str, Any]:
    """The library in numbers: documents, chunks, queue, watchers and mail accounts, models, index and disk."""
    return library.status()


@post(f"{API}/search", sync_to_thread=True, status_code=200)
def search(library: CoreDep, data: SearchRequest) -> list[dict[str, Any]] | dict[str, Any]:
    """Search (the CLI's form): the hits, or {hits, facets} with facets=true."""
    page = library.search_page(
        data.query, k=_bounded(data.k), kind=data.kind, file_type=data.file_type, tag=data.tag, source=data.source,
        after=data.after, before=data.before,
    )
    return page if data.facets else list(page["hits"])


@get(f"{API}/search", sync_to_thread=True)
def search_get(
    library: CoreDep, q: str, k: int = 10, offset: int = 0, kind: str | None = None, tag: str | None = None,
    type: str | None = None, source: str | None = None, after: str | None = None, before: str | None = None,
    facets: bool = True,
) -> dict[str, Any]:
    """Search: {"hits" (documents with their passages, snippets and highlight offsets), "facets" (counts
    by kind, file_type, tag over everything found), "total" (documents found), "offset", "k"}."""
    k, offset = _bounded(k), max(0, min(1000, int(offset)))
    if len(q) > MAX_QUERY:
        raise ValueError(f"the query is longer than {MAX_QUERY} characters")
    page = library.search_page(q, k=offset + k, kind=kind or None, file_type=type or None, tag=tag or None,
                               source=source or None, after=after or None, before=before or None)
    fac = page.get("facets") or {}
    total = sum((fac.get("kind") or {}).values())
    out = {"hits": page["hits"][offset:offset + k], "total": total, "offset": offset, "k": k,
           "collapsed": page.get("collapsed", 0)}
    if facets:
        out["facets"] = fac
    return out


@post(f"{API}/ask", sync_to_thread=False, status_code=200)
def ask(library: CoreDep, data: AskRequest) -> Stream:
    """The answer as it is made: one JSON event per line (passages, tokens, the checked answer)."""
    k = None if data.k is None else _bounded(data.k, 1, 50)
    events = library.ask_stream(data.question, k=k, kind=data.kind, file_type=data.file_type, tag=data.tag)
    return Stream(_ndjson(events), media_type="application/x-ndjson")


@get(f"{API}/ask/stream", sync_to_thread=False)
def ask_stream(
    library: CoreDep, q: str, k: int | None = None, kind: str | None = None, tag: str | None = None,
    type: str | None = None,
) -> Stream:
    """The answer as Server-Sent Events: `passages` (JSON list), `token` (JSON string) each, `answer` (the
    checked answer with citations and passages) or `error` ({message}), then `done`."""
    if not q.strip():
        raise ValueError("ask a question (q=...)")
    if len(q) > MAX_QUERY:
        raise ValueError(f"the question is longer than {MAX_QUERY} characters")
    kk = None if k is None else _bounded(k, 1, 50)

    def events() -> Iterator[dict[str, Any]]:
        yield from library.ask_stream(q, k=kk, kind=kind or None, file_type=type or None, tag=tag or None)

    return Stream(_sse(events()), media_type="text/event-stream",
                  headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


@post(f"{API}/ingest", sync_to_thread=True, status_code=202)
def ingest(library: CoreDep, data: IngestRequest) -> dict[str, Any]:
    return {"batch": library.submit_ingest(data.paths, force=data.force, mirror=data.mirror)}


@post(f"{API}/forget", sync_to_thread=True, status_code=202)
def forget(library: CoreDep, data: PathsRequest) -> dict[str, Any]:
    return {"batch": library.submit_forget(data.paths)}


@post(f"{API}/reindex", sync_to_thread=True, status_code=202)
def reindex(library: CoreDep, data: ReindexRequest) -> dict[str, Any]:
    return {"batch": library.submit_reindex(reparse=data.reparse)}


@post(f"{API}/summarize", sync_to_thread=True, status_code=202)
def summarize(library: CoreDep, data: SummarizeRequest) -> dict[str, Any]:
    return {"batch": library.submit_summarize(data.paths, all_meetings=data.all)}


@get(f"{API}/batches/{{batch_id:str}}", sync_to_thread=True)
def batch(library: CoreDep, batch_id: str) -> dict[str, Any]:
    """Where a request's work stands (jobs settled, outcomes, failures, work in progress)."""
    state = library.batch(batch_id)
    if state is None:
        raise NotFoundException(f"no batch {batch_id[:40]}")
    return state


@post(f"{API}/retry", sync_to_thread=True, status_code=200)
def retry(library: CoreDep, data: RetryRequest) -> dict[str, Any]:
    return library.retry(data.job_ids or None)


@post(f"{API}/mail/digest", sync_to_thread=True, status_code=200)
def mail_digest(library: CoreDep) -> dict[str, Any]:
    """Send a digest now (`kb digest --now`): queued in the outbox and sent by the service."""
    return library.send_digest()


@post(f"{API}/mail/outbox/retry", sync_to_thread=True, status_code=200)
def mail_retry(library: CoreDep) -> dict[str, Any]:
    """Failed and waiting e-mails are tried again now (`kb mail outbox --retry`)."""
    return library.retry_outbox()


@get(f"{API}/held", sync_to_thread=True)
def held_list(library: CoreDep) -> dict[str, Any]:
    return library.held()


@post(f"{API}/held", sync_to_thread=True, status_code=200)
def held_release(library: CoreDep, data: HeldRequest) -> dict[str, Any]:
    return library.held(confirm=data.confirm)


# -- the library's items (web UI) ---------------------------------------------------------------------
@get(f"{API}/documents", sync_to_thread=True)
def documents(
    library: LibraryDep, status: str | None = None, kind: str | None = None, tag: str | None = None,
    q: str | None = None, source: str | None = None, offset: int = 0, limit: int = 50,
) -> dict[str, Any]:
    """The library list, newest first, including queued, processing and failed items: {total, offset,
    limit (at most 200), items}."""
    return library.documents(status=status or None, kind=kind or None, tag=tag or None, q=q or None,
                             source=source or None, offset=max(0, offset), limit=_bounded(limit))


@get(f"{API}/documents/{{ref:str}}", sync_to_thread=True)
def document(library: LibraryDep, ref: str) -> dict[str, Any]:
    """One item: metadata, sources, original, mail headers, attachments, OCR confidence, media, summary."""
    return library.document(ref)


@get(f"{API}/documents/{{ref:str}}/text", sync_to_thread=True)
def document_text(library: LibraryDep, ref: str) -> dict[str, Any]:
    """The document's chunks in order (id, ordinal, text, page, start_s/end_s, role)."""
    return library.document_text(ref)


@post(f"{API}/documents/{{ref:str}}/retry", sync_to_thread=True, status_code=202)
def document_retry(library: LibraryDep, ref: str) -> dict[str, Any]:
    """Read a failed item again now: {batch, retried}."""
    return library.retry_document(ref)


@post(f"{API}/documents/{{ref:str}}/forget", sync_to_thread=True, status_code=202)
def document_forget(library: LibraryDep, ref: str) -> dict[str, Any]:
    """Remove an item (and its attachments, summary) from the library: {batch, forgotten}."""
    return library.forget_document(ref)


@get(f"{API}/meetings", sync_to_thread=True)
def meetings(library: LibraryDep, offset: int = 0, limit: int = 50) -> dict[str, Any]:
    """Recordings, newest first, with duration and summary state: {total, offset, limit, items}."""
    return library.meetings(offset=max(0, offset), limit=_bounded(limit))


@get(f"{API}/meetings/{{ref:str}}", sync_to_thread=True)
def meeting(library: LibraryDep, ref: str) -> dict[str, Any]:
    """One recording: duration, summary sections with times, transcript segments with times."""
    return library.meeting(ref)


@get(f"{API}/jobs", sync_to_thread=True)
def jobs(library: LibraryDep, limit: int = 50) -> dict[str, Any]:
    """The work queue: counts, running (with progress), next queued, failed, held."""
    return library.jobs_view(limit=_bounded(limit))


CORE_HANDLERS = [health, status, search, ask, ingest, forget, reindex, summarize, batch, retry, held_list,
                 held_release, mail_digest, mail_retry]
# Routes that name paths on the server's disk: the CLI's, on the Unix socket only (its folder is the user's
# own). Over HTTP a file arrives by upload and an item is named by its ref, never by a path.
PATH_HANDLERS = {ingest, forget, summarize}
WEB_HANDLERS = [search_get, ask_stream, documents, document, document_text, document_retry, document_forget,
                meetings, meeting, jobs]


def create_api(library: CoreDep) -> Litestar:
    """The API on the service's Unix socket (the CLI's path): no login, the folder's 0700 guards it."""
    from litestar.di import Provide

    from server.files import original

    return Litestar(
        route_handlers=[*CORE_HANDLERS, *WEB_HANDLERS, original],
        dependencies={"library": Provide(lambda: library, use_cache=True, sync_to_thread=False)},
        exception_handlers={Exception: _error},
        openapi_config=None,
        logging_config=None,  # the CLI configures logging; Litestar's default would reset it to INFO
        debug=False,
    )
