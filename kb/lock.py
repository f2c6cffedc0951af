"""One writer per data directory: concurrent ingests would interleave Chroma writes from two processes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kb.errors import KbError


class BusyError(KbError):
    """Another process holds the data directory's write lock."""


@contextmanager
def write_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's write lock (released by the OS even on kill -9)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ".write.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise BusyError(
                f"another kb process (pid {holder}) is writing to {data_dir}; try again when it finishes"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)
