"""One owner of writes per data directory: the process holding this lock (released by the OS on kill -9)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class WriteLock:
    """The data directory's write lock, held until `release()` or process exit."""

    def __init__(self, fd: int, path: Path) -> None:
        self._fd: int | None = fd
        self.path = path

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def try_lock(data_dir: Path) -> WriteLock | None:
    """Take the write lock if no other process holds it; None when one does."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / ".write.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return WriteLock(fd, path)


def holder(data_dir: Path) -> int | None:
    """The pid recorded by the current holder of the lock (for messages), if any."""
    try:
        text = (data_dir / ".write.lock").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
