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
from typing import Any, Protocol

from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Stream
from litestar.status_codes import HTTP_400_BAD_REQUEST, HTTP_500_INTERNAL_SERVER_ERROR

from kb.errors import ConfigError, KbError

API = "/api/v1"
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

    def ask_stream(
        self, question: str, k: int | None = None, kind: str | None = None, file_type: str | None = None,
        tag: str | None = None,
    ) -> Iterator[dict[str, Any]]: ...


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
        return Response({"error": {"type": type(exc).__name__, "message": exc.detail}}, status_code=exc.status_code)
    if isinstance(exc, (KbError, ValueError)):
        status = HTTP_400_BAD_REQUEST if isinstance(exc, (ConfigError, ValueError)) else 409
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


def create_api(library: Library) -> Litestar:
    """The Litestar application over a library."""

    @get(f"{API}/health", sync_to_thread=False)
    def health() -> dict[str, Any]:
        # role: "service" (kb watch) or "one-off" (a command owning the directory for a moment)
        return {"ok": True, "pid": os.getpid(), "role": getattr(library, "role", "library")}

    @get(f"{API}/status", sync_to_thread=True)
    def status() -> dict[str, Any]:
        return library.status()

    @post(f"{API}/search", sync_to_thread=True, status_code=200)
    def search(data: SearchRequest) -> list[dict[str, Any]] | dict[str, Any]:
        k = max(1, min(200, data.k))
        page = library.search_page(
            data.query, k=k, kind=data.kind, file_type=data.file_type, tag=data.tag, source=data.source,
            after=data.after, before=data.before,
        )
        return page if data.facets else list(page["hits"])

    @post(f"{API}/ask", sync_to_thread=False, status_code=200)
    def ask(data: AskRequest) -> Stream:
        """The answer as it is made: one JSON event per line (passages, tokens, the checked answer)."""
        k = None if data.k is None else max(1, min(50, data.k))
        events = library.ask_stream(data.question, k=k, kind=data.kind, file_type=data.file_type, tag=data.tag)
        return Stream(_ndjson(events), media_type="application/x-ndjson")

    @post(f"{API}/ingest", sync_to_thread=True, status_code=202)
    def ingest(data: IngestRequest) -> dict[str, Any]:
        return {"batch": library.submit_ingest(data.paths, force=data.force, mirror=data.mirror)}

    @post(f"{API}/forget", sync_to_thread=True, status_code=202)
    def forget(data: PathsRequest) -> dict[str, Any]:
        return {"batch": library.submit_forget(data.paths)}

    @post(f"{API}/reindex", sync_to_thread=True, status_code=202)
    def reindex(data: ReindexRequest) -> dict[str, Any]:
        return {"batch": library.submit_reindex(reparse=data.reparse)}

    @post(f"{API}/summarize", sync_to_thread=True, status_code=202)
    def summarize(data: SummarizeRequest) -> dict[str, Any]:
        return {"batch": library.submit_summarize(data.paths, all_meetings=data.all)}

    @get(f"{API}/batches/{{batch_id:str}}", sync_to_thread=True)
    def batch(batch_id: str) -> dict[str, Any]:
        state = library.batch(batch_id)
        if state is None:
            raise NotFoundException(f"no batch {batch_id}")
        return state

    @post(f"{API}/retry", sync_to_thread=True, status_code=200)
    def retry(data: RetryRequest) -> dict[str, Any]:
        return library.retry(data.job_ids or None)

    @get(f"{API}/held", sync_to_thread=True)
    def held_list() -> dict[str, Any]:
        return library.held()

    @post(f"{API}/held", sync_to_thread=True, status_code=200)
    def held_release(data: HeldRequest) -> dict[str, Any]:
        return library.held(confirm=data.confirm)

    return Litestar(
        route_handlers=[
            health, status, search, ask, ingest, forget, reindex, summarize, batch, retry, held_list, held_release,
        ],
        exception_handlers={Exception: _error},
        openapi_config=None,
        logging_config=None,  # the CLI configures logging; Litestar's default would reset it to INFO
        debug=False,
    )
