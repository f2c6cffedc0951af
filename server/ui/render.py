"""Small formatting helpers for the templates: highlighted snippets (escaped), times, sizes, places."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlencode

from markupsafe import Markup, escape


def marked(text: str | None, highlights: Sequence[Sequence[int]] = ()) -> Markup:
    """The text escaped, with the [start, end) spans wrapped in <mark>: document text is never trusted as HTML."""
    text = text or ""
    out: list[str] = []
    pos = 0
    for span in sorted((int(a), int(b)) for a, b in (h[:2] for h in highlights if len(h) >= 2)):
        start, end = max(span[0], pos), min(span[1], len(text))
        if end <= start:
            continue
        out.append(escape(text[pos:start]))
        out.append(Markup("<mark>") + escape(text[start:end]) + Markup("</mark>"))
        pos = end
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def clock(seconds: float | None) -> str:
    """Seconds as m:ss (or h:mm:ss), the way players show a time."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def size(n: int | float | None) -> str:
    """Bytes in a readable unit."""
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def when(value: Any) -> str:
    """A date (ISO text or a timestamp) as people read it; an unknown value stays as it is."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M")
    text = str(value)
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text[:40]
    if parsed.hour == parsed.minute == 0 and len(text) <= 10:
        return parsed.strftime("%Y-%m-%d")
    return parsed.strftime("%Y-%m-%d %H:%M")


def ago(ts: float | None) -> str:
    """A past timestamp as '5 min ago'."""
    if not ts:
        return ""
    d = max(0.0, dt.datetime.now().timestamp() - ts)
    if d < 60:
        return "just now"
    if d < 3600:
        return f"{int(d // 60)} min ago"
    if d < 86400:
        return f"{int(d // 3600)} h ago"
    return when(ts)


def short_path(path: str | None, folders: Sequence[str] = ()) -> str:
    """A path inside a watched folder as that folder's name and the rest (inbox/2024/lease.pdf); others whole."""
    path = str(path or "")
    for folder in folders:
        base = folder.rstrip("/")
        if path.startswith(base + "/"):
            return PurePosixPath(base).name + path[len(base):]
    return path


def name_of(hit: dict[str, Any]) -> str:
    """A hit's or document's title, else its file name."""
    title = (hit.get("title") or "").strip()
    if title:
        return title
    path = str(hit.get("path") or (hit.get("paths") or [""])[0] or "")
    return PurePosixPath(path.split("#", 1)[0]).name or path or "(untitled)"


def place(p: dict[str, Any]) -> str:
    """Where a passage is: page, time in the recording, section."""
    bits = []
    if p.get("page"):
        end = p.get("page_end")
        bits.append(f"pp. {p['page']}–{end}" if end and end != p["page"] else f"p. {p['page']}")
    if p.get("t_start") is not None:
        bits.append(f"{clock(p['t_start'])}–{clock(p.get('t_end'))}" if p.get("t_end") else clock(p["t_start"]))
    if p.get("section"):  # the innermost heading: the whole path repeats the title
        bits.append(str(p["section"]).split(" > ")[-1][:80])
    if p.get("ocr"):
        bits.append("OCR")
    if p.get("role") in ("quote", "signature"):
        bits.append("quoted" if p["role"] == "quote" else "signature")
    return " · ".join(bits)


def passage_url(doc_id: int, p: dict[str, Any], q: str | None = None) -> str:
    """The document page opened at a passage: the chunk highlighted, the PDF page or the recording's time
    (and the search's words, marked in the passage)."""
    params: dict[str, Any] = {}
    if p.get("chunk_id"):
        params["chunk"] = p["chunk_id"]
    if p.get("page"):
        params["page"] = p["page"]
    if p.get("t_start") is not None:
        params["t"] = int(p["t_start"])
    if q:
        params["q"] = q[:200]
    return f"/documents/{int(doc_id)}" + (f"?{urlencode(params)}" if params else "")


def query_url(base: str, params: dict[str, Any], **changes: Any) -> str:
    """The same page with some query parameters changed (None removes one)."""
    merged = {**params, **changes}
    kept = {k: v for k, v in merged.items() if v not in (None, "")}
    return base + (f"?{urlencode(kept)}" if kept else "")


KIND_LABELS = {
    "document": "Documents", "scan": "Scans", "meeting": "Meetings", "mail": "Mail", "attachment": "Attachments",
    "summary": "Summaries",
}


FILTERS = {"clock": clock, "size": size, "when": when, "ago": ago, "place": place, "name_of": name_of}
