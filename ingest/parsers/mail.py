"""E-mail (.eml) with the stdlib `email` package: headers, every body part, attachments listed.

unstructured's e-mail partitioner keeps only the first body part; a digest or a long thread of forwarded
messages loses everything after it. This parser walks the whole MIME tree (nested multiparts and attached
messages) with an explicit stack, so neither the number of parts nor their nesting can blow it up, and
stops adding text at MAX_TEXT_CHARS with a recorded warning. Attachments are listed, not parsed.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

from ingest.errors import CorruptFile, EncryptedFile
from ingest.parsers.base import TEXT, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.htmltext import html_text
from ingest.parsers.text import paragraphs_to_elements

MAX_TEXT_CHARS = 50_000_000
HEADERS = ("From", "To", "Cc", "Subject", "Date")
ENCRYPTED_MESSAGE = "encrypted e-mail (PGP or S/MIME): its text cannot be read without the key"
# Signatures are proof, not content: not worth listing as attachments.
_SIGNATURES = {"application/pgp-signature", "application/pkcs7-signature", "application/x-pkcs7-signature"}


def content_type_encrypted(content_type: str) -> bool:
    """Whether a Content-Type value announces an encrypted body (PGP/MIME, or S/MIME enveloped data)."""
    content_type = content_type.lower()
    return "multipart/encrypted" in content_type or (
        "pkcs7-mime" in content_type and "signed-data" not in content_type
    )


def _header(msg: Message, name: str) -> str | None:
    """A header as one line of text; a malformed one falls back to its raw value rather than failing."""
    try:
        value = msg.get(name)
        text = str(value) if value is not None else None
    except Exception:  # the default policy's header parser raises on some broken values
        raw = next((v for k, v in msg.raw_items() if k.lower() == name.lower()), None)
        text = str(raw) if raw is not None else None
    if text is None:
        return None
    return " ".join(text.split()) or None


def _iso_date(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).isoformat()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _payload(part: Message) -> bytes:
    try:
        data = part.get_payload(decode=True)
    except Exception:  # a broken transfer encoding: keep what is there rather than nothing
        raw = part.get_payload()
        data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""
    return data if isinstance(data, bytes) else b""


def _decode(data: bytes, charset: str | None) -> str:
    """A text part's bytes as text: its declared charset, else UTF-8 (then Windows-1252)."""
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:
            return data.decode("utf-8", errors="replace")  # an unknown or made-up charset name
        try:
            return data.decode(charset, errors="replace")
        except (LookupError, UnicodeError, ValueError):
            return data.decode("utf-8", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


@dataclass
class _Part:
    """What the walk needs of a part's Content-Type, with the header parsed once.

    The default policy parses a header again on every access, and Message.get_content_type(),
    get_content_charset(), get_filename() and friends each access it: that made a 2,000-part digest slow.
    """

    ctype: str  # lower-case type/subtype; 'text/plain' for a malformed value, as Message.get_content_type
    declared: str  # the Content-Type value as written, parameters included (smime-type, protocol)
    charset: str | None
    name: str | None  # the Content-Type name parameter: an old way of naming an attachment

    @classmethod
    def of(cls, part: Message) -> _Part:
        try:
            header = part.get("Content-Type")
        except Exception:
            header = None
        if header is None:
            return cls(part.get_default_type(), "", None, None)
        declared = str(header)
        ctype = declared.split(";", 1)[0].strip().lower()
        if ctype.count("/") != 1:
            ctype = "text/plain"
        params = getattr(header, "params", None) or {}
        charset, name = params.get("charset"), params.get("name")
        return cls(ctype, declared, str(charset).lower() if charset else None, str(name) if name else None)

    def disposition(self, part: Message) -> tuple[bool, str | None]:
        """(is an attachment, its file name): an attached or a named part is a file, not the body."""
        try:
            header = part.get("Content-Disposition")
        except Exception:
            header = None
        params = getattr(header, "params", None) or {}
        filename = params.get("filename") or self.name
        filename = str(filename) if filename else None
        return getattr(header, "content_disposition", None) == "attachment" or filename is not None, filename


class EmailParser:
    """RFC 822 / MIME messages (.eml) -> a header element, then the text of every body part; kind 'mail'."""

    name = "email"
    version = 1

    def __init__(self, max_text_chars: int = MAX_TEXT_CHARS) -> None:
        self.max_text_chars = max_text_chars

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        from email import policy
        from email.parser import BytesParser

        try:
            with source.open() as f:
                msg = BytesParser(policy=policy.default).parse(f)
        except RecursionError:  # the stdlib parser recurses once per level of multipart nesting
            raise CorruptFile("the message's MIME parts are nested too deeply to read") from None
        if content_type_encrypted(_Part.of(msg).declared):
            raise EncryptedFile(ENCRYPTED_MESSAGE)
        reader = _Reader(self.max_text_chars)
        reader.walk(msg)
        if not reader.body_chars and reader.encrypted:
            raise EncryptedFile(ENCRYPTED_MESSAGE)  # e.g. an encrypted body wrapped in multipart/mixed
        meta: dict[str, Any] = {"parts": reader.parts, "attachments": reader.attachments}
        message_id = _header(msg, "Message-ID")
        if message_id:
            meta["message_id"] = message_id
        if reader.warnings:
            meta["warnings"] = reader.warnings
        return ParsedDocument(
            elements=reader.elements,
            kind="mail",
            title=_header(msg, "Subject"),
            author=_header(msg, "From"),
            created_at=_iso_date(_header(msg, "Date")),
            meta=meta,
        )


class _Reader:
    """One walk over a message tree, collecting elements, attachments and warnings."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.elements: list[Element] = []
        self.attachments: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.chars = 0
        self.body_chars = 0
        self.parts = 0
        self.encrypted = False
        self._full = False

    def walk(self, msg: Message) -> None:
        # (part, is a message whose headers are shown): an explicit stack, never recursion.
        stack: list[tuple[Message, bool]] = [(msg, True)]
        while stack:
            part, is_message = stack.pop()
            self.parts += 1
            if is_message:
                self._add_header(part)
            info = _Part.of(part)
            if content_type_encrypted(info.declared or info.ctype):
                self.encrypted = True
                continue
            if part.is_multipart():
                # multipart/* children, or the message inside a message/rfc822 part (a forwarded mail)
                children = [c for c in part.get_payload() if isinstance(c, Message)]
                if info.ctype.startswith("message/"):
                    stack.extend((c, True) for c in reversed(children))
                    continue
                if info.ctype == "multipart/alternative":
                    children = _preferred_alternative(children)
                stack.extend((c, False) for c in reversed(children))
                continue
            if info.ctype in _SIGNATURES:
                continue
            attached, filename = info.disposition(part)
            if info.ctype in ("text/plain", "text/html") and not attached:
                text = _decode(_payload(part), info.charset)
                elements = paragraphs_to_elements(html_text(text) if info.ctype == "text/html" else text)
                self.body_chars += self._add(elements)
                continue
            self.attachments.append({"filename": filename, "content_type": info.ctype, "size": len(_payload(part))})

    def _add_header(self, msg: Message) -> None:
        lines = [f"{name}: {value}" for name in HEADERS if (value := _header(msg, name))]
        if lines:
            self._add([Element("\n".join(lines), TEXT)])

    def _add(self, elements: list[Element]) -> int:
        """Keep elements up to the text budget; returns the characters kept."""
        kept = 0
        for e in elements:
            if self._full:
                break
            if self.chars + len(e.text) > self.max_chars:
                self._full = True
                self.warnings.append(f"only the first {self.max_chars:,} characters of the message's text were kept")
                break
            self.elements.append(e)
            self.chars += len(e.text)
            kept += len(e.text)
        return kept


def _preferred_alternative(children: list[Message]) -> list[Message]:
    """The one alternative to read: plain text if there is one, else HTML, else the richest (last) part."""
    types = [_Part.of(c).ctype for c in children]
    for ctype in ("text/plain", "text/html"):
        if ctype in types:
            return [children[types.index(ctype)]]
    return children[-1:]
