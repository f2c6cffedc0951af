"""OCR with Tesseract: scanned images (every page of a multi-page TIFF) and PDF pages without a text layer.

Each page is read in one tesseract pass in page segmentation mode 1 (layout analysis plus orientation and
script detection from tesseract-ocr-osd), which reads pages turned 90/180/270 degrees and tolerates mild
skew. OSD needs a fair amount of text; when a page comes back with low confidence the other three
rotations are tried and the most confident reading wins. Pages run in parallel threads, one
single-threaded tesseract process each: tesseract's OpenMP threads only fight each other on a busy CPU.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ingest.errors import CorruptFile, FileTooLarge, IngestError
from ingest.parsers.base import Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.pdf import MAX_PAGES, PdfParser, lines_to_elements
from kb.errors import ModelMissingError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

IMAGE_TYPES = ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp")
PDF_DPI = 300
# A page rendered for OCR is capped in pixels (an A0 poster at 300 dpi would be 140 MP).
MAX_RENDER_PIXELS = 50_000_000
# Blank-page check: the page is looked at with its longer side about this many pixels (~50 dpi for A4), where
# scanner dust and noise average away but a short word still leaves BLANK_MIN_INK pixels that differ from
# the paper by more than BLANK_CONTRAST grey levels. Measured on generated pages: a full page of mid-grey
# text ~3,000 such pixels, a lone "Yes" ~60, a tiny "ok" ~19; 0.2 % black specks 0, 1 % specks ~23.
BLANK_CHECK_PX = 600
BLANK_CONTRAST = 56
BLANK_MIN_INK = 16
# Below this mean word confidence (0-100) a page may be sideways or upside down: try the other rotations.
LOW_CONFIDENCE = 60.0
# Words below this confidence without a single letter or digit are specks and picture edges, not text.
NOISE_CONFIDENCE = 50.0
PAGE_TIMEOUT_S = 300.0

_ROTATION_IN_HOCR = re.compile(r"textangle (\d+)")
_HOCR_LINE = re.compile(r"class='ocr_(?:line|caption|header|textfloat)'")
_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


class OcrUnavailable(IngestError, ModelMissingError):
    """Tesseract or one of the configured OCR languages is not installed; the message names the package."""


def debian_package(lang: str) -> str:
    """The Debian package carrying a tesseract language, e.g. chi_sim -> tesseract-ocr-chi-sim."""
    return "tesseract-ocr-" + lang.lower().replace("_", "-")


@dataclass
class PageOcr:
    """The OCR result of one page: its elements and how the reading went."""

    page: int
    elements: list[Element]
    confidence: float | None  # mean word confidence 0-100; None when no words were found
    rotation: int  # degrees the page was turned clockwise to read it upright
    words: int
    seconds: float
    text: str = field(default="", repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "page": self.page, "confidence": self.confidence, "rotation": self.rotation,
            "words": self.words, "seconds": round(self.seconds, 2),
        }


@dataclass
class _Word:
    block: int
    par: int
    line: int
    text: str
    conf: float


@dataclass
class _Reading:
    """One tesseract pass over a page in one orientation."""

    words: list[_Word]
    rotation: int

    @property
    def confidence(self) -> float | None:
        return sum(w.conf for w in self.words) / len(self.words) if self.words else None

    def score(self) -> float:
        # Confident characters: the upright reading has many, a sideways one few and doubtful ones.
        return sum(len(w.text) * (w.conf / 100) ** 2 for w in self.words)


class TesseractOcr:
    """Runs tesseract on page images, several pages at once up to a thread budget."""

    def __init__(self, languages: str = "eng", threads: int = 1, timeout_s: float = PAGE_TIMEOUT_S) -> None:
        self.languages = languages
        self.threads = max(1, threads)
        self.timeout_s = timeout_s
        self._checked = False
        self._osd = True
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def check(self) -> None:
        """Fail early and clearly when tesseract or a configured language is missing (checked once)."""
        if self._checked:
            return
        import pytesseract

        cmd = pytesseract.pytesseract.tesseract_cmd
        if shutil.which(cmd) is None:
            raise OcrUnavailable("tesseract is not installed: install the Debian package tesseract-ocr")
        try:
            installed = set(pytesseract.get_languages())
        except pytesseract.TesseractNotFoundError:
            raise OcrUnavailable("tesseract is not installed: install the Debian package tesseract-ocr") from None
        missing = [lang for lang in self.languages.split("+") if lang not in installed]
        if missing:
            pkgs = " ".join(debian_package(m) for m in missing)
            raise OcrUnavailable(
                f"OCR language{'s' if len(missing) > 1 else ''} {', '.join(missing)} not installed for "
                f"tesseract: install the Debian package{'s' if len(missing) > 1 else ''} {pkgs} "
                f"(apt-get install {pkgs}) or change the ocr_languages setting"
            )
        self._osd = "osd" in installed
        if not self._osd:
            log.warning("tesseract-ocr-osd is not installed: page orientation is guessed from confidence")
        self._checked = True

    # -- one page ---------------------------------------------------------------------------------
    def ocr(self, image: Image.Image, page: int, dpi: int | None = None, bands: int = 1) -> PageOcr:
        """OCR one page image, turning it upright first. Raises IngestError on tesseract failure.

        With bands > 1 (idle cores and a lone page) the page is cut at blank rows into bands read in
        parallel: tesseract's own threads barely help, separate processes halve the wait.
        """
        from PIL import Image

        self.check()
        t0 = time.perf_counter()
        img = to_gray(image)
        best = self._read_bands(img, 1 if self._osd else 3, dpi, page, bands)
        conf = best.confidence
        if (conf is None or conf < LOW_CONFIDENCE) and _has_ink(img):
            # OSD needs ~50 characters; a label or a sparse form may be sideways with no verdict.
            for rot, op in ((90, Image.Transpose.ROTATE_270), (180, Image.Transpose.ROTATE_180),
                            (270, Image.Transpose.ROTATE_90), (0, None)):
                if rot == best.rotation:
                    continue
                turned = img.transpose(op) if op is not None else img
                cand = self._read(turned, 3, dpi, page)
                cand.rotation = (rot + cand.rotation) % 360  # tesseract may turn vertical lines itself
                if cand.score() > best.score():
                    best = cand
        lines = _lines(best.words)
        elements = lines_to_elements(lines, page, set(), ocr=True)
        conf = best.confidence
        return PageOcr(
            page=page, elements=elements, confidence=None if conf is None else round(conf, 1),
            rotation=best.rotation, words=len(best.words), seconds=time.perf_counter() - t0,
            text="\n".join(lines).strip(),
        )

    def _read(self, img: Image.Image, psm: int, dpi: int | None, page: int) -> _Reading:
        tsv, hocr = self._run(img, psm, dpi, page)
        return _Reading(_parse_tsv(tsv), _hocr_rotation(hocr))

    def _read_bands(self, img: Image.Image, psm: int, dpi: int | None, page: int, bands: int) -> _Reading:
        cut = _blank_row_near_middle(img) if bands > 1 else None
        if cut is None:
            return self._read(img, psm, dpi, page)
        w, h = img.size
        halves = (img.crop((0, 0, w, cut)), img.crop((0, cut, w, h)))
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="kb-ocr-band") as pool:
            top, bottom = pool.map(lambda band: self._read(band, psm, dpi, page), halves)
        if top.words and bottom.words and top.rotation != bottom.rotation:
            return self._read(img, psm, dpi, page)  # the bands disagree: the cut was not between lines
        shift = max((wd.block for wd in top.words), default=0) + 1
        words = top.words + [_Word(wd.block + shift, wd.par, wd.line, wd.text, wd.conf) for wd in bottom.words]
        rotation = top.rotation if len(top.words) >= len(bottom.words) else bottom.rotation
        return _Reading(words, rotation)

    def _run(self, img: Image.Image, psm: int, dpi: int | None, page: int) -> tuple[str, str]:
        """One tesseract process on one page image; returns its TSV and hOCR output."""
        import pytesseract

        with tempfile.TemporaryDirectory(prefix="kb-ocr-") as tmp:
            src, base = Path(tmp) / "page.bmp", str(Path(tmp) / "out")
            # BMP: written in ~5 ms where PNG takes ~100 ms, and tesseract reads it no slower (PGM or
            # stdin cost it 0.1-0.3 s more per 300-dpi page).
            img.save(src, format="BMP")
            # Run directly rather than through pytesseract.image_to_data: that gives one output format per
            # run and always passes this process's environment, while each process here must be held to
            # one OpenMP thread (/usr/bin/env adds the variable): pages run in parallel, and tesseract's
            # own threads only oversubscribe the CPU (measured here: two pages at once took 162 s, not 9 s).
            cmd = ["env", "OMP_THREAD_LIMIT=1", pytesseract.pytesseract.tesseract_cmd, str(src), base,
                   "-l", self.languages, "--psm", str(psm), "-c", "tessedit_do_invert=0"]
            if dpi:
                cmd += ["--dpi", str(dpi)]
            cmd += ["tsv", "hocr"]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise IngestError(f"OCR of page {page} took longer than {self.timeout_s:.0f} s") from None
            except FileNotFoundError:
                raise OcrUnavailable("tesseract is not installed: install the Debian package tesseract-ocr") from None
            if proc.returncode != 0:
                err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
                raise IngestError(f"tesseract failed on page {page}: {err[-1] if err else proc.returncode}")
            try:
                tsv = Path(base + ".tsv").read_text(encoding="utf-8", errors="replace")
                hocr = Path(base + ".hocr").read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                raise IngestError(f"tesseract produced no output for page {page}") from None
        return tsv, hocr

    # -- many pages -------------------------------------------------------------------------------
    def submit(self, image: Image.Image, page: int, dpi: int | None = None) -> Future[PageOcr]:
        """OCR a page in the background thread pool (thread budget = self.threads)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="kb-ocr")
            return self._pool.submit(self.ocr, image, page, dpi)

    def ocr_pages(self, pages: Iterable[tuple[int, Image.Image, int | None]]) -> Iterator[PageOcr]:
        """OCR (page, image, dpi) items in order, up to `threads` at once; images are pulled lazily.

        Tesseract is checked at the first page, so a document whose pages are all skipped needs none.
        """
        items = iter(pages)
        first = next(items, None)
        if first is None:
            return
        self.check()
        if self.threads == 1:
            for page, img, dpi in itertools.chain((first,), items):
                yield self.ocr(img, page, dpi)
            return
        second = next(items, None)
        if second is None:  # a lone page: spend the idle threads inside it
            yield self.ocr(first[1], first[0], first[2], bands=self.threads)
            return
        pending: deque[Future[PageOcr]] = deque()
        try:
            for page, img, dpi in itertools.chain((first, second), items):
                pending.append(self.submit(img, page, dpi))
                if len(pending) >= self.threads:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()


# -- helpers ---------------------------------------------------------------------------------------
def to_gray(image: Image.Image) -> Image.Image:
    """8-bit grayscale on white: what tesseract binarises best, at a third of the RGB bytes."""
    from PIL import Image

    img = image
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np

        arr = np.asarray(img, dtype=np.float32)
        top = float(arr.max()) or 1.0
        return Image.fromarray((arr * (255.0 / top)).clip(0, 255).astype("uint8"), "L")
    if img.mode == "L":
        return img
    if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("L")


def _has_ink(img: Image.Image) -> bool:
    """Whether a gray page has any dark marks at all (a blank page is not worth turning around)."""
    hist = img.histogram()
    total = sum(hist) or 1
    return sum(hist[:128]) / total > 0.0005


def ink_pixels(img: Image.Image, contrast: int = BLANK_CONTRAST) -> int:
    """Pixels of a gray image that stand out from its background (the median) by more than `contrast`.

    Relative to the background, so grey or yellowed paper, faint print and white-on-black all count.
    """
    hist = img.histogram()[:256]
    half, seen, background = sum(hist) / 2, 0, 255
    for level, n in enumerate(hist):
        seen += n
        if seen >= half:
            background = level
            break
    return sum(hist[: max(0, background - contrast)]) + sum(hist[background + contrast + 1 :])


def is_blank(img: Image.Image) -> bool:
    """Whether a gray page image has essentially no ink: not worth a tesseract run.

    Looked at shrunk to about BLANK_CHECK_PX (box-averaged, so scanner dust and noise fade into the
    background while even a short word stays dark): cheap next to OCR.
    """
    factor = max(1, round(max(img.size) / BLANK_CHECK_PX))
    small = img.reduce(factor) if factor > 1 else img
    return ink_pixels(small) < BLANK_MIN_INK


def _blank_row_near_middle(img: Image.Image, min_gap: int = 8) -> int | None:
    """A row in the middle 40 % of the page inside a run of blank rows (a gap between text lines).

    Pages turned 90 degrees have lines running top to bottom and so no such gap: they are not cut.
    """
    import numpy as np

    arr = np.asarray(img)
    h = arr.shape[0]
    if h < 200:
        return None
    blank = (arr < 128).sum(axis=1) <= max(2, arr.shape[1] // 500)
    lo, hi = int(h * 0.3), int(h * 0.7)
    best: int | None = None
    run = 0
    for y in range(lo, hi):
        run = run + 1 if blank[y] else 0
        if run >= min_gap:
            mid = y - run // 2
            if best is None or abs(mid - h // 2) < abs(best - h // 2):
                best = mid
    return best


def _parse_tsv(tsv: str) -> list[_Word]:
    words: list[_Word] = []
    rows = csv.reader(io.StringIO(tsv), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(rows, None)
    if not header:
        return words
    col = {name: i for i, name in enumerate(header)}
    for row in rows:
        if len(row) < len(header) or row[col["level"]] != "5":
            continue
        text = row[col["text"]].strip()
        try:
            conf = float(row[col["conf"]])
        except ValueError:
            continue
        if not text or conf < 0:
            continue
        if conf < NOISE_CONFIDENCE and not any(c.isalnum() for c in text):
            continue
        words.append(_Word(int(row[col["block_num"]]), int(row[col["par_num"]]), int(row[col["line_num"]]),
                           text, conf))
    return words


def _hocr_rotation(hocr: str) -> int:
    """The page rotation tesseract applied: most text lines of a turned page carry a textangle."""
    angles = _ROTATION_IN_HOCR.findall(hocr)
    lines = len(_HOCR_LINE.findall(hocr))
    if not angles or len(angles) * 2 < lines:
        return 0
    counts: dict[str, int] = {}
    for a in angles:
        counts[a] = counts.get(a, 0) + 1
    return int(max(counts, key=lambda a: counts[a])) % 360


def _lines(words: list[_Word]) -> list[str]:
    """Text lines in reading order with an empty line between tesseract's paragraphs."""
    lines: list[str] = []
    key: tuple[int, int, int] | None = None
    for w in words:
        k = (w.block, w.par, w.line)
        if key is None or k != key:
            if key is not None and k[:2] != key[:2]:
                lines.append("")
            lines.append(w.text)
            key = k
        else:
            lines[-1] += " " + w.text
    return lines


def summarise(pages: list[PageOcr]) -> dict[str, Any]:
    """Per-page confidences plus a word-weighted mean, for ParsedDocument.meta."""
    words = sum(p.words for p in pages if p.confidence is not None)
    mean = sum((p.confidence or 0) * p.words for p in pages) / words if words else None
    return {"ocr": [p.summary() for p in pages], "ocr_confidence": None if mean is None else round(mean, 1)}


# -- images ----------------------------------------------------------------------------------------
def _open_image(f: BinaryIO) -> Image.Image:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(f)
        img.load()  # decode now: truncation and bad data surface here, not halfway through OCR
        return img
    except Image.DecompressionBombError:
        raise FileTooLarge("the image has too many pixels to OCR safely") from None
    except UnidentifiedImageError:
        raise CorruptFile("not a readable image (damaged, or not what its extension says)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptFile(f"damaged or truncated image ({exc})") from None


def _dpi(img: Image.Image) -> int | None:
    """The resolution the file declares, when believable (72 dpi camera JPEGs are not 72 dpi)."""
    dpi = img.info.get("dpi")
    try:
        x = round(float(dpi[0])) if dpi else 0
    except (TypeError, ValueError, IndexError):
        return None
    return x if 100 <= x <= 1200 else None


def _frames(img: Image.Image, n: int) -> Iterator[tuple[int, Image.Image, int | None]]:
    """Pages of an image file, decoded one at a time so a 500-page TIFF never sits in memory whole."""
    from PIL import ImageOps

    for i in range(n):
        try:
            if i:
                img.seek(i)
                img.load()
            # Phone photos are stored sideways with an EXIF note; later TIFF pages have none to honour.
            frame = ImageOps.exif_transpose(img) if i == 0 else img
            gray = to_gray(frame)
            if gray is img:  # the OCR thread must not see the next seek()
                gray = img.copy()
            yield i + 1, gray, _dpi(img)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise CorruptFile(f"damaged or truncated image at page {i + 1} ({exc})") from None


def _exif_date(img: Image.Image) -> str | None:
    try:
        exif = img.getexif()
        value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)  # DateTimeOriginal, DateTime
    except Exception:
        return None
    m = _EXIF_DATE.match(str(value or ""))
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(g) for g in m.groups())
    try:
        return datetime(y, mo, d, h, mi, sec).isoformat()
    except ValueError:
        return None


class ImageOcrParser:
    """Scans and photos of text: every page OCR'd, one or more elements per page, kind 'scan'.

    Blank pages of a multi-page TIFF are skipped (a lone image is always read, to report its reading),
    and pages past `max_pages` are not read at all.
    """

    name = "ocr"
    # 2: blank TIFF pages are not OCR'd; pages past max_pages are skipped with a warning.
    version = 2

    def __init__(self, ocr: TesseractOcr, max_pages: int = MAX_PAGES) -> None:
        self.ocr = ocr
        self.max_pages = max(1, max_pages)

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        self.ocr.check()  # a missing language is the clearer error, before the image is even read
        with source.open() as f:
            img = _open_image(f)
            try:
                frames = getattr(img, "n_frames", 1) if file_type in ("tif", "tiff") else 1
                n = min(frames, self.max_pages)
                created = _exif_date(img)
                pages: list[PageOcr] = []
                blank: list[int] = []

                def to_read() -> Iterator[tuple[int, Image.Image, int | None]]:
                    for page, gray, dpi in _frames(img, n):
                        if n > 1 and is_blank(gray):
                            blank.append(page)
                            progress("ocr", len(pages) + len(blank), n)
                            continue
                        yield page, gray, dpi

                for res in self.ocr.ocr_pages(to_read()):
                    pages.append(res)
                    progress("ocr", len(pages) + len(blank), n)
            finally:
                img.close()
        meta: dict[str, Any] = {"pages": frames, "ocr_pages": len(pages), "blank_pages": len(blank),
                                **summarise(pages)}
        if n < frames:
            meta["pages_skipped"] = frames - n
            meta["warnings"] = [f"only the first {n:,} of {frames:,} pages were read (the max_pages setting)"]
        return ParsedDocument(
            elements=[e for p in pages for e in p.elements], kind="scan", created_at=created, meta=meta,
        )


# -- PDFs ------------------------------------------------------------------------------------------
def render_page(pdf: Any, index: int, dpi: int = PDF_DPI) -> tuple[Image.Image, int]:
    """Render one PDF page in grayscale at `dpi` (less for huge pages). Returns (image, actual dpi)."""
    import math

    page = pdf[index]
    try:
        w, h = page.get_size()
        scale = dpi / 72
        if w * h * scale * scale > MAX_RENDER_PIXELS:
            scale = math.sqrt(MAX_RENDER_PIXELS / max(1.0, w * h))
        img = page.render(scale=scale, grayscale=True).to_pil()
    finally:
        page.close()
    return to_gray(img), round(scale * 72)


def pdf_page_blank(pdf: Any, index: int) -> bool:
    """Whether a PDF page shows essentially nothing: no page objects at all, or no ink at low resolution."""
    import pypdfium2.raw as pdfium_c

    page = pdf[index]
    try:
        if pdfium_c.FPDFPage_CountObjects(page.raw) == 0:
            return True
        w, h = page.get_size()
        scale = BLANK_CHECK_PX / max(1.0, w, h)
        img = page.render(scale=scale, grayscale=True).to_pil()
    finally:
        page.close()
    return is_blank(to_gray(img))


class OcrPdfParser(PdfParser):
    """PdfParser with OCR for pages that have no text layer; adds per-page OCR confidence to meta.

    Text-less pages are checked for ink at low resolution first: a blank one costs milliseconds, not a
    tesseract run. The rest are rendered at 300 dpi in this thread (PDFium is not thread-safe) while
    earlier pages are being read by tesseract in the OCR thread pool.
    """

    ocr_enabled = True

    def __init__(self, ocr: TesseractOcr, max_pages: int = MAX_PAGES) -> None:
        super().__init__(max_pages=max_pages)
        self.ocr = ocr

    def ocr_pages(
        self, pdf: Any, indices: list[int], progress: ProgressFn, meta: dict[str, Any]
    ) -> dict[int, list[Element]]:
        results: list[PageOcr] = []
        blank: list[int] = []
        total = len(indices)

        def to_read() -> Iterator[tuple[int, Image.Image, int | None]]:
            for i in indices:
                if self._blank(pdf, i):
                    blank.append(i + 1)
                    progress("ocr", len(results) + len(blank), total)
                    continue
                img, dpi = self._render(pdf, i)
                yield i + 1, img, dpi

        for res in self.ocr.ocr_pages(to_read()):
            results.append(res)
            progress("ocr", len(results) + len(blank), total)
        meta["ocr_pages"] = len(results)
        meta["blank_pages"] = len(blank)
        if results:
            meta.update(summarise(results))
        return {r.page - 1: r.elements for r in results}

    def _blank(self, pdf: Any, index: int) -> bool:
        import pypdfium2 as pdfium

        try:
            return pdf_page_blank(pdf, index)
        except pdfium.PdfiumError:
            return False  # let the full render report the damage

    def _render(self, pdf: Any, index: int) -> tuple[Image.Image, int]:
        import pypdfium2 as pdfium

        try:
            return render_page(pdf, index)
        except pdfium.PdfiumError as exc:
            raise CorruptFile(f"page {index + 1} of the PDF cannot be rendered for OCR ({exc})") from None
