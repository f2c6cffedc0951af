"""What the document and meeting pages show, put together from the Library's views (document, text, meeting).

The Library (kbapp's App) answers with plain dicts (their shapes are in its docstrings); this module only
picks what a page needs: which player shows the original, which part of a long text, the cited passage.
"""

from __future__ import annotations

from typing import Any

PAGE_CHUNKS = 400  # passages shown on one document page: a 1,000-page book is read in parts
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp")


def viewer_of(doc: dict[str, Any]) -> str:
    """How the original is shown: pdf, image, audio, video, mail, or none (details and a download link)."""
    original = doc.get("original") or {}
    ctype = str(original.get("content_type") or "")
    if doc.get("kind") == "mail":
        return "mail"
    if not original or not original.get("inline"):
        return "none"
    if ctype == "application/pdf":
        return "pdf"
    if ctype in IMAGE_TYPES:
        return "image"
    if ctype.startswith("video/"):
        return "video"
    if ctype.startswith("audio/"):
        return "audio"
    return "none"


def document_view(library: Any, ref: str, chunk: str | None = None, part: int | None = None) -> dict[str, Any]:
    """Everything the document page shows (the Library raises its NotFound for an unknown ref)."""
    doc = library.document(ref)
    chunks: list[dict[str, Any]] = library.document_text(ref)["chunks"] if doc.get("id") is not None else []
    cited = next((c for c in chunks if c["id"] == chunk), None) if chunk else None
    parts = max(1, -(-len(chunks) // PAGE_CHUNKS))
    if part is None:
        part = (chunks.index(cited) // PAGE_CHUNKS) if cited is not None else 0
    part = max(0, min(parts - 1, part))
    summary = None
    if doc.get("kind") == "meeting":
        summary = library.meeting(doc["id"]).get("summary")
    return {
        "doc": doc, "chunks": chunks[part * PAGE_CHUNKS : (part + 1) * PAGE_CHUNKS], "chunk_total": len(chunks),
        "part": part, "parts": parts, "cited": cited, "viewer": viewer_of(doc), "summary": summary,
        "meta": doc.get("meta") or {},
    }
