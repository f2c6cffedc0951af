"""Finding files to ingest: recursive, loop-safe, skipping hidden and temporary files."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.paths import absolute, ignored
from kb.settings import DEFAULT_IGNORE

_DEFAULT_IGNORE = tuple(DEFAULT_IGNORE)


@dataclass(frozen=True)
class Found:
    """A candidate file, or a path that could not be looked at (with the reason)."""

    path: Path
    size: int = 0
    mtime_ns: int = 0
    error: str | None = None


def is_ignored(name: str, patterns: Sequence[str] = _DEFAULT_IGNORE) -> bool:
    """Hidden files, office lock files and partial downloads are not documents (setting watch_ignore)."""
    return ignored(name, patterns)


def discover(paths: Iterable[Path], ignore: Sequence[str] = _DEFAULT_IGNORE) -> Iterator[Found]:
    """Yield every file under the given files and folders; unreadable or looping paths yield an error.

    Names matching `ignore` below a given folder are skipped; a path given explicitly never is."""
    seen_dirs: set[tuple[int, int]] = set()
    for root in paths:
        root = absolute(root)
        try:
            st = root.stat()
        except OSError as exc:
            yield Found(root, error=_os_error(root, exc))
            continue
        if root.is_dir():
            yield from _walk(root, seen_dirs, ignore)
        else:
            yield Found(root, st.st_size, st.st_mtime_ns)


def _walk(top: Path, seen: set[tuple[int, int]], ignore: Sequence[str]) -> Iterator[Found]:
    try:
        st = top.stat()
    except OSError as exc:
        yield Found(top, error=_os_error(top, exc))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return  # a symlink back into a folder already walked: a loop, or the same folder twice
    seen.add(key)
    try:
        entries = sorted(os.scandir(top), key=lambda e: e.name)
    except OSError as exc:
        yield Found(top, error=_os_error(top, exc))
        return
    for entry in entries:
        if ignored(entry.name, ignore):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                yield from _walk(path, seen, ignore)
                continue
            est = entry.stat(follow_symlinks=True)
        except OSError as exc:
            yield Found(path, error=_os_error(path, exc))
            continue
        if entry.is_file(follow_symlinks=True):
            yield Found(path, est.st_size, est.st_mtime_ns)
        # sockets, fifos and devices are never documents: skip silently


def _os_error(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop: the link points back at itself"
    if exc.errno == errno.ENOENT and path.is_symlink():
        return "broken symbolic link: its target does not exist"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied: the file cannot be read"
    if exc.errno == errno.ENOENT:
        return "no such file or folder"
    return f"cannot read: {exc.strerror or exc}"
