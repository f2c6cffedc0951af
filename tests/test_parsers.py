"""Every supported format parses into structured elements with its metadata (real parsers, no model)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import write_all_formats

from ingest.parsers.base import TABLE, TITLE, ParsedDocument, ParserRegistry, Source, no_progress
from ingest.parsers.registry import default_registry

EXPECT = {
    "pdf": "harbour authority approved",
    "docx": "tomatoes ripened early",
    "pptx": "rocket launches on tuesday",
    "xlsx": "quinces",
    "csv": "magpie",
    "tsv": "birch",
    "html": "sells sourdough bread",
    "md": "vulcanising glue",
    "rst": "reef the mainsail",
    "org": "inspect the hive",
    "txt": "basalt lava",
    "eml": "leaking boiler",
    "epub": "polished the great lens",
    "odt": "rehearses madrigals",
    "rtf": "pottery kiln",
    "json": "telescope.mount: equatorial",
    "xml": "glacier atlas",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_all_formats(tmp_path_factory.mktemp("formats"))


@pytest.fixture(scope="module")
def registry() -> ParserRegistry:
    return default_registry(2**30)


def parse(registry: ParserRegistry, path: Path) -> ParsedDocument:
    """Parse a file the way the pipeline does: pick the parser by source, no progress reporting."""
    source = Source.from_path(path)
    parser, file_type = registry.for_source(source)
    return parser.parse(source, file_type, no_progress)


@pytest.mark.parametrize("fmt", sorted(EXPECT))
def test_format_text_extracted(fmt: str, files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files[fmt])
    text = "\n".join(e.text for e in doc.elements).lower()
    assert EXPECT[fmt] in text


def test_pdf_pages_and_metadata(files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files["pdf"])
    assert doc.title == "Harbour Report" and doc.author == "Hannah Harbour"
    assert doc.created_at and doc.created_at[:2] == "20"
    pages = {e.page for e in doc.elements if "three million" in e.text}
    assert pages == {2}
    assert any(e.kind == TITLE and e.text == "Costs" for e in doc.elements)


@pytest.mark.parametrize(
    "fmt,title,author",
    [
        ("docx", "Quarterly Garden Report", "Grace Gardener"),
        ("pptx", "Launch Plan", "Pat Presenter"),
        ("xlsx", "Inventory", "Sam Sheets"),
        ("html", "Bakery Hours", "Bea Baker"),
        ("eml", "Plumber visit on Friday", "Alice Example <alice@example.org>"),
        ("epub", "Lighthouse Stories", "Ed Epub"),
    ],
)
def test_title_and_author(fmt: str, title: str, author: str, files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files[fmt])
    assert doc.title == title
    assert doc.author == author


def test_docx_structure(files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files["docx"])
    kinds = [(e.kind, e.text) for e in doc.elements]
    assert (TITLE, "Budget") in kinds
    table = next(e for e in doc.elements if e.kind == TABLE)
    assert table.text.splitlines() == ["Item | Cost", "Compost | 40", "Seeds | 12"]
    assert doc.created_at is not None


@pytest.mark.parametrize("fmt,row", [("csv", "magpie | 2"), ("tsv", "birch | 15")])
def test_delimited_files_are_tables(fmt: str, row: str, files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files[fmt])
    assert [e.kind for e in doc.elements] == [TABLE] and row in doc.elements[0].text.splitlines()


def test_mail_dates_and_kind(files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files["eml"])
    assert doc.kind == "mail"
    assert doc.created_at and doc.created_at.startswith("2024-05-03")
    assert "Subject: Plumber visit on Friday" in doc.elements[0].text


def test_html_scripts_not_indexed(files: dict[str, Path], registry: ParserRegistry) -> None:
    doc = parse(registry, files["html"])
    assert "do not index" not in " ".join(e.text for e in doc.elements)


def test_text_encodings(tmp_path: Path, registry: ParserRegistry) -> None:
    samples = {
        "u16.txt": "Grüße aus Köln".encode("utf-16"),
        "u16le.txt": "Grüße aus Köln".encode("utf-16-le"),
        "u32.txt": "Grüße aus Köln".encode("utf-32"),
        "cp.txt": "Grüße aus Köln, café".encode("cp1252"),
        "bom.txt": b"\xef\xbb\xbf" + "Grüße aus Köln".encode(),
    }
    for name, data in samples.items():
        p = tmp_path / name
        p.write_bytes(data)
        doc = parse(registry, p)
        assert "Grüße aus Köln" in doc.elements[0].text, name


def test_unknown_extension_read_as_text_when_it_is_text(tmp_path: Path, registry: ParserRegistry) -> None:
    readme = tmp_path / "README"
    readme.write_text("Install the widget before the gizmo.\n")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)) * 10)
    assert registry.supports(Source.from_path(readme)) and not registry.supports(Source.from_path(binary))
    assert "widget" in parse(registry, readme).elements[0].text
