"""Content-addressed storage for raw bytes kb keeps itself (mail messages fetched over IMAP).

A blob's name is the SHA-256 of its bytes, so writing the same message twice is one file, and a write
interrupted by a crash leaves only a temporary file (never a truncated blob under its final name).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path


class BlobStore:
    """Files under `root/ab/abcdef….<suffix>`, written atomically and never changed afterwards."""

    def __init__(self, root: Path, suffix: str = "") -> None:
        self.root = root
        self.suffix = suffix

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a blob name: {digest[:80]!r}")
        return self.root / digest[:2] / f"{digest}{self.suffix}"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, data: bytes) -> str:
        """Store `data` durably (fsynced before it gets its name); returns its SHA-256."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.is_file() and final.stat().st_size == len(data):
            return digest
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with tmp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the name survives a power cut too
        finally:
            os.close(dir_fd)
        return digest

    def read(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()
