"""E-mail (.eml) with the stdlib `email` package: headers, every body part, attachments saved as parts.

unstructured's e-mail partitioner keeps only the first body part; a digest loses everything after it.
This parser walks the whole MIME tree with an explicit stack, so neither the number of parts nor their
nesting can blow it up, and stops adding text at MAX_TEXT_CHARS with a recorded warning. Quoted replies
and signatures become elements with a role, so search weighs them less than the writer's own words.
Attachments, attached messages (message/rfc822) and the files inside a winmail.dat are handed to a
PartSaver: each becomes a document of its own, linked to this message (see ingest.parsers.attachments).
"""

from __future__ import annotations

import codecs
import mimetypes
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime
from typing import Any

from ingest.errors import CorruptFile, EncryptedFile
from ingest.parsers.attachments import ENCRYPTED_PART, PartSaver, is_tnef, tnef_contents
from ingest.parsers.base import QUOTE, SIGNATURE, TEXT, TITLE, Element, ParsedDocument, ProgressFn, Source
from ingest.parsers.htmltext import html_text
from ingest.parsers.text import paragraphs_to_elements
from ingest.parsers.textutil import looks_binary
from kb.blobs import BlobStore

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


def _decode(data: bytes, charset: str | None, warnings: list[str] | None = None) -> str:
    """A text part's bytes as text: its declared charset, else UTF-8 (then Windows-1252)."""
    if charset:
        try:
            codecs.lookup(charset)
        except LookupError:  # an unknown or made-up charset name
            if warnings is not None and len(warnings) < 20:
                warnings.append(f"unknown charset {charset[:40]!r}: read as UTF-8")
            return _decode(data, None)
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
    """RFC 822 / MIME messages (.eml) -> a header element, then the body with quoted replies and signatures
    marked; kind 'mail'. Attachments (nested messages too) are saved as parts for their own documents."""

    name = "email"
    # 2: quotes and signatures carry a role; attachments and forwarded messages are documents of their own
    # (no longer inlined); from/to/cc/date/references in meta; winmail.dat unpacked.
    version = 2

    def __init__(
        self, max_text_chars: int = MAX_TEXT_CHARS, *, parts: BlobStore | None = None,
        max_attachment_bytes: int = 25 * 2**20,
    ) -> None:
        self.max_text_chars = max_text_chars
        self.parts = parts
        self.max_attachment_bytes = max_attachment_bytes

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
        if not any(k.lower() in _KNOWN_HEADERS for k in msg):
            with source.open() as f:
                head = f.read(8192)
            if looks_binary(head):  # no header a message has, and binary bytes: something else named .eml
                raise CorruptFile("not an e-mail message: no message headers, and binary content")
        saver = PartSaver(self.parts, self.max_attachment_bytes)
        reader = _Reader(self.max_text_chars, saver)
        reader.walk(msg)
        if not reader.body_chars and reader.encrypted and all(r.error == ENCRYPTED_PART for r in saver.refs):
            raise EncryptedFile(ENCRYPTED_MESSAGE)  # e.g. an encrypted body wrapped in multipart/mixed
        meta: dict[str, Any] = {"parts": reader.parts}
        for key, name in (("from", "From"), ("to", "To"), ("cc", "Cc"), ("date", "Date"),
                          ("message_id", "Message-ID"), ("in_reply_to", "In-Reply-To")):
            value = _header(msg, name)
            if value:
                meta[key] = value
        references = _MSG_ID.findall(_header(msg, "References") or "")
        if references:
            meta["references"] = references[-100:]  # the nearest ancestors; a header can be made endless
        defects = _defects(msg)
        if defects:
            reader.warnings.append(f"malformed MIME, read as well as possible ({defects})")
        doc = ParsedDocument(
            elements=reader.elements,
            kind="mail",
            title=_header(msg, "Subject"),
            author=_header(msg, "From"),
            created_at=_iso_date(_header(msg, "Date")),
            meta=meta,
        )
        saver.finish(doc)  # the attachments, and the warnings of the whole walk
        return doc


_MSG_ID = re.compile(r"<[^<>\s]+>")
_KNOWN_HEADERS = frozenset({"from", "to", "cc", "subject", "date", "message-id", "received", "mime-version",
                            "content-type", "return-path", "sender", "reply-to"})
# An inline image this small with a Content-ID is a logo or a spacer the HTML body shows, not a document.
_INLINE_IMAGE_BYTES = 16 * 1024


def _defects(msg: Message) -> str:
    """The parser's complaints about the message's structure, counted by kind (empty when there are none)."""
    kinds: dict[str, int] = {}
    stack = [msg]
    seen = 0
    while stack and seen < 10_000:
        part = stack.pop()
        seen += 1
        for d in getattr(part, "defects", []):
            kinds[type(d).__name__] = kinds.get(type(d).__name__, 0) + 1
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(c for c in payload if isinstance(c, Message))
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(kinds.items()))


class _Reader:
    """One walk over a message tree, collecting elements, attachments and warnings."""

    def __init__(self, max_chars: int, saver: PartSaver) -> None:
        self.max_chars = max_chars
        self.saver = saver
        self.elements: list[Element] = []
        self.warnings: list[str] = saver.warnings
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
                if part is not msg:
                    _, filename = info.disposition(part)
                    self.saver.add(filename, info.ctype, b"", error=ENCRYPTED_PART, fallback="encrypted")
                continue
            if info.ctype in ("message/rfc822", "message/global") and part is not msg:
                self._nested_message(part, info)
                continue
            if part.is_multipart():
                # multipart/* children, or the parts inside another message/* part (a delivery report)
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
                text = _decode(_payload(part), info.charset, self.warnings)
                self.body_chars += self._add(body_elements(text, html=info.ctype == "text/html"))
                continue
            data = _payload(part)
            if is_tnef(info.ctype, filename):
                self._tnef(data)
                continue
            small_inline = info.ctype.startswith("image/") and not attached and len(data) < _INLINE_IMAGE_BYTES
            if small_inline and "Content-ID" in part:  # (a membership test: the value is never parsed)
                continue  # a logo or spacer shown by the HTML body
            self.saver.add(filename, info.ctype, data)

    def _nested_message(self, part: Message, info: _Part) -> None:
        """A forwarded or attached message: a document of its own (an .eml attachment), not inlined."""
        _, filename = info.disposition(part)
        inner = part.get_payload()
        inner_msg = inner[0] if isinstance(inner, list) and inner and isinstance(inner[0], Message) else None
        if inner_msg is None:
            self.saver.add(filename, "message/rfc822", b"", error="the attached message is empty or unreadable")
            return
        try:
            data = inner_msg.as_bytes()
        except Exception:  # the generator refuses some broken headers: the stdlib's lenient policy writes them
            try:
                from email import policy

                data = inner_msg.as_bytes(policy=policy.compat32)
            except Exception as exc:
                self.saver.add(filename, "message/rfc822", b"", error=f"the attached message is unreadable: {exc}")
                return
        name = filename or (_header(inner_msg, "Subject") or "message")[:120]
        if not name.lower().endswith(".eml"):
            name += ".eml"
        self.saver.add(name, "message/rfc822", data)

    def _tnef(self, data: bytes) -> None:
        """winmail.dat: Outlook's wrapper; its body is the message's text, its files are its attachments."""
        try:
            body, html, files = tnef_contents(data)
        except CorruptFile as exc:
            self.saver.add("winmail.dat", "application/ms-tnef", b"", error=str(exc))
            return
        if body:
            self.body_chars += self._add(body_elements(body, html=html))
        for name, content in files:
            self.saver.add(name, mimetypes.guess_type(name)[0] or "application/octet-stream", content)

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


# -- quoted replies and signatures ------------------------------------------------------------------------
# "On Tue, 14 May 2024, Carol <c@x> wrote:" and its translations: the start of a quoted message.
_WROTE = re.compile(
    r"^\s*(On|Am|Le|El|Il|Op|Em|Den|På)\s.{0,300}?\b(wrote|writes|schrieb|a écrit|escribió|ha scritto|schreef|"
    r"escreveu|skrev)\s*:\s*$",
    re.I | re.S,
)
# Outlook and friends quote the whole original under a separator or a header block, without '>' markers.
_ORIGINAL = re.compile(r"^\s*(-{3,}\s*(Original Message|Forwarded message|Ursprüngliche Nachricht|Message d'origine)"
                       r"\s*-{3,}|_{20,})\s*$", re.I)
_FROM_LINE = re.compile(r"^\s*\*?(From|Von|De|Van)\s*:\*?\s+\S", re.I)
_SENT_LINE = re.compile(r"^\s*\*?(Sent|Date|Gesendet|Datum|Envoyé|Verzonden)\s*:\*?\s+\S", re.I)
_QUOTED = re.compile(r"^\s*>")
_MARKERS = re.compile(r"^(\s*>)+ ?")


def split_roles(text: str) -> list[tuple[str | None, str]]:
    """Cut a message body into (role, text) runs: the writer's own words (None), QUOTE, SIGNATURE.

    Quotes: '>' lines, an "On ... wrote:" line with what it introduces, and an Outlook original (a
    "-----Original Message-----" line or a From:/Sent: header block) with everything after it. A signature
    runs from the "-- " line to the next quote or the end. The '>' markers are dropped from quoted text.
    """
    lines = text.splitlines()
    runs: list[tuple[str | None, list[str]]] = []
    role: str | None = None
    rest_quoted = False  # the rest of the body is the quoted original (top-posting)
    i = 0
    while i < len(lines):
        line = lines[i]
        new = role
        if rest_quoted:
            new = QUOTE
        elif _starts_original(lines, i):
            new, rest_quoted = QUOTE, True
        elif (wrote := _wrote_at(lines, i)) is not None:
            following = next((x for x in lines[i + wrote :] if x.strip()), "")
            new, rest_quoted = QUOTE, not _QUOTED.match(following)  # quoted by an HTML client: no markers
            for extra in lines[i : i + wrote - 1]:  # the line wrapped: keep it whole in the quote
                _append(runs, QUOTE, extra)
            i += wrote - 1
            line = lines[i]
        elif _QUOTED.match(line):
            new = QUOTE
        elif line in ("-- ", "--") or line.rstrip() == "-- ":
            new = SIGNATURE
        elif role == QUOTE and line.strip():
            new = None  # an inline reply after a quoted passage
        if new == QUOTE:
            line = _MARKERS.sub("", line)
        _append(runs, new, line)
        role = new
        i += 1
    return [(r, "\n".join(ls)) for r, ls in runs if any(x.strip() for x in ls)]


def _append(runs: list[tuple[str | None, list[str]]], role: str | None, line: str) -> None:
    if runs and runs[-1][0] == role:
        runs[-1][1].append(line)
    else:
        runs.append((role, [line]))


def _wrote_at(lines: list[str], i: int) -> int | None:
    """How many lines the "On ... wrote:" header starting at line i takes (clients wrap it), or None."""
    first = lines[i]
    if not first.strip() or len(first) > 300 or _QUOTED.match(first):
        return None
    for n in (1, 2, 3):
        if i + n > len(lines):
            break
        if _WROTE.match(" ".join(lines[i : i + n])):
            return n
    return None


def _starts_original(lines: list[str], i: int) -> bool:
    """Whether line i opens a quoted original: a separator, or a From: line with a Sent:/Date: just below."""
    if _ORIGINAL.match(lines[i]):
        nxt = [x for x in lines[i + 1 : i + 4] if x.strip()]
        return bool(re.match(r"^\s*-", lines[i])) or any(_FROM_LINE.match(x) for x in nxt)
    if _FROM_LINE.match(lines[i]) and i > 0:
        return any(_SENT_LINE.match(x) for x in lines[i + 1 : i + 5])
    return False


def body_elements(text: str, *, html: bool = False) -> list[Element]:
    """A body part's elements, with quoted replies and signatures marked by role."""
    if html:
        text = html_text(text)
    out: list[Element] = []
    for role, run in split_roles(text):
        elements = paragraphs_to_elements(run)
        if role is not None:
            for e in elements:
                e.role = role
                if e.kind == TITLE:
                    e.kind = TEXT  # a short quoted line is not a heading of this message
        out += elements
    return out


def _preferred_alternative(children: list[Message]) -> list[Message]:
    """The one alternative to read: plain text if there is one, else HTML, else the richest (last) part."""
    types = [_Part.of(c).ctype for c in children]
    for ctype in ("text/plain", "text/html"):
        if ctype in types:
            return [children[types.index(ctype)]]
    return children[-1:]
