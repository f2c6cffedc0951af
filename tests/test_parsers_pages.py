"""Long and blank documents: blank pages skip tesseract, pages past max_pages are not read (real tesseract)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fixtures import write_blank_pdf, write_pdf
from media_fixtures import save_pdf, save_tiff, text_page
from PIL import Image

from ingest.parsers.base import ParsedDocument, Source
from ingest.parsers.ocr import ImageOcrParser, OcrPdfParser, PageOcr, TesseractOcr, is_blank

NOTICE = ["The allotment society meets on the first Saturday of every month to share seeds and tools."]


class CountingOcr(TesseractOcr):
    """The real tesseract runner, counting the pages it is asked to read."""

    def __init__(self) -> None:
        super().__init__("eng", threads=2)
        self.pages: list[int] = []

    def ocr(self, image: Image.Image, page: int, dpi: int | None = None, bands: int = 1) -> PageOcr:
        self.pages.append(page)
        return super().ocr(image, page, dpi, bands)


class Progress:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, float | None]] = []

    def __call__(self, stage: str, done: float, total: float | None = None) -> None:
        self.calls.append((stage, done, total))


def parse(parser: Any, path: Path, file_type: str, progress: Progress | None = None) -> ParsedDocument:
    doc: ParsedDocument = parser.parse(Source.from_path(path), file_type, progress or Progress())
    return doc


def speckled_page(seed: int, width: int = 1275, height: int = 1650) -> Image.Image:
    """An off-white 'blank' scan with scanner dust: not text, and not worth OCR."""
    rng = np.random.default_rng(seed)
    arr = np.full((height, width), 238, np.uint8)
    arr[rng.random(arr.shape) < 0.002] = 0
    return Image.fromarray(arr, "L")


def test_blank_check_keeps_a_single_word_and_faint_print() -> None:
    assert is_blank(Image.new("L", (1275, 1650), 255))
    assert is_blank(Image.new("L", (1275, 1650), 200))  # grey paper is still blank paper
    assert is_blank(speckled_page(1))
    assert not is_blank(text_page(["Yes"]))
    faint = text_page(NOTICE * 3)
    faint = faint.point(lambda v: 150 if v < 128 else 245)  # mid-grey print on off-white paper
    assert not is_blank(faint)
    assert not is_blank(faint.point(lambda v: 255 - v))  # white on black


def test_300_blank_pages_skip_ocr(tmp_path: Path) -> None:
    pdf = write_blank_pdf(tmp_path / "blank.pdf", 300)
    ocr = CountingOcr()
    progress = Progress()
    t0 = time.perf_counter()
    doc = parse(OcrPdfParser(ocr), pdf, "pdf", progress)
    assert time.perf_counter() - t0 < 10
    assert ocr.pages == []
    assert doc.elements == []
    assert doc.meta["blank_pages"] == 300 and doc.meta["ocr_pages"] == 0 and doc.meta["pages"] == 300
    assert "pages_skipped" not in doc.meta and "warnings" not in doc.meta
    assert progress.calls[-1] == ("ocr", 300, 300)


@pytest.mark.slow  # tesseract reads the page with text
def test_blank_scanned_pages_skip_ocr_but_text_pages_are_read(tmp_path: Path) -> None:
    pages = [speckled_page(i) for i in range(6)]
    pages.insert(3, text_page(NOTICE))
    pdf = save_pdf(pages, tmp_path / "scan.pdf")
    ocr = CountingOcr()
    doc = parse(OcrPdfParser(ocr), pdf, "pdf")
    assert ocr.pages == [4]
    assert doc.meta["blank_pages"] == 6 and doc.meta["ocr_pages"] == 1
    assert doc.kind == "scan"
    assert {e.page for e in doc.elements} == {4}
    assert "allotment society" in " ".join(e.text for e in doc.elements).lower()


@pytest.mark.slow  # tesseract reads the page with text
def test_blank_tiff_frames_skip_ocr(tmp_path: Path) -> None:
    tiff = save_tiff([Image.new("L", (1275, 1650), 255), text_page(NOTICE), speckled_page(7)], tmp_path / "fax.tiff")
    ocr = CountingOcr()
    progress = Progress()
    doc = parse(ImageOcrParser(ocr), tiff, "tiff", progress)
    assert ocr.pages == [2]
    assert doc.meta["pages"] == 3 and doc.meta["blank_pages"] == 2 and doc.meta["ocr_pages"] == 1
    assert {e.page for e in doc.elements} == {2}
    assert progress.calls[-1] == ("ocr", 3, 3)


def test_pages_past_max_pages_are_not_read(tmp_path: Path) -> None:
    pdf = write_blank_pdf(tmp_path / "long.pdf", 300)
    doc = parse(OcrPdfParser(CountingOcr(), max_pages=100), pdf, "pdf")
    assert doc.meta["pages"] == 300 and doc.meta["pages_skipped"] == 200 and doc.meta["blank_pages"] == 100
    assert doc.meta["warnings"] == ["only the first 100 of 300 pages were read (the max_pages setting)"]

    text = write_pdf(tmp_path / "text.pdf", [f"Chapter {i}\nThe chapter about topic number {i} begins." for i in
                                             range(1, 6)])
    doc = parse(OcrPdfParser(CountingOcr(), max_pages=2), text, "pdf")
    body = " ".join(e.text for e in doc.elements)
    assert "topic number 2" in body and "topic number 3" not in body
    assert doc.meta["pages_skipped"] == 3 and doc.meta["warnings"]


@pytest.mark.slow  # tesseract reads the page with text
def test_tiff_frames_past_max_pages_are_not_read(tmp_path: Path) -> None:
    tiff = save_tiff([text_page(NOTICE), Image.new("L", (600, 800), 255), Image.new("L", (600, 800), 255)],
                     tmp_path / "long.tiff")
    ocr = CountingOcr()
    doc = parse(ImageOcrParser(ocr, max_pages=2), tiff, "tiff")
    assert ocr.pages == [1]
    assert doc.meta["pages"] == 3 and doc.meta["pages_skipped"] == 1 and doc.meta["blank_pages"] == 1
    assert doc.meta["warnings"] == ["only the first 2 of 3 pages were read (the max_pages setting)"]
