"""Progress of long-running work (an hour of audio, a 500-page scan), visible in `kb status`.

Parsers run in worker processes, so progress lives in its own small table in the catalog database,
written through a separate connection (SQLite WAL lets the processes share the file).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS progress(
    uri TEXT PRIMARY KEY,
    stage TEXT NOT NULL,
    done REAL NOT NULL,
    total REAL,
    updated_at REAL NOT NULL
)
"""


class ProgressBoard:
    """Write and read per-file progress. Cheap enough to call every few seconds of work."""

    def __init__(self, db_path: Path | str) -> None:
        self._db = sqlite3.connect(str(db_path), isolation_level=None, timeout=10, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)
        self._last = 0.0

    def update(self, uri: str, stage: str, done: float, total: float | None = None, *, every_s: float = 1.0) -> None:
        """Record progress; calls closer together than every_s are dropped to keep writes cheap."""
        now = time.time()
        if now - self._last < every_s:
            return
        self._last = now
        # progress is advisory: a busy database must not fail the work itself
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute(
                "INSERT OR REPLACE INTO progress(uri, stage, done, total, updated_at) VALUES (?,?,?,?,?)",
                (uri, stage, done, total, now),
            )

    def clear(self, uri: str) -> None:
        with contextlib.suppress(sqlite3.OperationalError):
            self._db.execute("DELETE FROM progress WHERE uri=?", (uri,))

    def last_update(self, uri: str) -> float | None:
        """When work on uri last reported progress: a heartbeat for telling slow from stuck."""
        try:
            row = self._db.execute("SELECT updated_at FROM progress WHERE uri=?", (uri,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return float(row[0]) if row else None

    def active(self, max_age_s: float = 600.0) -> list[dict[str, Any]]:
        """Work that reported progress recently (older rows belong to a run that was stopped)."""
        rows = self._db.execute(
            "SELECT uri, stage, done, total, updated_at FROM progress WHERE updated_at > ? ORDER BY uri",
            (time.time() - max_age_s,),
        ).fetchall()
        return [
            {"path": r[0], "stage": r[1], "done": r[2], "total": r[3], "updated_at": r[4]} for r in rows
        ]

    def close(self) -> None:
        self._db.close()


def optional_board(db_path: str | None) -> ProgressBoard | None:
    """A board for parsers, or None when there is no catalog to report to or it cannot be opened."""
    if not db_path:
        return None
    try:
        return ProgressBoard(db_path)
    except sqlite3.Error:  # progress is advisory
        return None
