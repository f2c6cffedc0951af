"""File paths for native libraries, whatever bytes the user's file name holds."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def utf8_safe(text: str) -> bool:
    """Whether text encodes as strict UTF-8 (names from undecodable bytes carry lone surrogates and do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextmanager
def plain_path(path: Path, file_type: str) -> Iterator[Path]:
    """`path`, or a link to it named `source.<file_type>` when the path is not valid UTF-8.

    A POSIX file name is any bytes; Python keeps undecodable ones as lone surrogates, and libraries that
    encode the name as strict UTF-8 (unstructured does, for its metadata) then fail on a perfectly good
    file. A symbolic link (a copy where links are refused) under a plain name sidesteps that.
    """
    if utf8_safe(str(path)):
        yield path
        return
    suffix = f".{file_type}" if file_type and utf8_safe(file_type) else ""
    with tempfile.TemporaryDirectory(prefix="kb-name-") as tmp:
        alias = Path(tmp) / f"source{suffix}"
        try:
            os.symlink(os.path.abspath(path), alias)
        except OSError:
            shutil.copyfile(path, alias)
        yield alias
