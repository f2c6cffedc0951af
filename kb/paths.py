"""File names of any bytes, stored, compared and shown safely.

POSIX file names are bytes. Python decodes undecodable bytes to lone surrogates (U+DC80..U+DCFF), which
SQLite and JSON refuse to encode. A catalog uri is the path as text with each such byte moved to a
private-use code point (U+10FE80..U+10FEFF): valid UTF-8, order- and prefix-preserving, and reversible.
`display` turns a uri into something safe to print: escaped bytes and control characters as \\xNN.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from pathlib import Path

_SURROGATE = re.compile("[\udc80-\udcff]")
_ESCAPED = re.compile("[\U0010fe80-\U0010feff]")
_SHIFT = 0x10FE80 - 0xDC80
# C0/C1 control characters and the line/paragraph separators: a name must not move the cursor or
# inject terminal escapes when it is printed.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def absolute(path: Path | str) -> Path:
    """Absolute and normalised, without resolving symlinks: the path the user knows the file by."""
    return Path(os.path.normpath(os.path.abspath(path)))


def ignored(name: str, patterns: Iterable[str]) -> bool:
    """Whether one file or folder name matches an ignore pattern (fnmatch, case-insensitive).

    The one rule for the folder watcher and for scans, so both skip the same temporary and hidden files.
    """
    low = name.lower()
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in patterns)


def to_uri(path: Path | str) -> str:
    """The catalog's text form of a local path (see the module docstring)."""
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return _SURROGATE.sub(lambda m: chr(ord(m.group()) + _SHIFT), text)


def from_uri(uri: str) -> Path:
    """The local path a uri names, exactly as the file system has it."""
    return Path(_ESCAPED.sub(lambda m: chr(ord(m.group()) - _SHIFT), uri))


def display(uri: str) -> str:
    """A uri (or any name) safe to print: undecodable bytes and control characters shown as \\xNN."""
    text = _ESCAPED.sub(lambda m: f"\\x{ord(m.group()) - 0x10FE00:02x}", uri)
    text = _SURROGATE.sub(lambda m: f"\\x{ord(m.group()) - 0xDC00:02x}", text)
    return _CONTROL.sub(_escape_control, text)


def _escape_control(m: re.Match[str]) -> str:
    code = ord(m.group())
    return f"\\x{code:02x}" if code < 256 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """Any text (an error message quoting a name) with lone surrogates replaced, so it can be stored."""
    return _SURROGATE.sub("\ufffd", text)


def mail_uri(account: str, folder: str, uidvalidity: int, uid: int) -> str:
    """A message's identity in the catalog, after RFC 5092 IMAP URLs: one per (folder, UIDVALIDITY, UID)."""
    from urllib.parse import quote

    return f"imap://{quote(account, safe='')}/{quote(folder, safe='/')};UIDVALIDITY={uidvalidity}/;UID={uid}"


def attachment_uri(parent_uri: str, index: int, filename: str | None) -> str:
    """An attachment's identity: its container (a message, a dropped .eml/.msg file) plus its position.

    The file name is only there to be readable; `index` makes it unique within its container.
    """
    name = (filename or "").replace("/", "_").replace("\\", "_")[:120]
    return f"{parent_uri}#{index}/{name}" if name else f"{parent_uri}#{index}"
