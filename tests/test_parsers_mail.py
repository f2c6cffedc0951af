"""The .eml parser on messages built with the stdlib `email` package: every part, nesting, charsets, limits."""

from __future__ import annotations

import email.message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText

import pytest
from fixtures import many_part_message

from ingest.errors import CorruptFile, EncryptedFile
from ingest.parsers.base import ParsedDocument, Source, no_progress
from ingest.parsers.mail import EmailParser
from ingest.parsers.registry import default_registry


def parse(data: bytes, parser: EmailParser | None = None) -> ParsedDocument:
    return (parser or EmailParser()).parse(Source(uri="mem:mail", name="message.eml", data=data), "eml", no_progress)


def text_of(doc: ParsedDocument) -> str:
    return "\n".join(e.text for e in doc.elements)


def message(subject: str = "Quarterly figures") -> email.message.EmailMessage:
    m = email.message.EmailMessage()
    m["From"] = "Carol Clerk <carol@example.org>"
    m["To"] = "dave@example.org, erin@example.org"
    m["Cc"] = "finance@example.org"
    m["Subject"] = subject
    m["Date"] = "Tue, 14 May 2024 16:45:00 +0100"
    m["Message-ID"] = "<figures-7@example.org>"
    return m


def test_registry_sends_eml_to_the_email_parser() -> None:
    parser, file_type = default_registry(2**30).for_source(Source(uri="x", name="a.EML", data=b""))
    assert isinstance(parser, EmailParser) and file_type == "eml"


def test_every_one_of_2000_parts_is_read() -> None:
    words = [f"glimmer{i:04d}word" for i in range(2000)]
    doc = parse(bytes(many_part_message(words)))
    text = text_of(doc)
    missing = [w for w in words if w not in text]
    assert not missing, f"{len(missing)} parts lost, first {missing[:3]}"
    assert doc.meta["parts"] == 2001 and doc.meta["attachments"] == []


def test_headers_title_author_and_date() -> None:
    m = message()
    m.set_content("The figures are attached.\n")
    doc = parse(bytes(m))
    assert doc.kind == "mail"
    assert doc.title == "Quarterly figures"
    assert doc.author == "Carol Clerk <carol@example.org>"
    assert doc.created_at == "2024-05-14T16:45:00+01:00"
    assert doc.elements[0].text.splitlines() == [
        "From: Carol Clerk <carol@example.org>",
        "To: dave@example.org, erin@example.org",
        "Cc: finance@example.org",
        "Subject: Quarterly figures",
        "Date: Tue, 14 May 2024 16:45:00 +0100",
    ]
    assert doc.meta["message_id"] == "<figures-7@example.org>"


def test_encoded_headers_are_decoded() -> None:
    m = message(subject="Grüße aus Köln")
    m.replace_header("From", "Jörg Müller <joerg@example.org>")
    m.set_content("Hallo.\n")
    doc = parse(bytes(m))
    assert b"=?utf-8?" in bytes(m)
    assert doc.title == "Grüße aus Köln" and doc.author == "Jörg Müller <joerg@example.org>"


def test_alternative_reads_plain_text_once() -> None:
    m = message()
    m.set_content("Plain version: the harbour dues rise in June.\n")
    m.add_alternative("<p>HTML version: the harbour dues rise in June.</p>", subtype="html")
    text = text_of(parse(bytes(m)))
    assert "Plain version" in text and "HTML version" not in text


def test_html_only_alternative_and_html_only_message_are_converted() -> None:
    alt = MIMEMultipart("alternative")
    alt.attach(MIMEText("<html><head><style>p {color: red}</style></head><body><h1>Menu</h1>"
                        "<p>Fresh &amp; crunchy <b>radishes</b> today.</p><script>track()</script></body></html>",
                        "html"))
    alt.attach(MIMEText("BEGIN:VCALENDAR\nEND:VCALENDAR\n", "calendar"))
    text = text_of(parse(alt.as_bytes()))
    assert "Fresh & crunchy radishes today." in text and "Menu" in text
    assert "color" not in text and "track" not in text

    single = message()
    single.set_content("<div><p>Only <i>markup</i> here about turnips.</p></div>", subtype="html")
    assert "Only markup here about turnips." in text_of(parse(bytes(single)))


def test_forwarded_message_and_files_are_attachments_of_their_own() -> None:
    # A forwarded message (message/rfc822) is a document of its own, linked to this one: not inlined, so its
    # text is not in the library twice. Without a parts store the attachments are listed, not saved.
    inner = message(subject="Original: lease renewal")
    inner.set_content("The landlord agrees to renew the lease for three years.\n")
    inner.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf", filename="lease.pdf")
    outer = message(subject="Fwd: lease renewal")
    outer.set_content("See the forwarded message below.\n")
    outer.add_attachment(inner)  # message/rfc822
    outer.add_attachment(b"\x89PNG fake", maintype="image", subtype="png", filename="floorplan.png")
    doc = parse(bytes(outer))
    text = text_of(doc)
    assert "See the forwarded message below." in text
    assert "renew the lease" not in text
    assert doc.title == "Fwd: lease renewal"
    listed = [(a["index"], a["filename"], a["content_type"], a["blob"]) for a in doc.meta["attachments"]]
    assert listed == [
        (1, "Original: lease renewal.eml", "message/rfc822", None), (2, "floorplan.png", "image/png", None),
    ]
    assert doc.attachments[1].size == len(b"\x89PNG fake")
    forwarded = parse(bytes(inner))
    assert "renew the lease for three years" in text_of(forwarded)
    assert [a.filename for a in forwarded.attachments] == ["lease.pdf"]


def test_text_attachment_is_listed_not_read() -> None:
    m = message()
    m.set_content("Body text.\n")
    m.add_attachment("secret notes in a file", filename="notes.txt")
    doc = parse(bytes(m))
    assert "secret notes" not in text_of(doc)
    assert doc.meta["attachments"][0]["filename"] == "notes.txt"


def test_unknown_charset_falls_back_to_utf8() -> None:
    raw = ("From: a@example.org\nSubject: odd charset\nMIME-Version: 1.0\n"
           'Content-Type: text/plain; charset="x-made-up-42"\nContent-Transfer-Encoding: 8bit\n\n'
           "Café crème for everyone.\n").encode()
    assert "Café crème for everyone." in text_of(parse(raw))


def test_legacy_charset_is_honoured() -> None:
    raw = (b"From: a@example.org\nSubject: latin\nMIME-Version: 1.0\n"
           b'Content-Type: text/plain; charset="iso-8859-1"\nContent-Transfer-Encoding: 8bit\n\n'
           + "Smørrebrød på bordet.\n".encode("latin-1"))
    assert "Smørrebrød på bordet." in text_of(parse(raw))


def test_text_budget_stops_with_a_warning() -> None:
    m = message()
    m.make_mixed()
    for i in range(50):
        part = email.message.EmailMessage()
        part.set_content(f"Paragraph {i}: " + "lorem ipsum " * 40 + "\n")
        m.attach(part)
    doc = parse(bytes(m), EmailParser(max_text_chars=3000))
    assert sum(len(e.text) for e in doc.elements) <= 3000
    assert "Paragraph 0:" in text_of(doc) and "Paragraph 49:" not in text_of(doc)
    assert doc.meta["warnings"] and "3,000 characters" in doc.meta["warnings"][0]


@pytest.mark.parametrize(
    "content_type",
    ['multipart/encrypted; protocol="application/pgp-encrypted"; boundary=foo',
     'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'],
)
def test_encrypted_mail_is_refused(content_type: str) -> None:
    raw = (f"From: a@example.org\nTo: b@example.org\nSubject: secret\nMIME-Version: 1.0\n"
           f"Content-Type: {content_type}\n\n"
           "--foo\nContent-Type: application/pgp-encrypted\n\nVersion: 1\n\n--foo\n"
           "Content-Type: application/octet-stream\n\n-----BEGIN PGP MESSAGE-----\nhIwDY32h\n"
           "-----END PGP MESSAGE-----\n--foo--\n").encode()
    with pytest.raises(EncryptedFile, match="encrypted e-mail"):
        parse(raw)


def test_signed_mail_is_read_and_its_signature_not_listed() -> None:
    signed = MIMEMultipart("signed", protocol="application/pgp-signature")
    signed.attach(MIMEText("Signed words about the garden fence.\n"))
    sig = email.message.Message()
    sig["Content-Type"] = "application/pgp-signature"
    sig.set_payload("-----BEGIN PGP SIGNATURE-----\nabc\n-----END PGP SIGNATURE-----\n")
    signed.attach(sig)
    doc = parse(signed.as_bytes())
    assert "garden fence" in text_of(doc) and doc.meta["attachments"] == []


def test_absurd_nesting_is_a_clear_error_or_read() -> None:
    depth = 5000
    body = "".join(f'Content-Type: multipart/mixed; boundary="b{i}"\n\n--b{i}\n' for i in range(depth))
    body += "Content-Type: text/plain\n\ninnermost words\n" + "".join(f"--b{i}--\n" for i in reversed(range(depth)))
    raw = ("From: a@example.org\nSubject: deep\nMIME-Version: 1.0\n" + body).encode()
    try:
        doc = parse(raw)
    except CorruptFile as exc:
        assert "nested too deeply" in str(exc)
    else:
        assert "innermost words" in text_of(doc)
