"""PDF text layers via PDFium: fast, per page, with running headers and footers dropped.

unstructured's PDF path needs unstructured-inference (layout models from a hub, a CUDA torchvision) even
for its `fast` strategy, and pdfminer reads ~3 pages/s here; PDFium reads ~400 pages/s and is the same
library that renders pages for OCR.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

from ingest.errors import CorruptFile, EncryptedFile
from ingest.parsers.base import TEXT, TITLE, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.text import _is_heading
from ingest.parsers.textutil import clean

_NUM = re.compile(r"\d+")
_PDF_DATE = re.compile(r"D:(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?")
_NUMBERED = re.compile(r"^(\d+(\.\d+)*)\.?\s+[A-Z]")
# Pages whose text layer has fewer characters than this are treated as scans (OCR'd when OCR is on).
MIN_TEXT_CHARS = 20
MAX_PAGES = 2000
_SECTION = re.compile(r"^\d+(\.\d+)+\.?\s+\S")  # "1.5 The shell": a heading even mid-paragraph


def open_pdf(path: Path) -> Any:
    """Open a PDF with PDFium, translating its errors into readable ingest errors."""
    import pypdfium2 as pdfium

    try:
        return pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as exc:
        msg = str(exc)
        if "password" in msg.lower():
            raise EncryptedFile("encrypted PDF: it needs a password to open") from None
        raise CorruptFile(f"damaged or truncated PDF ({msg})") from None


def pdf_metadata(pdf: Any) -> dict[str, str | None]:
    """Title, author and dates from the PDF info dictionary, dates as ISO 8601."""
    try:
        info = pdf.get_metadata_dict(skip_empty=True)
    except Exception:
        info = {}
    return {
        "title": (info.get("Title") or "").strip() or None,
        "author": (info.get("Author") or "").strip() or None,
        "created_at": _pdf_date(info.get("CreationDate")),
        "modified_at": _pdf_date(info.get("ModDate")),
    }


def _pdf_date(value: str | None) -> str | None:
    m = _PDF_DATE.match(value or "")
    if not m:
        return None
    parts = [int(p) if p else d for p, d in zip(m.groups(), (0, 1, 1, 0, 0, 0), strict=True)]
    try:
        return datetime(*parts).isoformat()  # type: ignore[arg-type]
    except ValueError:
        return None


def page_lines(page: Any) -> list[str]:
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_bounded()
    finally:
        textpage.close()
    return [ln.strip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def running_lines(pages: list[list[str]]) -> set[str]:
    """Lines repeated at the top or bottom of most pages (running headers, footers, page numbers)."""
    if len(pages) < 4:
        return set()
    counts: Counter[str] = Counter()
    for lines in pages:
        edge = [ln for ln in lines if ln][:2] + [ln for ln in lines if ln][-2:]
        counts.update({_NUM.sub("#", ln) for ln in edge})
    return {k for k, n in counts.items() if n >= max(3, len(pages) // 2)}


def lines_to_elements(lines: list[str], page: int, skip: set[str], ocr: bool = False) -> list[Element]:
    """Rebuild paragraphs from layout lines: a short line ending a sentence closes a paragraph."""
    lines = [ln for ln in lines if _NUM.sub("#", ln) not in skip]
    widths = sorted(len(ln) for ln in lines if ln)
    full = widths[int(len(widths) * 0.8)] if widths else 80
    out: list[Element] = []
    buf: list[str] = []

    def flush() -> None:
        if buf:
            text = clean(" ".join(buf))
            if text:
                out.append(Element(text, TEXT, page=page, ocr=ocr))
            buf.clear()

    for ln in lines:
        if not ln:
            flush()
            continue
        if (not buf or _SECTION.match(ln)) and _is_heading(ln) and len(ln) < 0.8 * max(full, 40):
            flush()
            m = _NUMBERED.match(ln)
            out.append(Element(ln, TITLE, page=page, ocr=ocr, level=m.group(1).count(".") + 1 if m else 0))
            continue
        if buf and buf[-1].endswith("-") and ln[:1].islower():
            buf[-1] = buf[-1][:-1] + ln
        else:
            buf.append(ln)
        if len(ln) < 0.7 * full and ln.endswith((".", ":", "?", "!", '."', ".)")):
            flush()
    flush()
    return out


class PdfParser:
    """PDFs with a text layer. Subclasses OCR the pages without one (`ocr_pages`).

    At most `max_pages` pages are read; the rest of a longer PDF is recorded as skipped with a warning.
    """

    name = "pdf"
    # 2: pages past max_pages are skipped with a warning; blank pages are not OCR'd.
    version = 2
    ocr_enabled = False

    def __init__(self, max_pages: int = MAX_PAGES) -> None:
        self.max_pages = max(1, max_pages)

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        with source.local_file() as path:
            pdf = open_pdf(path)
            try:
                return self._parse_pdf(pdf, progress)
            finally:
                pdf.close()

    def _parse_pdf(self, pdf: Any, progress: ProgressFn) -> ParsedDocument:
        meta = pdf_metadata(pdf)
        n = len(pdf)
        read = min(n, self.max_pages)
        pages: list[list[str]] = []
        for i in range(read):
            page = pdf[i]
            try:
                pages.append(page_lines(page))
            finally:
                page.close()
            if (i + 1) % 100 == 0:
                progress("pages", i + 1, read)
        skip = running_lines(pages)
        textless = [i for i, lines in enumerate(pages) if sum(len(ln) for ln in lines) < MIN_TEXT_CHARS]
        doc_meta: dict[str, Any] = {"pages": n}
        ocr = self.ocr_pages(pdf, textless, progress, doc_meta)
        elements: list[Element] = []
        for i, lines in enumerate(pages):
            if i in ocr:
                elements += ocr[i]
            else:
                elements += lines_to_elements(lines, i + 1, skip)
        if read < n:
            doc_meta["pages_skipped"] = n - read
            doc_meta.setdefault("warnings", []).append(
                f"only the first {read:,} of {n:,} pages were read (the max_pages setting)"
            )
        return ParsedDocument(
            elements=elements,
            kind="scan" if self.ocr_enabled and read and len(textless) == read else "document",
            title=meta["title"],
            author=meta["author"],
            created_at=meta["created_at"],
            modified_at=meta["modified_at"],
            meta=doc_meta,
        )

    def ocr_pages(
        self, pdf: Any, indices: list[int], progress: ProgressFn, meta: dict[str, Any]
    ) -> dict[int, list[Element]]:
        """Elements of the pages at `indices` (0-based, no text layer) read some other way; none here."""
        meta["ocr_pages"] = 0
        return {}
