"""The page handlers: each reads what it shows from the Library (the App) and renders a Jinja template."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from litestar import Request, get
from litestar.exceptions import HTTPException, NotFoundException
from litestar.response import Redirect, Template
from litestar.router import Router

from kb.errors import KbError
from server.api import MAX_QUERY
from server.ui import data, render

log = logging.getLogger(__name__)
PAGE_SIZE = 10
STATUSES = ("queued", "processing", "ready", "empty", "failed")  # what the library can be filtered by
MAX_RESULTS = 200  # the search returns at most this many documents; pages go as far as that

HELPERS = SimpleNamespace(
    marked=render.marked, clock=render.clock, size=render.size, when=render.when, ago=render.ago,
    place=render.place, name_of=render.name_of, short_path=render.short_path, passage_url=render.passage_url,
    query_url=render.query_url,
    kind_labels=render.KIND_LABELS,
)
NAV = [("/", "Search"), ("/ask", "Ask"), ("/library", "Library"), ("/meetings", "Meetings"),
       ("/upload", "Upload"), ("/status", "Status")]


def page(request: Request[Any, Any, Any], template: str, status_code: int = 200, **context: Any) -> Template:
    """A page: the template with what every page needs (the signed-in user, navigation, helpers)."""
    user = request.scope.get("user")
    state = request.app.state
    settings = state.get("settings")
    folders = [str(f.path) for f in settings.inbox] if settings is not None else []
    context.update(
        user=user, auth_enabled=bool(state.get("auth_enabled")), nav=NAV, h=HELPERS, folders=folders,
        path=request.url.path, q=context.get("q", ""),
    )
    return Template(template_name=template, context=context, status_code=status_code)


def _int(value: str | None, default: int, low: int = 0, high: int = 10**9) -> int:
    try:
        return max(low, min(high, int(value))) if value not in (None, "") else default
    except ValueError:
        return default


def _date(value: str | None) -> str | None:
    """An ISO date from a date input, or None (anything else is ignored, not an error)."""
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        return None


@get("/", sync_to_thread=True, name="search")
def search_page(
    request: Request[Any, Any, Any], library: Any, q: str = "", kind: str | None = None, tag: str | None = None,
    type: str | None = None, after: str | None = None, before: str | None = None,
) -> Template:
    """Search: the query box, filters with counts, results with highlighted snippets, pagination."""
    n = _int(request.query_params.get("page"), 1, 1, MAX_RESULTS // PAGE_SIZE)
    params = {"q": q, "kind": kind, "tag": tag, "type": type, "after": _date(after), "before": _date(before)}
    hits: list[dict[str, Any]] = []
    facets: dict[str, dict[str, int]] = {}
    total = 0
    error: str | None = None
    collapsed = 0
    if len(q) > MAX_QUERY:
        error = f"The search is longer than {MAX_QUERY} characters: shorten it."
    elif q.strip():
        try:
            result = library.search_page(
                q, k=min(MAX_RESULTS, n * PAGE_SIZE), kind=kind or None, file_type=type or None, tag=tag or None,
                after=params["after"], before=params["before"],
            )
            hits = result["hits"][(n - 1) * PAGE_SIZE : n * PAGE_SIZE]
            facets = result.get("facets") or {}
            collapsed = int(result.get("collapsed") or 0)
            total = int(result.get("total") or sum((facets.get("kind") or {}).values()) or len(result["hits"]))
        except (KbError, ValueError) as exc:
            error = str(exc)
    pages = max(1, min(MAX_RESULTS // PAGE_SIZE, -(-total // PAGE_SIZE)))
    empty = not q.strip() and not library.catalog.read("SELECT 1 FROM documents LIMIT 1")
    return page(
        request, "search.html", q=q, params=params, hits=hits, facets=facets, total=total, page_no=n, pages=pages,
        error=error, empty_library=empty, collapsed=collapsed, offset=(n - 1) * PAGE_SIZE,
        title=f"{q} – search" if q else "Search",
    )


@get("/ask", sync_to_thread=False, name="ask")
def ask_page(request: Request[Any, Any, Any], q: str = "") -> Template:
    """Ask: the answer streams in from /api/v1/ask/stream (JavaScript), with its passages beside it."""
    return page(request, "ask.html", q=q, title=f"{q} – ask" if q else "Ask")


def _ref(ref: str) -> str:
    """A library reference from the address (a document number, s12 for a source, j5 for a queued job)."""
    if not ref or len(ref) > 24 or not (ref.isdigit() or (ref[0] in "sj" and ref[1:].isdigit())):
        raise NotFoundException(f"There is nothing at {ref[:40]!r} in the library.")
    return ref


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@get("/documents/{ref:str}", sync_to_thread=True, name="document")
def document_page(
    request: Request[Any, Any, Any], library: Any, ref: str, chunk: str | None = None,
) -> Template | Redirect:
    """A document: details, the original, the extracted text with the cited passage highlighted."""
    part = request.query_params.get("part")
    view = data.document_view(library, _ref(ref), chunk, _int(part, 0) if part else None)
    doc, cited = view["doc"], view["cited"]
    if doc.get("meeting_ref"):
        # a summary point is a time in its recording: open the recording there, with the player
        t = _seconds(request.query_params.get("t"))
        if t is None and cited is not None:
            t = cited["start_s"]
        return Redirect(f"/meetings/{doc['meeting_ref']}" + (f"?t={int(t)}" if t is not None else ""))
    start = _seconds(request.query_params.get("t"))
    if start is None and cited is not None:
        start = cited["start_s"]
    pdf_page = _int(request.query_params.get("page"), 0, 0) or (cited["page"] if cited and cited["page"] else 0)
    return page(request, "document.html", **view, pdf_page=pdf_page, start=start, chunk=chunk,
                words=(request.query_params.get("q") or "")[:200],
                title=doc.get("title") or doc.get("name") or "(untitled)")


@get("/library", sync_to_thread=True, name="library")
def library_page(
    request: Request[Any, Any, Any], library: Any, status: str | None = None, kind: str | None = None,
    q: str | None = None, tag: str | None = None,
) -> Template:
    """Every document and queued or failed item, with status, source and date; retry and forget."""
    offset = _int(request.query_params.get("offset"), 0, 0)
    status = status if status in STATUSES else None
    listing = library.documents(status=status or None, kind=kind or None, tag=tag or None, q=q or None,
                                offset=offset, limit=50)
    jobs = library.jobs_view(limit=30)
    queue = [*jobs["running"], *jobs["queued"]]
    counts = library.catalog.stats()
    return page(
        request, "library.html", listing=listing, queue=queue, job_counts=jobs["counts"], status=status or "",
        kind=kind or "", filter_q=q or "", counts=counts, params={"status": status, "kind": kind, "q": q, "tag": tag},
        title="Library",
    )


@get("/meetings", sync_to_thread=True, name="meetings")
def meetings_page(request: Request[Any, Any, Any], library: Any) -> Template:
    """Recordings with their duration and whether their summary is made."""
    offset = _int(request.query_params.get("offset"), 0, 0)
    return page(request, "meetings.html", meetings=library.meetings(offset=offset, limit=100), title="Meetings")


@get("/meetings/{ref:str}", sync_to_thread=True, name="meeting")
def meeting_page(request: Request[Any, Any, Any], library: Any, ref: str) -> Template:
    """A recording: the player, its summary (each point plays from its time) and the transcript."""
    view = data.document_view(library, _ref(ref))
    if view["doc"].get("kind") != "meeting":
        raise NotFoundException(f"There is no recording {ref[:40]!r} in the library.")
    doc = view["doc"]
    return page(request, "meeting.html", **view, start=_seconds(request.query_params.get("t")), chunk=None,
                pdf_page=0, title=doc.get("title") or doc.get("name") or "(untitled)")


def _megabytes(mb: float | None) -> str:
    """A size limit as people write it: 200 MB, 1.5 GB."""
    if not mb:
        return ""
    return f"{mb / 1024:g} GB" if mb >= 1024 else f"{mb:g} MB"


@get("/upload", sync_to_thread=False, name="upload")
def upload_page(request: Request[Any, Any, Any], settings: Any) -> Template:
    """Upload: drag and drop files (progress per file), or choose them; they land in the inbox."""
    inbox = settings.inbox[0].path if settings.inbox else None
    return page(
        request, "upload.html", inbox=str(inbox) if inbox else "",
        limit=_megabytes(getattr(settings, "upload_max_mb", None)), title="Upload",
    )


@get("/status", sync_to_thread=True, name="status")
def status_page(request: Request[Any, Any, Any], library: Any, settings: Any) -> Template:
    """Status: watched folders and mail accounts with health, the queue, models, index size, disk used."""
    status = library.status()
    jobs = library.jobs_view(limit=10)
    return page(
        request, "status.html", status=status, queue=[*jobs["running"], *jobs["queued"]], job_counts=jobs["counts"],
        inbox=[{"path": str(f.path), "tag": f.tag, "mode": f.mode} for f in settings.inbox], title="Status",
    )


@get("/login", sync_to_thread=False, name="login")
def login_page(request: Request[Any, Any, Any], next: str = "/") -> Template:
    """The sign-in form (the POST is the service's); `next` stays a path on this site."""
    if not next.startswith("/") or next.startswith("//") or "\\" in next:
        next = "/"
    failed = "error" in request.query_params
    return page(request, "login.html", next=next, failed=failed, title="Sign in")


def error_page(request: Request[Any, Any, Any], exc: Exception) -> Template:
    """A friendly page for a missing page or a failure on a page (the API keeps its JSON errors)."""
    if request.url.path.startswith("/api/"):
        return _api_error(request, exc)
    if isinstance(exc, HTTPException):
        status, message = exc.status_code, str(exc.detail)
    elif type(exc).__name__ == "NotFound":  # the Library's: no such item (kbapp is above this layer)
        status, message = 404, f"{str(exc)[:1].upper()}{str(exc)[1:]} in the library (it may have been forgotten)."
    elif isinstance(exc, KbError):
        status, message = 409, str(exc)
    else:
        log.exception("page failed: %s", request.url.path)
        status, message = 500, "Something went wrong on this page. The details are in the service's log."
    if status == 404 and message in ("Not Found", ""):
        message = "There is no page at this address."
    return page(request, "error.html", status_code=status, status=status, message=message,
                title="Not found" if status == 404 else "Something went wrong")


@get("/{rest:path}", sync_to_thread=False, name="not-found", include_in_schema=False)
def not_found(rest: str) -> None:
    """Any other address: the friendly page (the API's unknown addresses keep their JSON error)."""
    raise NotFoundException("There is no page at this address.")


def _api_error(request: Request[Any, Any, Any], exc: Exception) -> Any:
    from server.api import _error

    return _error(request, exc)


PAGES: list[Callable[..., Any]] = [
    search_page, ask_page, document_page, library_page, meetings_page, meeting_page, upload_page, status_page,
    login_page, not_found,
]


def pages_router() -> Router:
    """The pages, with errors on them shown as a page rather than JSON."""
    return Router(path="/", route_handlers=PAGES, exception_handlers={Exception: error_page})
