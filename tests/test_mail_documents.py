"""What a message becomes: a mail document (headers, body, quotes and signatures weighed less) and one
document per attachment linked to it, for messages from the mail watcher (raw bytes in the mail blob
store, an `ingest` job per message) and for .eml files dropped into a folder. Real catalog and Chroma,
fast fake embedder, parsing in-process."""

from __future__ import annotations

import email.message
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from fixtures import write_docx, write_pdf
from test_pipeline import consistent

from ingest.chunking import Chunker
from ingest.parsers.base import QUOTE, SIGNATURE, Element
from ingest.parsers.mail import split_roles
from kb.blobs import BlobStore
from kb.paths import attachment_uri, mail_uri
from kbapp.app import App


# -- building messages --------------------------------------------------------------------------------
def message(subject: str = "Boiler service", body: str | None = "The boiler service is booked.\n",
            **headers: str) -> email.message.EmailMessage:
    m = email.message.EmailMessage()
    m["From"] = headers.get("from_", "Carol Clerk <carol@example.org>")
    m["To"] = "dave@example.org, erin@example.org"
    m["Cc"] = "finance@example.org"
    m["Subject"] = subject
    m["Date"] = "Tue, 14 May 2024 16:45:00 +0100"
    m["Message-ID"] = headers.get("message_id", "<boiler-7@example.org>")
    if "in_reply_to" in headers:
        m["In-Reply-To"] = headers["in_reply_to"]
        m["References"] = headers["references"]
    if body is not None:
        m.set_content(body)
    return m


def with_documents(tmp_path: Path, subject: str = "Garden papers") -> email.message.EmailMessage:
    """A message with a PDF and a DOCX attached."""
    m = message(subject, "Both garden papers are attached.\n")
    pdf = write_pdf(tmp_path / "minutes.pdf", ["Allotment minutes\nThe allotment committee chose purple kohlrabi."])
    docx = write_docx(tmp_path / "report.docx")
    m.add_attachment(pdf.read_bytes(), maintype="application", subtype="pdf", filename="minutes.pdf")
    m.add_attachment(docx.read_bytes(), maintype="application",
                     subtype="vnd.openxmlformats-officedocument.wordprocessingml.document", filename="report.docx")
    return m


def tnef(body: bytes, files: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal winmail.dat: TNEF signature, version, a plain body and attachments (title + data)."""
    def obj(level: int, name: int, kind: int, data: bytes) -> bytes:
        return struct.pack("<BHHI", level, name, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)

    out = struct.pack("<IH", 0x223E9F78, 1) + obj(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))
    out += obj(1, 0x800C, 0x0002, body)
    for name, data in files:
        out += obj(2, 0x9002, 0x0006, b"\x01\x00\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00")
        out += obj(2, 0x8010, 0x0001, name + b"\x00")
        out += obj(2, 0x800F, 0x0006, data)
    return out


# -- driving jobs -------------------------------------------------------------------------------------
def deliver(app: App, raw: bytes, uid: int = 42, *, tag: str | None = "work", error: str | None = None) -> str:
    """Queue a message exactly as the mail watcher does and run it (and its attachments) to the end."""
    uri = mail_uri("work", "INBOX", 7, uid)
    blob = None if error else BlobStore(app.settings.blobs_dir / "mail", ".eml").put(raw)
    payload: dict[str, Any] = {"source_type": "mail", "blob": blob, "size": len(raw), "tag": tag,
                               "account": "work", "folder": "INBOX", "uid": uid}
    if error:
        payload["error"] = error
    run(app, "ingest", uri, payload)
    return uri


def run(app: App, action: str, uri: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
    batch = app.jobs.new_batch(action)
    with app.jobs.transaction() as db:
        app.jobs.enqueue(db, action, uri, payload=payload, batch=batch)
    return app.run_batch(batch)


def children(app: App, parent: str) -> dict[str, Any]:
    return {s.uri: s for s in app.catalog.all_sources() if s.parent_uri == parent}


def doc_of(app: App, uri: str) -> Any:
    src = app.catalog.source(uri)
    assert src is not None and src.doc_id is not None, src
    return app.catalog.document(src.doc_id)


def text_of(app: App, uri: str) -> str:
    return app.catalog.document_text(doc_of(app, uri).id) or ""


# -- the message itself -------------------------------------------------------------------------------
def test_plain_message_becomes_a_mail_document(make_app: AppFactory) -> None:
    app = make_app()
    m = message("Re: Boiler service", "Thursday at nine suits us for the boiler service.\n",
                in_reply_to="<boiler-6@example.org>", references="<boiler-5@example.org> <boiler-6@example.org>")
    uri = deliver(app, bytes(m))
    src = app.catalog.source(uri)
    assert src is not None and (src.status, src.source_type, src.tag) == ("indexed", "mail", "work")
    doc = doc_of(app, uri)
    assert (doc.kind, doc.title, doc.author) == ("mail", "Re: Boiler service", "Carol Clerk <carol@example.org>")
    assert doc.created_at == "2024-05-14T16:45:00+01:00"
    meta = doc.meta
    assert meta["from"] == "Carol Clerk <carol@example.org>"
    assert meta["to"] == "dave@example.org, erin@example.org" and meta["cc"] == "finance@example.org"
    assert meta["date"] == "Tue, 14 May 2024 16:45:00 +0100" and meta["message_id"] == "<boiler-7@example.org>"
    assert meta["in_reply_to"] == "<boiler-6@example.org>"
    assert meta["references"] == ["<boiler-5@example.org>", "<boiler-6@example.org>"]
    assert "Thursday at nine suits us" in text_of(app, uri)
    hit = app.search("Thursday boiler service", k=1)[0]
    assert hit["path"] == uri and hit["kind"] == "mail" and hit["message"] is None
    # the same message fetched again (same bytes): nothing to do
    assert run(app, "ingest", uri, {"source_type": "mail", "blob": BlobStore(
        app.settings.blobs_dir / "mail", ".eml").put(bytes(m)), "tag": "work"})["outcomes"] == {"unchanged": 1}
    consistent(app)


def test_html_only_message_is_read_as_text(make_app: AppFactory) -> None:
    app = make_app()
    m = message(body=None)
    m.set_content("<html><body><h2>Menu</h2><p>Fresh &amp; crunchy <b>radishes</b> today.</p>"
                  "<script>track()</script></body></html>", subtype="html")
    uri = deliver(app, bytes(m))
    text = text_of(app, uri)
    assert "Fresh & crunchy radishes today." in text and "track" not in text and "<b>" not in text


def test_oversized_message_is_a_lasting_failure_on_its_source(make_app: AppFactory) -> None:
    app = make_app()
    uri = deliver(app, b"", error="message is 80 MiB, over the 50 MiB limit (setting mail_max_message_mb)")
    src = app.catalog.source(uri)
    assert src is not None and (src.status, src.source_type, src.tag) == ("failed", "mail", "work")
    assert "mail_max_message_mb" in (src.error or "")
    job = app.jobs.by_key(f"src:{uri}")
    assert job is not None and job.state == "failed"


# -- quotes and signatures ----------------------------------------------------------------------------
REPLY = """I think the gazebo paint should be sage green, two coats.

Dave
--\x20
Dave Dent | Allotment treasurer
Gazebo paint and sage green enthusiast

On Tue, 14 May 2024 at 16:45, Carol Clerk <carol@example.org> wrote:
> Which colour should the gazebo paint be? Sage green was suggested.
> Please answer by Friday.
"""


def test_split_roles_finds_quotes_and_signatures() -> None:
    runs = split_roles(REPLY)
    assert [r for r, _ in runs] == [None, SIGNATURE, QUOTE]
    assert "two coats" in runs[0][1] and "treasurer" in runs[1][1]
    assert runs[2][1].splitlines()[-1] == "Please answer by Friday."  # '>' markers dropped
    outlook = "Yes, agreed.\n\n-----Original Message-----\nFrom: Carol\nSent: Tuesday\n\nOld words here.\n"
    assert split_roles(outlook) == [
        (None, "Yes, agreed.\n"), (QUOTE, "-----Original Message-----\nFrom: Carol\nSent: Tuesday\n\nOld words here."),
    ]
    inline = "> question one?\nanswer one\n> question two?\nanswer two"
    assert [r for r, _ in split_roles(inline)] == [QUOTE, None, QUOTE, None]


def test_chunks_never_mix_roles() -> None:
    chunker = Chunker(lambda texts: [len(t.split()) for t in texts], max_tokens=200, target_tokens=100)
    _, chunks = chunker.chunk([
        Element("own words"), Element("quoted words", role=QUOTE), Element("more quote", role=QUOTE),
        Element("sig", role=SIGNATURE),
    ])
    assert [(c.text, c.role) for c in chunks] == [
        ("own words", None), ("quoted words\n\nmore quote", QUOTE), ("sig", SIGNATURE),
    ]


def test_quoted_text_and_signature_rank_below_the_reply(make_app: AppFactory) -> None:
    app = make_app()
    uri = deliver(app, bytes(message("Re: gazebo", REPLY)))
    chunks = app.catalog.chunks_of(doc_of(app, uri).id)
    roles = {c.role for c in chunks}
    assert roles == {None, QUOTE, SIGNATURE}, [(c.role, c.text) for c in chunks]
    md = app.index().metadata([c.id for c in chunks])
    assert {md[c.id].get("role") for c in chunks} == roles
    found = app.search("gazebo paint sage green", k=3)
    assert found[0]["role"] is None and "two coats" in found[0]["text"]
    assert {h["role"] for h in found[1:]} <= {QUOTE, SIGNATURE}


# -- attachments --------------------------------------------------------------------------------------
def test_attachments_are_documents_linked_to_their_message(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    uri = deliver(app, bytes(with_documents(tmp_path)))
    pdf_uri, docx_uri = attachment_uri(uri, 1, "minutes.pdf"), attachment_uri(uri, 2, "report.docx")
    kids = children(app, uri)
    assert set(kids) == {pdf_uri, docx_uri}
    assert all((s.source_type, s.status, s.tag) == ("attachment", "indexed", "work") for s in kids.values())
    assert app.catalog.stats()["documents"] == 3
    assert doc_of(app, pdf_uri).file_type == "pdf" and doc_of(app, docx_uri).file_type == "docx"
    assert "purple kohlrabi" in text_of(app, pdf_uri) and "purple kohlrabi" not in text_of(app, uri)
    listed = doc_of(app, uri).meta["attachments"]
    assert [(a["index"], a["filename"]) for a in listed] == [(1, "minutes.pdf"), (2, "report.docx")]
    hit = app.search("allotment committee purple kohlrabi", k=1)[0]
    assert hit["path"] == pdf_uri
    assert hit["message"] == {"uri": uri, "subject": "Garden papers", "from": "Carol Clerk <carol@example.org>",
                              "date": "Tue, 14 May 2024 16:45:00 +0100"}
    consistent(app)


def test_forgetting_a_message_forgets_its_attachments(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    uri = deliver(app, bytes(with_documents(tmp_path)))
    assert len(children(app, uri)) == 2
    run(app, "forget", uri)
    assert app.catalog.all_sources() == [] and app.catalog.stats()["documents"] == 0
    assert app.index().count() == 0
    consistent(app)


def test_dropped_eml_file_gets_its_attachments_too(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    inbox = tmp_path / "in"
    inbox.mkdir()
    eml = inbox / "papers.eml"
    eml.write_bytes(bytes(with_documents(tmp_path)))
    report = app.ingest([inbox])
    assert report["added"] == 3 and report["failed"] == 0, report  # `kb ingest` waits for the attachments
    kids = children(app, str(eml))
    assert set(kids) == {attachment_uri(str(eml), 1, "minutes.pdf"), attachment_uri(str(eml), 2, "report.docx")}
    assert app.search("purple kohlrabi", k=1)[0]["message"]["uri"] == str(eml)
    # the message changes: an attachment removed, another added; the removed one leaves the library
    m = message("Garden papers", "Only the notes now.\n")
    m.add_attachment("Compost turns in March and September.\n", filename="notes.txt")
    eml.write_bytes(bytes(m))
    report = app.ingest([inbox])
    assert set(children(app, str(eml))) == {attachment_uri(str(eml), 1, "notes.txt")}
    assert not any("kohlrabi" in h["text"] for h in app.search("purple kohlrabi", k=5))
    assert app.search("compost March September", k=1)[0]["message"]["subject"] == "Garden papers"
    # the file is forgotten: so are its attachments
    assert app.forget([eml]) == 1
    assert app.catalog.all_sources() == []
    consistent(app)


def test_same_message_in_two_places_gets_attachments_in_both(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    raw = bytes(with_documents(tmp_path))
    uri = deliver(app, raw)
    eml = tmp_path / "copy.eml"
    eml.write_bytes(raw)
    app.ingest([eml])  # the same bytes: linked to the message's document, and its attachments listed again
    assert len(children(app, uri)) == 2 and len(children(app, str(eml))) == 2
    assert app.catalog.stats()["documents"] == 3


def test_nested_messages_are_documents_of_their_own(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    inner = message("Lease renewal", "The landlord agrees to renew the lease for three years.\n",
                    message_id="<lease@example.org>")
    inner.add_attachment(b"Rent stays at nine hundred a month.\n", maintype="text", subtype="plain",
                         filename="terms.txt")
    outer = message("Fwd: Lease renewal", "See the forwarded message.\n")
    outer.add_attachment(inner)
    uri = deliver(app, bytes(outer))
    (fwd,) = children(app, uri)
    assert fwd == attachment_uri(uri, 1, "Lease renewal.eml")
    doc = doc_of(app, fwd)
    assert (doc.kind, doc.title) == ("mail", "Lease renewal") and "renew the lease" in text_of(app, fwd)
    (terms,) = children(app, fwd)
    assert "nine hundred" in text_of(app, terms)
    hit = app.search("rent nine hundred a month", k=1)[0]
    assert hit["message"]["uri"] == fwd and hit["message"]["subject"] == "Lease renewal"


def test_nesting_deeper_than_the_limit_is_recorded(make_app: AppFactory) -> None:
    app = make_app()
    m = message("level 4", "The innermost words.\n")
    m.add_attachment(b"deep file\n", maintype="text", subtype="plain", filename="deep.txt")
    for level in (3, 2, 1, 0):
        outer = message(f"level {level}", f"Words of level {level}.\n")
        outer.add_attachment(m)
        m = outer
    uri = deliver(app, bytes(m))
    failed = [s for s in app.catalog.all_sources() if s.status == "failed"]
    assert len(failed) == 1 and "nested more than 3 deep" in (failed[0].error or "")
    assert failed[0].parent_uri is not None and failed[0].parent_uri.startswith(uri)
    assert len([s for s in app.catalog.all_sources() if s.status == "indexed"]) == 4  # levels 0-3


def test_winmail_dat_body_and_files_belong_to_the_message(make_app: AppFactory) -> None:
    app = make_app()
    m = message("Outlook rich text", "")
    m.add_attachment(tnef(b"The quarterly stocktake is on Monday morning.\x00",
                          [(b"stock.txt", b"Forty crates of pickled beetroot.\n")]),
                     maintype="application", subtype="ms-tnef", filename="winmail.dat")
    uri = deliver(app, bytes(m))
    assert "stocktake is on Monday morning" in text_of(app, uri)
    (stock,) = children(app, uri)
    assert stock == attachment_uri(uri, 1, "stock.txt") and "pickled beetroot" in text_of(app, stock)


def test_broken_winmail_dat_is_a_clear_record(make_app: AppFactory) -> None:
    app = make_app()
    m = message("Outlook rich text", "Body outside the wrapper.\n")
    m.add_attachment(b"not a TNEF stream at all", maintype="application", subtype="ms-tnef",
                     filename="winmail.dat")
    uri = deliver(app, bytes(m))
    assert app.catalog.source(uri).status == "indexed"  # type: ignore[union-attr]
    (bad,) = children(app, uri).values()
    assert bad.status == "failed" and "winmail.dat (Outlook TNEF) could not be read" in (bad.error or "")


@pytest.mark.parametrize(
    ("filename", "maintype", "subtype", "data", "words"),
    [
        ("backup.zip", "application", "zip", b"PK\x03\x04" + b"\x00" * 40, "archive attachments are not unpacked"),
        ("secret.pgp", "application", "octet-stream", b"\x85\x01\x0c\x03" * 20, "encrypted attachment"),
        ("tool.exe", "application", "octet-stream", b"MZ\x90\x00" + bytes(range(256)) * 4,
         "unsupported file type .exe"),
    ],
)
def test_unreadable_attachments_are_recorded_on_their_own_source(
    make_app: AppFactory, filename: str, maintype: str, subtype: str, data: bytes, words: str
) -> None:
    app = make_app()
    m = message("Files", "One file attached.\n")
    m.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
    uri = deliver(app, bytes(m))
    assert app.catalog.source(uri).status == "indexed"  # type: ignore[union-attr]
    (child,) = children(app, uri).values()
    assert (child.status, child.source_type, child.uri) == ("failed", "attachment", attachment_uri(uri, 1, filename))
    assert words in (child.error or ""), child.error


def test_encrypted_part_beside_a_readable_body(make_app: AppFactory) -> None:
    app = make_app()
    raw = (b"From: a@example.org\nTo: b@example.org\nSubject: half secret\nMIME-Version: 1.0\n"
           b'Content-Type: multipart/mixed; boundary="out"\n\n'
           b"--out\nContent-Type: text/plain\n\nThe readable part mentions the harbour master.\n"
           b'--out\nContent-Type: multipart/encrypted; protocol="application/pgp-encrypted"; boundary="in"\n\n'
           b"--in\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n"
           b"--in\nContent-Type: application/octet-stream\n\n-----BEGIN PGP MESSAGE-----\nhIwDY32h\n"
           b"-----END PGP MESSAGE-----\n--in--\n--out--\n")
    uri = deliver(app, raw)
    assert "harbour master" in text_of(app, uri)
    (child,) = children(app, uri).values()
    assert child.status == "failed" and "encrypted" in (child.error or "")


def test_attachment_over_the_limit_is_recorded_not_saved(make_app: AppFactory) -> None:
    app = make_app(mail_max_attachment_mb=0.01)
    m = message("Big file", "A large log is attached.\n")
    big = ("log line with many words\n" * 2000).encode()
    m.add_attachment(big, maintype="text", subtype="plain", filename="big.log")
    m.add_attachment(b"small notes about turnips\n", maintype="text", subtype="plain", filename="small.txt")
    uri = deliver(app, bytes(m))
    kids = children(app, uri)
    big_src, small_src = kids[attachment_uri(uri, 1, "big.log")], kids[attachment_uri(uri, 2, "small.txt")]
    assert big_src.status == "failed" and "setting mail_max_attachment_mb" in (big_src.error or "")
    assert small_src.status == "indexed"
    parts = app.settings.blobs_dir / "parts"
    saved = [p for p in parts.rglob("*") if p.is_file()]
    assert len(saved) == 1 and saved[0].read_bytes() == b"small notes about turnips\n"


def test_bogus_charset_and_broken_mime_are_read_with_a_warning(make_app: AppFactory) -> None:
    app = make_app()
    bogus = ("From: a@example.org\nSubject: odd charset\nMIME-Version: 1.0\n"
             'Content-Type: text/plain; charset="x-made-up-42"\nContent-Transfer-Encoding: 8bit\n\n'
             "Café crème for everyone.\n").encode()
    uri = deliver(app, bogus, uid=1)
    src = app.catalog.source(uri)
    assert src is not None and src.status == "indexed" and "x-made-up-42" in (src.warning or "")
    assert "Café crème for everyone." in text_of(app, uri)
    broken = (b"From: b@example.org\nSubject: broken\nMIME-Version: 1.0\n"
              b'Content-Type: multipart/mixed; boundary="never-closed"\n\n'
              b"--never-closed\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\n"
              b"VGhlIHNoZWQgcm9vZiBsZWFrcy4=!!!not base64\n"
              b"--never-closed\nContent-Type: application/pdf; name=cut.pdf\nContent-Transfer-Encoding: base64\n\n"
              b"JVBERi0xLjQK")  # truncated mid-part, no closing boundary
    uri2 = deliver(app, broken, uid=2)
    src2 = app.catalog.source(uri2)
    assert src2 is not None and src2.status == "indexed" and "malformed MIME" in (src2.warning or ""), src2
    (cut,) = children(app, uri2).values()
    assert cut.status == "failed"  # a PDF cut short: its own clear failure, the message is fine
    garbage = bytes(range(256)) * 8
    uri3 = deliver(app, garbage, uid=3)
    src3 = app.catalog.source(uri3)
    assert src3 is not None and src3.status == "failed" and "not an e-mail message" in (src3.error or "")
    consistent(app)


def test_attachment_whose_message_was_forgotten_is_dropped(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    uri = deliver(app, bytes(message()))
    blob = BlobStore(app.settings.blobs_dir / "parts").put(b"orphaned words\n")
    child = attachment_uri(uri, 1, "late.txt")
    run(app, "forget", uri)
    state = run(app, "ingest", child, {"source_type": "attachment", "blob": blob, "name": "late.txt",
                                       "parent": uri, "tag": None})
    assert state["outcomes"] == {"removed": 1} and app.catalog.source(child) is None


@pytest.mark.slow
def test_image_attachment_is_read_by_ocr(make_app: AppFactory, tmp_path: Path) -> None:
    from media_fixtures import text_page

    app = make_app()
    page = text_page(["The greenhouse thermostat", "is set to eighteen degrees"])
    png = tmp_path / "note.png"
    page.save(png)
    m = message("Photo of the note", "Photo attached.\n")
    m.add_attachment(png.read_bytes(), maintype="image", subtype="png", filename="note.png")
    uri = deliver(app, bytes(m))
    (child,) = children(app, uri)
    assert "thermostat" in text_of(app, child).lower()
    assert app.search("greenhouse thermostat", k=1)[0]["message"]["uri"] == uri


def test_html_reply_quote_without_markers_is_a_quote() -> None:
    from ingest.parsers.mail import body_elements

    html = ("<div>Yes, Thursday works for the chimney sweep.</div><br>"
            "<div class=gmail_quote>On Mon, 13 May 2024 at 09:00, Carol &lt;carol@example.org&gt; wrote:<br>"
            "<blockquote>Does Thursday work for the chimney sweep?</blockquote></div>")
    elements = body_elements(html, html=True)
    assert (elements[0].role, elements[0].text) == (None, "Yes, Thursday works for the chimney sweep.")
    assert all(e.role == QUOTE for e in elements[1:]) and "Does Thursday work" in elements[-1].text


def test_outlook_attachments_are_saved_or_recorded(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ingest.parsers.attachments import PartSaver, add_outlook_attachments

    saver = PartSaver(BlobStore(tmp_path / "parts"), max_bytes=1000)
    add_outlook_attachments(saver, [
        SimpleNamespace(file_name="plan.txt", mime_type="", file_bytes=b"the plan"),
        SimpleNamespace(file_name="Meeting", mime_type=None, file_bytes=None),
        SimpleNamespace(file_name="huge.pdf", mime_type="application/pdf", file_bytes=b"x" * 2000),
    ])
    plan, embedded, huge = saver.refs
    assert plan.blob is not None and BlobStore(tmp_path / "parts").read(plan.blob) == b"the plan"
    assert plan.content_type == "text/plain" and plan.error is None
    assert embedded.blob is None and "embedded Outlook item" in (embedded.error or "")
    assert huge.blob is None and "mail_max_attachment_mb" in (huge.error or "")


@pytest.mark.slow
def test_attachments_saved_by_a_parser_process(make_app: AppFactory, tmp_path: Path) -> None:
    """With real parser child processes: the child saves the parts, the service queues and reads them."""
    app = make_app(workers=1, slow_workers=1)
    uri = deliver(app, bytes(with_documents(tmp_path)))
    kids = children(app, uri)
    assert len(kids) == 2 and all(s.status == "indexed" for s in kids.values()), kids
    assert app.search("purple kohlrabi", k=1)[0]["message"]["uri"] == uri
    consistent(app)


def test_reparse_reads_messages_and_attachments_from_their_saved_bytes(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    uri = deliver(app, bytes(with_documents(tmp_path)))
    app.catalog.execute("UPDATE documents SET pipeline_version = 'old/0'")  # every document is outdated
    state = app.reindex(reparse=True)
    assert state["outcomes"].get("failed", 0) == 0 and state["outcomes"].get("removed", 0) == 0, state
    assert {s.status for s in app.catalog.all_sources()} == {"indexed"} and len(children(app, uri)) == 2
    assert app.outdated_sources() == []
    assert app.search("purple kohlrabi", k=1)[0]["message"]["uri"] == uri
    consistent(app)


def test_attachments_lost_in_a_crash_are_queued_when_the_message_runs_again(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app()
    raw = bytes(with_documents(tmp_path))
    uri = deliver(app, raw)
    # as if the service died after storing the message and before queuing its attachments
    app.store.forget(list(children(app, uri)))
    app.catalog.execute("DELETE FROM jobs WHERE uri != ?", (uri,))
    assert children(app, uri) == {}
    deliver(app, raw)  # the watcher (or a retry) asks again: the message is unchanged, its files come back
    assert len(children(app, uri)) == 2 and app.search("purple kohlrabi", k=1)[0]["message"]["uri"] == uri
    consistent(app)


@pytest.mark.slow
def test_voice_message_attachment_is_transcribed_in_the_slow_lane(make_app: AppFactory, tmp_path: Path) -> None:
    from media_fixtures import speak

    app = make_app()
    wav = speak("The plumber will come on Friday to fix the boiler.", tmp_path / "voicemail.wav")
    m = message("Voicemail", "A voice message was left for you.\n")
    m.add_attachment(wav.read_bytes(), maintype="audio", subtype="wav", filename="voicemail.wav")
    uri = deliver(app, bytes(m))
    (child,) = children(app, uri)
    job = app.jobs.by_key(f"src:{child}")
    assert job is not None and job.lane == "slow"
    assert doc_of(app, child).kind == "meeting" and "fix the boiler" in text_of(app, child).lower()
    assert app.search("fix the boiler on Friday", k=1)[0]["message"]["uri"] == uri


def test_inline_logo_is_not_an_attachment(make_app: AppFactory) -> None:
    app = make_app()
    m = message(body=None)
    m.set_content("<p>Our newsletter about hedgehogs.</p><img src='cid:logo1'>", subtype="html")
    m.add_related(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200, maintype="image", subtype="png", cid="<logo1>")
    uri = deliver(app, bytes(m))
    assert "hedgehogs" in text_of(app, uri) and children(app, uri) == {}


def test_damaged_messages_never_crash_the_parser(tmp_path: Path) -> None:
    """Bytes of a real multipart message cut and flipped at random: a document or a clear IngestError."""
    import random

    from ingest.errors import IngestError
    from ingest.parsers.base import Source, no_progress
    from ingest.parsers.mail import EmailParser

    raw = bytes(with_documents(tmp_path))
    parser = EmailParser(parts=BlobStore(tmp_path / "parts"), max_attachment_bytes=1 << 20)
    rng = random.Random(7)
    for _ in range(60):
        data = bytearray(raw[: rng.randrange(len(raw))])
        for _ in range(rng.randrange(1, 20)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            doc = parser.parse(Source(uri="x", name="m.eml", data=bytes(data)), "eml", no_progress)
        except IngestError:
            continue
        assert doc.kind == "mail"
