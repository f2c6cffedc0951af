"""Helpers shared by parsers: decoding bytes of unknown encoding, spotting binary junk, tidying text."""

from __future__ import annotations

import re
import unicodedata

from ingest.errors import CorruptFile

_CONTROL = {c for c in range(32) if chr(c) not in "\t\n\r\f\v\x1b"}


def looks_binary(data: bytes) -> bool:
    """NUL bytes or many control characters in the first 8 KiB mean this is not text."""
    head = data[:8192]
    if not head:
        return False
    if b"\x00" in head:
        return True
    bad = sum(1 for b in head if b in _CONTROL)
    return bad / len(head) > 0.05


def looks_like_text(head: bytes) -> bool:
    """A file's first bytes (8 KiB) are UTF-8 text without control characters (cheap sniff for unknown types)."""
    head = head[:8192]
    if not head.strip() or looks_binary(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 4  # a multi-byte character cut at the 8 KiB boundary
    return True


def decode_text(data: bytes) -> tuple[str, str]:
    """Decode bytes as UTF-8 (BOM aware), else the likeliest legacy encoding. Returns (text, encoding)."""
    if data.startswith(b"\xef\xbb\xbf"):
        return data[3:].decode("utf-8", errors="replace"), "utf-8-sig"
    for bom, enc in ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
                     (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(enc, errors="replace"), enc
    head = data[:4096]
    if len(head) >= 8 and head.count(b"\x00") * 2 >= len(head) * 0.9:
        # UTF-16 without a BOM: every other byte is zero for Latin text.
        enc = "utf-16-le" if head[1::2].count(0) > head[0::2].count(0) else "utf-16-be"
        text = data.decode(enc, errors="replace")
        if text.count("\ufffd") < max(3, len(text) // 100):
            return text, enc
    if looks_binary(data):
        raise CorruptFile("binary content in a text file (not text, or a wrong extension)")
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    matches = list(from_bytes(data[:200_000]))
    enc = "cp1252"
    if matches:
        best = min(m.chaos for m in matches)
        tied = [m.encoding for m in matches if m.chaos <= best + 0.01]
        # Short Western text fits several code pages equally well; Windows-1252 is by far the likeliest.
        enc = "cp1252" if "cp1252" in tied else tied[0]
    try:
        return data.decode(enc, errors="replace"), enc
    except LookupError:
        return data.decode("cp1252", errors="replace"), "cp1252"


_WS = re.compile(r"[ \t\u00a0\u2000-\u200b]+")


def clean(text: str) -> str:
    """Normalise Unicode and whitespace inside a paragraph; keep line breaks that carry meaning."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [_WS.sub(" ", ln).strip() for ln in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def naive_iso(value: str | None) -> str | None:
    """An ISO 8601 / W3CDTF date ('2024-05-03T10:00:00Z') as naive ISO 8601, or None if unreadable."""
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).replace(tzinfo=None).isoformat()
    except ValueError:
        return None
