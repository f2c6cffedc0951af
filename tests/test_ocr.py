"""OCR of scans with the real tesseract: images, multi-page TIFFs, image-only and mixed PDFs, rotations."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from media_fixtures import corrupt_png, label, mixed_pdf, save_pdf, save_tiff, text_page
from PIL import Image

from ingest.errors import CorruptFile
from ingest.parsers.base import ParsedDocument, Source, no_progress
from ingest.parsers.ocr import ImageOcrParser, OcrPdfParser, OcrUnavailable, TesseractOcr
from ingest.parsers.registry import default_registry
from ingest.parsing import ParseConfig
from kb.errors import ModelMissingError

if TYPE_CHECKING:
    from kbapp.app import App  # the end-to-end tests' `app` fixture (conftest)

pytestmark = pytest.mark.slow  # tesseract subprocesses

HARBOUR = [
    "The harbour committee met on Tuesday to discuss the lighthouse keeper contract and the repairs "
    "to the northern pier.",
    "Members agreed that the fishing cooperative should pay half of the dredging costs before the "
    "winter storms arrive.",
]
BICYCLE = [
    "Invoice for the blue bicycle repair: a new chain, two tyres and a replacement saddle were fitted "
    "in the workshop.",
    "Payment is due within thirty days by bank transfer to the account printed on the reverse.",
]
ORCHARD = [
    "The orchard survey counted four hundred apple trees, ninety pear trees and one ancient walnut "
    "near the gate.",
    "Volunteers will prune the oldest trees in March and plant twenty cherry saplings along the fence.",
]


@pytest.fixture(scope="module")
def pages() -> dict[str, Image.Image]:
    return {
        "harbour": text_page(HARBOUR, title="Harbour Committee Minutes"),
        "bicycle": text_page(BICYCLE, title="Bicycle Workshop Invoice"),
        "orchard": text_page(ORCHARD, title="Orchard Survey Report"),
    }


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory, pages: dict[str, Image.Image]) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("scans")
    h, b, o = pages["harbour"], pages["bicycle"], pages["orchard"]
    h.save(d / "minutes.png")
    h.convert("RGB").save(d / "minutes.jpg", quality=90)
    return {
        "png": d / "minutes.png",
        "jpg": d / "minutes.jpg",
        # Page 2 lies on its side (turned 90 degrees counter-clockwise), page 3 is upside down.
        "pdf": save_pdf([h, b.rotate(90, expand=True), o.rotate(180)], d / "scanned.pdf"),
        "tiff": save_tiff([h, b, o], d / "fax.tiff"),
        "mixed": mixed_pdf(["Typed cover letter about the marina berth fees for next season."], o,
                           d / "mixed.pdf"),
        "label": _save(label("Fragile glassware inside").rotate(90, expand=True), d / "label.png"),
        "blank": _save(Image.new("L", (1000, 1300), 255), d / "blank.png"),
        "corrupt": corrupt_png(h, d / "broken.png"),
        "junk": _write(d / "junk.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" * 50),
    }


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.fixture(scope="module")
def ocr() -> TesseractOcr:
    return TesseractOcr("eng", threads=2)


@pytest.fixture(scope="module")
def images(ocr: TesseractOcr) -> ImageOcrParser:
    return ImageOcrParser(ocr)


@pytest.fixture(scope="module")
def pdfs(ocr: TesseractOcr) -> OcrPdfParser:
    return OcrPdfParser(ocr)


def _parse(parser: ImageOcrParser | OcrPdfParser, path: Path, file_type: str) -> ParsedDocument:
    return parser.parse(Source.from_path(path), file_type, no_progress)


def _text(doc: ParsedDocument, page: int | None = None) -> str:
    return " ".join(e.text for e in doc.elements if page is None or e.page == page).lower()


def test_image_scan_reads_text_into_paragraphs(images: ImageOcrParser, scans: dict[str, Path]) -> None:
    doc = _parse(images, scans["png"], "png")
    assert doc.kind == "scan"
    text = _text(doc)
    for phrase in ("harbour committee minutes", "lighthouse keeper contract", "fishing cooperative"):
        assert phrase in text
    assert len(doc.elements) >= 3  # title and two paragraphs, not one blob
    assert all(e.page == 1 and e.ocr for e in doc.elements)
    assert doc.elements[0].kind == "title"
    assert doc.meta["pages"] == 1
    assert doc.meta["ocr"][0]["confidence"] > 85
    assert doc.meta["ocr"][0]["rotation"] == 0


def test_jpeg_reads_too(images: ImageOcrParser, scans: dict[str, Path]) -> None:
    assert "dredging costs" in _text(_parse(images, scans["jpg"], "jpg"))


def test_multipage_tiff_every_page_with_its_number(images: ImageOcrParser, scans: dict[str, Path]) -> None:
    doc = _parse(images, scans["tiff"], "tiff")
    assert doc.meta["pages"] == 3
    assert [p["page"] for p in doc.meta["ocr"]] == [1, 2, 3]
    assert "lighthouse keeper" in _text(doc, 1)
    assert "replacement saddle" in _text(doc, 2)
    assert "cherry saplings" in _text(doc, 3)


def test_image_only_pdf_pages_are_turned_upright(pdfs: OcrPdfParser, scans: dict[str, Path]) -> None:
    doc = _parse(pdfs, scans["pdf"], "pdf")
    assert doc.kind == "scan"
    assert doc.meta["ocr_pages"] == 3
    assert "lighthouse keeper" in _text(doc, 1)
    assert "replacement saddle" in _text(doc, 2)  # was lying on its side
    assert "cherry saplings" in _text(doc, 3)  # was upside down
    by_page = {p["page"]: p for p in doc.meta["ocr"]}
    assert [by_page[n]["rotation"] for n in (1, 2, 3)] == [0, 90, 180]
    assert all(by_page[n]["confidence"] > 85 for n in (1, 2, 3))
    assert all(e.ocr for e in doc.elements)


def test_mixed_pdf_keeps_text_layer_and_ocrs_the_scan(pdfs: OcrPdfParser, scans: dict[str, Path]) -> None:
    doc = _parse(pdfs, scans["mixed"], "pdf")
    assert doc.kind == "document"
    assert doc.meta["ocr_pages"] == 1
    first = [e for e in doc.elements if e.page == 1]
    assert first and not any(e.ocr for e in first)
    assert "marina berth fees" in _text(doc, 1)
    second = [e for e in doc.elements if e.page == 2]
    assert second and all(e.ocr for e in second)
    assert "cherry saplings" in _text(doc, 2)
    assert [p["page"] for p in doc.meta["ocr"]] == [2]


def test_short_sideways_label_found_by_trying_rotations(images: ImageOcrParser, scans: dict[str, Path]) -> None:
    # Three words are too few for orientation detection: the low-confidence fallback must find the way up.
    doc = _parse(images, scans["label"], "png")
    assert "fragile glassware" in _text(doc)
    assert doc.meta["ocr"][0]["rotation"] == 90


def test_blank_image_gives_no_elements(images: ImageOcrParser, scans: dict[str, Path]) -> None:
    doc = _parse(images, scans["blank"], "png")
    assert doc.elements == []
    assert doc.meta["ocr"][0]["words"] == 0


@pytest.mark.parametrize("name", ["corrupt", "junk"])
def test_damaged_image_is_corrupt_file(images: ImageOcrParser, scans: dict[str, Path], name: str) -> None:
    with pytest.raises(CorruptFile) as err:
        _parse(images, scans[name], scans[name].suffix[1:])
    assert "image" in str(err.value)


def test_missing_language_names_debian_package(scans: dict[str, Path]) -> None:
    parser = ImageOcrParser(TesseractOcr("eng+chi_sim_vert+xyz"))
    with pytest.raises(OcrUnavailable) as err:
        _parse(parser, scans["png"], "png")
    msg = str(err.value)
    assert "tesseract-ocr-chi-sim-vert" in msg and "tesseract-ocr-xyz" in msg
    assert isinstance(err.value, ModelMissingError)


def test_registry_takes_ocr_languages_from_parse_config(scans: dict[str, Path]) -> None:
    config = ParseConfig(tokenizer_dir=None, max_tokens=256, target_tokens=128, max_unpacked_bytes=2**30,
                         ocr_languages="eng+xyz", threads=2)
    source = Source.from_path(scans["png"])
    parser, file_type = default_registry(config).for_source(source)
    with pytest.raises(OcrUnavailable, match="tesseract-ocr-xyz"):
        parser.parse(source, file_type, no_progress)


def test_registry_routes_images_and_pdfs_to_ocr() -> None:
    reg = default_registry(2**30)
    for ext in ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "gif", "webp"):
        assert isinstance(reg.for_source(Source.from_path(Path(f"x.{ext}")))[0], ImageOcrParser)
    assert isinstance(reg.for_source(Source.from_path(Path("x.pdf")))[0], OcrPdfParser)


# -- end to end: ingest scans into a real app and search them ---------------------------------------
def test_search_finds_scanned_phrase_with_its_page(
    app: App, scans: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    folder = tmp_path_factory.mktemp("inbox")
    for name in ("pdf", "blank", "corrupt"):
        (folder / scans[name].name).write_bytes(scans[name].read_bytes())
    report = app.ingest([folder])
    assert (report["added"], report["empty"], report["failed"]) == (1, 1, 1), report  # the blank image is empty
    assert [Path(f["path"]).name for f in report["failures"]] == ["broken.png"]

    hits = app.search("replacement saddle for the bicycle", k=3)
    assert hits and hits[0]["kind"] == "scan"
    assert hits[0]["page"] == 2
    assert hits[0]["ocr"]
    assert "saddle" in hits[0]["text"].lower()

    hits = app.search("cherry saplings along the fence", k=3)
    assert hits and hits[0]["page"] == 3
