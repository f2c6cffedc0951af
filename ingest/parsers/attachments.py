"""Files inside messages: saved for their own ingest jobs, or listed with the reason they are not.

A parser that meets an attachment (EmailParser, MsgParser, the TNEF `winmail.dat` inside a message) hands
its bytes to a PartSaver. It runs in the parser child process, so a hostile message costs that process
only; the saver writes each accepted attachment to a content-addressed blob store and returns an
AttachmentRef, and the ingest handler queues one job per ref once the message is stored. Archives,
encrypted parts and anything over the size limit get a ref with an error instead of a blob: the
attachment is recorded as failed with that reason, and never read.
"""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path
from typing import Any

from ingest.errors import CorruptFile
from ingest.parsers.base import AttachmentRef, ParsedDocument, ProgressFn, Source
from kb.blobs import BlobStore

# More attachments than this in one message is not correspondence: the rest are listed in a warning.
MAX_ATTACHMENTS = 500
ARCHIVE_TYPES = frozenset({"zip", "7z", "rar", "tar", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "zst", "cab", "arj",
                           "lz", "lzma", "z"})
ENCRYPTED_PART = "encrypted attachment (PGP or S/MIME): it cannot be read without the key"
TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
# Content types whose usual extension mimetypes does not know or guesses oddly.
_EXTENSIONS = {
    "message/rfc822": ".eml", "message/global": ".eml", "text/plain": ".txt", "text/html": ".html",
    "application/vnd.ms-outlook": ".msg", "application/pdf": ".pdf", "image/jpeg": ".jpg", "audio/mpeg": ".mp3",
    "application/octet-stream": ".bin", "application/zip": ".zip", "application/x-zip-compressed": ".zip",
}
_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")


def safe_filename(name: str | None) -> str:
    """A sender-chosen name made harmless: no directories, no control characters, at most 200 characters."""
    name = _UNSAFE.sub(" ", (name or "").replace("\\", "/")).rsplit("/", 1)[-1].strip(" .")
    if len(name) > 200:
        stem, ext = os.path.splitext(name)
        name = stem[: 200 - len(ext[:20])] + ext[:20]
    return name


def attachment_name(filename: str | None, content_type: str, fallback: str = "attachment") -> str:
    """The name an attachment is ingested under: its own, else one with the extension of its content type."""
    name = safe_filename(filename)
    if name:
        return name
    ext = _EXTENSIONS.get(content_type) or mimetypes.guess_extension(content_type, strict=False) or ".bin"
    return f"{fallback}{ext}"


def is_tnef(content_type: str, filename: str | None) -> bool:
    """Outlook's rich-text wrapper (winmail.dat): its body and files belong to the message it came in."""
    return content_type in TNEF_TYPES or (filename or "").strip().lower() == "winmail.dat"


class PartSaver:
    """Numbers a container's attachments and saves the readable ones (see the module docstring)."""

    def __init__(self, store: BlobStore | None, max_bytes: int) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.refs: list[AttachmentRef] = []
        self.warnings: list[str] = []
        self.dropped = 0

    def add(
        self, filename: str | None, content_type: str, data: bytes, *, error: str | None = None,
        fallback: str = "attachment",
    ) -> AttachmentRef | None:
        """Save one attachment (or record why not); None past MAX_ATTACHMENTS."""
        if len(self.refs) >= MAX_ATTACHMENTS:
            self.dropped += 1
            return None
        name = attachment_name(filename, content_type, fallback)
        ext = os.path.splitext(name)[1].lower().lstrip(".")
        if error is None:
            error = self._refusal(name, ext, content_type, len(data))
        blob = None
        if error is None and self.store is not None:
            blob = self.store.put(data)
        ref = AttachmentRef(len(self.refs) + 1, name, content_type, len(data), blob, error)
        self.refs.append(ref)
        return ref

    def _refusal(self, name: str, ext: str, content_type: str, size: int) -> str | None:
        if ext in ARCHIVE_TYPES or content_type in ("application/zip", "application/x-zip-compressed",
                                                    "application/x-7z-compressed", "application/x-rar-compressed"):
            return f"archive attachments are not unpacked (.{ext or 'zip'}): save it and unpack it into a folder"
        if ext in ("pgp", "gpg", "p7m") or ("pkcs7-mime" in content_type and "signed" not in content_type):
            return ENCRYPTED_PART
        if size > self.max_bytes:
            return (
                f"attachment is {size / 2**20:.1f} MiB, over the {self.max_bytes / 2**20:.0f} MiB limit "
                "(setting mail_max_attachment_mb)"
            )
        if size == 0:
            return "the attachment is empty (0 bytes)"
        return None

    def finish(self, doc: ParsedDocument) -> None:
        """Put the refs (and any warning about dropped ones) on the parsed document."""
        doc.attachments = list(self.refs)
        doc.meta["attachments"] = [a.to_dict() for a in self.refs]
        if self.dropped:
            self.warnings.append(
                f"only the first {MAX_ATTACHMENTS} attachments were read ({self.dropped} more were left out)"
            )
        if self.warnings:
            warnings = doc.meta.setdefault("warnings", [])
            warnings.extend(w for w in self.warnings if w not in warnings)


def tnef_contents(data: bytes) -> tuple[str | None, bool, list[tuple[str, bytes]]]:
    """(body text, whether it is HTML, [(file name, bytes)]) of a TNEF blob; CorruptFile when unreadable."""
    from tnefparse.tnef import TNEF

    try:
        tnef = TNEF(data, do_checksum=False)
        files = [(_text(a.long_filename() or a.name), bytes(a.data or b"")) for a in tnef.attachments]
    except Exception as exc:  # a damaged blob fails deep inside the decoder, with any exception
        raise CorruptFile(f"winmail.dat (Outlook TNEF) could not be read: {type(exc).__name__}: {exc}") from None
    body: Any = tnef.body
    html = False
    if not body and tnef.htmlbody:
        body, html = tnef.htmlbody, True
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace") if _utf8(body) else body.decode("cp1252", errors="replace")
    text = str(body).strip("\x00") if body else None
    return text or None, html, files


def _text(value: Any) -> str:
    """A TNEF property as text: names come as str or as bytes in the message's code page."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace") if _utf8(value) else value.decode("cp1252", errors="replace")
    return str(value or "")


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class MsgParser:
    """Outlook .msg: the text through `inner` (unstructured's partitioner), the attachments through oxmsg."""

    name = "outlook"
    version = 1

    def __init__(self, inner: Any, store: BlobStore | None, max_attachment_bytes: int) -> None:
        self.inner = inner
        self.store = store
        self.max_attachment_bytes = max_attachment_bytes

    def warm_up(self) -> None:
        """Nothing of its own: the inner parser warms up through the registry."""

    def parse(self, source: Source, file_type: str, progress: ProgressFn) -> ParsedDocument:
        doc: ParsedDocument = self.inner.parse(source, file_type, progress)
        saver = PartSaver(self.store, self.max_attachment_bytes)
        with source.local_file() as path:
            self._attachments(path, saver)
        if doc.author:
            doc.meta.setdefault("from", doc.author)
        saver.finish(doc)
        return doc

    @staticmethod
    def _attachments(path: Path, saver: PartSaver) -> None:
        from oxmsg import Message

        try:
            msg = Message.load(str(path))
            attachments = list(msg.attachments)
        except Exception as exc:  # the text was read; a broken attachment table costs only the attachments
            saver.warnings.append(f"the message's attachments could not be listed: {type(exc).__name__}: {exc}")
            return
        add_outlook_attachments(saver, attachments)


def add_outlook_attachments(saver: PartSaver, attachments: list[Any]) -> None:
    """oxmsg attachments (file_name, mime_type, file_bytes) to the saver; an unreadable one is a record."""
    for att in attachments:
        try:
            name, ctype, data = att.file_name, (att.mime_type or "").lower(), att.file_bytes
        except Exception as exc:
            saver.add(None, "application/octet-stream", b"", error=f"unreadable attachment: {exc}")
            continue
        ctype = ctype or mimetypes.guess_type(name or "")[0] or "application/octet-stream"
        if data is None:  # an embedded Outlook item or a link to a file, not bytes of its own
            saver.add(name, ctype, b"", error="an embedded Outlook item or a linked file: not read")
            continue
        if is_tnef(ctype, name):
            saver.add(name, ctype, b"", error="winmail.dat inside an Outlook message: not read")
            continue
        saver.add(name, ctype, data)
