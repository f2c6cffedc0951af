"""Generators for test documents of every supported format, and for bad input. Nothing is copied in."""

from __future__ import annotations

import email.message
import os
import zipfile
from pathlib import Path

LOREM = (
    "The quick brown fox jumps over the lazy dog while the committee reviews the annual budget. "
    "Members discussed the heating system, the roof repairs and the garden plans for next spring. "
)


def write_pdf(path: Path, pages: list[str], title: str = "Test PDF", author: str = "Ada Tester") -> Path:
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    c.setTitle(title)
    c.setAuthor(author)
    for text in pages:
        y = 800
        c.setFont("Helvetica-Bold", 14)
        c.drawString(72, y, text.split("\n", 1)[0])
        c.setFont("Helvetica", 11)
        for line in text.split("\n")[1:]:
            y -= 16
            c.drawString(72, y, line)
        c.showPage()
    c.save()
    return path


def write_docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = "Quarterly Garden Report"
    d.core_properties.author = "Grace Gardener"
    d.add_heading("Garden Report", level=1)
    d.add_paragraph("The tomatoes ripened early this year thanks to the greenhouse.")
    d.add_heading("Budget", level=2)
    d.add_paragraph("We spent forty pounds on compost and twelve on seeds.")
    d.add_paragraph("Buy more mulch", style="List Bullet")
    t = d.add_table(rows=3, cols=2)
    for i, (a, b) in enumerate([("Item", "Cost"), ("Compost", "40"), ("Seeds", "12")]):
        t.cell(i, 0).text, t.cell(i, 1).text = a, b
    d.save(str(path))
    return path


def write_pptx(path: Path) -> Path:
    import pptx

    p = pptx.Presentation()
    p.core_properties.title = "Launch Plan"
    p.core_properties.author = "Pat Presenter"
    for title, body in [("Launch Plan", "The rocket launches on Tuesday."), ("Risks", "Weather may delay it.")]:
        s = p.slides.add_slide(p.slide_layouts[1])
        s.shapes.title.text = title
        s.placeholders[1].text = body
    p.save(str(path))
    return path


def write_xlsx(path: Path) -> Path:
    import openpyxl

    wb = openpyxl.Workbook()
    wb.properties.title = "Inventory"
    wb.properties.creator = "Sam Sheets"
    ws = wb.active
    ws.title = "Stock"
    for row in [("Fruit", "Count"), ("Apples", 12), ("Pears", 7), ("Quinces", 3)]:
        ws.append(row)
    wb.save(str(path))
    return path


def write_eml(path: Path) -> Path:
    m = email.message.EmailMessage()
    m["From"] = "Alice Example <alice@example.org>"
    m["To"] = "bob@example.org"
    m["Subject"] = "Plumber visit on Friday"
    m["Date"] = "Fri, 03 May 2024 10:00:00 +0000"
    m["Message-ID"] = "<plumber-1@example.org>"
    m.set_content("Hi Bob,\n\nThe plumber will come on Friday to fix the leaking boiler.\n\nAlice\n")
    path.write_bytes(bytes(m))
    return path


def write_epub(path: Path) -> Path:
    """A minimal valid EPUB 2 written by hand (mimetype first and stored)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(zipfile.ZipInfo("mimetype"), "application/epub+zip")
        z.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:'
            'container"><rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/'
            'oebps-package+xml"/></rootfiles></container>',
        )
        z.writestr(
            "OEBPS/content.opf",
            '<?xml version="1.0"?><package xmlns="http://www.idpf.org/2007/opf" version="2.0" '
            'unique-identifier="id"><metadata xmlns:dc="http://purl.org/dc/elements/1.1/">'
            "<dc:title>Lighthouse Stories</dc:title><dc:creator>Ed Epub</dc:creator>"
            '<dc:identifier id="id">x1</dc:identifier><dc:language>en</dc:language></metadata>'
            '<manifest><item id="c1" href="c1.xhtml" media-type="application/xhtml+xml"/>'
            '<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/></manifest>'
            '<spine toc="ncx"><itemref idref="c1"/></spine></package>',
        )
        z.writestr(
            "OEBPS/toc.ncx",
            '<?xml version="1.0"?><ncx xmlns="http://www.daisy.org/z3986/2005/ncx/" version="2005-1">'
            '<head/><docTitle><text>Lighthouse Stories</text></docTitle><navMap><navPoint id="n1" '
            'playOrder="1"><navLabel><text>One</text></navLabel><content src="c1.xhtml"/></navPoint>'
            "</navMap></ncx>",
        )
        z.writestr(
            "OEBPS/c1.xhtml",
            '<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>One</title>'
            "</head><body><h1>The Keeper</h1><p>The lighthouse keeper polished the great lens every "
            "evening before sunset.</p></body></html>",
        )
    return path


def pandoc(markdown: str, path: Path, fmt: str) -> Path:
    import pypandoc

    pypandoc.convert_text(markdown, fmt, format="md", outputfile=str(path), extra_args=["-s"])
    return path


def write_all_formats(folder: Path) -> dict[str, Path]:
    """One small file per supported format, each with a distinctive phrase."""
    folder.mkdir(parents=True, exist_ok=True)
    f: dict[str, Path] = {}
    f["pdf"] = write_pdf(folder / "report.pdf", [
        "Introduction\nThe harbour authority approved the new pier in March.",
        "Costs\nThe pier will cost three million euros over two years.",
    ], title="Harbour Report", author="Hannah Harbour")
    f["docx"] = write_docx(folder / "garden.docx")
    f["pptx"] = write_pptx(folder / "launch.pptx")
    f["xlsx"] = write_xlsx(folder / "inventory.xlsx")
    (folder / "birds.csv").write_text("species,count\nrobin,4\nmagpie,2\nheron,1\n")
    f["csv"] = folder / "birds.csv"
    (folder / "trees.tsv").write_text("tree\theight\noak\t20\nbirch\t15\n")
    f["tsv"] = folder / "trees.tsv"
    (folder / "page.html").write_text(
        "<html><head><title>Bakery Hours</title><meta name='author' content='Bea Baker'></head>"
        "<body><h1>Opening hours</h1><p>The bakery opens at seven and sells sourdough bread.</p>"
        "<script>var secret = 'do not index';</script></body></html>"
    )
    f["html"] = folder / "page.html"
    (folder / "notes.md").write_text("# Bicycle Repair\n\nPatch the inner tube with vulcanising glue.\n\n"
                                     "## Chain\n\n- oil the chain monthly\n- check the derailleur\n")
    f["md"] = folder / "notes.md"
    (folder / "guide.rst").write_text("Sailing Guide\n=============\n\nAlways reef the mainsail before the "
                                      "squall arrives.\n")
    f["rst"] = folder / "guide.rst"
    (folder / "todo.org").write_text("* Beekeeping\nInspect the hive for the queen every week.\n")
    f["org"] = folder / "todo.org"
    (folder / "plain.txt").write_text("Volcano notes\n\nThe volcano erupted basalt lava in 1783.\n")
    f["txt"] = folder / "plain.txt"
    f["eml"] = write_eml(folder / "plumber.eml")
    f["epub"] = write_epub(folder / "lighthouse.epub")
    f["odt"] = pandoc("# Choir\n\nThe choir rehearses madrigals on Thursday.\n", folder / "choir.odt", "odt")
    f["rtf"] = pandoc("# Kiln\n\nFire the pottery kiln to cone six.\n", folder / "kiln.rtf", "rtf")
    (folder / "config.json").write_text('{"telescope": {"aperture_mm": 200, "mount": "equatorial"}}')
    f["json"] = folder / "config.json"
    (folder / "catalog.xml").write_text("<catalog><book><title>Glacier Atlas</title><year>1999</year></book>"
                                        "</catalog>")
    f["xml"] = folder / "catalog.xml"
    return f


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    """Every kind of bad input the ingester must survive, each paired with a good file."""
    from pypdf import PdfReader, PdfWriter

    folder.mkdir(parents=True, exist_ok=True)
    f: dict[str, Path] = {}
    (folder / "empty.txt").write_bytes(b"")
    f["empty"] = folder / "empty.txt"
    good_pdf = write_pdf(folder / "good.pdf", ["Good\nThe marmalade recipe needs Seville oranges."])
    data = good_pdf.read_bytes()
    (folder / "truncated.pdf").write_bytes(data[: len(data) // 3])
    f["truncated_pdf"] = folder / "truncated.pdf"
    (folder / "garbage.pdf").write_bytes(b"%PDF-1.4\n" + os.urandom(2000))
    f["corrupt_pdf"] = folder / "garbage.pdf"
    w = PdfWriter()
    for p in PdfReader(str(good_pdf)).pages:
        w.add_page(p)
    w.encrypt("s3cret")
    with (folder / "locked.pdf").open("wb") as fh:
        w.write(fh)
    f["encrypted_pdf"] = folder / "locked.pdf"
    docx_bytes = write_docx(folder / "tmp.docx").read_bytes()
    (folder / "tmp.docx").unlink()
    (folder / "truncated.docx").write_bytes(docx_bytes[: len(docx_bytes) // 2])
    f["truncated_docx"] = folder / "truncated.docx"
    (folder / "encrypted.xlsx").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 4000)
    f["encrypted_office"] = folder / "encrypted.xlsx"
    (folder / "junk.txt").write_bytes(os.urandom(5000))
    f["binary_txt"] = folder / "junk.txt"
    (folder / "latin1.txt").write_bytes("Crème brûlée à la française, café déjà vu.".encode("cp1252"))
    f["latin1"] = folder / "latin1.txt"
    (folder / "program.exe").write_bytes(b"MZ" + os.urandom(100))
    f["unsupported"] = folder / "program.exe"
    (folder / "big.txt").write_text("large file " * 20000)
    f["too_big"] = folder / "big.txt"
    (folder / "badjson.json").write_text('{"a": [1, 2,')
    f["bad_json"] = folder / "badjson.json"
    os.symlink("self.txt", folder / "self.txt")
    f["self_loop"] = folder / "self.txt"
    sub = folder / "sub"
    sub.mkdir()
    os.symlink("..", sub / "up")  # a folder loop: sub/up -> folder
    os.symlink("missing-target.txt", folder / "dangling.txt")
    f["dangling"] = folder / "dangling.txt"
    (folder / "secret.eml").write_text(
        "From: a@example.org\nTo: b@example.org\nSubject: secret\nMIME-Version: 1.0\n"
        'Content-Type: multipart/encrypted; boundary=foo; protocol="application/pgp-encrypted"\n\n'
        "--foo\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--foo\n"
        "Content-Type: application/octet-stream\n\n-----BEGIN PGP MESSAGE-----\nhIwDY32h\n"
        "-----END PGP MESSAGE-----\n--foo--\n"
    )
    f["encrypted_mail"] = folder / "secret.eml"
    (sub / "fine.md").write_text("# Fine\n\nThis file is perfectly fine and mentions zeppelins.\n")
    f["fine"] = sub / "fine.md"
    return f


# -- hostile input -------------------------------------------------------------------------------------
def write_zip_bomb_docx(path: Path, member_mib: int = 300) -> Path:
    """A DOCX whose word/document.xml inflates to `member_mib` MiB from about 1 MiB on disk.

    Written through ZipFile.open(..., "w") a chunk at a time, so the test never holds the payload.
    """
    run = b"<w:p><w:r><w:t>" + b"a" * 64 + b"</w:t></w:r></w:p>"
    chunk = (run * (2**20 // len(run) + 1))[: 2**20]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/content-types"/>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/'
                   'package/2006/relationships"/>')
        with z.open("word/document.xml", "w", force_zip64=True) as f:
            f.write(b'<?xml version="1.0"?><w:document xmlns:w="http://schemas.openxmlformats.org/'
                    b'wordprocessingml/2006/main"><w:body>')
            for _ in range(member_mib):
                f.write(chunk)
            f.write(b"</w:body></w:document>")
    return path


def write_blank_pdf(path: Path, pages: int) -> Path:
    """A PDF of `pages` empty pages (no text layer, nothing drawn)."""
    from reportlab.lib.pagesizes import A4
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path), pagesize=A4)
    for _ in range(pages):
        c.showPage()
    c.save()
    return path


def many_part_message(words: list[str]) -> email.message.EmailMessage:
    """A multipart/mixed message with one text/plain body part per word."""
    m = email.message.EmailMessage()
    m["From"] = "Digest Robot <digest@example.org>"
    m["To"] = "reader@example.org"
    m["Subject"] = "Daily digest"
    m["Date"] = "Mon, 06 May 2024 08:30:00 +0200"
    m.make_mixed()
    for w in words:
        part = email.message.EmailMessage()
        part.set_content(f"Today's entry mentions {w} once.\n")
        m.attach(part)
    return m
