"""Settling: when a changed path is ready to be queued, and which deletions and creations are really moves.

Pure logic over a clock and stat results, driven by the folder watcher's events and ticks (and by unit tests
with a fake clock). A file is handed over once its size and modification time have stayed the same for
`settle_s`; a deletion waits a moment too, so a delete plus a create of the same name, size and time in
another watched folder becomes one move that keeps its document.
"""

from __future__ import annotations

import logging
import os
import stat as statmod
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class FolderSink(Protocol):
    """Where the watcher sends what changed (the composition root queues jobs; tests use a fake)."""

    def changed(self, paths: Sequence[Path]) -> None:
        """Files created or modified, now stable: queue their ingest."""

    def removed(self, paths: Sequence[Path]) -> None:
        """Files or whole folders deleted: queue forgetting them."""

    def moved(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        """Files or folders moved or renamed (old, new): queue a move, which keeps their documents."""

    def rescan(self, roots: Sequence[Path]) -> None:
        """Folders to compare with the library as a whole (a watched folder came back)."""


Stat = tuple[int, int]  # (size, mtime_ns)


def file_stat(path: Path) -> Stat | None:
    """Size and modification time of a regular file; None when it is gone or not a file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not statmod.S_ISREG(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns


@dataclass
class _Pending:
    stat: Stat | None
    since: float  # when the stat was last seen to change (or an event came)


class Settler:
    """What to hand over, and when: the watcher's logic without threads or observers (unit-testable).

    Thread-safe: observer threads report events, the settle thread calls `tick` about every 0.2 s.
    """

    def __init__(
        self, sink: FolderSink, *, settle_s: float, clock: Callable[[], float] = time.monotonic,
        stat: Callable[[Path], Stat | None] = file_stat,
        expand: Callable[[Path], Iterator[Path]] = lambda d: iter(()),
        alive: Callable[[Path], bool] = lambda p: True, hold_s: float | None = None,
    ) -> None:
        self.sink = sink
        self.settle_s = settle_s
        self.clock = clock
        self.stat = stat
        self.expand = expand  # the files under a new folder (it may have been filled before it was watched)
        self.alive = alive  # whether the watched folder holding a path is there (if not, nothing is removed)
        # deletions wait this long for a matching creation elsewhere (a move between two watched folders)
        self.hold_s = max(settle_s, 0.5) if hold_s is None else hold_s
        self.pair_wait_s = max(10 * self.hold_s, 5.0)  # ...or longer while a same-named file is still written
        self._lock = threading.Lock()
        self._pending: dict[Path, _Pending] = {}
        self._gone: dict[Path, tuple[float, bool]] = {}  # path -> (when, is_dir)
        self._new_dirs: dict[Path, float] = {}  # created folders, held for pairing with a deleted one
        self._to_expand: list[Path] = []
        self._moves: list[tuple[Path, Path]] = []
        self._retry: list[tuple[str, list[Any]]] = []

    # -- events (observer threads) ----------------------------------------------------------------
    def changed(self, path: Path) -> None:
        with self._lock:
            self._gone.pop(path, None)  # deleted and created again: a change, not a removal
            self._pending[path] = _Pending(None, self.clock())

    def dir_created(self, path: Path) -> None:
        with self._lock:
            self._gone.pop(path, None)
            self._new_dirs[path] = self.clock()
            self._to_expand.append(path)

    def deleted(self, path: Path, is_dir: bool) -> None:
        with self._lock:
            self._pending.pop(path, None)
            if is_dir:
                self._new_dirs.pop(path, None)
                self._drop_under(path)
            self._gone[path] = (self.clock(), is_dir)

    def moved(self, src: Path, dst: Path, is_dir: bool) -> None:
        with self._lock:
            self._gone.pop(dst, None)
            now = self.clock()
            if not is_dir and src in self._pending:
                # Renamed while still settling (a download renamed when done, a new file renamed at once):
                # it settles under its new name; the old name is a deletion, which pairs with it if both
                # names are the same (a move to another folder) and is a no-op if the library never had it.
                del self._pending[src]
                self._pending[dst] = _Pending(None, now)
                self._gone[src] = (now, False)
                return
            self._moves.append((src, dst))
            if is_dir:
                for p in [p for p in self._pending if src in p.parents]:
                    del self._pending[p]
                    self._pending[dst / p.relative_to(src)] = _Pending(None, now)
                if src in self._new_dirs:
                    self._new_dirs[dst] = self._new_dirs.pop(src)

    def busy(self) -> bool:
        """Whether anything waits to be handed over."""
        with self._lock:
            return bool(self._pending or self._gone or self._new_dirs or self._moves or self._to_expand
                        or self._retry)

    # -- the settle thread ------------------------------------------------------------------------
    def tick(self) -> None:
        """Hand over what is ready: stable files, held deletions, moves, in one sink call each."""
        with self._lock:
            to_expand, self._to_expand = self._to_expand, []
        for d in to_expand:  # outside the lock: a big new folder must not hold up the observers
            try:
                found = list(self.expand(d))
            except OSError:
                found = []
            with self._lock:
                now = self.clock()
                for f in found:
                    self._pending.setdefault(f, _Pending(None, now))
        with self._lock:
            retry, self._retry = self._retry, []
            moves, self._moves = self._moves, []
            now = self.clock()
            settled = self._settled(now)
            removed = self._pair_and_release(now, settled, moves)
            for d in [d for d, t in self._new_dirs.items() if now - t >= self.hold_s]:
                del self._new_dirs[d]
            # (pairing may have taken some: the files of a folder that turned out to be moved)
            changed = [p for p in settled if p in self._pending and not self._under_new_dir(p)]
            for p in changed:
                del self._pending[p]
        calls: list[tuple[str, list[Any]]] = [
            *retry, ("moved", moves), ("changed", sorted(changed)), ("removed", _outermost(removed)),
        ]
        for method, items in calls:
            if not items:
                continue
            try:
                getattr(self.sink, method)(items)
            except Exception as exc:  # a busy catalog: try again at the next tick, keep watching
                log.warning("could not queue %d folder changes (%s): %s; retrying", len(items), method, exc)
                with self._lock:
                    self._retry.append((method, items))

    def _settled(self, now: float) -> list[Path]:
        out = []
        for path, p in list(self._pending.items()):
            st = self.stat(path)
            if st is None:  # gone again (a deletion event says whether to forget it) or not a file
                del self._pending[path]
            elif st != p.stat:
                p.stat, p.since = st, now
            elif now - p.since >= self.settle_s:
                out.append(path)
        return out

    def _pair_and_release(self, now: float, settled: list[Path], moves: list[tuple[Path, Path]]) -> list[Path]:
        """Pair held deletions with same-named new files or folders (moves); release the rest as removals."""
        removed: list[Path] = []
        if not self._gone:
            return removed
        settled_by_name: dict[str, list[Path]] = {}
        for p in settled:
            settled_by_name.setdefault(p.name, []).append(p)
        waiting = {p.name for p in self._pending}
        for g, (t, is_dir) in list(self._gone.items()):
            partner: Path | None = None
            if is_dir:
                partner = next((d for d in self._new_dirs if d.name == g.name and d != g), None)
                if partner is not None:
                    del self._new_dirs[partner]
                    self._drop_under(partner)
            else:
                candidates = [p for p in settled_by_name.get(g.name, []) if p != g]
                if candidates:
                    partner = candidates[0]
                    settled_by_name[g.name].remove(partner)
                    settled.remove(partner)
                    del self._pending[partner]
            if partner is not None:
                del self._gone[g]
                moves.append((g, partner))
                continue
            age = now - t
            if age < self.hold_s or (not is_dir and g.name in waiting and age < self.pair_wait_s):
                continue
            del self._gone[g]
            if self.alive(g):
                removed.append(g)
            # else: the watched folder itself is gone (unmounted, deleted): its documents stay
        return removed

    def _under_new_dir(self, path: Path) -> bool:
        return any(d in self._new_dirs for d in path.parents)

    def _drop_under(self, folder: Path) -> None:
        for p in [p for p in self._pending if folder in p.parents]:
            del self._pending[p]


def _outermost(paths: list[Path]) -> list[Path]:
    """Removals without those inside a removed folder (one forget of the folder covers them)."""
    chosen = set(paths)
    return sorted(p for p in chosen if not any(a in chosen for a in p.parents))
