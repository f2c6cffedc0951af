"""Hostile input: zip bombs, absurdly deep HTML, file names that are not UTF-8, sources without a file.

Each must end in a clear recorded reason or in the text kept, never a crash or a silently empty result.
Every fixture is generated here.
"""

from __future__ import annotations

import os
import time
import zipfile
from pathlib import Path

import pytest
from fixtures import write_all_formats, write_docx, write_eml, write_pdf, write_zip_bomb_docx

from ingest.errors import CorruptFile
from ingest.parsers.base import ParsedDocument, ParserRegistry, Source, no_progress
from ingest.parsers.documents import UnstructuredParser
from ingest.parsers.registry import default_registry

APP_UNPACK_LIMIT = 4 * 1024**3  # what the app allows a container to unpack to in total


@pytest.fixture(scope="module")
def registry() -> ParserRegistry:
    return default_registry(APP_UNPACK_LIMIT)


def parse(registry: ParserRegistry, source: Source) -> ParsedDocument:
    parser, file_type = registry.for_source(source)
    return parser.parse(source, file_type, no_progress)


def text_of(doc: ParsedDocument) -> str:
    return "\n".join(e.text for e in doc.elements)


# -- zip bombs -----------------------------------------------------------------------------------------
def test_docx_bomb_refused_before_parsing(tmp_path: Path, registry: ParserRegistry) -> None:
    bomb = write_zip_bomb_docx(tmp_path / "bomb.docx", member_mib=300)
    assert bomb.stat().st_size < 4 * 1024**2  # small on disk, far under any file size limit
    t0 = time.perf_counter()
    with pytest.raises(CorruptFile) as err:
        parse(registry, Source.from_path(bomb))
    assert time.perf_counter() - t0 < 5  # refused from the zip directory, not after inflating it
    msg = str(err.value)
    assert "refused as a zip bomb" in msg and "word/document.xml" in msg and "300.0 MiB" in msg


@pytest.mark.parametrize(
    ("member", "expect"),
    [("word/part{}.xml", r"its XML parts unpack to 8\.0 MiB \(limit 2\.0 MiB\)"),
     ("word/media/image{}.bin", r"unpacks to 8\.0 MiB \(limit 4\.0 MiB\)")],
)
def test_parts_adding_up_past_the_limits_refused(tmp_path: Path, member: str, expect: str) -> None:
    # Many parts, each modest and each compressing like real content, adding up to more than a limit.
    path = tmp_path / "many.docx"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(8):
            z.writestr(member.format(i), os.urandom(512 * 1024).hex())  # 1 MiB, ~2:1
    parser = UnstructuredParser(max_unpacked_bytes=4 * 1024**2, max_xml_bytes=2 * 1024**2)
    with pytest.raises(CorruptFile, match="DOCX file refused as a zip bomb: " + expect):
        parser.parse(Source.from_path(path), "docx", no_progress)


def test_well_compressed_small_parts_are_not_bombs(tmp_path: Path) -> None:
    # Real documents compress very well too; only size and ratio together make a bomb.
    parser = UnstructuredParser(max_unpacked_bytes=APP_UNPACK_LIMIT, max_member_bytes=64 * 1024**2)
    docx = write_docx(tmp_path / "garden.docx")
    doc = parser.parse(Source.from_path(docx), "docx", no_progress)
    assert "tomatoes ripened early" in text_of(doc)
    assert doc.title == "Quarterly Garden Report" and doc.author == "Grace Gardener" and doc.created_at


# -- deep HTML -----------------------------------------------------------------------------------------
def test_html_nested_100000_deep_keeps_its_text(tmp_path: Path, registry: ParserRegistry) -> None:
    page = tmp_path / "deep.html"
    page.write_text("<div>" * 100_000 + "deep words here" + "</div>" * 100_000)
    doc = parse(registry, Source.from_path(page))
    assert "deep words here" in text_of(doc)
    assert doc.meta.get("html_fallback")


def test_html_fallback_keeps_structure_and_drops_scripts(tmp_path: Path, registry: ParserRegistry) -> None:
    page = tmp_path / "deep2.html"
    page.write_text(
        "<html><head><title>Deep Page</title><style>p{}</style></head><body>" + "<section>" * 50_000
        + "<h2>Opening times</h2><p>The museum opens at ten &amp; closes at six.</p>"
        + "<script>var hidden = 'do not index';</script><ul><li>Closed on Mondays</li></ul>"
        + "</section>" * 50_000 + "</body></html>"
    )
    doc = parse(registry, Source.from_path(page))
    texts = [(e.kind, e.text) for e in doc.elements]
    assert ("title", "Opening times") in texts
    assert ("text", "The museum opens at ten & closes at six.") in texts
    assert ("text", "Closed on Mondays") in texts
    assert "do not index" not in text_of(doc) and "p{}" not in text_of(doc)
    assert doc.title == "Deep Page"


# -- names and sources -----------------------------------------------------------------------------------
def test_name_with_undecodable_byte_parses(tmp_path: Path, registry: ParserRegistry) -> None:
    name = os.fsdecode(b"caf\xff notes.txt")  # a lone surrogate: not encodable as UTF-8
    path = tmp_path / name
    path.write_text("Buy oat milk and sourdough.\n")
    doc = parse(registry, Source.from_path(path))
    assert "oat milk" in text_of(doc)


@pytest.mark.parametrize("fmt", ["pdf", "docx", "html", "eml", "md", "odt", "csv", "json"])
def test_undecodable_names_in_other_formats(tmp_path: Path, registry: ParserRegistry, fmt: str) -> None:
    made = {"pdf": lambda p: write_pdf(p, ["Title\nThe ferry leaves at noon."]), "docx": write_docx,
            "eml": write_eml}
    path = tmp_path / os.fsdecode(b"r\xe9sum\xe9 \xff." + fmt.encode())
    if fmt in made:
        made[fmt](path)
    else:
        src = write_all_formats(tmp_path / "src")[fmt]
        path.write_bytes(src.read_bytes())
    doc = parse(registry, Source.from_path(path))
    assert doc.elements, fmt


@pytest.mark.parametrize("fmt", ["pdf", "docx", "html", "eml", "txt", "xlsx"])
def test_sources_held_in_memory(tmp_path: Path, registry: ParserRegistry, fmt: str) -> None:
    # A mail attachment arrives as bytes: parsers that need a file get a temporary copy.
    path = write_all_formats(tmp_path)[fmt]
    source = Source(uri="mail:1/attachment/2", name=os.fsdecode(b"att\xff." + fmt.encode()),
                    data=path.read_bytes(), parent_uri="mail:1")
    doc = parse(registry, source)
    assert doc.elements, fmt
