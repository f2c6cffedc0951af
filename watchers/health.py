"""Health of what the service watches (folders, mail accounts): shown by `kb status` and the live status line.

Watchers run in their own threads and report here; readers take a snapshot. A watcher that cannot do its work
(folder gone, wrong password) says so here instead of stopping the service or retrying in a tight loop.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

STARTING = "starting"
OK = "ok"
UNHEALTHY = "unhealthy"
STOPPED = "stopped"


@dataclass
class Health:
    """One watched thing: a folder (name = its path) or a mail account (name = the account's name)."""

    kind: str  # folder | mail
    name: str
    state: str = STARTING
    mode: str | None = None  # folders: events | poll; mail: idle | poll
    tag: str | None = None
    last_event: float | None = None  # when a change was last seen
    last_sync: float | None = None  # when a full check last completed (scan, mailbox sync)
    last_error: str | None = None  # the current problem (cleared when healthy again)
    last_error_at: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class HealthBoard:
    """Thread-safe registry of Health records, keyed by (kind, name)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[tuple[str, str], Health] = {}

    def register(self, kind: str, name: str, **fields: Any) -> None:
        with self._lock:
            self._items[(kind, name)] = Health(kind=kind, name=name, **fields)

    def update(self, kind: str, name: str, **fields: Any) -> None:
        """Set fields; `state='ok'` clears the error, an `error=` sets it with its time and marks unhealthy."""
        now = time.time()
        with self._lock:
            h = self._items.setdefault((kind, name), Health(kind=kind, name=name))
            error = fields.pop("error", None)
            for key, value in fields.items():
                setattr(h, key, value)
            if error is not None:
                h.state, h.last_error, h.last_error_at = UNHEALTHY, str(error), now
            elif fields.get("state") == OK:
                h.last_error = None

    def known(self, kind: str, name: str) -> bool:
        """Whether a watcher reports on this (a one-off command's scan must not invent a watched folder)."""
        with self._lock:
            return (kind, name) in self._items

    def event(self, kind: str, name: str) -> None:
        self.update(kind, name, last_event=time.time())

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [h.to_dict() for h in self._items.values()]
